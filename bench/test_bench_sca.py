"""The whole SCA module (eq. 10, at-sca-3's config): eager reference vs torch.compile of it vs fused ops vs
fused ops in a compiled module, forward / backward / full, at at-sca-1/2/3's maps with batch 32 and 256.
On CPU the four providers run at one map, B32-C256x100x4 (bench/cases.py CPU_MODULE_MAP); the fused ones
time kernels.attention's CPU passes (one PyTorch expression per F-sized pass), not Triton."""
import pytest

from bench.cases import BenchEnv, sca_cases


@pytest.mark.parametrize("case", sca_cases(BenchEnv.detect()), ids=lambda case: case.id)
def test_sca(case, run_case):
    run_case(case)
