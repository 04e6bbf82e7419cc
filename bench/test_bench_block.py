"""One residual block's training step (forward + backward, training-mode BatchNorm; fastsca/backbone.py): the
reference block eager, under torch.compile and under max-autotune-no-cudagraphs, against the fused block compiled,
at at-sca-3's blocks 1, 2, 4 and 7 with batch 64 and 256 in bf16 autocast and channels_last. On a CPU those skip
and one small odd block (bench/cases.py CPU_BLOCK) runs eager, compiled and compiled fused (the fused ops' CPU
engine)."""
import pytest

from bench.cases import BenchEnv, block_cases


@pytest.mark.parametrize("case", block_cases(BenchEnv.detect()), ids=lambda case: case.id)
def test_block(case, run_case):
    run_case(case)
