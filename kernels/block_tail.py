"""The residual block's tail as two Triton passes: BN of both paths + sum + ReLU + max-pool, and its backward.

kernels/block_reference.py's `block_tail_forward` and `block_tail_backward` are the specification (same
signatures, same values). Forward (`block_tail_forward_triton`, one launch): reads the two pre-BN maps
once, z = main * main_scale + main_shift + shortcut * short_scale + short_shift in fp32, ReLU, max-pool
over (pt, pf) windows, and writes the pooled map in main's dtype and memory format and the int8 argmax
dt * pf + df of each window's first maximum. Backward (`block_tail_backward_triton`, one launch plus one
torch sum of the partials): reads d_out and argmax at pooled resolution and main and shortcut at full
resolution (where main has a BatchNorm: its sum needs main, and the ReLU mask out > 0 is recomputed from
the two maps; an attention block's main path has none, and reads out instead of main), writes d_main and
d_short, and leaves per-program fp32 partial sums of dz * main, dz and dz * shortcut that one `torch.sum`
adds (deterministic, where atomics would add in a racy order).

Maps are indexed in place in either layout (kernels/common.py's `plane`: channels_last planes are N rows
of C, NCHW planes C rows of N), each with its own layout flag, so nothing is converted. C, T and F are
compile-time constants, so channels_last bf16 maps (C a multiple of 8) are read and written 16 bytes at
a time; NCHW maps are read with the pool's stride along F (correct, narrower accesses: not the
production layout).
"""
import torch
import triton
import triton.language as tl

from kernels.common import LAUNCHES, check_map, output_format, plane, use_triton

# Outputs (windows x channels) per tile: 1024 values at 4 warps are 8 per thread per tap, one 16-byte
# access in bf16 along the contiguous channel axis of a channels_last map.
TILE = 1024
# Channels per tile: up to 128 (the rest of the tile spans windows), so a 32-channel map still has 32
# windows per tile.
MAX_BLOCK_C = 128
NUM_WARPS = 4
# Backward: tiles one program walks before it writes its partial sums, one row of K x C per 8 tiles (at
# block 1, 32 channels 400 x 64: 25 rows of 3 x 32 fp32 per clip, 0.6 % of a map), while batch 64
# still launches >= 832 programs (132 SMs).
STEPS = 8


@triton.jit
def tap_offsets(t, f, offs_c, C: tl.constexpr, T: tl.constexpr, F: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """[BLOCK_P, BLOCK_C] element offsets in a (C, T, F) plane of positions (t, f) ([BLOCK_P] each), channels offs_c."""
    if CHANNELS_LAST:
        return (t * F + f)[:, None] * C + offs_c[None, :]
    else:
        return offs_c[None, :] * (T * F) + (t * F + f)[:, None]


@triton.jit
def load_channel(ptr, offs_c, C: tl.constexpr):
    """A per-channel fp32 vector's entries offs_c, as a [1, BLOCK_C] row."""
    return tl.load(ptr + offs_c, mask=offs_c < C, other=0.0).to(tl.float32)[None, :]


@triton.jit
def block_tail_forward_kernel(
    main_ptr, m_scale_ptr, m_shift_ptr, short_ptr, s_scale_ptr, s_shift_ptr, out_ptr, argmax_ptr,
    smb, ssb, sob, sab,
    C: tl.constexpr, T: tl.constexpr, F: tl.constexpr, PT: tl.constexpr, PF: tl.constexpr,
    MAIN_CL: tl.constexpr, SHORT_CL: tl.constexpr, OUT_CL: tl.constexpr, HAS_MAIN_SCALE: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """out = maxpool(relu(z)) and the int8 argmax of each window (with PT * PF > 1) for BLOCK_P windows x
    BLOCK_C channels of one clip; grid (cdiv(T_out F_out, BLOCK_P), cdiv(C, BLOCK_C), B). z is computed
    as the reference does, (shortcut * s_scale + s_shift) + (main * m_scale + m_shift), each step rounded
    to fp32 (the launcher turns fp contraction off), and a later tap wins only if strictly greater or NaN
    (nn.MaxPool2d's rule; ReLU keeps NaNs as torch.relu does), so out and argmax equal the reference's bit
    for bit, non-finite values included."""
    T_OUT: tl.constexpr = T // PT
    F_OUT: tl.constexpr = F // PF
    offs_p = tl.program_id(0) * BLOCK_P + tl.arange(0, BLOCK_P)
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    mask = (offs_p[:, None] < T_OUT * F_OUT) & (offs_c[None, :] < C)
    t_out, f_out = offs_p // F_OUT, offs_p % F_OUT
    s_scale, s_shift = load_channel(s_scale_ptr, offs_c, C), load_channel(s_shift_ptr, offs_c, C)
    if HAS_MAIN_SCALE:
        m_scale, m_shift = load_channel(m_scale_ptr, offs_c, C), load_channel(m_shift_ptr, offs_c, C)
    best = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    arg = tl.zeros((BLOCK_P, BLOCK_C), tl.int32)
    for dt in tl.static_range(PT):
        for df in tl.static_range(PF):
            t, f = t_out * PT + dt, f_out * PF + df
            main = tl.load(main_ptr + b * smb + tap_offsets(t, f, offs_c, C, T, F, MAIN_CL), mask=mask,
                           other=0.0).to(tl.float32)
            short = tl.load(short_ptr + b * ssb + tap_offsets(t, f, offs_c, C, T, F, SHORT_CL), mask=mask,
                            other=0.0).to(tl.float32)
            if HAS_MAIN_SCALE:
                main = main * m_scale + m_shift
            z = tl.maximum(short * s_scale + s_shift + main, 0.0, propagate_nan=tl.PropagateNan.ALL)
            if dt + df == 0:
                best = z
            else:   # nn.MaxPool2d's rule: a greater value or a NaN takes the window (a NaN is never lost)
                take = (z > best) | (z != z)
                arg = tl.where(take, dt * PF + df, arg)
                best = tl.where(take, z, best)
    out_offs = tap_offsets(t_out, f_out, offs_c, C, T_OUT, F_OUT, OUT_CL)
    tl.store(out_ptr + b * sob + out_offs, best.to(out_ptr.dtype.element_ty), mask=mask)
    if PT * PF > 1:
        tl.store(argmax_ptr + b * sab + out_offs, arg.to(tl.int8), mask=mask)


@triton.jit
def block_tail_backward_kernel(
    dout_ptr, argmax_ptr, out_ptr, main_ptr, m_scale_ptr, m_shift_ptr, short_ptr, s_scale_ptr, s_shift_ptr,
    dmain_ptr, dshort_ptr, part_ptr, sdob, sab, sob, smb, ssb, sdmb, sdsb,
    C: tl.constexpr, T: tl.constexpr, F: tl.constexpr, PT: tl.constexpr, PF: tl.constexpr,
    DOUT_CL: tl.constexpr, POOLED_CL: tl.constexpr, MAIN_CL: tl.constexpr, SHORT_CL: tl.constexpr,
    GRAD_CL: tl.constexpr, HAS_MAIN_SCALE: tl.constexpr, STEPS: tl.constexpr,
    BLOCK_P: tl.constexpr, BLOCK_C: tl.constexpr,
):
    """d_main = dz * m_scale (dz without HAS_MAIN_SCALE), d_short = dz * s_scale, dz = d_out at each
    window's argmax where out > 0 and zero elsewhere, for STEPS tiles of BLOCK_P windows x BLOCK_C channels
    of one clip; grid (J, cdiv(C, BLOCK_C), B). Windows cover the map with ceil division, so the rows and
    columns the pool dropped get zeros. part[b, j] (K, C) fp32 rows: sums over the program's windows of
    dz * shortcut, dz and (HAS_MAIN_SCALE) dz * main. argmax and out share one layout (POOLED_CL), and so
    do d_main and d_short (GRAD_CL).

    out > 0 is read from out only without HAS_MAIN_SCALE. With it, main is read anyway (for its sum), so
    z is recomputed at each tap as the forward computed it (same fp32 steps, no contraction) and out > 0
    at the argmax tap is z rounded to out's dtype > 0: the same mask, and out's bytes are not read."""
    T_OUT: tl.constexpr = T // PT
    F_OUT: tl.constexpr = F // PF
    T_W: tl.constexpr = (T + PT - 1) // PT
    F_W: tl.constexpr = (F + PF - 1) // PF
    offs_c = tl.program_id(1) * BLOCK_C + tl.arange(0, BLOCK_C)
    b = tl.program_id(2).to(tl.int64)
    s_scale, s_shift = load_channel(s_scale_ptr, offs_c, C), load_channel(s_shift_ptr, offs_c, C)
    if HAS_MAIN_SCALE:
        m_scale, m_shift = load_channel(m_scale_ptr, offs_c, C), load_channel(m_shift_ptr, offs_c, C)
    sum_short = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    sum_dz = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    sum_main = tl.zeros((BLOCK_P, BLOCK_C), tl.float32)
    for step in range(STEPS):
        offs_p = (tl.program_id(0) * STEPS + step) * BLOCK_P + tl.arange(0, BLOCK_P)
        t_w, f_w = offs_p // F_W, offs_p % F_W
        in_c = offs_c[None, :] < C
        pooled = in_c & ((t_w < T_OUT) & (f_w < F_OUT) & (offs_p < T_W * F_W))[:, None]
        d_out = tl.load(dout_ptr + b * sdob + tap_offsets(t_w, f_w, offs_c, C, T_OUT, F_OUT, DOUT_CL),
                        mask=pooled, other=0.0).to(tl.float32)
        pooled_offs = tap_offsets(t_w, f_w, offs_c, C, T_OUT, F_OUT, POOLED_CL)
        if not HAS_MAIN_SCALE:
            out = tl.load(out_ptr + b * sob + pooled_offs, mask=pooled, other=0.0)
            d_out = tl.where(out > 0, d_out, 0.0)
        if PT * PF > 1:
            arg = tl.load(argmax_ptr + b * sab + pooled_offs, mask=pooled, other=0).to(tl.int32)
        for dt in tl.static_range(PT):
            for df in tl.static_range(PF):
                t, f = t_w * PT + dt, f_w * PF + df
                tap = in_c & ((t < T) & (f < F) & (offs_p < T_W * F_W))[:, None]
                short = tl.load(short_ptr + b * ssb + tap_offsets(t, f, offs_c, C, T, F, SHORT_CL), mask=tap,
                                other=0.0).to(tl.float32)
                dz = d_out
                if HAS_MAIN_SCALE:
                    main = tl.load(main_ptr + b * smb + tap_offsets(t, f, offs_c, C, T, F, MAIN_CL), mask=tap,
                                   other=0.0).to(tl.float32)
                    z = short * s_scale + s_shift + (main * m_scale + m_shift)
                    dz = tl.where(z.to(dmain_ptr.dtype.element_ty).to(tl.float32) > 0, dz, 0.0)
                if PT * PF > 1:
                    dz = tl.where(arg == dt * PF + df, dz, 0.0)
                sum_short += dz * short
                sum_dz += dz
                grad_offs = tap_offsets(t, f, offs_c, C, T, F, GRAD_CL)
                tl.store(dshort_ptr + b * sdsb + grad_offs, (dz * s_scale).to(dshort_ptr.dtype.element_ty),
                         mask=tap)
                if HAS_MAIN_SCALE:
                    sum_main += dz * main
                    tl.store(dmain_ptr + b * sdmb + grad_offs, (dz * m_scale).to(dmain_ptr.dtype.element_ty),
                             mask=tap)
                else:
                    tl.store(dmain_ptr + b * sdmb + grad_offs, dz.to(dmain_ptr.dtype.element_ty), mask=tap)
    K: tl.constexpr = 3 if HAS_MAIN_SCALE else 2
    row = part_ptr + ((b * tl.num_programs(0) + tl.program_id(0)) * K) * C + offs_c
    tl.store(row, tl.sum(sum_short, axis=0), mask=offs_c < C)
    tl.store(row + C, tl.sum(sum_dz, axis=0), mask=offs_c < C)
    if HAS_MAIN_SCALE:
        tl.store(row + 2 * C, tl.sum(sum_main, axis=0), mask=offs_c < C)


def _pool(pool) -> tuple[int, int]:
    """pool as (pt, pf) of positive ints, else a one-line ValueError."""
    if len(tuple(pool)) != 2 or not all(isinstance(p, int) and p >= 1 for p in pool):
        raise ValueError(f"block tail: pool must be (pt, pf), two positive ints, got {pool!r}")
    return tuple(pool)


def _check(name: str, main: torch.Tensor, shortcut: torch.Tensor, main_scale, main_shift, pool) -> tuple[int, int]:
    """Shapes and pairing of the tail's operands (one-line ValueErrors), and the pool as (pt, pf)."""
    check_map(f"{name}: main", main)
    if shortcut.shape != main.shape:
        raise ValueError(f"{name}: shortcut must have main's shape {tuple(main.shape)}, got {tuple(shortcut.shape)}")
    if (main_scale is None) != (main_shift is None):
        raise ValueError(f"{name}: give main_scale and main_shift together, or neither (a normalised main)")
    if not use_triton(main):
        raise ValueError(f"{name}: Triton runs on CUDA tensors, or on CPU under TRITON_INTERPRET=1; "
                         "use kernels.block_reference elsewhere")
    return _pool(pool)


def _tiling(channels: int) -> tuple[int, int]:
    """(BLOCK_P windows, BLOCK_C channels) of a tile of TILE outputs."""
    block_c = min(triton.next_power_of_2(channels), MAX_BLOCK_C)
    return max(1, TILE // block_c), block_c


def block_tail_forward_triton(main: torch.Tensor, main_scale: torch.Tensor | None, main_shift: torch.Tensor | None,
                              shortcut: torch.Tensor, short_scale: torch.Tensor, short_shift: torch.Tensor,
                              pool: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """kernels/block_reference.py's block_tail_forward in one launch: (out, argmax int8 or None)."""
    pt, pf = _check("block_tail_forward_triton", main, shortcut, main_scale, main_shift, pool)
    batch, channels, time, freq = main.shape
    layout = output_format(main)
    shape = (batch, channels, time // pt, freq // pf)
    out = torch.empty(shape, device=main.device, dtype=main.dtype, memory_format=layout)
    argmax = None if (pt, pf) == (1, 1) else torch.empty(shape, device=main.device, dtype=torch.int8,
                                                         memory_format=layout)
    if out.numel() == 0:
        return out, argmax
    main, smb, main_cl = plane(main)
    shortcut, ssb, short_cl = plane(shortcut)
    block_p, block_c = _tiling(channels)
    has_main_scale = main_scale is not None
    m_scale, m_shift = (main_scale.contiguous(), main_shift.contiguous()) if has_main_scale else (main, main)
    grid = (triton.cdiv(shape[2] * shape[3], block_p), triton.cdiv(channels, block_c), batch)
    block_tail_forward_kernel[grid](
        main, m_scale, m_shift, shortcut, short_scale.contiguous(), short_shift.contiguous(), out,
        out if argmax is None else argmax, smb, ssb, out.stride(0), out.stride(0),
        C=channels, T=time, F=freq, PT=pt, PF=pf, MAIN_CL=main_cl, SHORT_CL=short_cl,
        OUT_CL=layout == torch.channels_last, HAS_MAIN_SCALE=has_main_scale, BLOCK_P=block_p, BLOCK_C=block_c,
        num_warps=NUM_WARPS, enable_fp_fusion=False,
    )
    LAUNCHES["block_tail_forward"] += 1
    return out, argmax


def block_tail_backward_triton(d_out: torch.Tensor, argmax: torch.Tensor | None, out: torch.Tensor,
                               main: torch.Tensor, main_scale: torch.Tensor | None, main_shift: torch.Tensor | None,
                               shortcut: torch.Tensor, short_scale: torch.Tensor, short_shift: torch.Tensor,
                               pool: tuple[int, int]) -> tuple:
    """kernels/block_reference.py's block_tail_backward in one launch and one torch sum of its partials:
    (d_main, d_main_scale, d_main_shift, d_shortcut, d_short_scale, d_short_shift). out must be the
    forward's output for these operands: with main_scale given, out > 0 is recomputed from main and
    shortcut (read anyway), and out is not read."""
    pt, pf = _check("block_tail_backward_triton", main, shortcut, main_scale, main_shift, pool)
    batch, channels, time, freq = main.shape
    pooled_shape = (batch, channels, time // pt, freq // pf)
    if tuple(out.shape) != pooled_shape or tuple(d_out.shape) != pooled_shape:
        raise ValueError(f"block_tail_backward_triton: out and d_out must be {pooled_shape} (main pooled by "
                         f"{(pt, pf)}), got {tuple(out.shape)} and {tuple(d_out.shape)}")
    if ((pt, pf) == (1, 1)) != (argmax is None) or (argmax is not None and argmax.dtype != torch.int8):
        raise ValueError("block_tail_backward_triton: argmax must be the forward's int8 argmax, None for pool (1, 1)")
    layout = output_format(main)
    d_main = torch.empty(main.shape, device=main.device, dtype=main.dtype, memory_format=layout)
    d_short = torch.empty(main.shape, device=main.device, dtype=main.dtype, memory_format=layout)
    has_main_scale = main_scale is not None
    rows = 3 if has_main_scale else 2
    block_p, block_c = _tiling(channels)
    windows = triton.cdiv(time, pt) * triton.cdiv(freq, pf)
    programs = triton.cdiv(triton.cdiv(windows, block_p), STEPS)
    parts = torch.empty((batch, programs, rows, channels), device=main.device, dtype=torch.float32)
    if main.numel() > 0:
        _launch_backward(d_out, argmax, out, main, (main_scale, main_shift), shortcut, (short_scale, short_shift),
                         d_main, d_short, parts, (pt, pf), (block_p, block_c))
    sums = parts.sum((0, 1))   # (K, C): the one torch op the partials take
    if not has_main_scale:
        return d_main, None, None, d_short, sums[0], sums[1]
    return d_main, sums[2], sums[1], d_short, sums[0], sums[1]


def _launch_backward(d_out, argmax, out, main, main_bn, shortcut, short_bn, d_main, d_short, parts,
                     pool, tiling) -> None:
    """Launch block_tail_backward_kernel on plane views of its operands (argmax in out's layout); main_bn
    and short_bn are (scale, shift) pairs, main's (None, None) when it has no BN."""
    batch, channels, time, freq = main.shape
    (pt, pf), (block_p, block_c) = pool, tiling
    d_out, sdob, dout_cl = plane(d_out)
    out, sob, pooled_cl = plane(out)
    if argmax is not None:
        argmax, sab, _ = plane(argmax.contiguous(memory_format=torch.channels_last if pooled_cl
                                                 else torch.contiguous_format))
    else:
        argmax, sab = out, sob
    main, smb, main_cl = plane(main)
    shortcut, ssb, short_cl = plane(shortcut)
    has_main_scale = main_bn[0] is not None
    m_scale, m_shift = (main_bn[0].contiguous(), main_bn[1].contiguous()) if has_main_scale else (main, main)
    block_tail_backward_kernel[(parts.shape[1], triton.cdiv(channels, block_c), batch)](
        d_out, argmax, out, main, m_scale, m_shift, shortcut, short_bn[0].contiguous(), short_bn[1].contiguous(),
        d_main, d_short, parts, sdob, sab, sob, smb, ssb, d_main.stride(0),
        d_short.stride(0), C=channels, T=time, F=freq, PT=pt, PF=pf, DOUT_CL=dout_cl, POOLED_CL=pooled_cl,
        MAIN_CL=main_cl, SHORT_CL=short_cl, GRAD_CL=output_format(d_main) == torch.channels_last,
        HAS_MAIN_SCALE=has_main_scale, STEPS=STEPS, BLOCK_P=block_p, BLOCK_C=block_c, num_warps=NUM_WARPS,
        enable_fp_fusion=False,
    )
    LAUNCHES["block_tail_backward"] += 1
