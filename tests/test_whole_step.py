"""bench/whole_step.py: one compiled training step recorded launch by launch, plain torch.compile vs fastsca.

A narrow at-sca-3 (odd widths, 7 x 4 attention maps, batch 3) goes through the same machinery as the
committed batch-256 report: Inductor's Triton code for CPU tensors, nothing executed, every launch
recorded, every kernel compiled for sm_90. The counts that do not depend on Inductor's fusion choices
are asserted exactly. Runs in a subprocess: this session's `kernels` is decorated for the interpreter
(tests/conftest.py), where nothing can be compiled for sm_90.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RUNNER = """
import json
from bench import whole_step as w
report = w.build_report(3, 90, sass=False, channels=(3, 5, 8, 11, 13, 21, 37), frames=28, classes=7,
                        module_maps=[(37, 7, 4)])
print(json.dumps({"steps": report["steps"], "modules": report["modules"], "launches": report["launches"]}))
"""
CONVOLUTIONS = 7 * 3 + 3 * 2
"""Forward convolutions: seven blocks of conv1, conv2 and the 1x1 shortcut, and the global branch's two
5x5 convs in each of the three attention blocks; each has one convolution_backward."""


@pytest.fixture(scope="module")
def report() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", RUNNER], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1200)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_both_steps_are_recorded_and_every_kernel_compiles(report):
    for step, rows in report["launches"].items():
        errors = [r for r in rows if "compile_error" in r]
        assert not errors, f"{step}: {errors[:3]}"
        assert all(r["bytes"] > 0 for r in rows if r["kind"] != "extern" or "convolution" in r["name"]), step
        assert {r["phase"] for r in rows} == {"forward", "backward", "optimizer"}
        ops = [r["name"] for r in rows if r["kind"] == "extern"]
        assert ops.count("aten.convolution.default") == CONVOLUTIONS
        assert ops.count("aten.convolution_backward.default") == CONVOLUTIONS


@pytest.mark.slow
def test_fastsca_launches_exactly_its_passes_and_nothing_hidden(report):
    rows = report["launches"]["fastsca"]
    ours = [(r["name"], r["phase"]) for r in rows if r["kind"] == "fastsca"]
    sca = {"forward": ["channel_pool_forward_kernel", "spatial_squeeze_forward_kernel", "gate_forward_kernel"],
           "backward": ["gate_logit_grad_rows_kernel", "spatial_squeeze_logit_grad_kernel", "gate_input_grad_kernel"]}
    assert sorted(ours) == sorted((name, phase) for phase, names in sca.items() for name in names * 3)
    assert not [r for r in rows if r["kind"] == "aten in fastsca op"]   # no eager launches inside the ops
    assert not [r for r in report["launches"]["reference"] if r["kind"] == "fastsca"]


@pytest.mark.slow
def test_fastsca_launches_no_more_kernels_than_plain_compile(report):
    steps = report["steps"]
    for phase in ("forward", "backward"):
        assert steps["fastsca"]["launches_by_phase"][phase] < steps["reference"]["launches_by_phase"][phase], phase
    assert steps["fastsca"]["launches_by_phase"]["optimizer"] == steps["reference"]["launches_by_phase"]["optimizer"]
    for gpu in ("H100 SXM", "H200 SXM"):
        assert steps["fastsca"][f"{gpu} ms"] > 0 and steps["reference"][f"{gpu} ms"] > 0


@pytest.mark.slow
def test_one_module_alone_launches_fewer_kernels_fused(report):
    reference, fused = report["modules"]
    assert (reference["step"], fused["step"]) == ("reference", "fastsca")
    assert fused["launches_by_kind"]["fastsca"] == 6   # pool, squeeze, gate; rows, squeeze grad, dF
    assert fused["launches"] < reference["launches"]


@pytest.mark.parametrize("argv, message", [(["--batch", "0"], "--batch must be at least 1"),
                                           (["--arch", "9"], "--arch must be a CUDA compute capability")])
def test_bad_arguments_get_a_one_line_error(argv, message, capsys):
    from bench import whole_step

    with pytest.raises(SystemExit) as exit_info:
        whole_step.main(argv)
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip().splitlines()[-1]
    assert message in error and "Traceback" not in error
