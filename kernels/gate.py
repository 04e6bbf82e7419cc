"""Sigmoid-gated rescaling, eqs. 7, 9 and 10.

Sequential (SCA, CSA):  out = sigma(logit_s) * sigma(logit_c) * F   (a missing logit gates with 1)
Parallel (C//S):        out = sigma(logit_s + logit_c) * F
Forward reads F once and writes F'' once. Backward reads F and dF'' once each and writes dF once;
the channel-logit gradient (a sum over T, F) completes in each program, the spatial one (a sum
over C) is summed over per-program partials. The op `fastsca::gate` runs these kernels on CUDA (and
on CPU under TRITON_INTERPRET=1) and `gate_reference` otherwise.
"""
import torch
import triton
import triton.language as tl

from kernels.common import (LAUNCHES, check_channel, check_map, check_spatial, load_tile, load_vector,
                            map_strides, output_format, store_tile, stride_or_zero, use_triton)

# One program per (32 channels, batch row), looping over N = T * F, forward and backward: the
# channel-logit gradient then completes in the program, and the spatial one needs C / 32 partial
# rows, an fp32 buffer of |F| / 32 elements (<= 1/16 of F's bytes in bf16). C / 32 * B = 256-4096
# programs at the real shapes. 64 channels would halve the partials but also the programs at B = 32.
BLOCK_C = 32
# 64 columns per step: N <= 400 at the real shapes, so at most 7 steps; 128 B of bf16 per NCHW row.
BLOCK_N = 64
# 8 warps: 8 values of the 32 x 64 tile per thread. ptxas (sm_90, bf16, NCHW): 138 registers forward
# and 210 backward at 4 warps, 64 and 113 at 8 warps, i.e. 32 and 16 resident warps per SM instead of
# 12 and 8 to hide DRAM latency; the backward holds x, dout, the gate and its two factors per tile.
NUM_WARPS = 8


@triton.jit
def gate_tile(s, c, HAS_S: tl.constexpr, HAS_C: tl.constexpr, ADDITIVE: tl.constexpr):
    """The gate of a [BLOCK_C, BLOCK_N] tile from logits s [BLOCK_N] and c [BLOCK_C] (ones when absent).

    Returns (gate, ds_factor, dc_factor): d gate / d logit_s = gate * ds_factor, and likewise for c.
    """
    if ADDITIVE:
        gate = tl.sigmoid(s[None, :] + c[:, None])
        ds_factor = 1.0 - gate
        dc_factor = 1.0 - gate
    else:
        if HAS_S:
            s = tl.sigmoid(s)
        if HAS_C:
            c = tl.sigmoid(c)
        gate = c[:, None] * s[None, :]
        ds_factor = tl.broadcast_to((1.0 - s)[None, :], gate.shape)
        dc_factor = tl.broadcast_to((1.0 - c)[:, None], gate.shape)
    return gate, ds_factor, dc_factor


@triton.jit
def gate_forward_kernel(
    x_ptr, s_ptr, c_ptr, out_ptr,
    C, N,
    sxb, sxc, sxn, ssb, ssn, scb, scc, sob, soc, son,
    HAS_S: tl.constexpr, HAS_C: tl.constexpr, ADDITIVE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """out[b, c, n] = gate(s[b, n], c[b, c]) * x[b, c, n]; grid (cdiv(C, BLOCK_C), B)."""
    b = tl.program_id(1).to(tl.int64)
    offs_c = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    c = load_vector(c_ptr, b, offs_c, C, scb, scc, HAS_C)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = load_vector(s_ptr, b, offs_n, N, ssb, ssn, HAS_S)
        gate, _, _ = gate_tile(s, c, HAS_S, HAS_C, ADDITIVE)
        x = load_tile(x_ptr, b, offs_c, offs_n, C, N, sxb, sxc, sxn)
        store_tile(out_ptr, gate * x, b, offs_c, offs_n, C, N, sob, soc, son)


@triton.jit
def gate_backward_kernel(
    x_ptr, s_ptr, c_ptr, dout_ptr, dx_ptr, ds_part_ptr, dc_ptr,
    C, N,
    sxb, sxc, sxn, ssb, ssn, scb, scc, sdob, sdoc, sdon, sdxb, sdxc, sdxn, spb, spk, sdcb, sdcc,
    HAS_S: tl.constexpr, HAS_C: tl.constexpr, ADDITIVE: tl.constexpr,
    BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr,
):
    """dx = gate * dout; dc[b, c] = sum_n dout x dgate/dc; partial ds[b, k, n] over this program's
    channels k; grid (cdiv(C, BLOCK_C), B)."""
    pid_c = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
    c = load_vector(c_ptr, b, offs_c, C, scb, scc, HAS_C)
    dc_acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        s = load_vector(s_ptr, b, offs_n, N, ssb, ssn, HAS_S)
        gate, ds_factor, dc_factor = gate_tile(s, c, HAS_S, HAS_C, ADDITIVE)
        dout = load_tile(dout_ptr, b, offs_c, offs_n, C, N, sdob, sdoc, sdon)
        store_tile(dx_ptr, gate * dout, b, offs_c, offs_n, C, N, sdxb, sdxc, sdxn)
        if HAS_S or HAS_C:
            dgate = dout * load_tile(x_ptr, b, offs_c, offs_n, C, N, sxb, sxc, sxn) * gate
            if HAS_S:
                ds = tl.sum(dgate * ds_factor, axis=0)
                tl.store(ds_part_ptr + b * spb + pid_c * spk + offs_n, ds, mask=offs_n < N)
            if HAS_C:
                dc_acc += dgate * dc_factor
    if HAS_C:
        dc = tl.sum(dc_acc, axis=1)
        tl.store(dc_ptr + b * sdcb + offs_c * sdcc, dc.to(dc_ptr.dtype.element_ty), mask=offs_c < C)


def _logit_strides(x, spatial_logit, channel_logit):
    """Strides of the optional logits (0 when absent) and the logits with T, F merged."""
    ssb = ssn = 0
    if spatial_logit is not None:
        spatial_logit, ssb, _, ssn = map_strides(spatial_logit)
    scb, scc = stride_or_zero(channel_logit, 0), stride_or_zero(channel_logit, 1)
    s_arg = spatial_logit if spatial_logit is not None else x
    c_arg = channel_logit if channel_logit is not None else x
    return s_arg, c_arg, ssb, ssn, scb, scc


def gate_forward(
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
    channel_logit: torch.Tensor | None,  # (B, C) or None
    additive: bool,
) -> torch.Tensor:                       # (B, C, T, F), in x's layout
    """Launch the forward kernel."""
    batch, channels, time, freq = x.shape
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=output_format(x))
    if out.numel() == 0:
        return out
    x, sxb, sxc, sxn = map_strides(x)
    _, sob, soc, son = map_strides(out)
    s_arg, c_arg, ssb, ssn, scb, scc = _logit_strides(x, spatial_logit, channel_logit)
    grid = (triton.cdiv(channels, BLOCK_C), batch)
    gate_forward_kernel[grid](
        x, s_arg, c_arg, out,
        channels, time * freq,
        sxb, sxc, sxn, ssb, ssn, scb, scc, sob, soc, son,
        HAS_S=spatial_logit is not None, HAS_C=channel_logit is not None, ADDITIVE=additive,
        BLOCK_C=BLOCK_C, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS,
    )
    LAUNCHES["gate_forward"] += 1
    return out


def gate_backward(
    grad: torch.Tensor,                  # (B, C, T, F), dL/dout
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
    channel_logit: torch.Tensor | None,  # (B, C) or None
    additive: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Launch the backward kernel: (dx in x's layout, dspatial_logit, dchannel_logit); absent logits get empty grads."""
    batch, channels, time, freq = x.shape
    n = time * freq
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=output_format(x))
    blocks = triton.cdiv(channels, BLOCK_C)
    # Absent logits get a 0-element gradient (the kernel never touches it; autograd returns None).
    ds_part = torch.empty((batch, blocks, n) if spatial_logit is not None else (0, 0, 0),
                          device=x.device, dtype=torch.float32)
    dc = torch.empty((batch, channels) if channel_logit is not None else (0, 0), device=x.device,
                     dtype=channel_logit.dtype if channel_logit is not None else x.dtype)
    if dx.numel() > 0:
        x, sxb, sxc, sxn = map_strides(x)
        grad, sdob, sdoc, sdon = map_strides(grad)
        _, sdxb, sdxc, sdxn = map_strides(dx)
        s_arg, c_arg, ssb, ssn, scb, scc = _logit_strides(x, spatial_logit, channel_logit)
        gate_backward_kernel[(blocks, batch)](
            x, s_arg, c_arg, grad, dx, ds_part, dc,
            channels, n,
            sxb, sxc, sxn, ssb, ssn, scb, scc, sdob, sdoc, sdon, sdxb, sdxc, sdxn,
            ds_part.stride(0), ds_part.stride(1), dc.stride(0), dc.stride(1),
            HAS_S=spatial_logit is not None, HAS_C=channel_logit is not None, ADDITIVE=additive,
            BLOCK_C=BLOCK_C, BLOCK_N=BLOCK_N, num_warps=NUM_WARPS,
        )
        LAUNCHES["gate_backward"] += 1
    else:
        dc.zero_()
        ds_part.zero_()
    if channel_logit is None:
        dc = x.new_empty((0,))
    if spatial_logit is None:
        return dx, x.new_empty((0,)), dc
    ds = ds_part.sum(dim=1).to(spatial_logit.dtype).view(batch, 1, time, freq)
    return dx, ds, dc


def _check(x, spatial_logit, channel_logit, additive) -> None:
    check_map("gate", x)
    check_spatial("gate", "spatial_logit", spatial_logit, x)
    check_channel("gate", "channel_logit", channel_logit, x)
    if additive and (spatial_logit is None or channel_logit is None):
        raise ValueError("gate: additive (C//S) gating needs both a spatial and a channel logit")


@torch.library.custom_op("fastsca::gate", mutates_args=())
def _gate_op(
    x: torch.Tensor, spatial_logit: torch.Tensor | None, channel_logit: torch.Tensor | None, additive: bool,
) -> torch.Tensor:
    _check(x, spatial_logit, channel_logit, additive)
    if use_triton(x):
        return gate_forward(x, spatial_logit, channel_logit, additive)
    return gate_reference(x, spatial_logit, channel_logit, additive).contiguous(memory_format=output_format(x))


@_gate_op.register_fake
def _(x, spatial_logit, channel_logit, additive):
    _check(x, spatial_logit, channel_logit, additive)
    return torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=output_format(x))


@torch.library.custom_op("fastsca::gate_backward", mutates_args=())
def _gate_backward_op(
    grad: torch.Tensor, x: torch.Tensor, spatial_logit: torch.Tensor | None,
    channel_logit: torch.Tensor | None, additive: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if use_triton(x):
        return gate_backward(grad, x, spatial_logit, channel_logit, additive)
    # The reference's backward in plain PyTorch (autograd cannot run inside a custom op's body).
    s = spatial_logit.float() if spatial_logit is not None else None
    c = channel_logit.float()[:, :, None, None] if channel_logit is not None else None
    if additive:
        gate = torch.sigmoid(s + c)
        ds_factor = dc_factor = 1 - gate
    else:
        sig_s = torch.sigmoid(s) if s is not None else torch.ones((), device=x.device)
        sig_c = torch.sigmoid(c) if c is not None else torch.ones((), device=x.device)
        gate, ds_factor, dc_factor = sig_s * sig_c, 1 - sig_s, 1 - sig_c
    g = grad.float()
    dx = (g * gate).to(x.dtype).contiguous(memory_format=output_format(x))
    dgate = g * x.float() * gate
    ds = x.new_empty((0,))
    if spatial_logit is not None:
        ds = (dgate * ds_factor).sum(dim=1, keepdim=True).to(spatial_logit.dtype).contiguous()
    dc = x.new_empty((0,))
    if channel_logit is not None:
        dc = (dgate * dc_factor).sum(dim=(2, 3)).to(channel_logit.dtype)
    return dx, ds, dc


@_gate_backward_op.register_fake
def _(grad, x, spatial_logit, channel_logit, additive):
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=output_format(x))
    ds = (torch.empty_like(spatial_logit, memory_format=torch.contiguous_format) if spatial_logit is not None
          else x.new_empty((0,)))
    dc = (torch.empty_like(channel_logit, memory_format=torch.contiguous_format) if channel_logit is not None
          else x.new_empty((0,)))
    return dx, ds, dc


def _setup_context(ctx, inputs, output):
    x, spatial_logit, channel_logit, additive = inputs
    ctx.save_for_backward(x, spatial_logit, channel_logit)
    ctx.additive = additive


def _backward(ctx, grad):
    x, spatial_logit, channel_logit = ctx.saved_tensors
    dx, ds, dc = torch.ops.fastsca.gate_backward(grad, x, spatial_logit, channel_logit, ctx.additive)
    return (dx, ds if spatial_logit is not None else None, dc if channel_logit is not None else None, None)


_gate_op.register_autograd(_backward, setup_context=_setup_context)


def gate(
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
    channel_logit: torch.Tensor | None,  # (B, C) or None
    additive: bool,
) -> torch.Tensor:                       # (B, C, T, F)
    """Eqs. 7, 9, 10 as the fused op: the Triton kernels on CUDA, gate_reference on CPU."""
    return torch.ops.fastsca.gate(x, spatial_logit, channel_logit, additive)


def gate_reference(
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
    channel_logit: torch.Tensor | None,  # (B, C) or None
    additive: bool,
) -> torch.Tensor:                       # (B, C, T, F)
    """Rescale x by the spatial and channel gates, computed in fp32."""
    s = spatial_logit.float() if spatial_logit is not None else None
    c = channel_logit.float()[:, :, None, None] if channel_logit is not None else None
    if additive:
        if s is None or c is None:
            raise ValueError("gate_reference: additive (C//S) gating needs both a spatial and a channel logit")
        weight = torch.sigmoid(s + c)
    else:
        weight = torch.ones((), device=x.device)
        if s is not None:
            weight = weight * torch.sigmoid(s)
        if c is not None:
            weight = weight * torch.sigmoid(c)
    return (x.float() * weight).to(x.dtype)
