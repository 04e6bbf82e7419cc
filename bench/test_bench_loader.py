"""Loader clips/s: the DALI loader (train/data/loader.py) vs a torch DataLoader computing the log-mel with librosa,
over the same generated HDF5 shard, each with 2 worker processes; skipped where DALI is not installed."""
import pytest

from bench.cases import BenchEnv, loader_cases


@pytest.mark.parametrize("case", loader_cases(BenchEnv.detect()), ids=lambda case: case.id)
def test_loader(case, run_case):
    run_case(case)
