"""The residual block's convolutions as one Triton implicit-GEMM kernel (kernels/block_reference.py's
`conv_forward` and `conv_input_grad`, same signatures and semantics).

A k x k convolution (k = 1 or 3, stride 1, 'same' zero padding) over a channels_last (NHWC) map is a
GEMM: M = B*T*F output positions, N = C_out, K = k*k*C_in, the A tile gathered from the map on the fly
(row m, tap (dt, df) reads position m + dt*F + df, masked where it leaves the map), B the weight
arranged once per call as a (K, N) matrix (rows tap-major, then input channel). Two switches:

- prologue (forward, given in_scale/in_shift): a = relu(x*scale + shift) per input channel in fp32,
  rounded to the map's dtype before tl.dot; the padding is zero in a (the activated tile is masked,
  not x). Epilogue "statistics": y in the map's dtype, and per output channel the sums of y and y*y
  of the fp32 accumulator (rows past M are zero and add nothing).
- the data gradient runs the same kernel on dL/dy with the weight transposed (C_in <-> C_out) and flipped in
  space, the flip made as the kernel reads its rows (FLIP_TAPS: no flipped copy of the weight). Prologue
  "sums' gradients" (given y, d_sum, d_squares: the forward's output and the gradients of its two sums):
  the A tile is dL/dy = d_y + 2 y * d_squares + d_sum per channel in fp32 (block_reference.grad_with_sums),
  zero in the padding, rounded to the map's dtype: the full gradient is formed as the GEMM reads it, never
  written out. Epilogue "activation backward" (the forward had a
  prologue): read x at the output position, g = acc * (x*scale + shift > 0), store g*scale in grad's
  dtype, and the sums of g*x and g.

The per-channel sums are per-M-tile partials, (2, cdiv(M, BLOCK_M), N) fp32, added by one torch sum,
rather than tl.atomic_add into a zeroed buffer: the launch count is the same (the atomics need a zeroing
launch), and the sums are deterministic run to run, at the price of partials of 1/32 of y's bytes
(2 fp32 rows per 128 bf16 rows), written once and read once.

Layout: channels_last is the production layout (bf16 under autocast, torch.compile). An NCHW map is
converted once to channels_last on the way in and its outputs once back (block_reference's rule: outputs
in the memory format of the map they are made from). Offsets are (m + dt*F + df) * C_IN + c with the
channel counts, T and F compile-time constants, so where C_in and C_out are multiples of 8 Triton proves
every map access 16-byte aligned (bf16). Input channels below 16 (block 1's first convolution, C_in = 1,
K = 9) walk the flattened K axis instead, padded to BLOCK_K with masks. The k*k taps of a row tile
re-read the same map rows (shifted by a position or a time row) and every program re-reads the weight:
both loads ask for L1 (cache_modifier ".ca": Hopper's cp.async then allocates in L1 instead of its
L2-only ".cg"), so the repeats need not cost 9x the map in L2 traffic (block 1's second convolution:
3.8 GB of L2 reads at batch 256 against a 0.84 GB DRAM floor). bf16 tiles feed wgmma; fp32 maps (the
interpreter's tests, and the same tests on a GPU) use 3xTF32 products, within 1e-5 of fp32.

Bytes at batch 256, bf16, with each map moved once from DRAM (tests/test_conv_sm90.py checks one pass
per map), against the floor of reading the source (and the activation backward's x) and writing the
output once: forward, all 21 convolutions of at-sca-3, 5.50 GB against 5.27 (1.04x: the partial sums
and the weights); data gradients 6.46 GB against 6.37 (1.01x). Per layer 1.00-1.06x; block 1's first
convolution and shortcut, whose 1-channel source is small beside the 32-channel output, are the 1.06.
Launches are counted in kernels.common.LAUNCHES ("conv_forward", "conv_input_grad").
"""
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from kernels.block_reference import memory_format
from kernels.common import LAUNCHES, check_map, check_sums_grad

PROLOGUE_NONE = 0
"""Read the source map as it is."""
PROLOGUE_BN_RELU = 1
"""relu(x * scale + shift) per input channel (forward, after a BatchNorm)."""
PROLOGUE_SUMS_GRAD = 2
"""d_y + 2 y * d_squares + d_sum per channel (data gradient of a convolution whose sums feed a BatchNorm)."""
EPILOGUE_NONE = 0
"""Store the accumulator only (data gradient without a prologue)."""
EPILOGUE_STATISTICS = 1
"""Store the accumulator and the per-channel sums of it and of its square (forward)."""
EPILOGUE_ACTIVATION_GRAD = 2
"""Gate by the forward's ReLU, scale, and sum g*x and g per channel (data gradient with a prologue)."""

FLAT_K_BELOW = 16
"""Input channels below this walk the flattened K = k*k*C_in axis (a tl.dot needs K >= 16 per step):
C_in = 1 pads K = 9 to one step of 16 instead of nine steps of 16 with 15 masked channels each."""
MAX_INT32_OFFSET = 2 ** 31
"""Offsets are int32 (half the registers of int64): maps with as many elements are refused."""


@dataclass(frozen=True)
class ConvTiles:
    """The compile-time tiling of one convolution shape (`tiles` chooses it)."""

    block_m: int
    """Output positions per program: 128 in 16-bit maps, so that wgmma's M = 64 per warpgroup is filled
    twice; 64 in fp32 maps (a test path: 3xTF32 products take three times the registers)."""
    block_n: int
    """Output channels per program: C_out rounded up to a power of two, 16 to 128 (to 64 where a
    prologue or the activation-backward epilogue holds more tiles in registers: at 128 x 128 the
    activation backward needs 255 registers a thread and spills on sm_90)."""
    block_k: int
    """Reduction step: C_in (or k*k*C_in when flat) rounded up to a power of two, 16 to 64."""
    flat_k: bool
    """Walk the flattened K axis (C_in < FLAT_K_BELOW) rather than tap by tap."""
    num_warps: int
    """8 from BLOCK_N = 64 on (two warpgroups of wgmma M = 64, at most 64 fp32 accumulator registers a
    thread), else 4."""
    num_stages: int
    """Software-pipelining depth of the K loop (shared memory: stages * (BM*BK + BK*BN) * 2 B <= 96 KB)."""


def tiles(c_in: int, c_out: int, k: int, fused: bool, itemsize: int) -> ConvTiles:
    """The tiling rule for a k x k convolution from c_in to c_out channels over a map of `itemsize`-byte
    values, `fused` with a prologue or the activation-backward epilogue (every at-sca-3 layer in bf16
    gets BLOCK_M = 128, so >= 400 programs at batch 64 even at the 100 x 4 maps)."""
    flat = c_in < FLAT_K_BELOW
    reduction = k * k * c_in if flat else c_in
    if itemsize > 2:   # fp32: 64 x 32 tiles, 4 warps (128 x 64 spills up to 6.7 KB a thread on sm_90)
        block_n = min(32, max(16, triton.next_power_of_2(c_out)))
        block_k = min(32, max(16, triton.next_power_of_2(reduction)))
        return ConvTiles(block_m=64, block_n=block_n, block_k=block_k, flat_k=flat, num_warps=4, num_stages=2)
    block_n = min(64 if fused else 128, max(16, triton.next_power_of_2(c_out)))
    block_k = min(64, max(16, triton.next_power_of_2(reduction)))
    num_warps = 8 if block_n >= 64 else 4
    return ConvTiles(block_m=128, block_n=block_n, block_k=block_k, flat_k=flat, num_warps=num_warps, num_stages=3)


@triton.jit
def source_tile(x, z_ptr, offsets, scale_ptr, shift_ptr, d_sum_ptr, d_squares_ptr, offs_c, c_mask, ok,
                PROLOGUE: tl.constexpr):
    """The A tile as tl.dot reads it, from the loaded source tile x (zero where not ok: padding, masked rows
    or channels): x itself; relu(x*scale + shift) with PROLOGUE_BN_RELU; with PROLOGUE_SUMS_GRAD x is d_y,
    y is read from z_ptr at the same offsets, and the tile is d_y + 2 y * d_squares + d_sum. Both in fp32,
    zero where not ok, rounded to the map's dtype."""
    if PROLOGUE == 1:
        scale = tl.load(scale_ptr + offs_c, mask=c_mask, other=0.0)
        shift = tl.load(shift_ptr + offs_c, mask=c_mask, other=0.0)
        a = tl.maximum(x.to(tl.float32) * scale + shift, 0.0)
        return tl.where(ok, a, 0.0).to(x.dtype)
    elif PROLOGUE == 2:
        z = tl.load(z_ptr + offsets, mask=ok, other=0.0, cache_modifier=".ca")
        d_sum = tl.load(d_sum_ptr + offs_c, mask=c_mask, other=0.0)
        d_squares = tl.load(d_squares_ptr + offs_c, mask=c_mask, other=0.0)
        a = x.to(tl.float32) + z.to(tl.float32) * (2 * d_squares) + d_sum
        return tl.where(ok, a, 0.0).to(x.dtype)
    else:
        return x


@triton.jit
def conv_gemm_kernel(
    x_ptr, w_ptr, scale_ptr, shift_ptr, y_ptr, aux_ptr, part_ptr, z_ptr, d_sum_ptr, d_squares_ptr, M,
    T: tl.constexpr, F: tl.constexpr, C_IN: tl.constexpr, C_OUT: tl.constexpr, KS: tl.constexpr,
    FLIP_TAPS: tl.constexpr, FLAT_K: tl.constexpr, PROLOGUE: tl.constexpr, EPILOGUE: tl.constexpr,
    PRECISION: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
):
    """y[m, n] = sum_k A[m, k] W[k, n] over NHWC maps, x (M, C_IN) and y (M, C_OUT) rows, W (KS*KS*C_IN,
    C_OUT); the prologue and epilogue by the module docstring; scale/shift are per C_IN channel with
    PROLOGUE_BN_RELU, per C_OUT channel with the activation-gradient epilogue; z (M, C_IN) and d_sum,
    d_squares (C_IN) are PROLOGUE_SUMS_GRAD's y and sums' gradients; with FLIP_TAPS tap t reads W's rows of tap
    KS*KS - 1 - t (the data gradient's spatially flipped weight, flipped as it is read); aux is that epilogue's
    x (M, C_OUT); part (2, cdiv(M, BLOCK_M), C_OUT) fp32 gets this program's two column sums. Grid (cdiv(M, BLOCK_M) *
    N_TILES,): the N tiles of one M tile are neighbours in launch order, so they run together and the map
    rows they share (and their halo) come from DRAM once and from L2 after that."""
    N_TILES: tl.constexpr = (C_OUT + BLOCK_N - 1) // BLOCK_N
    pid_m = tl.program_id(0) // N_TILES
    pid_n = tl.program_id(0) % N_TILES
    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = offs_m < M
    n_ok = offs_n < C_OUT
    f = offs_m % F
    t = (offs_m // F) % T
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
    if FLAT_K:
        K: tl.constexpr = KS * KS * C_IN
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            k_ok = offs_k < K
            tap = offs_k // C_IN
            c = offs_k % C_IN
            dt = tap // KS - KS // 2
            df = tap % KS - KS // 2
            ti = t[:, None] + dt[None, :]
            fi = f[:, None] + df[None, :]
            ok = row_ok[:, None] & k_ok[None, :] & (ti >= 0) & (ti < T) & (fi >= 0) & (fi < F)
            offsets = (offs_m[:, None] + dt[None, :] * F + df[None, :]) * C_IN + c[None, :]
            x = tl.load(x_ptr + offsets, mask=ok, other=0.0, cache_modifier=".ca")
            a = source_tile(x, z_ptr, offsets, scale_ptr, shift_ptr, d_sum_ptr, d_squares_ptr, c[None, :],
                            k_ok[None, :], ok, PROLOGUE)
            w_rows = (KS * KS - 1 - tap) * C_IN + c if FLIP_TAPS else offs_k
            w = tl.load(w_ptr + w_rows[:, None] * C_OUT + offs_n[None, :], mask=k_ok[:, None] & n_ok[None, :],
                        other=0.0, cache_modifier=".ca")
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
    else:
        CHUNKS: tl.constexpr = (C_IN + BLOCK_K - 1) // BLOCK_K
        for step in range(0, KS * KS * CHUNKS):
            tap = step // CHUNKS
            offs_c = (step % CHUNKS) * BLOCK_K + tl.arange(0, BLOCK_K)
            c_ok = offs_c < C_IN
            dt = tap // KS - KS // 2
            df = tap % KS - KS // 2
            ti = t + dt
            fi = f + df
            pos_ok = row_ok & (ti >= 0) & (ti < T) & (fi >= 0) & (fi < F)
            if C_IN % BLOCK_K == 0:
                ok = tl.broadcast_to(pos_ok[:, None], (BLOCK_M, BLOCK_K))
                w_ok = tl.broadcast_to(n_ok[None, :], (BLOCK_K, BLOCK_N))
            else:
                ok = pos_ok[:, None] & c_ok[None, :]
                w_ok = c_ok[:, None] & n_ok[None, :]
            offsets = (offs_m + dt * F + df)[:, None] * C_IN + offs_c[None, :]
            x = tl.load(x_ptr + offsets, mask=ok, other=0.0, cache_modifier=".ca")
            a = source_tile(x, z_ptr, offsets, scale_ptr, shift_ptr, d_sum_ptr, d_squares_ptr, offs_c[None, :],
                            c_ok[None, :], ok, PROLOGUE)
            w_tap = KS * KS - 1 - tap if FLIP_TAPS else tap
            w = tl.load(w_ptr + (w_tap * C_IN + offs_c)[:, None] * C_OUT + offs_n[None, :], mask=w_ok, other=0.0,
                        cache_modifier=".ca")
            acc = tl.dot(a, w, acc, input_precision=PRECISION)
    out_ok = row_ok[:, None] & n_ok[None, :]
    out_offs = offs_m[:, None] * C_OUT + offs_n[None, :]
    if EPILOGUE == 2:
        xv = tl.load(aux_ptr + out_offs, mask=out_ok, other=0.0).to(tl.float32)
        scale = tl.load(scale_ptr + offs_n, mask=n_ok, other=0.0)
        shift = tl.load(shift_ptr + offs_n, mask=n_ok, other=0.0)
        g = tl.where(xv * scale[None, :] + shift[None, :] > 0, acc, 0.0)
        tl.store(y_ptr + out_offs, (g * scale[None, :]).to(y_ptr.dtype.element_ty), mask=out_ok)
        first = tl.sum(g * xv, axis=0)
        second = tl.sum(g, axis=0)
    else:
        tl.store(y_ptr + out_offs, acc.to(y_ptr.dtype.element_ty), mask=out_ok)
        first = tl.sum(acc, axis=0)
        second = tl.sum(acc * acc, axis=0)
    if EPILOGUE != 0:
        part = part_ptr + pid_m * C_OUT + offs_n
        tl.store(part, first, mask=n_ok)
        tl.store(part + tl.cdiv(M, BLOCK_M) * C_OUT, second, mask=n_ok)


def _check(name: str, x: torch.Tensor, weight: torch.Tensor, scale, shift, channels: int) -> None:
    """ValueError naming the argument unless the convolution's operands fit each other."""
    check_map(name, x)
    if weight.dim() != 4 or weight.shape[2] != weight.shape[3] or weight.shape[2] not in (1, 3):
        raise ValueError(f"{name}: weight must be (C_out, C_in, k, k) with k 1 or 3, got {tuple(weight.shape)}")
    if (scale is None) != (shift is None):
        raise ValueError(f"{name}: give both in_scale and in_shift or neither")
    if scale is not None and (scale.numel() != channels or shift.numel() != channels):
        raise ValueError(f"{name}: in_scale and in_shift must have {channels} entries (one per input channel), "
                         f"got {scale.numel()} and {shift.numel()}")
    if x.numel() // x.shape[1] * max(weight.shape[0], weight.shape[1]) >= MAX_INT32_OFFSET:
        raise ValueError(f"{name}: the map {tuple(x.shape)} has 2**31 or more elements; split the batch")


def _nhwc(x: torch.Tensor) -> torch.Tensor:
    """x stored NHWC (no copy when it already is: the production layout; one copy for NCHW)."""
    return x.contiguous(memory_format=torch.channels_last)


def weight_matrix(weight: torch.Tensor, dtype: torch.dtype, transposed: bool) -> torch.Tensor:
    """The GEMM's (k*k*C_in, C_out) weight matrix in `dtype`, rows tap-major then input channel, made by one copy
    (the cast and the layout change together, whatever the weight's layout); `transposed` gives the data
    gradient's (k*k*C_out, C_in), not flipped in space (the kernel flips the taps as it reads, FLIP_TAPS)."""
    c_out, c_in, k, _ = weight.shape
    rows, columns = (c_out, c_in) if transposed else (c_in, c_out)
    matrix = torch.empty((k * k * rows, columns), dtype=dtype, device=weight.device)
    matrix.view(k, k, rows, columns).copy_(weight.permute(2, 3, 0, 1) if transposed else weight.permute(2, 3, 1, 0))
    return matrix


def _launch(source: torch.Tensor, matrix: torch.Tensor, k: int, c_out: int, scale, shift, aux, epilogue: int,
            sums_grad: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Run conv_gemm_kernel on an NHWC source with the (K, c_out) weight matrix (the data gradient's when
    sums_grad = (y NHWC, d_sum, d_squares) is given or the epilogue is not EPILOGUE_STATISTICS: its taps flipped as
    read, with PROLOGUE_SUMS_GRAD when sums_grad is given): (y NHWC in source's dtype, sums (2, c_out) fp32 or
    None)."""
    batch, c_in, time, freq = source.shape
    m = batch * time * freq
    tiling = tiles(c_in, c_out, k, scale is not None or sums_grad is not None, source.element_size())
    m_tiles = triton.cdiv(m, tiling.block_m)
    y = torch.empty((batch, c_out, time, freq), device=source.device, dtype=source.dtype,
                    memory_format=torch.channels_last)
    part = torch.empty((2, m_tiles, c_out) if epilogue else (0,), device=source.device, dtype=torch.float32)
    vectors = [v.float().contiguous() if v is not None else part for v in (scale, shift)]
    if sums_grad is None:
        prologue = PROLOGUE_BN_RELU if epilogue == EPILOGUE_STATISTICS and scale is not None else PROLOGUE_NONE
        grad_terms = [source, part, part]
    else:
        prologue = PROLOGUE_SUMS_GRAD
        grad_terms = [sums_grad[0], sums_grad[1].float().contiguous(), sums_grad[2].float().contiguous()]
    conv_gemm_kernel[(m_tiles * triton.cdiv(c_out, tiling.block_n),)](
        source, matrix, *vectors, y, aux if aux is not None else y, part, *grad_terms, m,
        T=time, F=freq, C_IN=c_in, C_OUT=c_out, KS=k, FLIP_TAPS=epilogue != EPILOGUE_STATISTICS,
        FLAT_K=tiling.flat_k, PROLOGUE=prologue, EPILOGUE=epilogue,
        PRECISION="tf32x3" if source.dtype == torch.float32 else "tf32",
        BLOCK_M=tiling.block_m, BLOCK_N=tiling.block_n, BLOCK_K=tiling.block_k,
        num_warps=tiling.num_warps, num_stages=tiling.num_stages,
    )
    return y, part.sum(1) if epilogue else None


def conv_forward_triton(x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None,
                        in_shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """block_reference.conv_forward in one launch (and one torch sum of the partials): (y, sum y,
    sum y*y), y in x's dtype and memory format, the sums fp32 per output channel."""
    _check("conv_forward", x, weight, in_scale, in_shift, x.shape[1])
    if weight.shape[1] != x.shape[1]:
        raise ValueError(f"conv_forward: weight has {weight.shape[1]} input channels, x has {x.shape[1]}")
    c_out, k = weight.shape[0], weight.shape[-1]
    y, sums = _launch(_nhwc(x), weight_matrix(weight, x.dtype, transposed=False), k, c_out, in_scale, in_shift, None,
                      EPILOGUE_STATISTICS)
    LAUNCHES["conv_forward"] += 1
    return y.contiguous(memory_format=memory_format(x)), sums[0], sums[1]


def conv_input_grad_triton(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor | None = None,
                           in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None,
                           sums_grad: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None
                           ) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """block_reference.conv_input_grad in one launch: the forward kernel on grad with the weight flipped
    in space and transposed, with the sums' gradients prologue when sums_grad = (y, d_sum, d_squares) is
    given, and with a prologue given (x, in_scale, in_shift as the forward had them) the activation-backward
    epilogue: (dx, sum g*x, sum g); without one (dA, None, None)."""
    _check("conv_input_grad", grad, weight, in_scale, in_shift, weight.shape[1])
    if weight.shape[0] != grad.shape[1]:
        raise ValueError(f"conv_input_grad: weight has {weight.shape[0]} output channels, grad has {grad.shape[1]}")
    if in_scale is not None and (x is None or x.shape != (grad.shape[0], weight.shape[1], *grad.shape[2:])):
        raise ValueError("conv_input_grad: with in_scale and in_shift, x must be the forward's input map "
                         f"({grad.shape[0]}, {weight.shape[1]}, {grad.shape[2]}, {grad.shape[3]})")
    c_in, k = weight.shape[1], weight.shape[-1]
    matrix = weight_matrix(weight, grad.dtype, transposed=True)   # (k*k*C_out, C_in), flipped by the kernel
    epilogue = EPILOGUE_NONE if in_scale is None else EPILOGUE_ACTIVATION_GRAD
    aux = None if in_scale is None else _nhwc(x)
    dx, sums = _launch(_nhwc(grad), matrix, k, c_in, in_scale, in_shift, aux, epilogue,
                       _nhwc_sums_grad("conv_input_grad", grad, sums_grad))
    LAUNCHES["conv_input_grad"] += 1
    dx = dx.contiguous(memory_format=memory_format(grad))
    return (dx, None, None) if sums is None else (dx, sums[0], sums[1])


def _nhwc_sums_grad(name: str, grad: torch.Tensor, sums_grad: tuple | None) -> tuple | None:
    """sums_grad = (y, d_sum, d_squares) with y stored NHWC, after checking it fits grad; None stays None."""
    check_sums_grad(name, grad, sums_grad)
    if sums_grad is None:
        return None
    y, d_sum, d_squares = sums_grad
    return _nhwc(y), d_sum, d_squares
