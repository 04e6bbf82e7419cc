"""bench/whole_step.py: train.run's step recorded launch by launch, plain torch.compile vs fastsca.

A narrow at-sca-3 (odd widths, 7 x 4 attention maps, batch 3, 7 classes) goes through the same machinery as the
committed reports: Inductor's Triton code for CPU tensors with CUDA's lowering, nothing executed, every launch
recorded, every kernel compiled for sm_90, the eager loss, check, clipping and optimiser recorded too. The figures
that follow from the counting rules and the model alone are asserted exactly, each worked out here from the model.
Runs in a subprocess: this session's `kernels` is decorated for the interpreter (tests/conftest.py), where nothing
can be compiled for sm_90.
"""
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
CHANNELS, FRAMES, CLASSES, BATCH = (3, 5, 8, 11, 13, 21, 37), 28, 7, 3
RUNNER = f"""
import json
from bench import whole_step as w
report = w.build_report({BATCH}, 90, sass=False, channels={CHANNELS}, frames={FRAMES}, classes={CLASSES},
                        module_maps=[(37, 7, 4)])
print(json.dumps({{"steps": report["steps"], "modules": report["modules"], "launches": report["launches"]}}))
"""
CONVOLUTIONS = 7 * 3 + 3 * 2
"""Forward convolutions: seven blocks of conv1, conv2 and the 1x1 shortcut, and the global branch's two 5x5 convs
in each of the three attention blocks; each has a dgrad (every input needs its gradient) and a wgrad."""
POOLED_INPUTS = [(3, 28, 64), (5, 14, 32), (8, 7, 16), (11, 7, 8)]
"""(C, T, F) at the input of the narrow model's four max-pools: (2, 2), (2, 2), (1, 2), (1, 2)."""


@pytest.fixture(scope="module")
def report() -> dict:
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    done = subprocess.run([sys.executable, "-c", RUNNER], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=1500)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def _parameter_groups() -> list[int]:
    """Tensors in each of AdamW's groups, of the narrow model: decay (2+ dims) and no decay at lr, then the same
    two for the global branches' last convs at lr / their fan-in (train/optim.py)."""
    from fastsca import build_model
    from train.config import OptimConfig
    from train.optim import build_optimiser

    model = build_model("at-sca-3", channels=CHANNELS, num_classes=CLASSES, input_frames=FRAMES)
    dims = [p.dim() for p in model.parameters()]
    sizes = [len(group["params"]) for group in build_optimiser(model, OptimConfig()).param_groups]
    last = 3   # the three attention blocks' conv2 weights (and as many biases)
    assert sizes == [sum(d >= 2 for d in dims) - last, sum(d < 2 for d in dims) - last, last, last]
    return sizes


def _launches(rows: list[dict], **match) -> int:
    return sum(r.get("launches", 1) for r in rows if all(r.get(k) == v for k, v in match.items()))


@pytest.mark.slow
def test_every_kernel_compiles_and_every_part_of_the_step_is_there(report):
    for step, rows in report["launches"].items():
        errors = [r for r in rows if "compile_error" in r]
        assert not errors, f"{step}: {errors[:3]}"
        assert {r["phase"] for r in rows} == {"front end", "forward", "loss", "non-finite check", "backward",
                                              "clipping", "optimiser"}
        roles = [r["detail"]["role"] for r in rows if r["kind"] == "extern" and "role" in (r.get("detail") or {})]
        assert [roles.count(role) for role in ("forward", "dgrad", "wgrad")] == [CONVOLUTIONS] * 3, step


@pytest.mark.slow
def test_the_eager_parts_launch_what_the_counting_rules_say(report):
    groups = _parameter_groups()
    everything = sum(groups)
    # fused AdamW: per group ceil(n / 36) multi-tensor kernels (every tensor under one 65,536-element chunk) and
    # ceil(n / 110) for the step counters' foreach add
    optimiser = sum(math.ceil(n / 36) + math.ceil(n / 110) for n in groups)
    # clip_grad_norm_: foreach norm (+ its clean-up), stack, norm, + eps, reciprocal, x max_norm, clamp, foreach mul
    clipping = math.ceil(everything / 110) + 1 + 6 + math.ceil(everything / 110)
    for step, rows in report["launches"].items():
        assert _launches(rows, phase="optimiser") == optimiser, step
        assert _launches(rows, phase="clipping") == clipping, step
        assert _launches(rows, phase="non-finite check") == 8, step   # == 0, isfinite's 5 ops, &, masked_fill_
        assert _launches(rows, phase="front end", kind="dali") == 9, step
        assert _launches(rows, phase="front end", kind="extern") == 2, step   # transpose-and-cut, targets' cast
        clone = next(r for r in rows if r["phase"] == "front end" and "clone" in r["name"])
        assert clone["bytes"] == 2 * BATCH * FRAMES * 64 * 4


@pytest.mark.slow
def test_the_max_pool_backward_is_bf16_on_fastsca_and_an_fp32_scatter_on_the_reference(report):
    full = sum(BATCH * c * t * f for c, t, f in POOLED_INPUTS)
    pools = {step: [r for r in rows if r["category"] == "max-pool bwd"] for step, rows in report["launches"].items()}
    assert len(pools["fastsca"]) == len(POOLED_INPUTS)            # Inductor's lowering: one kernel a pool
    assert sum(r.get("fp32_stored", 0) for r in pools["fastsca"]) == 0
    # the decomposition: a zero fill, the atomic scatter-add, and the kernel that reads the buffer back (fused with
    # the ReLU and BN backward after it): each stores a full-resolution fp32 tensor
    assert len(pools["reference"]) == 3 * len(POOLED_INPUTS)
    assert sum(r.get("fp32_stored", 0) for r in pools["reference"]) == 3 * 4 * full


@pytest.mark.slow
def test_fastsca_launches_exactly_its_passes_and_fewer_kernels(report):
    rows = report["launches"]["fastsca"]
    ours = [(r["name"], r["phase"]) for r in rows if r["kind"] == "fastsca"]
    sca = {"forward": ["channel_pool_forward_kernel", "spatial_squeeze_forward_kernel", "gate_forward_kernel"],
           "backward": ["gate_logit_grad_rows_kernel", "spatial_squeeze_logit_grad_kernel", "gate_input_grad_kernel"]}
    assert sorted(ours) == sorted((name, phase) for phase, names in sca.items() for name in names * 3)
    assert not [r for r in rows if r["kind"] == "aten in fastsca op"]   # no eager launches inside the ops
    steps = report["steps"]
    for phase in ("forward", "backward"):
        assert steps["fastsca"]["launches_by_phase"][phase] < steps["reference"]["launches_by_phase"][phase], phase


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


def test_a_committed_report_re_prices_to_its_own_figures():
    """--from-json re-categorises and re-sums the stored rows: on an unchanged rule set it gives the same report."""
    from bench import whole_step

    path = REPO / "bench/results/2026-12-06-sm90-whole-step-b64.json"
    stored = json.loads(path.read_text())
    refreshed = whole_step.refresh(json.loads(path.read_text()))
    assert refreshed["steps"] == stored["steps"]
    assert refreshed["launches"] == stored["launches"]
