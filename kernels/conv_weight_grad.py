"""The weight gradient of the residual block's convolutions (kernels/block_reference.py's `conv_weight_grad`)
as one Triton implicit-GEMM kernel with the BatchNorm-ReLU prologue recomputed from x.

dW[co, ci, kt, kf] = sum over (b, t, f) of grad[b, co, t, f] * a[b, ci, t + kt - k//2, f + kf - k//2], zero
padding, a = relu(x * in_scale + in_shift) per input channel (fp32, rounded to the map's dtype, padding
zero in a) with a prologue, else x. Given the sums' gradients (y, d_sum, d_squares: the forward's output and
the gradients of its two sums), grad is formed as it is read: d_y + 2 y * d_squares + d_sum per output
channel in fp32, rounded to the map's dtype (block_reference.grad_with_sums), never written out.

As a GEMM: rows K' = k*k*C_in (index kp = tap * C_in + ci, tap =
kt * k + kf), columns N = C_out, reduction over M = B*T*F rows of the maps. A program computes one
[BLOCK_KP, BLOCK_CO] tile of dW^T = A^T @ G with tl.dot (Hopper wgmma where BLOCK_KP >= 64) over one
slice of M, reading x at the tile's taps (a tap is a constant shift of m * C_in in a channels_last map)
and grad once per slice; the k*k shifted reads of x overlap in L1/L2.

Maps are read channels_last (NHWC, C the contiguous axis: 16-byte loads where C is a multiple of 8 in
bf16); an NCHW map is converted once, on the host, before the launch (one extra read and write of it).
C_in, C_out, T, F and k are compile-time constants, so Triton proves the 16-byte alignment of every tap.

M is huge (6.5 M rows at batch 256 for block 1, 102 k for block 7) and the dW tiles few (1 for 1 -> 32),
so M is split across programs (split-K): each writes its fp32 partial dW, and one torch sum adds them.
Chosen over fp32 atomics into a zeroed buffer because it is deterministic (the same sum order every run:
a repeated or resumed run gives the same weights, bit for bit) at the same launch count (atomics need the
zeroing launch, partials need the sum launch; with one split the kernel writes dW itself: one launch), and
the partials are small where bytes bound the layer (`tiling`: at most 1/8 of the maps' bytes where 132
programs remain), and where FLOPs bound it they buy full waves of programs (a few more splits, hidden
behind the FLOPs).

Bytes and FLOPs of at-sca-3's layers at batch 256, bf16. floor: x and grad read once (MB); part.: SPLIT
fp32 partial dW written and read by the sum, and dW written (MB); x L2, g L2: how many times the programs
read x and grad (the tiles of one split are neighbours in the grid, so these re-reads should hit L2: an
estimate, with no GPU at hand); waves: the share of the last wave's slots (264, 2 programs an SM) that
FLOP-bound layers fill; us B, us F: the floor and partials at 3.35 TB/s, and the FLOPs at 989 TFLOP/s
divided by waves (H100 datasheet):

layer (p: prologue)   grid      floor  part.  /flr x L2 g L2  GFLOP waves  us B  us F
1->32 400x64 k3         1 x 264   433    0.6  1.00   9   1    3.8  1.00   129     4
32->32 400x64 k3 p      5 x 53    839    3.9  1.00   9   5  120.8  1.00   252   122
1->32 400x64 k1         1 x 264   433    0.1  1.00   1   1    0.4  1.00   129     0
32->64 200x32 k3        5 x 53    315    7.9  1.03   9   5   60.4  1.00    96    61
64->64 200x32 k3 p      9 x 30    419    9.0  1.02   9   9  120.8  1.00   128   122
32->64 200x32 k1        1 x 264   315    4.3  1.01   1   1    6.7  1.00    95     7
64->128 100x16 k3       9 x 58    157   34.5  1.22   9   9   60.4  0.99    57    62
128->128 100x16 k3 p    9 x 58    210   69.0  1.33   9   9  120.8  0.99    83   124
64->128 100x16 k1       2 x 131   157    8.6  1.05   2   1    6.7  1.00    50     7
128->256 100x8 k3      18 x 29    157   69.6  1.44  18   9  120.8  0.99    68   124
256->256 100x8 k3 p    36 x 22    210  106.2  1.51  18  18  241.6  1.00    94   244
128->256 100x8 k1       8 x 33    157    8.8  1.06   4   2   13.4  1.00    50    14
256->256 100x4 k3      36 x 14    105   68.4  1.65  18  18  120.8  0.95    52   128
256->256 100x4 k3 p    36 x 14    105   68.4  1.65  18  18  120.8  0.95    52   128
256->256 100x4 k1      16 x 17    105    9.2  1.09   4   4   13.4  1.00    34    14
256->512 100x4 k3      72 x 11    157  108.5  1.69  36  18  241.6  1.00    79   244
512->512 100x4 k3 p   144 x 7     210  141.6  1.68  36  36  483.2  0.95   105   512
256->512 100x4 k1      32 x 9     157   10.0  1.06   8   4   26.8  1.00    50    27
512->512 100x4 k3     144 x 7     210  141.6  1.68  36  36  483.2  0.95   105   512
512->512 100x4 k1      64 x 5     210   11.5  1.05   8   8   53.7  1.00    66    54
backbone (21 layers)             5269   1023  1.19           2903       sum of max: 3667 us

(Block 7's second 3x3 layer repeats block 6's.) Blocks 1-2 and the shortcuts are bandwidth-bound, at
1.00-1.09 of their floors; from block 3 the 3x3 layers are FLOP-bound. The sum of each layer's larger
time is 3.67 ms against 3.56 ms for the floors at full waves (5.71 ms with the fewest splits that fill
the GPU: 2 for 512 -> 512, 288 programs in 1.1 waves of 264).
"""
import torch
import triton
import triton.language as tl

from kernels import block_reference
from kernels.common import LAUNCHES, check_sums_grad, use_triton

# Rows of M per tl.dot: the GEMM's reduction depth per step (4 bf16 wgmma k-steps of 16); 64 rows of a
# bf16 channels_last grad tile of 64+ channels are 8 KB, enough bytes in flight per stage.
BLOCK_M = 64
# Largest dW tile side: a 128 x 128 fp32 accumulator is 64 registers a thread at 8 warps.
MAX_BLOCK = 128
# tl.dot needs every side >= 16.
MIN_BLOCK = 16
# Streaming multiprocessors of an H100 or H200: the fewest programs a launch may have.
SMS = 132
# Programs that keep every SM busy twice over: one program's loads overlap another's math, and a last
# wave is at most half empty.
FILL_PROGRAMS = 2 * SMS
# FLOPs per byte where an H100 turns from bandwidth- to FLOP-bound (989 dense bf16 TFLOP/s over 3.35 TB/s).
RIDGE = 295
# Below the ridge, partial dW bytes are at most 1 / PARTIAL_SHARE of x's and grad's bytes, where SMS
# programs remain (they are extra traffic there; above it they hide behind the FLOPs).
PARTIAL_SHARE = 8
# Fewest BLOCK_M steps a split is given: its partial tile (<= 64 KB) stays small against what it reads.
MIN_STEPS = 8


@triton.jit
def conv_weight_grad_kernel(
    x_ptr, g_ptr, scale_ptr, shift_ptr, out_ptr, z_ptr, d_sum_ptr, d_squares_ptr, M, steps_per_split,
    C_IN: tl.constexpr, C_OUT: tl.constexpr, T: tl.constexpr, F: tl.constexpr, K: tl.constexpr,
    PROLOGUE: tl.constexpr, SUMS_GRAD: tl.constexpr, IEEE: tl.constexpr, CO_TILES: tl.constexpr,
    BLOCK_KP: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """out[split, co, kt, kf, ci] = sum over this split's rows m of grad[m, co] * a[m shifted by the tap,
    ci] (fp32); x (M, C_IN) and grad (M, C_OUT) channels_last (with SUMS_GRAD grad is d_y, and z (M, C_OUT)
    the forward's output y); grid (K' tiles * CO_TILES, SPLIT)."""
    KP: tl.constexpr = K * K * C_IN
    P: tl.constexpr = K // 2
    kp_tile = tl.program_id(0) // CO_TILES
    co_tile = tl.program_id(0) % CO_TILES
    split = tl.program_id(1)
    offs_kp = kp_tile * BLOCK_KP + tl.arange(0, BLOCK_KP)
    offs_co = co_tile * BLOCK_CO + tl.arange(0, BLOCK_CO)
    rows = tl.arange(0, BLOCK_M)
    tap = offs_kp // C_IN
    ci = offs_kp % C_IN
    dt = tap // K - P
    df = tap % K - P
    shift = (dt * F + df) * C_IN + ci     # x offset of row kp's source from m * C_IN
    kp_ok = offs_kp < KP
    co_ok = offs_co < C_OUT
    if PROLOGUE:
        scale = tl.load(scale_ptr + ci, mask=kp_ok, other=0.0)
        bias = tl.load(shift_ptr + ci, mask=kp_ok, other=0.0)
    if SUMS_GRAD:
        d_sum = tl.load(d_sum_ptr + offs_co, mask=co_ok, other=0.0)
        twice_d_squares = 2 * tl.load(d_squares_ptr + offs_co, mask=co_ok, other=0.0)
    acc = tl.zeros((BLOCK_KP, BLOCK_CO), dtype=tl.float32)
    m_begin = split * steps_per_split * BLOCK_M
    m_end = tl.minimum(M, m_begin + steps_per_split * BLOCK_M)
    x_rows = x_ptr + m_begin.to(tl.int64) * C_IN       # 64-bit row bases: B*T*F*C passes 2**31 at batch 1024
    g_rows = g_ptr + m_begin.to(tl.int64) * C_OUT
    z_rows = z_ptr + m_begin.to(tl.int64) * C_OUT
    for m0 in range(m_begin, m_end, BLOCK_M):
        offs_m = m0 + rows
        m_ok = offs_m < m_end
        n = offs_m % (T * F)
        t_src = (n // F)[None, :] + dt[:, None]
        f_src = (n % F)[None, :] + df[:, None]
        ok = kp_ok[:, None] & m_ok[None, :] & (t_src >= 0) & (t_src < T) & (f_src >= 0) & (f_src < F)
        a = tl.load(x_rows + rows[None, :] * C_IN + shift[:, None], mask=ok, other=0.0)   # [BLOCK_KP, BLOCK_M]
        if PROLOGUE:
            a = tl.maximum(a.to(tl.float32) * scale[:, None] + bias[:, None], 0.0).to(x_ptr.dtype.element_ty)
            a = tl.where(ok, a, 0.0)      # zero padding applies to a, not to x
        g_ok = m_ok[:, None] & co_ok[None, :]
        g = tl.load(g_rows + rows[:, None] * C_OUT + offs_co[None, :], mask=g_ok, other=0.0)   # [BLOCK_M, BLOCK_CO]
        if SUMS_GRAD:
            z = tl.load(z_rows + rows[:, None] * C_OUT + offs_co[None, :], mask=g_ok, other=0.0)
            # Rows past the split hold d_sum here, but a is zero there: they add nothing to the dot.
            g_full = g.to(tl.float32) + z.to(tl.float32) * twice_d_squares[None, :] + d_sum[None, :]
            g = g_full.to(g_ptr.dtype.element_ty)
        if IEEE:
            acc = tl.dot(a, g, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, g, acc)
        x_rows += BLOCK_M * C_IN
        g_rows += BLOCK_M * C_OUT
        z_rows += BLOCK_M * C_OUT
    out = out_ptr + split.to(tl.int64) * (C_OUT * KP)
    tl.store(out + offs_co[None, :] * KP + offs_kp[:, None], acc, mask=kp_ok[:, None] & co_ok[None, :])


def _block(size: int, largest: int) -> int:
    """A tile side for `size` rows: a power of two in [MIN_BLOCK, largest]."""
    return max(MIN_BLOCK, min(largest, triton.next_power_of_2(size)))


def _split_above_ridge(tiles: int, flops: int, dw_bytes: int, most: int) -> int:
    """SPLIT for a FLOP-bound layer: the fewest splits, from FILL_PROGRAMS programs up to `most` splits,
    that minimise the roofline time in bytes: FLOPs / RIDGE stretched by the idle slots of the last
    wave of FILL_PROGRAMS (2 programs an SM: the 8-warp kernels hold 1 or 2), plus the partials.
    (512 -> 512, k 3, at batch 256: 7 splits, 1008 programs in 3.8 waves, against 2 splits in 1.1.)"""
    def cost(split: int) -> float:
        programs = tiles * split
        return (flops / RIDGE * triton.cdiv(programs, FILL_PROGRAMS) * FILL_PROGRAMS / programs
                + (2 * split + 1) * dw_bytes)

    fill = triton.cdiv(FILL_PROGRAMS, tiles)
    return min(range(fill, max(fill, most) + 1), key=cost)


def tiling(c_in: int, c_out: int, k: int, rows: int, itemsize: int) -> dict[str, int]:
    """The launch rule: BLOCK_KP, BLOCK_CO, CO_TILES, tiles, SPLIT, steps_per_split and num_warps for a
    k x k convolution C_in -> C_out over `rows` = B*T*F rows of `itemsize`-byte maps.

    A layer under the ridge (FLOPs per floor byte < RIDGE: blocks 1-2 and every 1x1 shortcut) gains
    nothing from tiles past 64 x 64, and more tiles need fewer splits (fewer partial bytes); one above it
    takes tiles up to 128 x 128. BLOCK_KP is the largest tile where K' = k*k*C_in is a multiple of it,
    else 64 where K' >= 64 (32 -> 32, K' = 288: 5 tiles of 64 waste 10 %, 3 of 128 would waste 25 %),
    else K' rounded up to a power of two (>= 16: K' = 9 for C_in = 1 is one tile of 16). BLOCK_CO is
    C_out rounded up, at most the largest tile. SPLIT: under the ridge, the fewest splits of M that make
    FILL_PROGRAMS programs, the partials held to 1 / PARTIAL_SHARE of the floor bytes where SMS programs
    remain; above it, `_split_above_ridge` (up to 4 times as many splits). Each split gets at least
    MIN_STEPS steps of BLOCK_M. 8 warps from 64 x 128 tiles (at most 64 fp32 accumulators a thread), else 4."""
    kp = k * k * c_in
    flops = 2 * rows * kp * c_out
    floor_bytes = rows * (c_in + c_out) * itemsize
    under_ridge = flops < RIDGE * floor_bytes
    largest = min(64, MAX_BLOCK) if under_ridge else MAX_BLOCK
    block_kp = _block(kp, largest) if kp < 64 else largest if kp % largest == 0 else min(64, largest)
    block_co = _block(c_out, largest)
    co_tiles = triton.cdiv(c_out, block_co)
    tiles = triton.cdiv(kp, block_kp) * co_tiles
    steps = triton.cdiv(rows, BLOCK_M)
    fill = triton.cdiv(FILL_PROGRAMS, tiles)
    dw_bytes = 4 * c_out * kp
    if under_ridge:   # 2 * SPLIT * |dW| bytes of partials (written, then read by the sum)
        split = min(fill, max(triton.cdiv(SMS, tiles), floor_bytes // (PARTIAL_SHARE * 2 * dw_bytes)))
    else:
        split = _split_above_ridge(tiles, flops, dw_bytes, min(4 * fill, steps // MIN_STEPS))
    split = max(1, min(split, steps // MIN_STEPS))
    steps_per_split = triton.cdiv(steps, split)
    return {"BLOCK_KP": block_kp, "BLOCK_CO": block_co, "CO_TILES": co_tiles, "tiles": tiles,
            "SPLIT": triton.cdiv(steps, steps_per_split), "steps_per_split": steps_per_split,
            "num_warps": 8 if block_kp * block_co >= 64 * MAX_BLOCK else 4}


def _check(x: torch.Tensor, grad: torch.Tensor, weight_shape, in_scale, in_shift, sums_grad) -> None:
    """ValueError naming the first argument that does not fit the others."""
    if x.dim() != 4 or grad.dim() != 4:
        raise ValueError(f"conv_weight_grad: x and grad must be (B, C, T, F) maps, got {tuple(x.shape)} "
                         f"and {tuple(grad.shape)}")
    c_out, c_in, k, k2 = weight_shape
    if k != k2 or k % 2 == 0 or c_in != x.shape[1] or c_out != grad.shape[1]:
        raise ValueError(f"conv_weight_grad: weight_shape {tuple(weight_shape)} must be (C_out={grad.shape[1]}, "
                         f"C_in={x.shape[1]}, k, k) with k odd")
    if x.shape[0] != grad.shape[0] or x.shape[2:] != grad.shape[2:] or x.dtype != grad.dtype:
        raise ValueError(f"conv_weight_grad: grad {tuple(grad.shape)} {grad.dtype} must match x "
                         f"{tuple(x.shape)} {x.dtype} in batch, time, frequency and dtype")
    if (in_scale is None) != (in_shift is None):
        raise ValueError("conv_weight_grad: give both in_scale and in_shift (the prologue), or neither")
    if in_scale is not None and (in_scale.numel() != c_in or in_shift.numel() != c_in):
        raise ValueError(f"conv_weight_grad: in_scale and in_shift must have C_in = {c_in} entries, got "
                         f"{in_scale.numel()} and {in_shift.numel()}")
    check_sums_grad("conv_weight_grad", grad, sums_grad)


def conv_weight_grad_triton(x: torch.Tensor,                  # (B, C_in, T, F)
                            grad: torch.Tensor,               # (B, C_out, T, F), dL/dy, x's dtype
                            weight_shape: tuple[int, int, int, int],   # (C_out, C_in, k, k)
                            in_scale: torch.Tensor | None = None,      # (C_in,) prologue scale, or None
                            in_shift: torch.Tensor | None = None,      # (C_in,) prologue shift, or None
                            sums_grad: tuple | None = None,   # (y, d_sum, d_squares): grad is d_y, or None
                            ) -> torch.Tensor:                # (C_out, C_in, k, k) fp32, channels_last
    """block_reference.conv_weight_grad by conv_weight_grad_kernel (plain PyTorch where Triton cannot run).
    NCHW maps are converted to channels_last once; more than one split adds one torch sum launch. dW comes
    out channels_last (the layout of a channels_last model's weight): the kernel stores its tile rows kp =
    tap * C_in + ci in that order, contiguous, not scattered to ci * k*k + tap (512 -> 512, k 3: 97
    registers instead of 200, two programs an SM instead of one)."""
    _check(x, grad, weight_shape, in_scale, in_shift, sums_grad)
    if not use_triton(x):
        return block_reference.conv_weight_grad(x, grad, weight_shape, in_scale, in_shift, sums_grad)
    c_out, c_in, k, _ = weight_shape
    batch, _, time, freq = x.shape
    rows = batch * time * freq
    if rows == 0:
        empty = torch.zeros(weight_shape, device=x.device, dtype=torch.float32)
        return empty.contiguous(memory_format=torch.channels_last)
    x = x.contiguous(memory_format=torch.channels_last)
    grad = grad.contiguous(memory_format=torch.channels_last)
    tile = tiling(c_in, c_out, k, rows, x.element_size())
    out = torch.empty((tile["SPLIT"], c_out, k, k, c_in), device=x.device, dtype=torch.float32)
    prologue = in_scale is not None
    scale = in_scale.float().contiguous() if prologue else out
    shift = in_shift.float().contiguous() if prologue else out
    if sums_grad is None:
        grad_terms = [grad, out, out]
    else:
        y, d_sum, d_squares = sums_grad
        grad_terms = [y.contiguous(memory_format=torch.channels_last), d_sum.float().contiguous(),
                      d_squares.float().contiguous()]
    conv_weight_grad_kernel[(tile["tiles"], tile["SPLIT"])](
        x, grad, scale, shift, out, *grad_terms, rows, tile["steps_per_split"],
        # fp32 maps: fp32 products, as the reference's, not TF32's 10-bit mantissas.
        C_IN=c_in, C_OUT=c_out, T=time, F=freq, K=k, PROLOGUE=prologue, SUMS_GRAD=sums_grad is not None,
        IEEE=x.dtype == torch.float32,
        CO_TILES=tile["CO_TILES"], BLOCK_KP=tile["BLOCK_KP"], BLOCK_CO=tile["BLOCK_CO"], BLOCK_M=BLOCK_M,
        num_warps=tile["num_warps"],
    )
    LAUNCHES["conv_weight_grad"] += 1
    return (out[0] if tile["SPLIT"] == 1 else out.sum(0)).permute(0, 3, 1, 2)
