"""`python -m bench.whole_step [--batch 256] [--arch 90] [--out-dir bench/results]`: one compiled at-sca-3
training step, plain `torch.compile` of the reference model against fastsca's, every launch counted with
no GPU.

The step is train.run's on a GPU: channels_last model and input, bf16 autocast, training-mode BatchNorm,
the fp32 BCE of eq. 3, backward, and AdamW's step (compiled too, as `torch.compile(optimizer.step)`).
Inductor writes its kernels as it would for CUDA (bench/inductor_cpu.py); the step runs with none of them
executing (bench/step_recorder.py), at the real batch and widths. Every distinct Triton kernel, Inductor's
and fastsca's, is compiled for sm_<arch> with the Triton wheel's ptxas (bench/gpu_code.py): registers,
spills, and how many passes a program makes over each pointer argument; bytes = size x passes, summed
over pointers. Extern calls (cuDNN convolutions, cuBLAS matmuls, aten fallbacks, and the aten work inside
fastsca's ops): FLOPs from torch.utils.flop_counter's formulas, bytes = inputs + outputs.

Estimated time = sum over launches of max(bytes / bandwidth, FLOPs / peak) + launches x LAUNCH_US, per
GPU in GPUS. What the estimate leaves out: cuDNN may run one convolution as several kernels (counted as
one); tensor-core efficiency below peak; kernels that overlap; CPU-side dispatch when the step is not
captured in a CUDA graph (LAUNCH_US is the GPU-side cost of a launch inside one). Inductor's CPU-Triton
path plans with the CPU's device properties (2 "SMs"); on CUDA a few reductions may be split differently.
"""
import argparse
import json
import platform
import sys
import time
import types
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import torch
import triton
from tqdm import tqdm
from triton.language.extra.cuda import libdevice as cuda_libdevice

import kernels  # noqa: F401  (registers the fastsca ops)
from bench import gpu_code
from bench.inductor_cpu import inductor_triton_on_cpu
from bench.launches import Launch
from bench.step_recorder import StepRecording, record_step
from fastsca import build_model
from fastsca.attention import build_attention
from fastsca.config import ModelConfig
from fastsca.run_options import RunOptions
from train.loss import clip_bce


@dataclass(frozen=True)
class Gpu:
    """The figures the estimate uses (datasheet values, dense bf16 tensor-core peak)."""

    name: str
    bytes_per_s: float
    bf16_flops_per_s: float


GPUS = (Gpu("H100 SXM", 3.35e12, 989e12), Gpu("H200 SXM", 4.8e12, 989e12))
"""H100 SXM: HBM3 3.35 TB/s; H200: HBM3e 4.8 TB/s; both 989 dense bf16 TFLOP/s (the same compute die)."""
LAUNCH_US = 2.5
"""GPU-side cost of one kernel launch with the step captured in a CUDA graph: the gap between back-to-back
small kernels on an H100 (published measurements put it at 2-4 µs; without CUDA graphs, add the CPU's
per-launch dispatch, ~5-10 µs for a Python-side launch)."""
STEPS = ("reference", "fastsca")
"""plain torch.compile of the reference model, and fastsca's model with its fused attention units."""


def build(step: str, batch: int, channels: tuple[int, ...] | None, frames: int, classes: int):
    """(compiled loss function, compiled optimiser step, model, inputs) of one kind of step."""
    overrides = dict(num_classes=classes, input_frames=frames)
    if channels is not None:
        overrides["channels"] = channels
    model = build_model("at-sca-3", RunOptions(fused_attention=step == "fastsca"), **overrides)
    model = model.to(memory_format=torch.channels_last).train()
    optimiser = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def loss_of(log_mel, target):
        with torch.autocast("cpu", torch.bfloat16):
            out = model(log_mel)
        return clip_bce(out.clip, target)

    log_mel = torch.randn(batch, 1, frames, model.config.n_mels).contiguous(memory_format=torch.channels_last)
    target = (torch.rand(batch, classes) > 0.99).float()
    return torch.compile(loss_of, fullgraph=True), torch.compile(optimiser.step), model, (log_mel, target)


def record(step: str, batch: int, channels=None, frames: int = 400, classes: int = 527) -> StepRecording:
    """Compile one training step of `step` at this batch and record every launch of one run of it."""
    with inductor_triton_on_cpu():
        loss_of, optimiser_step, model, inputs = build(step, batch, channels, frames, classes)
        with record_step() as recording:
            loss = loss_of(*inputs)
            recording.phase = "backward"
            loss.backward()
            recording.phase = "optimizer"
            optimiser_step()
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


def launch_rows(recording: StepRecording, arch: int, sass: bool, progress: bool = False) -> list[dict]:
    """One row per launch of the step: kind, name, phase, programs, bytes, FLOPs, registers, spills."""
    rows = []
    launches = [("inductor", _inductor_launch(launch)) for launch in recording.inductor]
    launches += [("fastsca", launch) for launch in recording.project]
    for kind, launch in tqdm(launches, desc=f"sm_{arch} compile", unit="launch", disable=not progress):
        row = {"kind": kind, "name": launch.name, "phase": launch.phase, "programs": launch.programs, "flops": 0}
        try:
            code = gpu_code.kernel_code(launch, arch, sass)
            row.update(bytes=sum(moved for *_, moved in gpu_code.pointer_traffic(launch, code)),
                       registers=code.registers, spills=code.local_bytes,
                       widest_load=code.widest_load_bytes)
        except Exception as error:   # reported, never silently dropped: the row keeps its tensor bytes
            row.update(bytes=sum(t.numel() * t.element_size() for t in launch.tensors().values()),
                       compile_error=f"{type(error).__name__}: {str(error).splitlines()[0][:200]}")
        rows.append(row)
    for call in recording.aten:
        rows.append({"kind": "aten in fastsca op" if call.inside_project_op else "extern", "name": call.op,
                     "phase": call.phase, "programs": None, "flops": call.flops,
                     "bytes": call.read_bytes + call.written_bytes})
    return rows


def estimate_us(rows: list[dict], gpu: Gpu) -> float:
    """Sum over launches of the roofline time, plus LAUNCH_US per launch."""
    total = 0.0
    for row in rows:
        total += max(row["bytes"] / gpu.bytes_per_s, row["flops"] / gpu.bf16_flops_per_s) * 1e6 + LAUNCH_US
    return total


def summarise(step: str, rows: list[dict], batch: int) -> dict:
    """The step's totals: launches by kind and phase, bytes, FLOPs, estimated time per GPU."""
    by_kind = Counter(row["kind"] for row in rows)
    by_phase = Counter(row["phase"] for row in rows)
    out = {"step": step, "batch": batch, "launches": len(rows), "launches_by_kind": dict(by_kind),
           "launches_by_phase": dict(by_phase), "bytes": sum(r["bytes"] for r in rows),
           "flops": sum(r["flops"] for r in rows),
           "spills": sum(r.get("spills") or 0 for r in rows),
           "compile_errors": sum("compile_error" in r for r in rows)}
    for gpu in GPUS:
        us = estimate_us(rows, gpu)
        out[f"{gpu.name} ms"] = us / 1e3
        out[f"{gpu.name} clips/s"] = batch / (us / 1e6)
    return out


def markdown(report: dict) -> str:
    s = report["steps"]
    lines = [f"# One compiled at-sca-3 training step, counted with no GPU ({report['date']})", "",
             f"Batch {report['batch']}, bf16 autocast, channels_last, training-mode BatchNorm, AdamW; "
             f"kernels compiled for sm_{report['arch']}; torch {report['torch']}, Triton {report['triton']}; "
             f"{report['elapsed_s']:.0f} s. Estimated time = sum of max(bytes / bandwidth, FLOPs / peak) + "
             f"{LAUNCH_US} µs per launch (bench/whole_step.py says what it leaves out).", "",
             "| | " + " | ".join(STEPS) + " |", "|---|" + "---|" * len(STEPS)]

    def row(label, fn):
        lines.append(f"| {label} | " + " | ".join(fn(s[name]) for name in STEPS) + " |")

    row("launches per step", lambda x: f"{x['launches']}")
    for kind in ("inductor", "fastsca", "extern", "aten in fastsca op"):
        row(f"- {kind}", lambda x, kind=kind: f"{x['launches_by_kind'].get(kind, 0)}")
    for phase in ("forward", "backward", "optimizer"):
        row(f"- {phase}", lambda x, phase=phase: f"{x['launches_by_phase'].get(phase, 0)}")
    row("GB moved per step", lambda x: f"{x['bytes'] / 1e9:.2f}")
    row("MB per clip", lambda x: f"{x['bytes'] / 1e6 / report['batch']:.1f}")
    row("extern TFLOP per step", lambda x: f"{x['flops'] / 1e12:.2f}")
    for gpu in GPUS:
        row(f"{gpu.name}: est. ms per step", lambda x, g=gpu: f"{x[f'{g.name} ms']:.1f}")
        row(f"{gpu.name}: est. clips/s", lambda x, g=gpu: f"{x[f'{g.name} clips/s']:.0f}")
    row("spilled bytes (all kernels)", lambda x: f"{x['spills']}")
    row("kernels that did not compile", lambda x: f"{x['compile_errors']}")
    lines += ["", "One SCA attention module of at-sca-3, compiled alone, forward + backward (bf16 channels_last, "
              "training mode):", "",
              "| map C×T×F | step | launches fwd / bwd | fastsca kernels | extern | GB | H100 µs | H200 µs |",
              "|---|---|---|---|---|---|---|---|"]
    for m in report["modules"]:
        phases, kinds = m["launches_by_phase"], m["launches_by_kind"]
        lines.append(f"| {'×'.join(map(str, m['map']))} | {m['step']} | {phases.get('forward', 0)} / "
                     f"{phases.get('backward', 0)} | {kinds.get('fastsca', 0)} | {kinds.get('extern', 0)} | "
                     f"{m['bytes'] / 1e9:.3f} | {m[f'{GPUS[0].name} ms'] * 1e3:.0f} | "
                     f"{m[f'{GPUS[1].name} ms'] * 1e3:.0f} |")
    return "\n".join(lines) + "\n"


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.whole_step", description=__doc__.split("\n\n")[0])
    parser.add_argument("--batch", type=int, default=256, help="clips per step (default %(default)s)")
    parser.add_argument("--arch", type=int, default=90,
                        help="compute capability the kernels are compiled for (default %(default)s: H100, H200)")
    parser.add_argument("--out-dir", type=Path, default=Path("bench/results"),
                        help="where <date>-sm<arch>-whole-step-b<batch>.{json,md} go (default %(default)s)")
    args = parser.parse_args(argv)
    if args.batch < 1:
        parser.error(f"--batch must be at least 1, got {args.batch}")
    if args.arch < 70:
        parser.error(f"--arch must be a CUDA compute capability such as 80 or 90, got {args.arch}")
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
