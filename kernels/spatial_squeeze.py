"""The channel descriptor of eq. 8 as the fused unit's passes over F (kernels/attention.py).

Forward (`attention_squeeze`): Z = mean over (T, F) of sigma(logit_s) * F (the plain SE squeeze without
a logit); F' = sigma(logit_s) * F is never written: F is read once and the small Z written. SCA's second
backward pass (`attention_squeeze_logit_grad`): the spatial logit's gradient through the gated squeeze,
reading F once more and recomputing sigma(logit_s) instead of storing F'. kernels/reference.py's
`spatial_squeeze` is the reference.
"""
import torch
import triton
import triton.language as tl

from kernels.common import (LAUNCHES, channel_sum, fold_groups, group_sum, grouped_index, load_grouped, load_vector,
                            plane, row_group, space_sum)

# Forward: one program per (32 channels, batch row), looping over N = T * F (<= 400 at the real
# shapes: at most 7 steps), so Z[b, c] completes in one program without atomics; C / 32 * B gives
# 256-4096 programs at the real shapes, enough to fill 132 SMs several times over.
FORWARD_BLOCK_C = 32
# 64 columns per step: a 2048-value tile (8 per thread at 8 warps); 128 B of bf16 per NCHW row.
FORWARD_BLOCK_N = 64
# SCA's logit-gradient pass reduces over C, so one program per (32 columns, batch row) loops over C;
# 32 columns rather than 64 double the programs at N = 100 (128 at B = 32, one per SM).
BACKWARD_BLOCK_N = 32
# 64 channels per step: the same 2048-value tile as the forward.
BACKWARD_BLOCK_C = 64
# 8 warps: 8 values per thread. ptxas (sm_90, bf16, NCHW) at 4 warps / 8 warps: forward 80 / 57
# registers; fewer registers let more programs share an SM and hide DRAM latency.
NUM_WARPS = 8


@triton.jit
def spatial_squeeze_forward_kernel(
    x_ptr, l_ptr, z_ptr, sxb, slb, inv_n,
    C: tl.constexpr, N: tl.constexpr, X_CL: tl.constexpr,
    HAS_L: tl.constexpr, G: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """Z[b, c] = 1/N sum_n sigma(l[b, n]) x[b, c, n]; grid (cdiv(C, BLOCK_C), B). With G > 1 (NCHW, see
    row_group) a program reads its BLOCK_C channels as BLOCK_C / G rows of G * N <= BLOCK_N values."""
    b = tl.program_id(1).to(tl.int64)
    if G == 1:
        offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        total = space_sum(x_ptr, l_ptr, b, sxb, slb, offs_c, C, N, X_CL, HAS_L, True, BLOCK_C, BLOCK_N)
        tl.store(z_ptr + b * C + offs_c, (total * inv_n).to(z_ptr.dtype.element_ty), mask=offs_c < C)
    else:
        offs_r = tl.program_id(0) * (BLOCK_C // G) + tl.arange(0, BLOCK_C // G)
        offs_m = tl.arange(0, BLOCK_N)
        _, column = grouped_index(offs_r, offs_m, N, G)
        gate = load_vector(l_ptr, b, column, N, slb, 1, HAS_L)
        if HAS_L:
            gate = tl.sigmoid(gate)
        x = load_grouped(x_ptr, b, sxb, offs_r, offs_m, C, N, G)
        for j in tl.static_range(G):
            total = group_sum(x * gate[None, :], offs_m, N, j)
            tl.store(z_ptr + b * C + offs_r * G + j, (total * inv_n).to(z_ptr.dtype.element_ty),
                     mask=offs_r < C // G)


@triton.jit
def spatial_squeeze_logit_grad_kernel(
    x_ptr, l_ptr, dz_ptr, part_ptr, dl_ptr, sxb, inv_n, K,
    C: tl.constexpr, N: tl.constexpr, X_CL: tl.constexpr, G: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """SCA's second backward pass (reads F once): the spatial-logit gradient of eq. 8,
    dl[b, n] = sum_k part[b, k, n] + sigma'(l[b, n]) / N sum_c dZ[b, c] x[b, c, n], where part holds the
    gate's per-channel-block terms (fp32, (B, K, N)); grid (cdiv(N, BLOCK_N), B). With G > 1 (NCHW, see
    row_group): one program per batch row over grouped rows of G * N <= BLOCK_N values; grid (1, B)."""
    b = tl.program_id(1).to(tl.int64)
    if G == 1:
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        total = channel_sum(x_ptr, dz_ptr, b, sxb, C, offs_n, C, N, X_CL, True, BLOCK_C, BLOCK_N)
    else:
        offs_n = tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_C // G, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, C // G, BLOCK_C // G):
            offs_r = r0 + tl.arange(0, BLOCK_C // G)
            channel, _ = grouped_index(offs_r, offs_n, N, G)
            mask = (offs_r[:, None] < C // G) & (offs_n[None, :] < G * N)
            dz = tl.load(dz_ptr + b * C + channel, mask=mask, other=0.0).to(tl.float32)
            acc += load_grouped(x_ptr, b, sxb, offs_r, offs_n, C, N, G) * dz
        total = fold_groups(tl.sum(acc, axis=0), offs_n, N, G, BLOCK_N)
    mask_n = offs_n < N
    gate = tl.sigmoid(tl.load(l_ptr + b * N + offs_n, mask=mask_n, other=0.0).to(tl.float32))
    dl = gate * (1.0 - gate) * total * inv_n
    for k in range(K):
        dl += tl.load(part_ptr + (b * K + k) * N + offs_n, mask=mask_n, other=0.0)
    tl.store(dl_ptr + b * N + offs_n, dl, mask=mask_n)


def spatial_squeeze_forward(
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:                       # (B, C), in out_dtype (x's dtype by default)
    """Launch the forward kernel."""
    batch, channels, time, freq = x.shape
    z = torch.empty((batch, channels), device=x.device, dtype=out_dtype or x.dtype)
    n = time * freq
    if z.numel() == 0 or n == 0:
        return z.zero_()
    x, sxb, x_cl = plane(x)
    logit = spatial_logit.contiguous() if spatial_logit is not None else x
    group = row_group(x, x_cl)
    block_c, block_n = FORWARD_BLOCK_C, FORWARD_BLOCK_N
    if group > 1:   # one tile spans grouped rows of G * N values
        block_n = triton.next_power_of_2(group * n)
        block_c = group * max(1, FORWARD_BLOCK_C * FORWARD_BLOCK_N // block_n)
    spatial_squeeze_forward_kernel[(triton.cdiv(channels, block_c), batch)](
        x, logit, z, sxb, n if spatial_logit is not None else 0, 1.0 / n,
        C=channels, N=n, X_CL=x_cl,
        HAS_L=spatial_logit is not None, G=group, BLOCK_C=block_c, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    LAUNCHES["spatial_squeeze_forward"] += 1
    return z


def spatial_squeeze_logit_grad(
    x: torch.Tensor,              # (B, C, T, F)
    spatial_logit: torch.Tensor,  # (B, 1, T, F)
    grad: torch.Tensor,           # (B, C), dL/dZ
    parts: torch.Tensor,          # (B, K, N) fp32 terms added to the result
) -> torch.Tensor:                # (B, 1, T, F) fp32
    """Launch spatial_squeeze_logit_grad_kernel (SCA's second backward pass)."""
    batch, channels, time, freq = x.shape
    n = time * freq
    dl = torch.empty((batch, 1, time, freq), device=x.device, dtype=torch.float32)
    x, sxb, x_cl = plane(x)
    group = row_group(x, x_cl)
    block_c, block_n, columns = BACKWARD_BLOCK_C, BACKWARD_BLOCK_N, triton.cdiv(n, BACKWARD_BLOCK_N)
    if group > 1:   # one program per batch row: its tile spans grouped rows of G * N values
        block_n = triton.next_power_of_2(group * n)
        block_c, columns = group * max(1, BACKWARD_BLOCK_C * BACKWARD_BLOCK_N // block_n), 1
    spatial_squeeze_logit_grad_kernel[(columns, batch)](
        x, spatial_logit.contiguous(), grad.contiguous(), parts.contiguous(), dl, sxb, 1.0 / n,
        parts.shape[1], C=channels, N=n, X_CL=x_cl, G=group,
        BLOCK_C=block_c, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    LAUNCHES["spatial_squeeze_logit_grad"] += 1
    return dl
