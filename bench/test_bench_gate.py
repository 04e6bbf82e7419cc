"""`gate`, the sigmoid gate (eqs. 7, 9, 10): fused vs eager reference vs torch.compile of the reference,
forward / backward / full, at the attention maps of at-sca-1/2/3 with batch 32 and 256.
GPU-only: on CPU every case skips with its reason (bench/cases.py, skip_reason)."""
import pytest

from bench.cases import BenchEnv, op_cases


@pytest.mark.parametrize("case", op_cases("gate", BenchEnv.detect()), ids=lambda case: case.id)
def test_gate(case, run_case):
    run_case(case)
