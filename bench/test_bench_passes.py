"""The fused unit's forward passes over F, `pool` (eq. 4), `squeeze` (eq. 8) and `gate` (eqs. 7, 9, 10), as the
SCA module calls them: fused (torch.ops.fastsca.attention_*) vs the eager reference (kernels/reference.py) vs
torch.compile of the reference, at the attention maps of at-sca-1/2/3 with batch 32 and 256. Their backward
passes run inside the unit's backward, timed by bench/test_bench_sca.py.
GPU-only: on CPU every case skips with its reason (bench/cases.py, skip_reason)."""
import pytest

from bench.cases import PASSES, BenchEnv, pass_cases


@pytest.mark.parametrize("case", [case for suite in PASSES for case in pass_cases(suite, BenchEnv.detect())],
                         ids=lambda case: case.id)
def test_pass(case, run_case):
    run_case(case)
