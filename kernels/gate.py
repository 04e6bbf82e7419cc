"""Sigmoid-gated rescaling, eqs. 7, 9 and 10, as the fused unit's passes over F (kernels/attention.py).

Sequential (SCA, CSA):  out = sigma(logit_s) * sigma(logit_c) * F   (a missing logit gates with 1)
Parallel (C//S):        out = sigma(logit_s + logit_c) * F
Forward (`attention_gate`) reads F once and writes F'' once. Every arrangement's backward is built from
two passes here: the logit gradients (`attention_rows` / `attention_columns`: reads dF'' and F, by
channel rows or by spatial columns; one gradient completes per program, the other leaves fp32 partial
rows), and the input gradient (`attention_input_grad`: reads dF'', writes dF, adding the squeeze's and
the channel pool's terms). kernels/reference.py's `gate` is the reference.
"""
import torch
import triton
import triton.language as tl

from kernels.common import (LAUNCHES, fold_groups, group_sum, grouped_index, load_grouped, load_plane, load_vector,
                            output_format, plane, row_group)

# Elementwise kernels (forward, and the input gradient) walk each (C, N) plane
# flat, as Inductor does: 2048 values per program at 8 warps are 8 per thread, one 16-byte access in
# bf16 (two in fp32) whatever N is; C * N / 2048 * B programs (>= 3200 at B = 256).
FLAT_BLOCK = 2048
# Logit-gradient passes: one program per (32 channels or 32 columns, batch row), looping over the other
# axis, so one of the two logit gradients completes in the program and the other leaves K fp32 partial
# rows (|F| / 16 bytes in bf16) that the next backward pass adds as it reads them: no extra launch.
BLOCK_C = 32
# 64 columns per step: N <= 400 at the real shapes, so at most 7 steps; 128 B of bf16 per NCHW row.
BLOCK_N = 64
# 8 warps: 8 values of a 32 x 64 tile per thread.
NUM_WARPS = 8
# Programs that keep every SM of an H100 or H200 busy (132 SMs each): the column pass halves its column
# block (and doubles its channel block) where cdiv(N, 64) * B falls short (N = 100 at the gpu profile's
# batch 64: 128 programs -> 256).
FILL_PROGRAMS = 132


@triton.jit
def gate_tile(s, c, HAS_S: tl.constexpr, HAS_C: tl.constexpr, ADDITIVE: tl.constexpr):
    """The gate of a tile from logits s ([1, BLOCK_N] or a whole tile) and c ([BLOCK_C, 1] or a whole
    tile), ones where absent. Returns (gate, ds_factor, dc_factor), tiles: d gate / d logit_s =
    gate * ds_factor, and likewise for c.
    """
    if ADDITIVE:
        gate = tl.sigmoid(s + c)
        ds_factor = 1.0 - gate
        dc_factor = 1.0 - gate
    else:
        if HAS_S:
            s = tl.sigmoid(s)
        if HAS_C:
            c = tl.sigmoid(c)
        gate = c * s
        ds_factor = tl.broadcast_to(1.0 - s, gate.shape)
        dc_factor = tl.broadcast_to(1.0 - c, gate.shape)
    return gate, ds_factor, dc_factor


@triton.jit
def flat_gate(s_ptr, c_ptr, b, offs, mask, C: tl.constexpr, N: tl.constexpr, CHANNELS_LAST: tl.constexpr,
              HAS_S: tl.constexpr, HAS_C: tl.constexpr, ADDITIVE: tl.constexpr):
    """For flat plane offsets offs: (channel, column, gate, sigma(logit_s), sigma(logit_c)) per value (ones
    where a logit is absent), gathering the contiguous (B, N) and (B, C) logits (tiny, cache-resident)."""
    if CHANNELS_LAST:
        n = offs // C
        ch = offs % C
    else:
        n = offs % N
        ch = offs // N
    s = tl.full(offs.shape, 1.0, tl.float32)
    c = tl.full(offs.shape, 1.0, tl.float32)
    if HAS_S:
        s = tl.load(s_ptr + b * N + n, mask=mask, other=0.0).to(tl.float32)
    if HAS_C:
        c = tl.load(c_ptr + b * C + ch, mask=mask, other=0.0).to(tl.float32)
    if ADDITIVE:
        gate = tl.sigmoid(s + c)
    else:
        if HAS_S:
            s = tl.sigmoid(s)
        if HAS_C:
            c = tl.sigmoid(c)
        gate = s * c
    return ch, n, gate, s, c


@triton.jit
def gate_forward_kernel(
    x_ptr, s_ptr, c_ptr, out_ptr, sxb, sob,
    C: tl.constexpr, N: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    HAS_S: tl.constexpr, HAS_C: tl.constexpr, ADDITIVE: tl.constexpr, BLOCK: tl.constexpr,
):
    """out[b, c, n] = gate(s[b, n], c[b, c]) * x[b, c, n], x and out in one layout; grid (cdiv(C N, BLOCK), B)."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < C * N
    _, _, gate, _, _ = flat_gate(s_ptr, c_ptr, b, offs, mask, C, N, CHANNELS_LAST, HAS_S, HAS_C, ADDITIVE)
    x = tl.load(x_ptr + b * sxb + offs, mask=mask, other=0.0).to(tl.float32)
    tl.store(out_ptr + b * sob + offs, (gate * x).to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gate_input_grad_kernel(
    dout_ptr, s_ptr, c_ptr, dz_ptr, ds_ptr, dx_ptr, sdob, sdxb, inv_n, inv_c,
    C: tl.constexpr, N: tl.constexpr, CHANNELS_LAST: tl.constexpr,
    HAS_S: tl.constexpr, HAS_C: tl.constexpr, ADDITIVE: tl.constexpr,
    HAS_DZ: tl.constexpr, SQUEEZE_GATED: tl.constexpr, HAS_DS: tl.constexpr, POOL_WEIGHTED: tl.constexpr,
    BLOCK: tl.constexpr,
):
    """The last backward pass of every arrangement (reads dF'' once, writes dF once, no F):
    dx = dout * gate + dZ[b, c] / N (* sigma(logit_s) if SQUEEZE_GATED) + dS[b, n] / C (* sigma(logit_c)
    if POOL_WEIGHTED): the gate's, squeeze's (eq. 8) and channel pool's (eq. 4) terms summed in registers.
    dout and dx in one layout; grid (cdiv(C N, BLOCK), B)."""
    b = tl.program_id(1).to(tl.int64)
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < C * N
    ch, n, gate, sig_s, sig_c = flat_gate(s_ptr, c_ptr, b, offs, mask, C, N, CHANNELS_LAST, HAS_S, HAS_C, ADDITIVE)
    dx = tl.load(dout_ptr + b * sdob + offs, mask=mask, other=0.0).to(tl.float32) * gate
    if HAS_DZ:
        dz = tl.load(dz_ptr + b * C + ch, mask=mask, other=0.0).to(tl.float32) * inv_n
        if SQUEEZE_GATED:
            dz *= sig_s
        dx += dz
    if HAS_DS:
        ds = tl.load(ds_ptr + b * N + n, mask=mask, other=0.0).to(tl.float32) * inv_c
        if POOL_WEIGHTED:
            ds *= sig_c
        dx += ds
    tl.store(dx_ptr + b * sdxb + offs, dx.to(dx_ptr.dtype.element_ty), mask=mask)


@triton.jit
def gate_logit_grad_rows_kernel(
    x_ptr, s_ptr, c_ptr, dout_ptr, dc_ptr, part_ptr, sxb, sdob,
    C: tl.constexpr, N: tl.constexpr, X_CL: tl.constexpr, DOUT_CL: tl.constexpr,
    HAS_S: tl.constexpr, ADDITIVE: tl.constexpr, PARTIAL_S: tl.constexpr, G: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """First backward pass, by channel rows (reads dF'' and F once): dc[b, c] = sum_n dout x dgate/dc
    (fp32, complete); with PARTIAL_S, part[b, k, n] = the same sum for dgate/ds over this program's
    channels k (fp32, (B, K, N)); grid (K = cdiv(C, BLOCK_C), B). With G > 1 (NCHW, see row_group) a
    program reads BLOCK_C channels as BLOCK_C / G rows of G * N <= BLOCK_N values, and part is (B, K G, N)."""
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    if G == 1:
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        c = load_vector(c_ptr, b, offs_c, C, C, 1, True)
        dc_acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
        for n0 in range(0, N, BLOCK_N):
            offs_n = n0 + tl.arange(0, BLOCK_N)
            s = load_vector(s_ptr, b, offs_n, N, N, 1, HAS_S)
            gate, ds_factor, dc_factor = gate_tile(s[None, :], c[:, None], HAS_S, True, ADDITIVE)
            dgate = (load_plane(dout_ptr, b, sdob, offs_c, offs_n, C, N, DOUT_CL)
                     * load_plane(x_ptr, b, sxb, offs_c, offs_n, C, N, X_CL) * gate)
            if PARTIAL_S:
                tl.store(part_ptr + (b * tl.num_programs(0) + pid_c) * N + offs_n,
                         tl.sum(dgate * ds_factor, axis=0), mask=offs_n < N)
            dc_acc += dgate * dc_factor
        tl.store(dc_ptr + b * C + offs_c, tl.sum(dc_acc, axis=1), mask=offs_c < C)
    else:
        offs_r = pid_c * (BLOCK_C // G) + tl.arange(0, BLOCK_C // G)
        offs_m = tl.arange(0, BLOCK_N)
        channel, column = grouped_index(offs_r, offs_m, N, G)
        mask = (offs_r[:, None] < C // G) & (offs_m[None, :] < G * N)
        c = tl.load(c_ptr + b * C + channel, mask=mask, other=0.0).to(tl.float32)
        s = load_vector(s_ptr, b, column, N, N, 1, HAS_S)
        gate, ds_factor, dc_factor = gate_tile(s[None, :], c, HAS_S, True, ADDITIVE)
        dgate = (load_grouped(dout_ptr, b, sdob, offs_r, offs_m, C, N, G)
                 * load_grouped(x_ptr, b, sxb, offs_r, offs_m, C, N, G) * gate)
        if PARTIAL_S:
            tl.store(part_ptr + (b * tl.num_programs(0) + pid_c) * (G * N) + offs_m,
                     tl.sum(dgate * ds_factor, axis=0), mask=offs_m < G * N)
        for j in tl.static_range(G):
            tl.store(dc_ptr + b * C + offs_r * G + j, group_sum(dgate * dc_factor, offs_m, N, j),
                     mask=offs_r < C // G)


@triton.jit
def gate_logit_grad_columns_kernel(
    x_ptr, s_ptr, c_ptr, dout_ptr, ds_ptr, part_ptr, sxb, sdob,
    C: tl.constexpr, N: tl.constexpr, X_CL: tl.constexpr, DOUT_CL: tl.constexpr,
    HAS_C: tl.constexpr, ADDITIVE: tl.constexpr, PARTIAL_C: tl.constexpr, G: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """First backward pass, by spatial columns (reads dF'' and F once): ds[b, n] = sum_c dout x dgate/ds
    (fp32, complete); with PARTIAL_C, part[b, j, c] = the same sum for dgate/dc over this program's
    columns j (fp32, (B, J, C)); grid (J = cdiv(N, BLOCK_N), B). With G > 1 (NCHW, see row_group): one
    program per batch row over grouped rows of G * N <= BLOCK_N values, J = 1; grid (1, B)."""
    pid_n = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    if G == 1:
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        s = load_vector(s_ptr, b, offs_n, N, N, 1, True)
        ds_acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
        for c0 in range(0, C, BLOCK_C):
            offs_c = c0 + tl.arange(0, BLOCK_C)
            c = load_vector(c_ptr, b, offs_c, C, C, 1, HAS_C)
            gate, ds_factor, dc_factor = gate_tile(s[None, :], c[:, None], True, HAS_C, ADDITIVE)
            dgate = (load_plane(dout_ptr, b, sdob, offs_c, offs_n, C, N, DOUT_CL)
                     * load_plane(x_ptr, b, sxb, offs_c, offs_n, C, N, X_CL) * gate)
            if PARTIAL_C:
                tl.store(part_ptr + (b * tl.num_programs(0) + pid_n) * C + offs_c,
                         tl.sum(dgate * dc_factor, axis=1), mask=offs_c < C)
            ds_acc += dgate * ds_factor
        ds = tl.sum(ds_acc, axis=0)
    else:
        offs_n = tl.arange(0, BLOCK_N)
        s = load_vector(s_ptr, b, offs_n % N, N, N, 1, True)
        ds_acc = tl.zeros((BLOCK_C // G, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, C // G, BLOCK_C // G):
            offs_r = r0 + tl.arange(0, BLOCK_C // G)
            channel, _ = grouped_index(offs_r, offs_n, N, G)
            mask = (offs_r[:, None] < C // G) & (offs_n[None, :] < G * N)
            if HAS_C:
                c = tl.load(c_ptr + b * C + channel, mask=mask, other=0.0).to(tl.float32)
            else:
                c = tl.full(channel.shape, 1.0, tl.float32)
            gate, ds_factor, dc_factor = gate_tile(s[None, :], c, True, HAS_C, ADDITIVE)
            dgate = (load_grouped(dout_ptr, b, sdob, offs_r, offs_n, C, N, G)
                     * load_grouped(x_ptr, b, sxb, offs_r, offs_n, C, N, G) * gate)
            if PARTIAL_C:
                for j in tl.static_range(G):
                    tl.store(part_ptr + b * C + offs_r * G + j, group_sum(dgate * dc_factor, offs_n, N, j),
                             mask=offs_r < C // G)
            ds_acc += dgate * ds_factor
        ds = fold_groups(tl.sum(ds_acc, axis=0), offs_n, N, G, BLOCK_N)
    tl.store(ds_ptr + b * N + offs_n, ds, mask=offs_n < N)


def _logits(x, spatial_logit, channel_logit):
    """The logits as contiguous (B, N) / (B, C) rows (x stands in for an absent one; never read)."""
    s = spatial_logit.contiguous() if spatial_logit is not None else x
    c = channel_logit.contiguous() if channel_logit is not None else x
    return s, c


def _rows_tiling(x: torch.Tensor, channels_last: bool) -> tuple[int, int, int, int]:
    """(G, BLOCK_C, BLOCK_N, programs per batch row) of gate_logit_grad_rows on the (C, N) planes of x."""
    channels, n = x.shape[1], x.shape[2] * x.shape[3]
    group = row_group(x, channels_last)
    block_c, block_n = BLOCK_C, BLOCK_N
    if group > 1:   # one tile spans grouped rows of G * N values
        block_n = triton.next_power_of_2(group * n)
        block_c = group * max(1, BLOCK_C * BLOCK_N // block_n)
    return group, block_c, block_n, triton.cdiv(channels, block_c)


def _columns_tiling(x: torch.Tensor, channels_last: bool) -> tuple[int, int, int, int]:
    """(G, BLOCK_C, BLOCK_N, programs per batch row) of gate_logit_grad_columns on the (C, N) planes of x."""
    n = x.shape[2] * x.shape[3]
    group = row_group(x, channels_last)
    if group > 1:   # one program per batch row: its tile spans grouped rows of G * N values
        block_n = triton.next_power_of_2(group * n)
        return group, group * max(1, BLOCK_C * BLOCK_N // block_n), block_n, 1
    if triton.cdiv(n, BLOCK_N) * x.shape[0] >= FILL_PROGRAMS:
        return group, BLOCK_C, BLOCK_N, triton.cdiv(n, BLOCK_N)
    # Half the columns, twice the channels: the same 2048-value tile, so still 16-byte accesses.
    return group, 2 * BLOCK_C, BLOCK_N // 2, triton.cdiv(n, BLOCK_N // 2)


def logit_grad_partials(grad: torch.Tensor, x: torch.Tensor, by_rows: bool) -> int:
    """K, the partial rows gate_logit_grad_rows (by_rows) or gate_logit_grad_columns leaves per batch row
    for these operands: what a fake kernel must declare before the launch."""
    x, _, x_cl = plane(x)
    _, _, dout_cl = plane(grad)
    group, _, _, blocks = (_rows_tiling if by_rows else _columns_tiling)(x, x_cl or dout_cl)
    return blocks * group if by_rows else blocks


def gate_forward(
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
    channel_logit: torch.Tensor | None,  # (B, C) or None
    *,
    additive: bool,
) -> torch.Tensor:                       # (B, C, T, F), in x's layout
    """Launch the forward kernel."""
    batch, channels, time, freq = x.shape
    layout = output_format(x)
    x, sxb, x_cl = plane(x.contiguous(memory_format=layout))
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=layout)
    if out.numel() == 0:
        return out
    n = time * freq
    s_arg, c_arg = _logits(x, spatial_logit, channel_logit)
    gate_forward_kernel[(triton.cdiv(channels * n, FLAT_BLOCK), batch)](
        x, s_arg, c_arg, out, sxb, out.stride(0), C=channels, N=n, CHANNELS_LAST=x_cl,
        HAS_S=spatial_logit is not None, HAS_C=channel_logit is not None, ADDITIVE=additive,
        BLOCK=FLAT_BLOCK, num_warps=NUM_WARPS,
    )
    LAUNCHES["gate_forward"] += 1
    return out


def gate_logit_grad_rows(
    grad: torch.Tensor,                  # (B, C, T, F), dL/dout
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
    channel_logit: torch.Tensor,         # (B, C)
    *,
    additive: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch gate_logit_grad_rows_kernel: (dchannel_logit (B, C) fp32, spatial partials (B, K, N) fp32,
    empty without a spatial logit)."""
    batch, channels, time, freq = x.shape
    n = time * freq
    x, sxb, x_cl = plane(x)
    grad, sdob, dout_cl = plane(grad)
    group, block_c, block_n, blocks = _rows_tiling(x, x_cl or dout_cl)
    dc = torch.empty((batch, channels), device=x.device, dtype=torch.float32)
    parts = torch.empty((batch, blocks * group, n) if spatial_logit is not None else (batch, 0, n),
                        device=x.device, dtype=torch.float32)
    s_arg, c_arg = _logits(x, spatial_logit, channel_logit)
    gate_logit_grad_rows_kernel[(blocks, batch)](
        x, s_arg, c_arg, grad, dc, parts, sxb, sdob, C=channels, N=n, X_CL=x_cl, DOUT_CL=dout_cl,
        HAS_S=spatial_logit is not None, ADDITIVE=additive, PARTIAL_S=spatial_logit is not None, G=group,
        BLOCK_C=block_c, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    LAUNCHES["gate_logit_grad_rows"] += 1
    return dc, parts


def gate_logit_grad_columns(
    grad: torch.Tensor,                  # (B, C, T, F), dL/dout
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor,         # (B, 1, T, F)
    channel_logit: torch.Tensor | None,  # (B, C) or None
    *,
    additive: bool,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Launch gate_logit_grad_columns_kernel: (dspatial_logit (B, 1, T, F) fp32, channel partials (B, J, C)
    fp32, empty without a channel logit)."""
    batch, channels, time, freq = x.shape
    n = time * freq
    x, sxb, x_cl = plane(x)
    grad, sdob, dout_cl = plane(grad)
    group, block_c, block_n, blocks = _columns_tiling(x, x_cl or dout_cl)
    ds = torch.empty((batch, 1, time, freq), device=x.device, dtype=torch.float32)
    parts = torch.empty((batch, blocks, channels) if channel_logit is not None else (batch, 0, channels),
                        device=x.device, dtype=torch.float32)
    s_arg, c_arg = _logits(x, spatial_logit, channel_logit)
    gate_logit_grad_columns_kernel[(blocks, batch)](
        x, s_arg, c_arg, grad, ds, parts, sxb, sdob, C=channels, N=n, X_CL=x_cl, DOUT_CL=dout_cl,
        HAS_C=channel_logit is not None, ADDITIVE=additive, PARTIAL_C=channel_logit is not None, G=group,
        BLOCK_C=block_c, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    LAUNCHES["gate_logit_grad_columns"] += 1
    return ds, parts


def gate_input_grad(
    grad: torch.Tensor,                  # (B, C, T, F), dL/dout
    like: torch.Tensor,                  # (B, C, T, F): dx gets its shape, dtype and layout
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
    channel_logit: torch.Tensor | None,  # (B, C) or None
    *,
    additive: bool,
    squeeze_grad: torch.Tensor | None,   # (B, C) dL/dZ of a squeeze of this map, or None
    squeeze_gated: bool,                 # the squeeze was weighted by sigma(spatial_logit) (SCA)
    pool_grad: torch.Tensor | None,      # (B, 1, T, F) dL/dS of a channel pool of this map, or None
    pool_weighted: bool,                 # the pool was weighted by sigma(channel_logit) (CSA)
) -> torch.Tensor:                             # (B, C, T, F) in like's layout
    """Launch gate_input_grad_kernel. A gradient in another layout than like is copied once into it."""
    batch, channels, time, freq = like.shape
    n = time * freq
    layout = output_format(like)
    dx = torch.empty(like.shape, device=like.device, dtype=like.dtype, memory_format=layout)
    if dx.numel() == 0:
        return dx
    grad, sdob, cl = plane(grad.contiguous(memory_format=layout))
    s_arg, c_arg = _logits(grad, spatial_logit, channel_logit)
    dz = squeeze_grad.contiguous() if squeeze_grad is not None else grad
    ds = pool_grad.contiguous() if pool_grad is not None else grad
    gate_input_grad_kernel[(triton.cdiv(channels * n, FLAT_BLOCK), batch)](
        grad, s_arg, c_arg, dz, ds, dx, sdob, dx.stride(0), 1.0 / n, 1.0 / channels,
        C=channels, N=n, CHANNELS_LAST=cl,
        HAS_S=spatial_logit is not None, HAS_C=channel_logit is not None, ADDITIVE=additive,
        HAS_DZ=squeeze_grad is not None, SQUEEZE_GATED=squeeze_gated,
        HAS_DS=pool_grad is not None, POOL_WEIGHTED=pool_weighted,
        BLOCK=FLAT_BLOCK, num_warps=NUM_WARPS,
    )
    LAUNCHES["gate_input_grad"] += 1
    return dx
