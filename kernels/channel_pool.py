"""Cross-channel average pooling, eq. 4, as the fused unit's passes over F (kernels/attention.py).

Forward (`attention_pool`): S = mean over C of F, channel-weighted for CSA; reads F once and writes the
small S. CSA's second backward pass (`attention_pool_logit_grad`): the channel logit's gradient through
the weighted pool, reading F once more. kernels/reference.py's `channel_pool` is the reference.
"""
import torch
import triton
import triton.language as tl

from kernels.common import (LAUNCHES, channel_sum, fold_groups, group_sum, grouped_index, load_grouped, load_vector,
                            plane, row_group, space_sum)

# Forward: one program per (32 spatial columns, batch row), looping over all C. A reduction over C
# needs the whole channel range in one program (no atomics, deterministic); 32 columns keep enough
# programs at the small maps (N = 100, B = 32: 128 programs for 132 SMs; 64 would leave half idle).
# 32 columns are 64 B (bf16) of each NCHW channel row, whole 32-B sectors; channels_last reads along C.
FORWARD_BLOCK_N = 32
# 64 channels per step: a 2048-value tile, 8 per thread at 8 warps.
FORWARD_BLOCK_C = 64
# CSA's logit-gradient pass: one program per (32 channels, batch row), looping over N; C / 32 * B =
# 256-4096 programs at the real shapes, and the gradient (a reduction over N) completes inside the program.
BACKWARD_BLOCK_C = 32
# 64 columns per step: the same 2048-value tile as the forward.
BACKWARD_BLOCK_N = 64
# 8 warps: 8 values per thread. ptxas (sm_90, bf16, NCHW) at 4 warps / 8 warps: forward 72 / 39
# registers; fewer registers let more programs share an SM and hide DRAM latency.
NUM_WARPS = 8


@triton.jit
def channel_pool_forward_kernel(
    x_ptr, w_ptr, s_ptr, sxb, swb, ssb, inv_c,
    C: tl.constexpr, N: tl.constexpr, X_CL: tl.constexpr,
    HAS_W: tl.constexpr, G: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """S[b, n] = 1/C sum_c w[b, c] x[b, c, n]; grid (cdiv(N, BLOCK_N), B). With G > 1 (NCHW, see
    row_group): one program per batch row reads BLOCK_C / G grouped rows of G * N <= BLOCK_N values at a
    time and folds the G column sums; grid (1, B)."""
    b = tl.program_id(1).to(tl.int64)
    if G == 1:
        offs_n = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
        total = channel_sum(x_ptr, w_ptr, b, sxb, swb, offs_n, C, N, X_CL, HAS_W, BLOCK_C, BLOCK_N)
    else:
        offs_n = tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_C // G, BLOCK_N), dtype=tl.float32)
        for r0 in range(0, C // G, BLOCK_C // G):
            offs_r = r0 + tl.arange(0, BLOCK_C // G)
            x = load_grouped(x_ptr, b, sxb, offs_r, offs_n, C, N, G)
            if HAS_W:
                channel, _ = grouped_index(offs_r, offs_n, N, G)
                mask = (offs_r[:, None] < C // G) & (offs_n[None, :] < G * N)
                x *= tl.load(w_ptr + b * swb + channel, mask=mask, other=0.0).to(tl.float32)
            acc += x
        total = fold_groups(tl.sum(acc, axis=0), offs_n, N, G, BLOCK_N)
    tl.store(s_ptr + b * ssb + offs_n, (total * inv_c).to(s_ptr.dtype.element_ty), mask=offs_n < N)


@triton.jit
def channel_logit_grad_store(l_ptr, part_ptr, dl_ptr, b, channel, dw, C: tl.constexpr, K):
    """dl[b, c] = sigma'(l[b, c]) dw + sum_k part[b, k, c] for the channels `channel` (fp32)."""
    mask = channel < C
    w = tl.sigmoid(tl.load(l_ptr + b * C + channel, mask=mask, other=0.0).to(tl.float32))
    dl = w * (1.0 - w) * dw
    for k in range(K):
        dl += tl.load(part_ptr + (b * K + k) * C + channel, mask=mask, other=0.0)
    tl.store(dl_ptr + b * C + channel, dl, mask=mask)


@triton.jit
def channel_pool_logit_grad_kernel(
    x_ptr, l_ptr, ds_ptr, part_ptr, dl_ptr, sxb, inv_c, K,
    C: tl.constexpr, N: tl.constexpr, X_CL: tl.constexpr, G: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """CSA's second backward pass (reads F once): the channel-logit gradient of eq. 4 with w = sigma(l),
    dl[b, c] = sum_k part[b, k, c] + sigma'(l[b, c]) / C sum_n dS[b, n] x[b, c, n], where part holds the
    gate's per-column-block terms (fp32, (B, K, C)); grid (cdiv(C, BLOCK_C), B). With G > 1 (NCHW, see
    row_group) a program reads its BLOCK_C channels as BLOCK_C / G rows of G * N <= BLOCK_N values."""
    b = tl.program_id(1).to(tl.int64)
    if G == 1:
        channel = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
        total = space_sum(x_ptr, ds_ptr, b, sxb, N, channel, C, N, X_CL, True, False, BLOCK_C, BLOCK_N)
        channel_logit_grad_store(l_ptr, part_ptr, dl_ptr, b, channel, total * inv_c, C, K)
    else:
        offs_r = tl.program_id(0) * (BLOCK_C // G) + tl.arange(0, BLOCK_C // G)
        offs_m = tl.arange(0, BLOCK_N)
        _, column = grouped_index(offs_r, offs_m, N, G)
        ds = load_vector(ds_ptr, b, column, N, N, 1, True)
        x = load_grouped(x_ptr, b, sxb, offs_r, offs_m, C, N, G)
        for j in tl.static_range(G):
            total = group_sum(x * ds[None, :], offs_m, N, j)
            channel_logit_grad_store(l_ptr, part_ptr, dl_ptr, b, offs_r * G + j, total * inv_c, C, K)


def channel_pool_forward(
    x: torch.Tensor,                      # (B, C, T, F)
    channel_weight: torch.Tensor | None,  # (B, C) or None
    out_dtype: torch.dtype | None = None,
) -> torch.Tensor:                        # (B, 1, T, F), in out_dtype (x's dtype by default)
    """Launch the forward kernel."""
    batch, channels, time, freq = x.shape
    s = torch.empty((batch, 1, time, freq), device=x.device, dtype=out_dtype or x.dtype)
    if s.numel() == 0 or channels == 0:
        return s.zero_()
    x, sxb, x_cl = plane(x)
    w = channel_weight.contiguous() if channel_weight is not None else x
    n = time * freq
    group = row_group(x, x_cl)
    block_c, block_n, columns = FORWARD_BLOCK_C, FORWARD_BLOCK_N, triton.cdiv(n, FORWARD_BLOCK_N)
    if group > 1:   # one program per batch row: its tile spans grouped rows of G * N values
        block_n = triton.next_power_of_2(group * n)
        block_c, columns = group * max(1, FORWARD_BLOCK_C * FORWARD_BLOCK_N // block_n), 1
    channel_pool_forward_kernel[(columns, batch)](
        x, w, s, sxb, channels if channel_weight is not None else 0, n, 1.0 / channels,
        C=channels, N=n, X_CL=x_cl,
        HAS_W=channel_weight is not None, G=group, BLOCK_C=block_c, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    LAUNCHES["channel_pool_forward"] += 1
    return s


def channel_pool_logit_grad(
    x: torch.Tensor,              # (B, C, T, F)
    channel_logit: torch.Tensor,  # (B, C); the pool's channel weight is sigmoid(channel_logit)
    grad: torch.Tensor,           # (B, 1, T, F), dL/dS
    parts: torch.Tensor,          # (B, K, C) fp32 terms added to the result
) -> torch.Tensor:                # (B, C) fp32
    """Launch channel_pool_logit_grad_kernel (CSA's second backward pass)."""
    batch, channels, time, freq = x.shape
    n = time * freq
    dl = torch.empty((batch, channels), device=x.device, dtype=torch.float32)
    x, sxb, x_cl = plane(x)
    group = row_group(x, x_cl)
    block_c, block_n = BACKWARD_BLOCK_C, BACKWARD_BLOCK_N
    if group > 1:   # one tile spans grouped rows of G * N values
        block_n = triton.next_power_of_2(group * n)
        block_c = group * max(1, BACKWARD_BLOCK_C * BACKWARD_BLOCK_N // block_n)
    channel_pool_logit_grad_kernel[(triton.cdiv(channels, block_c), batch)](
        x, channel_logit.contiguous(), grad.contiguous(), parts.contiguous(), dl, sxb, 1.0 / channels,
        parts.shape[1], C=channels, N=n, X_CL=x_cl, G=group,
        BLOCK_C=block_c, BLOCK_N=block_n, num_warps=NUM_WARPS,
    )
    LAUNCHES["channel_pool_logit_grad"] += 1
    return dl
