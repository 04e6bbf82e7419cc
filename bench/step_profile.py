"""train.run's step measured on a GPU with torch.profiler, by bench/breakdown.py's categories, set against the
estimate of bench/whole_step.py's report for the same step and batch.

`measure` (CUDA only) builds the step as bench/whole_step.py counts it (the `gpu` profile's model, channels_last,
`fastsca.training_compile`, fused AdamW, `train.step.training_step`, the loader's torch work on the device from a
random dB batch: DALI itself is left out) with Inductor's kernels named after torch modules as in the count,
warms it up, and profiles `steps` steps. Each GPU kernel is put in a category by its name (`kernel_category`);
`compare` sets the per-step measured µs against the estimate's. Runs on torch 2.11 / Triton 3.6 as on 2.13 / 3.9:
it uses only torch.profiler's key_averages-free event list and the project's own modules.
"""
import json
from pathlib import Path

import torch

from bench.breakdown import CATEGORIES

CUDNN_ROLES = (("wgrad", "conv wgrad"), ("dgrad", "conv dgrad"), ("fprop", "conv fwd"), ("convolve", "conv fwd"),
               ("conv", "conv fwd"))
"""cuDNN / CUTLASS kernel names by what they compute (xmma_wgrad, sm90_xmma_dgrad, ..._fprop_..., implicit_convolve)."""
EAGER_KERNELS = (("adam", "optimiser"), ("lpnorm", "clipping"), ("multi_tensor_apply", "clipping"),
                 ("binary_cross_entropy", "head+loss"), ("gemm", "head+loss"), ("gemv", "head+loss"))
"""Other library kernels by a part of their name: fused AdamW's and the foreach norm / scale of clip_grad_norm_
(the step counters' foreach add lands in clipping too: one tiny kernel), the BCE, cuBLAS (the head's and the
reference attention's small matmuls)."""


BLOCK_KERNELS = (("conv_weight_grad_kernel", "conv wgrad"), ("conv_gemm_kernel", "conv fwd"),
                 ("block_tail_forward_kernel", "block tail fwd"), ("block_tail_backward_kernel", "block tail bwd"))
"""The fused backbone's Triton kernels (kernels/conv.py, conv_weight_grad.py, block_tail.py) by name. The forward and
the data gradient launch one kernel, `conv_gemm_kernel`, so a profile counts both as conv fwd (the estimate splits
them into conv fwd and conv dgrad: compare the two rows' sum)."""


def kernel_category(name: str, phase_hint: str = "") -> str:
    """The category of a profiled GPU kernel from its name (Inductor's: bench/breakdown.py's rules)."""
    from bench.breakdown import _kernel_category

    lower = name.lower()
    if name.startswith("triton_"):
        return _kernel_category({"name": name, "phase": "backward" if "backward" in name else phase_hint})
    for marker, category in BLOCK_KERNELS:
        if marker in lower:
            return category
    if "fastsca" in lower or any(k in lower for k in ("channel_pool", "spatial_squeeze", "gate_", "local_fc")):
        return "attention"
    for marker, category in CUDNN_ROLES + EAGER_KERNELS:
        if marker in lower:
            return category
    return "other"


def per_category(kernels: list[tuple[str, float]], steps: int) -> dict[str, dict]:
    """{category: {launches, us}} per step from (kernel name, duration µs) pairs of `steps` profiled steps."""
    out = {name: {"launches": 0, "us": 0.0} for name in CATEGORIES}
    for name, us in kernels:
        entry = out[kernel_category(name)]
        entry["launches"] += 1
        entry["us"] += us
    return {k: {"launches": v["launches"] / steps, "us": v["us"] / steps} for k, v in out.items() if v["launches"]}


def compare(measured: dict[str, dict], estimated: list[dict], price: str = "derated") -> list[dict]:
    """One row per category either side has: measured and estimated launches and µs per step, and their ratio."""
    estimate = {e["category"]: e for e in estimated}
    rows = []
    for category in CATEGORIES:
        m, e = measured.get(category), estimate.get(category)
        if m is None and e is None:
            continue
        m_us, e_us = (m or {}).get("us", 0.0), (e or {}).get(price, 0.0)
        rows.append({"category": category, "measured_launches": (m or {}).get("launches", 0),
                     "estimated_launches": (e or {}).get("launches", 0), "measured_us": m_us, "estimated_us": e_us,
                     "measured_over_estimated": m_us / e_us if e_us else None})
    return rows


def markdown(step: str, rows: list[dict], price: str = "derated") -> str:
    lines = [f"| {step}: category | launches measured / estimated | µs measured | µs estimated ({price}) | "
             "measured / estimated |", "|---|---|---|---|---|"]
    for r in rows:
        ratio = f"{r['measured_over_estimated']:.2f}" if r["measured_over_estimated"] is not None else "-"
        lines.append(f"| {r['category']} | {r['measured_launches']:g} / {r['estimated_launches']} | "
                     f"{r['measured_us']:.0f} | {r['estimated_us']:.0f} | {ratio} |")
    total_m, total_e = sum(r["measured_us"] for r in rows), sum(r["estimated_us"] for r in rows)
    lines.append(f"| total (kernel time; the step's wall time adds gaps) | | {total_m:.0f} | {total_e:.0f} | "
                 f"{total_m / total_e if total_e else float('nan'):.2f} |")
    return "\n".join(lines) + "\n"


def measure(step: str, batch: int, steps: int = 5, warmup: int = 3, mode: str = "reduce-overhead") -> list[tuple]:
    """(kernel name, µs) of every GPU kernel of `steps` profiled train.run steps of `step` (CUDA only)."""
    import torch._inductor.config as inductor_config

    from bench.front_end import device_front_end
    from bench.inductor_cpu import identifier_kernel_names
    from bench.whole_step import PROFILE
    from fastsca import build_model
    from fastsca.run_options import RunOptions
    from fastsca.training_compile import compile_for_training
    from train import step as train_step
    from train.config import OptimConfig
    from train.optim import build_optimiser

    device = torch.device("cuda")
    inductor_config.triton.descriptive_names = "torch"
    fused = step == "fastsca"
    model = build_model("at-sca-3", RunOptions(fused_attention=fused, fused_backbone=fused)).to(device)
    model = model.to(memory_format=torch.channels_last)
    optimiser = build_optimiser(model, OptimConfig())
    train_model = compile_for_training(model.train(), "inductor", mode, fused=step == "fastsca")
    watch = train_step.NonFiniteWatch.on(device)
    db = torch.randn(batch, model.config.n_mels, model.config.input_frames + 1, device=device)
    target = torch.randint(0, 2, (batch, model.config.num_classes), dtype=torch.uint8, device=device)
    parameters = list(model.parameters())

    def one(index: int) -> None:
        log_mel, labels = device_front_end(db, target, model.config.input_frames, PROFILE.mixup_alpha,
                                           PROFILE.spec_augment)
        train_step.training_step(train_model, parameters, optimiser, log_mel, labels, OptimConfig().grad_clip,
                                 watch, index)

    with identifier_kernel_names():   # the warm-up compiles
        for index in range(warmup):
            one(index + 1)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as profiler:
            for index in range(steps):
                one(warmup + index + 1)
            torch.cuda.synchronize()
    return [(e.name, e.time_range.elapsed_us()) for e in profiler.events()
            if e.device_type == torch.autograd.DeviceType.CUDA]


PROFILE_BATCH = 256
"""Batch of the profiled step: the committed whole-step report's."""


def latest_estimate(results: Path, batch: int = PROFILE_BATCH) -> dict | None:
    """The newest `<date>-sm90-whole-step-b<batch>.json` under `results` (None if there is none)."""
    found = sorted(results.glob(f"*-sm90-whole-step-b{batch}.json"))
    return json.loads(found[-1].read_text()) if found else None


def section(profiled: dict[str, list[tuple]], estimate: dict | None, gpu_name: str, steps: int) -> dict:
    """The report's part: per step, measured against estimated by category (`profiled`: step -> kernels)."""
    out = {"gpu_estimate": gpu_name, "estimate_date": estimate and estimate["date"], "steps": {}}
    for step, kernels in profiled.items():
        estimated = estimate["steps"][step][f"{gpu_name} breakdown"] if estimate else []
        out["steps"][step] = compare(per_category(kernels, steps), estimated)
    return out


def section_markdown(part: dict) -> str:
    lines = [f"Measured with torch.profiler against bench.whole_step's estimate of {part['estimate_date']} "
             f"({part['gpu_estimate']}, derated), per step:", ""]
    for step, rows in part["steps"].items():
        lines.append(markdown(step, rows))
    return "\n".join(lines)
