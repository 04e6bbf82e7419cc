"""The fused backbone's per-layer rule: which engine runs each convolution of a residual block, from the roofline.

Each convolution of a block (conv1 3x3, conv2 3x3 with BN1-ReLU as its prologue, the 1x1 shortcut) runs either as
a Triton implicit-GEMM convolution with the BatchNorm prologue and the statistics epilogue fused into it
("triton"), or as cuDNN plus the separate passes those fusions replace ("cudnn"). The rule prices both on one GPU
and picks the faster, per convolution of a config at a batch size, from its FLOPs (2 x multiply-adds) and the
bytes each path moves in bf16:

- triton: read the input map once, write the output once (the weights aside); the prologue's normalise + ReLU
  is applied as the input is read and the epilogue sums the fp32 accumulator: no other traffic. Priced at
  TRITON_CONV_EFFICIENCY of the bf16 peak, or at the bandwidth, whichever is slower.
- cudnn: the same convolution at cuDNN's efficiency for its channel class, plus the passes the fusions remove:
  a statistics pass reading the output again, and with a prologue the normalised map written and read back.

So a convolution whose arithmetic intensity (FLOPs per byte of the fused path) is far below the GPU's balance
point (peak FLOP/s over bytes/s, 295 on an H100) is bandwidth-bound and goes to Triton, which saves the passes'
bytes; a compute-bound one goes to cuDNN when its higher efficiency outweighs those bytes. The choice holds for
the convolution's three passes (forward, input gradient, weight gradient), whose FLOPs and map traffic scale
alike. `python -m fastsca.describe` prints the rule for a config (`format_plan`); the fused block reads the
choice of each convolution from its shape (`implicit_gemm`) and hands it to its passes (kernels/block_passes.py).
"""
from dataclasses import dataclass

from fastsca.config import ModelConfig


@dataclass(frozen=True)
class Gpu:
    """The datasheet figures the rule prices with."""

    name: str
    """What it is called in the table."""
    bytes_per_s: float
    """Peak memory bandwidth."""
    bf16_flops_per_s: float
    """Dense bf16 tensor-core peak."""


H100 = Gpu("H100 SXM", 3.35e12, 989e12)
"""The GPU the rule is written for: HBM3 3.35 TB/s, 989 dense bf16 TFLOP/s (the figures of bench/pricing.py's
GPUS; fastsca/ does not import bench/)."""
MEMORY_EFFICIENCY = 0.80
"""Share of peak bandwidth a large memory-bound kernel reaches on Hopper (bench/pricing.py's MEMORY_EFFICIENCY)."""
TRITON_CONV_EFFICIENCY = {"narrow": 0.20, "medium": 0.35, "wide": 0.45}
"""Share of the bf16 peak a Triton implicit-GEMM convolution (kernels/conv.py, kernels/conv_weight_grad.py) is priced
at, by the same channel classes as cuDNN's: about 0.75-0.8 of cuDNN's, because it is hand-tiled without
autotuning, gathers its A tiles with masked loads (no TMA: 9 shifted, zero-padded reads of the input per tile),
runs the BatchNorm-ReLU prologue on them in registers and sums the statistics in its epilogue; published Triton
convolutions reach 50-80 % of cuDNN's throughput. An assumption until bench.gpu_report measures it; bench/pricing.py
prices the counted step with these same figures."""
CUDNN_EFFICIENCY = {"narrow": 0.25, "medium": 0.45, "wide": 0.60}
"""Share of the dense bf16 peak cuDNN's convolutions reach, by the smaller of their channel counts (`channel_class`):
narrow (< 64: block 1-2 at 32-64 channels, the input layer, the attention's 1-8-channel convs: the implicit GEMM's
K = C_in x k x k cannot fill a tensor-core tile), medium (64-255), wide (>= 256: ResNet-50's 3x3 layers reach
60-70 % of peak in published Hopper benchmarks). An assumption per class, not a measurement; bench/pricing.py
prices cuDNN's convolutions in the counted step with these same figures."""
BF16_BYTES = 2
"""Bytes of one map element: the fused backbone's maps are bf16."""


def channel_class(c_in: int, c_out: int) -> str:
    """narrow, medium or wide by the smaller channel count (see CUDNN_EFFICIENCY)."""
    channels = min(c_in, c_out)
    return "narrow" if channels < 64 else "medium" if channels < 256 else "wide"


def _prices(c_in: int, c_out: int, kernel: int, pixels: int, prologue: bool, gpu: Gpu):
    """(FLOPs, the fused path's bytes, Triton's seconds, cuDNN plus passes' seconds) of one forward convolution
    over `pixels` = B x T x F positions."""
    flops = 2 * pixels * c_out * c_in * kernel * kernel
    fused_bytes = BF16_BYTES * (pixels * (c_in + c_out) + c_out * c_in * kernel * kernel)
    passes_bytes = BF16_BYTES * pixels * (c_out + (2 * c_in if prologue else 0))   # stats read; normalised map
    bandwidth = gpu.bytes_per_s * MEMORY_EFFICIENCY
    triton_s = max(flops / (gpu.bf16_flops_per_s * TRITON_CONV_EFFICIENCY[channel_class(c_in, c_out)]),
                   fused_bytes / bandwidth)
    cudnn_rate = gpu.bf16_flops_per_s * CUDNN_EFFICIENCY[channel_class(c_in, c_out)]
    cudnn_s = max(flops / cudnn_rate, fused_bytes / bandwidth) + passes_bytes / bandwidth
    return flops, fused_bytes, triton_s, cudnn_s


def implicit_gemm(c_in: int, c_out: int, kernel: int, pixels: int, prologue: bool, gpu: Gpu = H100) -> bool:
    """The rule: True where the Triton implicit-GEMM convolution is priced faster than cuDNN plus passes."""
    _, _, triton_s, cudnn_s = _prices(c_in, c_out, kernel, pixels, prologue, gpu)
    return triton_s < cudnn_s


@dataclass(frozen=True)
class ConvPlan:
    """One convolution of the plan: a row of describe's table."""

    block: int
    """1-based block number."""
    conv: str
    """conv1, conv2 (with the BN1-ReLU prologue) or shortcut."""
    c_in: int
    """Input channels."""
    c_out: int
    """Output channels."""
    map_size: tuple[int, int]
    """(T, F) of the map it runs on."""
    flops: float
    """Forward FLOPs at the plan's batch."""
    intensity: float
    """FLOPs per byte the fused path moves."""
    implicit_gemm: bool
    """The choice: Triton implicit GEMM (True) or cuDNN plus passes (False)."""
    why: str
    """The figures behind the choice."""


def backbone_plan(config: ModelConfig, batch: int, gpu: Gpu = H100) -> list[ConvPlan]:
    """The rule for every convolution of `config`'s blocks at `batch` clips."""
    rows, c_in = [], 1
    balance = gpu.bf16_flops_per_s / gpu.bytes_per_s
    for block, (c_out, (t, f)) in enumerate(zip(config.channels, config.block_input_sizes()), start=1):
        for conv, cin, kernel, prologue in (("conv1", c_in, 3, False), ("conv2", c_out, 3, True),
                                            ("shortcut", c_in, 1, False)):
            flops, fused_bytes, triton_s, cudnn_s = _prices(cin, c_out, kernel, batch * t * f, prologue, gpu)
            intensity = flops / fused_bytes
            bound = "memory" if intensity < balance else "compute"
            why = (f"{bound}-bound ({intensity:.0f} {'<' if bound == 'memory' else '>='} {balance:.0f} FLOP/B): "
                   f"triton {triton_s * 1e6:.0f} us vs cudnn ({channel_class(cin, c_out)}, "
                   f"{CUDNN_EFFICIENCY[channel_class(cin, c_out)]:.0%}) + passes {cudnn_s * 1e6:.0f} us")
            rows.append(ConvPlan(block, conv, cin, c_out, (t, f), flops, intensity, triton_s < cudnn_s, why))
        c_in = c_out
    return rows


def format_plan(rows: list[ConvPlan], batch: int, gpu: Gpu = H100) -> str:
    """The per-layer rule as a plain-text table."""
    header = (f"{'block':<6} {'conv':<9} {'C_in->C_out':<12} {'map':<9} {'GFLOPs':>8} {'FLOP/B':>7} "
              f"{'choice':<7} why")
    lines = [f"fused backbone, per-layer rule at batch {batch} on {gpu.name} (fastsca/backbone_plan.py; Triton "
             f"priced at {', '.join(f'{v:.0%} ({k})' for k, v in TRITON_CONV_EFFICIENCY.items())} of bf16 peak):",
             header, "-" * len(header)]
    for r in rows:
        lines.append(f"{r.block:<6} {r.conv:<9} {f'{r.c_in}->{r.c_out}':<12} {f'{r.map_size[0]}x{r.map_size[1]}':<9} "
                     f"{r.flops / 1e9:>8.2f} {r.intensity:>7.0f} {'triton' if r.implicit_gemm else 'cudnn':<7} "
                     f"{r.why}")
    return "\n".join(lines)
