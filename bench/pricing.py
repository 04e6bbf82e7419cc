"""What a counted launch costs on a GPU that is not here: the datasheet floor and a derated estimate.

Both prices take the rows of bench/whole_step.py (one per launch or extern call: bytes, FLOPs, `launches`, and
for the derated price its kind, whether a compiled graph made it, a convolution's shape) and apply the same
rules to both steps (plain torch.compile of the reference, fastsca).

- Datasheet (a floor): max(bytes / peak bandwidth, FLOPs / dense bf16 peak) + LAUNCH_US per kernel.
- Derated: each kernel at a stated efficiency of its kind, and each launch at what issuing it costs:
  time = max(kernel + LAUNCH_US, host) per kernel, where `host` is the CPU's cost of issuing it (0 when a CUDA
  graph replays the compiled step, train.run's default on CUDA; Inductor's or eager PyTorch's launch path
  otherwise): a step of short kernels is bound by the CPU when nothing replays it.
Every efficiency is a named constant with its reason; a GPU measurement (bench.gpu_report) replaces them.
"""
from dataclasses import dataclass

from fastsca.backbone_plan import CUDNN_EFFICIENCY, TRITON_CONV_EFFICIENCY as PLAN_TRITON_EFFICIENCY


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
small kernels on an H100 (published measurements put it at 2-4 µs)."""

MEMORY_EFFICIENCY = 0.80
"""Share of peak HBM bandwidth a large memory-bound kernel (Triton, cuDNN's bandwidth-bound convolutions, DALI)
reaches: what a well-written copy reaches on Hopper (bench.gpu_report measures the copy ceiling)."""
SMALL_KERNEL_US = 3.0
"""Shortest time a kernel takes, however little it moves: one wave of blocks and a DRAM round trip (~2-3 µs on
an H100 for kernels of a few KB, the tail of every reduction and of the optimiser's chunks)."""
CONV_EFFICIENCY = CUDNN_EFFICIENCY
"""Share of the dense bf16 peak cuDNN's convolutions reach, by channel class (`conv_class`): fastsca/backbone_plan.py's
figures and reasons, the ones its per-layer rule prices with."""
TRITON_CONV_EFFICIENCY = PLAN_TRITON_EFFICIENCY
"""Share of the dense bf16 peak fastsca's Triton implicit-GEMM convolutions are priced at, by the same classes
(fastsca/backbone_plan.py: about 0.75-0.8 of cuDNN's; an assumption until bench.gpu_report times them)."""
WGRAD_FACTOR = 0.8
"""cuDNN's weight-gradient kernels reduce over B x T x F (split-K with a second pass): 80 % of the class's rate."""
HOST_US = {"graph": 0.0, "compiled": 8.0, "eager": 8.0, "dali": 5.0}
"""CPU cost of issuing one kernel: none inside a replayed CUDA graph; ~8 µs through Inductor's Python wrapper and
Triton's launcher (published figures for that path are 6-10 µs a kernel); ~8 µs for an eager aten op through
Python and the dispatcher (the loss, clipping, the fused optimiser's multi-tensor kernels, the non-finite check);
~5 µs for DALI's C++ executor."""


def datasheet_us(row: dict, gpu: Gpu) -> float:
    """The floor: max(bytes / bandwidth, FLOPs / peak), plus LAUNCH_US per kernel."""
    launches = row.get("launches", 1)
    return max(row["bytes"] / gpu.bytes_per_s, row["flops"] / gpu.bf16_flops_per_s) * 1e6 + launches * LAUNCH_US


def conv_class(detail: dict) -> str:
    """narrow, medium or wide by the smaller channel count (see CONV_EFFICIENCY)."""
    channels = min(detail["c_in"], detail["c_out"])
    return "narrow" if channels < 64 else "medium" if channels < 256 else "wide"


def kernel_us(row: dict, gpu: Gpu) -> float:
    """Derated time of the row's work on the GPU, launch costs aside."""
    memory_us = row["bytes"] / (gpu.bytes_per_s * MEMORY_EFFICIENCY) * 1e6
    compute_us = 0.0
    if row["flops"]:
        detail = row.get("detail") or {}
        table = TRITON_CONV_EFFICIENCY if detail.get("engine") == "triton" else CONV_EFFICIENCY
        efficiency = table[conv_class(detail)] if "c_in" in detail else table["medium"]
        if detail.get("role") == "wgrad":
            efficiency *= WGRAD_FACTOR
        compute_us = row["flops"] / (gpu.bf16_flops_per_s * efficiency) * 1e6
    return max(memory_us, compute_us, row.get("launches", 1) * SMALL_KERNEL_US)


def host_kind(row: dict, graphs: bool) -> str:
    """How the row's kernels are issued: from a replayed CUDA graph, Inductor's launcher, eager, or DALI."""
    if row["phase"] == "front end" and row["kind"] == "dali":
        return "dali"
    if row.get("in_graph", True):
        return "graph" if graphs else "compiled"
    return "eager"


def derated_us(row: dict, gpu: Gpu, graphs: bool = True) -> float:
    """The derated estimate: per kernel, max(its share of kernel_us + LAUNCH_US, host cost of issuing it)."""
    launches = row.get("launches", 1)
    per_kernel = kernel_us(row, gpu) / launches + LAUNCH_US
    return launches * max(per_kernel, HOST_US[host_kind(row, graphs)])


PRICES = {"datasheet": lambda row, gpu: datasheet_us(row, gpu),
          "derated": lambda row, gpu: derated_us(row, gpu, graphs=True),
          "derated, no CUDA graphs": lambda row, gpu: derated_us(row, gpu, graphs=False)}
"""The prices every report shows, by name: the floor, the derated estimate as train.run runs on CUDA (compiled
part replayed in a CUDA graph: --compile-mode reduce-overhead, its default there), and without CUDA graphs."""
