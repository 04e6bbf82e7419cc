"""`python -m bench.whole_step [--batch 256] [--arch 90] [--out-dir bench/results]`: one at-sca-3 training step
as train.run takes it on a GPU, plain `torch.compile` of the reference model against fastsca's, every launch
counted with no GPU.

The step is `train.step.training_step`, the function train.run calls, on the `gpu` profile's model: the front end
(DALI's log-mel priced from its bytes, the loader's torch work on the device, mixup / SpecAugment where the profile
has them: bench/front_end.py), the model compiled as train.run compiles it (`fastsca.training_compile`: the
reference with Inductor's defaults, the baseline a user writes; fastsca on its fused path), channels_last, bf16
autocast, training-mode BatchNorm, the fp32 BCE of eq. 3, the non-finite watch, backward, `clip_grad_norm_` at the
default 1.0 and AdamW as train/optim.py builds it on CUDA (`fused=True`). Inductor writes its kernels as it would for
CUDA (bench/inductor_cpu.py: Triton code for CPU tensors, CUDA's lowering where the CPU's differs); the step runs
with none of them executing (bench/step_recorder.py), at the real batch and widths, the eager work recorded too.
Every distinct Triton kernel, Inductor's and fastsca's, is compiled for sm_<arch> with the Triton wheel's ptxas
(bench/gpu_code.py); bytes = size x passes over each pointer. Extern calls (cuDNN convolutions as dgrad and wgrad,
cuBLAS matmuls, eager aten ops, multi-tensor ops as their launches): FLOPs from torch.utils.flop_counter's
formulas, bytes = inputs + outputs.

Time at two prices (bench/pricing.py): the datasheet floor and a derated estimate, with and without CUDA graphs.
What the estimate leaves out: kernels that overlap; the DALI stream running beside the step (its kernels are
counted as if serial).
"""
import argparse
import contextlib
import json
import math
import platform
import sys
import time
import types
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from unittest import mock

import torch
import triton
from tqdm import tqdm
from triton.language.extra.cuda import libdevice as cuda_libdevice

import kernels  # noqa: F401  (registers the fastsca ops)
from bench import breakdown, gpu_code
from bench.front_end import dali_rows, device_front_end
from bench.inductor_cpu import inductor_triton_on_cpu
from bench.launches import Launch
from bench.pricing import GPUS, PRICES, Gpu
from bench.step_recorder import StepRecording, record_step
from bench.step_report import markdown
from fastsca import build_model
from fastsca.attention import build_attention
from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.run_options import RunOptions
from fastsca.training_compile import compile_for_training
from train import step as train_step
from train.config import OptimConfig
from train.optim import build_optimiser
from train.profiles import PROFILES

STEPS = ("reference", "fastsca")
"""plain torch.compile of the reference model, and fastsca's model with its fused attention units and fused backbone."""
PROFILE = PROFILES["gpu"]
"""train.run's profile on a GPU: its widths, fused attention, augmentations."""


def build(step: str, batch: int, channels: tuple[int, ...] | None, frames: int, classes: int):
    """(model, compiled model, fused AdamW) of one kind of step, as train.run builds them on CUDA."""
    overrides = dict(num_classes=classes, input_frames=frames)
    overrides["channels"] = channels if channels is not None else PROFILE.channels
    if overrides["channels"] is None:
        del overrides["channels"]
    fused = step == "fastsca"
    model = build_model("at-sca-3", RunOptions(fused_attention=fused, fused_backbone=fused),
                        **overrides).to(memory_format=torch.channels_last).train()
    optimiser = build_optimiser(model, OptimConfig(), fused=True)
    _steady_state(optimiser)
    return model, compile_for_training(model, "inductor", "default", fused=step == "fastsca"), optimiser


def _steady_state(optimiser: torch.optim.Optimizer) -> None:
    """AdamW's state as after a first step (fused: each step count a float32 tensor on the parameter's device, the
    moments zeros in its layout), so the counted step is a steady one, without the first step's allocations."""
    for group in optimiser.param_groups:
        for p in group["params"]:
            optimiser.state[p] = {"step": torch.tensor(1.0, dtype=torch.float32, device=p.device),
                                  "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                                  "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format)}


@contextlib.contextmanager
def _phases(recording: StepRecording, optimiser: torch.optim.Optimizer):
    """Name the parts of training_step as they run (its code untouched): the loss, the non-finite watch, the
    compiled backward (which starts inside the loss's backward), clipping, the optimiser; autocast as on CUDA."""
    def phase(name, fn, after=None):
        def wrapped(*args, **kwargs):
            recording.phase = name
            try:
                return fn(*args, **kwargs)
            finally:
                if after:
                    recording.phase = after
        return wrapped

    recording.graph_phase = {"loss": "backward"}
    hook = optimiser.register_step_pre_hook(lambda *_: setattr(recording, "phase", "optimiser"))
    watch_record = train_step.NonFiniteWatch.record
    with (mock.patch.object(train_step, "clip_bce", phase("loss", train_step.clip_bce)),
          mock.patch.object(train_step.NonFiniteWatch, "record", phase("non-finite check", watch_record, "loss")),
          mock.patch.object(torch.nn.utils, "clip_grad_norm_", phase("clipping", torch.nn.utils.clip_grad_norm_)),
          mock.patch.object(train_step, "autocast", lambda device: torch.autocast("cpu", torch.bfloat16))):
        try:
            yield
        finally:
            hook.remove()


def record(step: str, batch: int, channels=None, frames: int = 400, classes: int = 527) -> StepRecording:
    """Compile train.run's step of `step` at this batch and record every launch of one run of it."""
    log_mel_config = LogMelConfig(clip_samples=frames * LogMelConfig().hop_length)
    with inductor_triton_on_cpu():
        model, train_model, optimiser = build(step, batch, channels, frames, classes)
        db = torch.randn(batch, model.config.n_mels, frames + 1)
        target = torch.randint(0, 2, (batch, classes), dtype=torch.uint8)
        watch = train_step.NonFiniteWatch.on(torch.device("cpu"))
        with record_step(eager=True) as recording, _phases(recording, optimiser):
            recording.phase = "front end"
            log_mel, target = device_front_end(db, target, frames, PROFILE.mixup_alpha, PROFILE.spec_augment)
            recording.phase = "forward"
            train_step.training_step(train_model, list(model.parameters()), optimiser, log_mel, target,
                                     OptimConfig().grad_clip, watch, 1)
    recording.front_end_rows = dali_rows(batch, log_mel_config, classes)
    return recording


def record_module(step: str, batch: int, channels: int, time_steps: int, freq_bins: int) -> StepRecording:
    """One at-sca-3 attention module (SCA), compiled, forward and backward on a bf16 channels_last map in
    training mode, as it runs inside the step: every launch recorded."""
    config = ModelConfig.from_name("at-sca-3")
    with inductor_triton_on_cpu():
        module = build_attention(arrangement=config.arrangement, channels=channels, time_steps=time_steps,
                                 freq_bins=freq_bins, use_global=config.spatial_global,
                                 use_local=config.spatial_local, rd_ratio=config.rd_ratio,
                                 global_mid_channels=config.global_mid_channels,
                                 global_kernel_size=config.global_kernel_size,
                                 fused=step == "fastsca").to(memory_format=torch.channels_last).train()
        x = torch.randn(batch, channels, time_steps, freq_bins, dtype=torch.bfloat16)
        x = x.contiguous(memory_format=torch.channels_last).requires_grad_()

        def forward(x):
            with torch.autocast("cpu", torch.bfloat16):
                return module(x)

        compiled = torch.compile(forward, fullgraph=True)
        with record_step() as recording:
            out = compiled(x)
            recording.phase = "backward"
            out.backward(torch.ones_like(out))
    return recording


def _for_cuda(fn):
    """The generated kernel function with CUDA's libdevice in its globals (the CPU run saw a stand-in)."""
    scope = dict(fn.__globals__, libdevice=cuda_libdevice)
    out = types.FunctionType(fn.__code__, scope, fn.__name__, fn.__defaults__, fn.__closure__)
    out.__annotations__ = fn.__annotations__   # tl.constexpr parameters are known by their annotations
    return out


def _inductor_launch(launch) -> Launch:
    """An Inductor launch as bench/gpu_code.py takes it: a JITFunction of the generated source, for CUDA."""
    fn = launch.autotuner.fn
    jit = triton.runtime.JITFunction(_for_cuda(fn.fn))
    config = launch.autotuner.configs[0]
    kwargs = dict(config.kwargs, num_warps=config.num_warps, num_stages=config.num_stages)
    return Launch(jit, launch.args, kwargs, launch.grid, launch.phase)


def _touches(tensors, size: int) -> bool:
    return any(size in t.shape for t in tensors if isinstance(t, torch.Tensor))


def launch_rows(recording: StepRecording, arch: int, sass: bool, progress: bool = False,
                classes: int = 527, attention_kernel: int = 5) -> list[dict]:
    """One row per launch (or extern call) of the step: kind, name, phase, category, launches, programs, bytes,
    FLOPs, whether a compiled graph made it, registers, spills."""
    rows = []
    launches = [("inductor", _inductor_launch(launch)) for launch in recording.inductor]
    launches += [("fastsca", launch) for launch in recording.project]
    for kind, launch in tqdm(launches, desc=f"sm_{arch} compile", unit="launch", disable=not progress):
        detail = getattr(launch, "detail", {})
        row = {"kind": kind, "name": launch.name, "op": getattr(launch, "op", ""), "phase": launch.phase,
               "programs": launch.programs, "flops": detail.get("flops", 0), "detail": detail,
               "launches": 1, "in_graph": True, "touches_classes": _touches(launch.tensors().values(), classes)}
        try:
            code = gpu_code.kernel_code(launch, arch, sass)
            traffic = gpu_code.pointer_traffic(launch, code)
            row.update(bytes=sum(moved for *_, moved in traffic), registers=code.registers, spills=code.local_bytes,
                       widest_load=code.widest_load_bytes,
                       fp32_stored=sum(t.numel() * 4 * access.store_passes for _, t, access, _ in traffic
                                       if t.dtype == torch.float32))
        except Exception as error:   # reported, never silently dropped: the row keeps its tensor bytes
            row.update(bytes=sum(t.numel() * t.element_size() for t in launch.tensors().values()),
                       compile_error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        rows.append(row)
    for call in recording.aten:
        rows.append({"kind": "aten in fastsca op" if call.project_op else "extern", "name": call.op, "op": call.project_op,
                     "phase": call.phase, "programs": None, "flops": call.flops,
                     "bytes": call.read_bytes + call.written_bytes, "launches": call.launches,
                     "in_graph": call.in_graph, "detail": call.detail,
                     "touches_classes": any(classes in shape for shape in call.detail.get("shapes", ()))})
    rows += [dict(row) for row in recording.front_end_rows]
    for row in rows:
        row["category"] = breakdown.category(row, attention_kernel)
    return rows


def estimate_us(rows: list[dict], gpu: Gpu, price: str = "datasheet") -> float:
    """The step's time at one of bench/pricing.py's PRICES."""
    return sum(PRICES[price](row, gpu) for row in rows)


def summarise(step: str, rows: list[dict], batch: int) -> dict:
    """The step's totals: launches by kind and phase, bytes, FLOPs, time per GPU and price, the breakdown."""
    by_kind, by_phase = Counter(), Counter()
    for row in rows:
        by_kind[row["kind"]] += row.get("launches", 1)
        by_phase[row["phase"]] += row.get("launches", 1)
    out = {"step": step, "batch": batch, "launches": sum(by_kind.values()), "launches_by_kind": dict(by_kind),
           "launches_by_phase": dict(by_phase), "bytes": sum(r["bytes"] for r in rows),
           "flops": sum(r["flops"] for r in rows),
           "conv_bytes": sum(r["bytes"] for r in rows if r["category"].startswith("conv")),
           "spills": sum(r.get("spills") or 0 for r in rows),
           "compile_errors": sum("compile_error" in r for r in rows)}
    for gpu in GPUS:
        for price in PRICES:
            us = estimate_us(rows, gpu, price)
            out[f"{gpu.name} {price} ms"] = us / 1e3
            out[f"{gpu.name} {price} clips/s"] = batch / (us / 1e6)
        out[f"{gpu.name} ms"] = out[f"{gpu.name} datasheet ms"]
        out[f"{gpu.name} breakdown"] = breakdown.breakdown(
            rows, {price: (lambda row, fn=fn, g=gpu: fn(row, g)) for price, fn in PRICES.items()})
    return out


MODULE_MAPS = ((256, 100, 4), (512, 100, 4))
"""(C, T, F) of at-sca-3's attention blocks under the time-freq plan: block 5, and blocks 6 and 7."""


def build_report(batch: int, arch: int, sass: bool, channels=None, frames: int = 400, classes: int = 527,
                 module_maps=MODULE_MAPS, progress: bool = False) -> dict:
    """Both steps and, per attention map, both modules: recorded, compiled for sm_<arch>, summed up."""
    start = time.time()
    steps, launches, modules = {}, {}, []
    for step in STEPS:
        rows = launch_rows(record(step, batch, channels, frames, classes), arch, sass, progress)
        steps[step], launches[step] = summarise(step, rows, batch), rows
    for c, t, f in module_maps:
        for step in STEPS:
            rows = launch_rows(record_module(step, batch, c, t, f), arch, sass, progress)
            modules.append({"map": [c, t, f], **summarise(step, rows, batch)})
    return {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d"), "batch": batch, "arch": arch,
            "torch": torch.__version__, "triton": triton.__version__, "machine": platform.machine(),
            "elapsed_s": time.time() - start, "steps": steps, "modules": modules, "launches": launches}


def refresh(report: dict, attention_kernel: int = 5) -> dict:
    """An earlier report with its rows re-categorised (bench/breakdown.py) and every step re-summed and re-priced
    (bench/pricing.py): what changing a rule or a price needs, without recording or compiling again."""
    config = ModelConfig.from_name("at-sca-3")
    frames_out = config.input_frames // math.prod(p[0] for p in config.pools)
    # one of the head's two Linears, (B T', C) -> (B T', K), forward or backward
    head_flops = 2 * report["batch"] * frames_out * config.channels[-1] * config.num_classes
    steps = {}
    for step, rows in report["launches"].items():
        for row in rows:
            if row["kind"] == "extern" and "mm" in row["name"] and "shapes" not in (row.get("detail") or {}):
                row["touches_classes"] = row["flops"] == head_flops   # rows recorded before shapes were kept
            row["category"] = breakdown.category(row, attention_kernel)
        steps[step] = summarise(step, rows, report["batch"])
    return {**report, "steps": steps}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.whole_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="clips per step (default %(default)s)")
    parser.add_argument("--arch", type=int, default=90,
                        help="compute capability the kernels are compiled for (default %(default)s: H100, H200)")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"),
                        help="where <date>-sm<arch>-whole-step-b<batch>.{json,md} go (default %(default)s)")
    parser.add_argument("--from-json", type=Path, default=None,
                        help="re-categorise and re-price the launches of an earlier report's JSON (no compiling)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    if args.arch < 70:
        parser.error(f"--arch must be a CUDA compute capability such as 80 or 90, got {args.arch}")
    if args.from_json is not None:
        report = refresh(json.loads(args.from_json.read_text()))
        args.batch, args.arch = report["batch"], report["arch"]
    else:
        report = build_report(args.batch, args.arch, sass=True, progress=True)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    stem = args.out_dir / f"{report['date']}-sm{args.arch}-whole-step-b{args.batch}"
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1, default=str))
    text = markdown(report)
    stem.with_suffix(".md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
