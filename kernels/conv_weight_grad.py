"""The weight gradient of the residual block's convolutions (kernels/block_reference.py's `conv_weight_grad`)
as one Triton implicit-GEMM kernel with the BatchNorm-ReLU prologue recomputed from x.

dW[co, ci, kt, kf] = sum over (b, t, f) of grad[b, co, t, f] * a[b, ci, t + kt - k//2, f + kf - k//2], zero
padding, a = relu(x * in_scale + in_shift) per input channel (fp32, rounded to the map's dtype, padding
zero in a) with a prologue, else x. As a GEMM: rows K' = k*k*C_in (index kp = tap * C_in + ci, tap =
kt * k + kf), columns N = C_out, reduction over M = B*T*F rows of the maps. A program computes one
[BLOCK_KP, BLOCK_CO] tile of dW^T = A^T @ G with tl.dot (Hopper wgmma where BLOCK_KP >= 64) over one
slice of M, reading x at the tile's taps (a tap is a constant shift of m * C_in in a channels_last map)
and grad once per slice; the k*k shifted reads of x overlap in L1/L2.

Maps are read channels_last (NHWC, C the contiguous axis: 16-byte loads where C is a multiple of 8 in
bf16); an NCHW map is converted once, on the host, before the launch (one extra read and write of it).
C_in, C_out, T, F and k are compile-time constants, so Triton proves the 16-byte alignment of every tap.

M is huge (6.5 M rows at batch 256 for block 1, 102 k for block 7) and the dW tiles few (1 for 1 -> 32),
so M is split across programs (split-K): each writes its fp32 partial dW, and one torch sum adds them.
Chosen over fp32 atomics into a zeroed buffer because it is deterministic (the same sum order every run,
which the tests and the bit-exact resumes of training rely on) at the same launch count (atomics need the
zeroing launch, partials need the sum launch; with one split the kernel writes dW itself: one launch), and
the partials are small: SPLIT * |dW| * 4 bytes written and read, SPLIT chosen so the grid fills the GPU
(`tiling`): extra bytes only where FLOPs, not bytes, bound the layer.

Bytes and FLOPs of at-sca-3's layers at batch 256, bf16 (the floor: x and grad read once; partials:
SPLIT fp32 dW written and read by the sum, and dW written; L2 reads: how many times the programs read x
and grad, tiles of one split being neighbours in the grid so that the re-reads hit L2, an estimate with
no GPU at hand; us: the floor plus partials at 3.35 TB/s, and the FLOPs at 989 TFLOP/s, H100 datasheet):

layer (p: prologue)    grid       floor MB partials /floor  L2 reads   GFLOP  us B/W us FLOP
1->32 400x64 k3          1 x 264    433      0.6  1.001   9 x,  1 x     3.8    129      4
32->32 400x64 k3 p       5 x 53     839      3.9  1.005   9 x,  5 x   120.8    252    122
1->32 400x64 k1          1 x 264    433      0.1  1.000   1 x,  1 x     0.4    129      0
32->64 200x32 k3         5 x 53     315      7.9  1.025   9 x,  5 x    60.4     96     61
64->64 200x32 k3 p       9 x 30     419      9.0  1.021   9 x,  9 x   120.8    128    122
32->64 200x32 k1         1 x 264    315      4.3  1.014   1 x,  1 x     6.7     95      7
64->128 100x16 k3        9 x 30     157     18.0  1.114   9 x,  9 x    60.4     52     61
128->128 100x16 k3 p     9 x 30     210     36.0  1.172   9 x,  9 x   120.8     73    122
64->128 100x16 k1        2 x 131    157      8.6  1.055   2 x,  1 x     6.7     50      7
128->256 100x8 k3       18 x 15     157     36.6  1.232  18 x,  9 x   120.8     58    122
256->256 100x8 k3 p     36 x 8      210     40.1  1.191  18 x, 18 x   241.6     75    244
128->256 100x8 k1        8 x 33     157      8.8  1.056   4 x,  2 x    13.4     50     14
256->256 100x4 k3       36 x 8      105     40.1  1.383  18 x, 18 x   120.8     43    122
256->256 100x4 k3 p     36 x 8      105     40.1  1.383  18 x, 18 x   120.8     43    122
256->256 100x4 k1       16 x 17     105      9.2  1.087   4 x,  4 x    13.4     34     14
256->512 100x4 k3       72 x 4      157     42.5  1.270  36 x, 18 x   241.6     60    244
512->512 100x4 k3 p    144 x 2      210     47.2  1.225  36 x, 36 x   483.2     77    489
256->512 100x4 k1       32 x 9      157     10.0  1.063   8 x,  4 x    26.8     50     27
512->512 100x4 k3      144 x 2      210     47.2  1.225  36 x, 36 x   483.2     77    489
512->512 100x4 k1       64 x 5      210     11.5  1.055   8 x,  8 x    53.7     66     54
backbone (21 layers)               5269    468.8  1.089                2903.3   1713   2936

(block 7's second 3x3 repeats block 6's.) Blocks 1-2 and the shortcuts are bandwidth-bound, at 1.00-1.06
of their floors; from block 3 the 3x3 layers are FLOP-bound and their partials cost nothing beside the
FLOPs.
"""
import torch
import triton
import triton.language as tl

from kernels import block_reference
from kernels.common import LAUNCHES, use_triton

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
# Below the ridge, partial dW bytes are at most this fraction of x's and grad's bytes, where SMS programs
# remain (they are extra traffic there; above it they are free beside the FLOPs).
PARTIAL_SHARE = 8
# Fewest BLOCK_M steps a split is given: its partial tile (<= 64 KB) stays small against what it reads.
MIN_STEPS = 8


@triton.jit
def conv_weight_grad_kernel(
    x_ptr, g_ptr, scale_ptr, shift_ptr, out_ptr, M, steps_per_split,
    C_IN: tl.constexpr, C_OUT: tl.constexpr, T: tl.constexpr, F: tl.constexpr, K: tl.constexpr,
    PROLOGUE: tl.constexpr, IEEE: tl.constexpr, CO_TILES: tl.constexpr,
    BLOCK_KP: tl.constexpr, BLOCK_CO: tl.constexpr, BLOCK_M: tl.constexpr,
):
    """out[split, co, kt, kf, ci] = sum over this split's rows m of grad[m, co] * a[m shifted by the tap,
    ci] (fp32); x (M, C_IN) and grad (M, C_OUT) channels_last; grid (K' tiles * CO_TILES, SPLIT)."""
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
    acc = tl.zeros((BLOCK_KP, BLOCK_CO), dtype=tl.float32)
    m_begin = split * steps_per_split * BLOCK_M
    m_end = tl.minimum(M, m_begin + steps_per_split * BLOCK_M)
    x_rows = x_ptr + m_begin.to(tl.int64) * C_IN       # 64-bit row bases: B*T*F*C passes 2**31 at batch 1024
    g_rows = g_ptr + m_begin.to(tl.int64) * C_OUT
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
        g = tl.load(g_rows + rows[:, None] * C_OUT + offs_co[None, :], mask=m_ok[:, None] & co_ok[None, :],
                    other=0.0)            # [BLOCK_M, BLOCK_CO]
        if IEEE:
            acc = tl.dot(a, g, acc, input_precision="ieee")
        else:
            acc = tl.dot(a, g, acc)
        x_rows += BLOCK_M * C_IN
        g_rows += BLOCK_M * C_OUT
    out = out_ptr + split.to(tl.int64) * (C_OUT * KP)
    tl.store(out + offs_co[None, :] * KP + offs_kp[:, None], acc, mask=kp_ok[:, None] & co_ok[None, :])


def _block(size: int, largest: int) -> int:
    """A tile side for `size` rows: a power of two in [MIN_BLOCK, largest]."""
    return max(MIN_BLOCK, min(largest, triton.next_power_of_2(size)))


def tiling(c_in: int, c_out: int, k: int, rows: int, itemsize: int) -> dict[str, int]:
    """The launch rule: BLOCK_KP, BLOCK_CO, CO_TILES, tiles, SPLIT, steps_per_split and num_warps for a
    k x k convolution C_in -> C_out over `rows` = B*T*F rows of `itemsize`-byte maps.

    A layer under the ridge (FLOPs per floor byte < RIDGE: blocks 1-2 and every 1x1 shortcut) gains
    nothing from tiles past 64 x 64, and more tiles need fewer splits (fewer partial bytes); one above it
    takes tiles up to 128 x 128. BLOCK_KP is the largest tile where K' = k*k*C_in is a multiple of it,
    else 64 where K' >= 64 (32 -> 32, K' = 288: 5 tiles of 64 waste 10 %, 3 of 128 would waste 25 %),
    else K' rounded up to a power of two (>= 16: K' = 9 for C_in = 1 is one tile of 16). BLOCK_CO is
    C_out rounded up, at most the largest tile. SPLIT is the fewest splits of M that make FILL_PROGRAMS
    programs, each given at least MIN_STEPS steps of BLOCK_M; under the ridge, the partials are held to
    1 / PARTIAL_SHARE of the floor bytes where SMS programs remain. 8 warps from 64 x 128 tiles (at most
    64 fp32 accumulators a thread), else 4."""
    kp = k * k * c_in
    floor_bytes = rows * (c_in + c_out) * itemsize
    under_ridge = 2 * rows * kp * c_out < RIDGE * floor_bytes
    largest = min(64, MAX_BLOCK) if under_ridge else MAX_BLOCK
    block_kp = _block(kp, largest) if kp < 64 else largest if kp % largest == 0 else min(64, largest)
    block_co = _block(c_out, largest)
    co_tiles = triton.cdiv(c_out, block_co)
    tiles = triton.cdiv(kp, block_kp) * co_tiles
    steps = triton.cdiv(rows, BLOCK_M)
    split = triton.cdiv(FILL_PROGRAMS, tiles)
    if under_ridge:   # 2 * SPLIT * |dW| * 4 bytes of partials (written, then read by the sum)
        split = min(split, max(triton.cdiv(SMS, tiles), floor_bytes // (PARTIAL_SHARE * 8 * c_out * kp)))
    split = max(1, min(split, steps // MIN_STEPS))
    steps_per_split = triton.cdiv(steps, split)
    return {"BLOCK_KP": block_kp, "BLOCK_CO": block_co, "CO_TILES": co_tiles, "tiles": tiles,
            "SPLIT": triton.cdiv(steps, steps_per_split), "steps_per_split": steps_per_split,
            "num_warps": 8 if block_kp * block_co >= 64 * MAX_BLOCK else 4}


def _check(x: torch.Tensor, grad: torch.Tensor, weight_shape, in_scale, in_shift) -> None:
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


def conv_weight_grad_triton(x: torch.Tensor,                  # (B, C_in, T, F)
                            grad: torch.Tensor,               # (B, C_out, T, F), dL/dy, x's dtype
                            weight_shape: tuple[int, int, int, int],   # (C_out, C_in, k, k)
                            in_scale: torch.Tensor | None = None,      # (C_in,) prologue scale, or None
                            in_shift: torch.Tensor | None = None,      # (C_in,) prologue shift, or None
                            ) -> torch.Tensor:                # (C_out, C_in, k, k) fp32, channels_last
    """block_reference.conv_weight_grad by conv_weight_grad_kernel (plain PyTorch where Triton cannot run).
    NCHW maps are converted to channels_last once; more than one split adds one torch sum launch. dW comes
    out channels_last (the layout of a channels_last model's weight): the kernel stores its tile rows kp =
    tap * C_in + ci in that order, contiguous, not scattered to ci * k*k + tap (512 -> 512, k 3: 97
    registers instead of 200, two programs an SM instead of one)."""
    _check(x, grad, weight_shape, in_scale, in_shift)
    if not use_triton(x):
        return block_reference.conv_weight_grad(x, grad, weight_shape, in_scale, in_shift)
    c_out, c_in, k, _ = weight_shape
    batch, _, time, freq = x.shape
    rows = batch * time * freq
    x = x.contiguous(memory_format=torch.channels_last)
    grad = grad.contiguous(memory_format=torch.channels_last)
    if rows == 0:
        return torch.zeros(weight_shape, device=x.device, dtype=torch.float32).contiguous(memory_format=torch.channels_last)
    tile = tiling(c_in, c_out, k, rows, x.element_size())
    out = torch.empty((tile["SPLIT"], c_out, k, k, c_in), device=x.device, dtype=torch.float32)
    prologue = in_scale is not None
    scale = in_scale.float().contiguous() if prologue else out
    shift = in_shift.float().contiguous() if prologue else out
    conv_weight_grad_kernel[(tile["tiles"], tile["SPLIT"])](
        x, grad, scale, shift, out, rows, tile["steps_per_split"],
        C_IN=c_in, C_OUT=c_out, T=time, F=freq, K=k, PROLOGUE=prologue, IEEE=x.dtype == torch.float32,
        CO_TILES=tile["CO_TILES"], BLOCK_KP=tile["BLOCK_KP"], BLOCK_CO=tile["BLOCK_CO"], BLOCK_M=BLOCK_M,
        num_warps=tile["num_warps"],
    )
    LAUNCHES["conv_weight_grad"] += 1
    return (out[0] if tile["SPLIT"] == 1 else out.sum(0)).permute(0, 3, 1, 2)
