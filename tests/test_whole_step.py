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
from collections import Counter
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
BLOCKS = 7
"""Residual blocks: fastsca runs each as the fused block (three convolution ops, one tail each way)."""


def _block_convolutions() -> list[tuple[int, int, int, int, bool, bool]]:
    """(c_in, c_out, k, rows = B x T x F, prologue, Triton by the per-layer rule) of the narrow model's 21 block
    convolutions, in the order the fused blocks run them (conv1, shortcut, conv2)."""
    from fastsca.backbone_plan import implicit_gemm
    from fastsca.config import ModelConfig

    config = ModelConfig.from_name("at-sca-3", channels=CHANNELS, num_classes=CLASSES, input_frames=FRAMES)
    out, c_in = [], 1
    for c_out, (t, f) in zip(config.channels, config.block_input_sizes()):
        rows = BATCH * t * f
        for cin, k, prologue in ((c_in, 3, False), (c_in, 1, False), (c_out, 3, True)):
            out.append((cin, c_out, k, rows, prologue, implicit_gemm(cin, c_out, k, rows, prologue)))
        c_in = c_out
    return out


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
        # every convolution once per role: cuDNN's (extern, or inside a fused block op) or a Triton implicit GEMM
        roles = [r["detail"]["role"] for r in rows if "role" in (r.get("detail") or {})]
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
def test_the_max_pool_is_in_the_block_tail_on_fastsca_and_an_fp32_scatter_on_the_reference(report):
    full = sum(BATCH * c * t * f for c, t, f in POOLED_INPUTS)
    pools = {step: [r for r in rows if r["category"] == "max-pool bwd"] for step, rows in report["launches"].items()}
    # the decomposition: a zero fill, the atomic scatter-add, and the kernel that reads the buffer back (fused with
    # the ReLU and BN backward after it): each stores a full-resolution fp32 tensor
    assert len(pools["reference"]) == 3 * len(POOLED_INPUTS)
    assert sum(r.get("fp32_stored", 0) for r in pools["reference"]) == 3 * 4 * full
    fastsca = report["launches"]["fastsca"]
    assert not [r for r in fastsca if r["category"].startswith("max-pool")]   # one tail kernel each way per block
    tails = [r for r in fastsca if r["kind"] == "fastsca" and r["category"].startswith("block tail")]
    assert sorted((r["name"], r["phase"]) for r in tails) == sorted(
        [("block_tail_forward_kernel", "forward")] * BLOCKS + [("block_tail_backward_kernel", "backward")] * BLOCKS)
    assert sum(r.get("fp32_stored", 0) for r in tails if r["phase"] == "forward") == 0
    # the backward's only fp32: its per-program partial sums, (B, programs, K, C), K = 3 with main's BatchNorm
    assert sum(r.get("fp32_stored", 0) for r in tails if r["phase"] == "backward") == _tail_partial_bytes()


@pytest.mark.slow
def test_fastsca_launches_exactly_its_passes_and_fewer_kernels_in_all(report):
    rows = report["launches"]["fastsca"]
    ours = [(r["name"], r["phase"]) for r in rows if r["kind"] == "fastsca"]
    sca = {"forward": ["channel_pool_forward_kernel", "spatial_squeeze_forward_kernel", "gate_forward_kernel"],
           "backward": ["gate_logit_grad_rows_kernel", "spatial_squeeze_logit_grad_kernel", "gate_input_grad_kernel"]}
    convolutions = _block_convolutions()
    triton = sum(chosen for *_, chosen in convolutions)
    block = {"forward": ["conv_gemm_kernel"] * triton + ["block_tail_forward_kernel"] * BLOCKS,
             "backward": ["conv_gemm_kernel", "conv_weight_grad_kernel"] * triton
             + ["block_tail_backward_kernel"] * BLOCKS}
    assert sorted(ours) == sorted([(name, phase) for phase, names in sca.items() for name in names * 3]
                                  + [(name, phase) for phase, names in block.items() for name in names])
    inside = Counter((r["op"].split("::")[1], r["name"].split(".")[1]) for r in rows if r["kind"] == "aten in fastsca op")
    assert inside == _aten_inside_block_ops(convolutions)
    steps = report["steps"]
    # fewer launches in the forward, the backward and in all (at this narrow model 173 / 212 / 433 against
    # 201 / 226 / 475 when written)
    for phase in ("forward", "backward"):
        assert steps["fastsca"]["launches_by_phase"][phase] < steps["reference"]["launches_by_phase"][phase], phase
    assert steps["fastsca"]["launches"] < steps["reference"]["launches"]


ATTENTION_INPUTS = [(13, 7, 4), (21, 7, 4), (37, 7, 4)]
"""(C, T, F) of the narrow model's three attention blocks, which have no pool and no BatchNorm on main in the tail."""


def _tail_partial_bytes() -> int:
    """Bytes of the tail backward kernels' fp32 partial sums (kernels/block_tail.py's grid and K rows)."""
    import triton

    from kernels import block_tail

    total = 0
    for (c, t, f), pool, rows in ([(shape, p, 3) for shape, p in zip(POOLED_INPUTS, [(2, 2), (2, 2), (1, 2), (1, 2)])]
                                  + [(shape, (1, 1), 2) for shape in ATTENTION_INPUTS]):
        block_p, _ = block_tail._tiling(c)
        windows = triton.cdiv(t, pool[0]) * triton.cdiv(f, pool[1])
        total += BATCH * triton.cdiv(triton.cdiv(windows, block_p), block_tail.STEPS) * rows * c * 4
    return total


def _aten_inside_block_ops(convolutions) -> Counter:
    """(op, aten op) counts of the work the fused blocks' ops launch besides their Triton kernels: a Triton
    convolution makes its weight matrix (one copy: the cast to bf16 and the layout together) and sums its partial
    statistics (one sum: the op returns the (2, C) result itself, no row copied out); its data gradient makes its
    (transposed, not flipped: the kernel flips as it reads) weight matrix the same way and, with a prologue, sums;
    its weight gradient sums its split-K partials where it splits and returns dW in the maps' layout (no copy); a
    cuDNN convolution runs its convolution and reductions as aten ops (none of the narrow model's); each tail
    backward sums its partials (returned as they are: no copies), its d_out arriving in the map's layout."""
    from kernels.conv_weight_grad import tiling

    assert all(chosen for *_, chosen in convolutions)   # the narrow model at batch 3 is bandwidth-bound throughout
    expected = Counter({("block_conv_forward", "copy_"): 21, ("block_conv_forward", "sum"): 21,
                        ("block_conv_input_grad", "copy_"): 21})
    expected[("block_conv_input_grad", "sum")] = sum(prologue for *_, prologue, _ in convolutions)
    expected[("block_conv_weight_grad", "sum")] = sum(tiling(c_in, c_out, k, rows, 2)["SPLIT"] > 1
                                                      for c_in, c_out, k, rows, *_ in convolutions)
    expected[("block_tail_backward", "sum")] = BLOCKS
    return expected


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


def test_the_report_states_the_ceiling_a_fused_backbone_can_reach():
    """The ceiling line: fastsca's derated step with the backbone's work between the convolutions at zero, the
    speed-up that gives, and the convolution time the target needs, from the breakdown's own figures."""
    from bench import step_report, whole_step

    report = whole_step.refresh(json.loads((REPO / "bench/results/2026-12-06-sm90-whole-step-b64.json").read_text()))
    ours, theirs = ({e["category"]: e["derated"] for e in report["steps"][step]["H100 SXM breakdown"]}
                    for step in ("fastsca", "reference"))
    between = sum(ours[c] for c in ("BN stats", "BN apply+ReLU+add fwd", "BN/ReLU/add bwd pointwise",
                                    "BN bwd reductions", "block tail fwd", "block tail bwd"))
    convolutions = ours["conv fwd"] + ours["conv dgrad"] + ours["conv wgrad"]
    ceiling = sum(ours.values()) - between
    needed = sum(theirs.values()) / 1.3 - (sum(ours.values()) - convolutions)   # batch 64's target
    line = next(line for line in step_report.markdown(report).splitlines() if line.startswith("- Ceiling"))
    assert f"{between / 1e3:.2f} ms) at zero" in line
    assert f"would take {ceiling / 1e3:.2f} ms, {sum(theirs.values()) / ceiling:.3f}x" in line
    assert f"1.3x needs the convolutions at {needed / 1e3:.2f} ms (they are priced at {convolutions / 1e3:.2f})" in line
