"""`local_fc`, the per-frequency-row local FC (eq. 6): fused vs eager reference vs torch.compile of the reference,
forward / backward / full, at the attention maps of at-sca-1/2/3 with batch 32 and 256.
GPU-only: on CPU every case skips with its reason (bench/cases.py, skip_reason)."""
import pytest

from bench.cases import BenchEnv, op_cases


@pytest.mark.parametrize("case", op_cases("local_fc", BenchEnv.detect()), ids=lambda case: case.id)
def test_local_fc(case, run_case):
    run_case(case)
