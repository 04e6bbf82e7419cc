"""Training step clips/s (forward, fp32 BCE, backward, AdamW step) of baseline and at-sca-3: eager, fused,
compiled, compiled + fused. The difference between the two models is the attention's cost. On CPU the
model is narrowed (train's cpu profile widths, 2 s clips, batch 8) and at-sca-3's fused variants run the
fused attention's CPU passes."""
import pytest

from bench.cases import BenchEnv, train_cases


@pytest.mark.parametrize("case", train_cases(BenchEnv.detect()), ids=lambda case: case.id)
def test_train_step(case, run_case):
    run_case(case)
