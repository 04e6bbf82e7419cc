"""Each attention arrangement (§3.3) as ONE autograd unit whose passes over F are the only opaque ops.

`AttentionUnit` (a torch.autograd.Function) runs an arrangement's forward and its backward. F has one
consumer in the autograd graph and gets one gradient, written once: no F-sized tensor is summed by
autograd, and the gate's, the squeeze's and the channel pool's terms of dF are added in registers.
Only the F-sized passes are `torch.library` ops (`fastsca::attention_<pass>`; the package's other ops are the
fused residual block's, kernels/residual_block.py): Triton kernels on CUDA (and on CPU under
TRITON_INTERPRET=1), one PyTorch expression each otherwise (kernels/reference.py's equations where a pass is one). The arrangement comes in as data (a
fastsca.config.Arrangement: which masks, in what order, how combined); the unit picks its passes by the
description's flags, never by its name. The sub-networks on S (B, 1, T, F), Z (B, C) and the logits
(kernels/subnets.py: global convs and BatchNorm, the local FC, the channel MLP, partial-row sums) are
plain PyTorch with hand-written backward passes, so `torch.compile` traces them into its graph and
Inductor fuses them; inside one opaque op they would be ~21 eager launches forward and ~45 backward
per module (measured).

Bytes of F-sized tensors moved, in units of |F| (reads + writes; the forward's three reads of F and
one write of F'' are the floor of every arrangement that reads F twice for its two descriptors):

| arrangement   | forward                   | backward                                      | fwd | bwd |
|---------------|---------------------------|-----------------------------------------------|-----|-----|
| SCA (eq. 10)  | pool F, squeeze F, gate   | rows(dF'', F), squeeze grad(F), dF(dF'')      | 4   | 5   |
| CSA           | squeeze F, pool F, gate   | columns(dF'', F), pool grad(F), dF(dF'')      | 4   | 5   |
| C//S          | pool F, squeeze F, gate   | rows(dF'', F), dF(dF'')                       | 4   | 4   |
| spatial only  | pool F, gate              | columns(dF'', F), dF(dF'')                    | 3   | 4   |
| channel only  | squeeze F, gate           | rows(dF'', F), dF(dF'')                       | 3   | 4   |

Why these are the floors. Backward: dF = dF'' * gate + (broadcast terms from dS and dZ); dS and dZ
depend on every value of dF'' * F through the sub-networks, so dF'' is read once before them (with F,
for the logit gradients) and once after (to write dF): 2 + 2 = 4. SCA additionally needs
sum_c dZ[c] F[c, n], whose dZ exists only after the first pass (the channel MLP's backward), and CSA
needs sum_n dS[n] F[c, n] likewise: one more read of F, 5. Forward: S and Z of SCA/CSA are chained
(Z needs sigma(logit_s) of S, or S needs sigma(logit_c) of Z), so F is read for each, then once for the
gate: 3 reads + 1 write. C//S's S and Z are independent and could come from one read (floor 3); this
implementation reads twice (4), because one program cannot finish both reductions without partials.
The first backward pass completes one logit gradient per program and leaves K fp32 partial rows of
the other (|F| / 16 bytes in bf16, not counted above), which the second F pass adds as it reads them:
no extra launch. C//S has no second F pass: its (B, K, N) partials are summed by one small torch op.
"""
from typing import NamedTuple, Protocol

import torch

from kernels import reference
from kernels.channel_pool import channel_pool_forward, channel_pool_logit_grad
from kernels.common import check_map, output_format, use_triton
from kernels.gate import (gate_forward, gate_input_grad, gate_logit_grad_columns, gate_logit_grad_rows,
                          logit_grad_partials)
from kernels.spatial_squeeze import spatial_squeeze_forward, spatial_squeeze_logit_grad
from kernels.subnets import (ChannelParams, GlobalParams, LocalParams, channel_backward, channel_forward,
                             global_backward, global_forward, local_backward, local_forward)


class ArrangementFlags(Protocol):
    """What the unit reads of an arrangement (fastsca.config.Arrangement has these; kernels/ imports nothing
    of fastsca)."""

    name: str
    spatial: bool          # has the spatial mask
    channel: bool          # has the channel mask
    squeeze_gated: bool    # Z is squeezed from sigma(logit_s) * F (SCA)
    pool_weighted: bool    # S is pooled from sigma(logit_c) * F (CSA)
    additive: bool         # F'' = sigma(logit_s + logit_c) * F (C//S)


class AttentionParams(NamedTuple):
    """The sub-networks of one arrangement (None where a branch is absent) and its BatchNorm epsilon."""

    global_branch: GlobalParams | None
    local: LocalParams | None
    channel: ChannelParams | None
    bn_eps: float = 1e-5


class Saved(NamedTuple):
    """What the forward keeps for the backward; an absent one is an empty fp32 tensor."""

    s: torch.Tensor          # S (B, 1, T, F) fp32
    logit_s: torch.Tensor    # (B, 1, T, F) fp32
    z: torch.Tensor          # Z (B, C) fp32
    logit_c: torch.Tensor    # (B, C) fp32
    bn_mean: torch.Tensor    # (M,) the global branch's BatchNorm batch mean (or running mean in eval)
    bn_var: torch.Tensor     # (M,) its biased variance


class Gradients(NamedTuple):
    """The backward's results."""

    x: torch.Tensor             # dF, in F's layout
    params: AttentionParams     # None for absent branches and for the running statistics


# ---- the F-sized passes: Triton on CUDA (CPU under TRITON_INTERPRET=1), plain PyTorch otherwise ----

def _gate_factors(x, spatial_logit, channel_logit, additive):
    """The gate of eqs. 7/9/10 (or sigmoid(s + c) for C//S) and d gate / d logit_s, d logit_c over the gate,
    in fp32 (the CPU backward passes)."""
    s = spatial_logit.float() if spatial_logit is not None else None
    c = channel_logit.float()[:, :, None, None] if channel_logit is not None else None
    if additive:
        gate = torch.sigmoid(s + c)
        return gate, 1 - gate, 1 - gate
    sig_s = torch.sigmoid(s) if s is not None else torch.ones((), device=x.device)
    sig_c = torch.sigmoid(c) if c is not None else torch.ones((), device=x.device)
    return sig_s * sig_c, 1 - sig_s, 1 - sig_c


def _gate_parts(grad, x, spatial_logit, channel_logit, additive):
    """dout * x * gate, and d gate / d logit_s, d logit_c over gate, in fp32 (plain PyTorch)."""
    gate, ds_factor, dc_factor = _gate_factors(x, spatial_logit, channel_logit, additive)
    return grad.float() * x.float() * gate, ds_factor, dc_factor


@torch.library.custom_op("fastsca::attention_pool", mutates_args=())
def _pool_op(x: torch.Tensor, channel_weight: torch.Tensor | None) -> torch.Tensor:
    """S (B, 1, T, F) fp32 = mean over C of F, channel-weighted for CSA (eq. 4)."""
    if use_triton(x):
        return channel_pool_forward(x, channel_weight, torch.float32)
    return reference.channel_pool(x.float(), channel_weight).contiguous()


@_pool_op.register_fake
def _(x, channel_weight):
    return x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]), dtype=torch.float32)


@torch.library.custom_op("fastsca::attention_squeeze", mutates_args=())
def _squeeze_op(x: torch.Tensor, spatial_logit: torch.Tensor | None) -> torch.Tensor:
    """Z (B, C) fp32 = mean over T, F of F, weighted by sigma(logit_s) for SCA (eq. 8)."""
    if use_triton(x):
        return spatial_squeeze_forward(x, spatial_logit, torch.float32)
    return reference.spatial_squeeze(x.float(), spatial_logit).contiguous()


@_squeeze_op.register_fake
def _(x, spatial_logit):
    return x.new_empty(x.shape[:2], dtype=torch.float32)


@torch.library.custom_op("fastsca::attention_gate", mutates_args=())
def _gate_op(x: torch.Tensor, spatial_logit: torch.Tensor | None, channel_logit: torch.Tensor | None,
             additive: bool) -> torch.Tensor:
    """F'' = gate * F in F's layout (eqs. 7, 9, 10), the gate in fp32."""
    if use_triton(x):
        return gate_forward(x, spatial_logit, channel_logit, additive=additive)
    out = reference.gate(x.float(), spatial_logit, channel_logit, additive).to(x.dtype)
    return out.contiguous(memory_format=output_format(x))


@_gate_op.register_fake
def _(x, spatial_logit, channel_logit, additive):
    return torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=output_format(x))


def _partial_rows(grad, x, other_logit, by_rows) -> int:
    """K partial rows of the other logit's gradient that pass 1 leaves (0 without that logit). The same on
    every path, so a compiled graph (whose fake shapes Inductor caches) runs on either."""
    return logit_grad_partials(grad, x, by_rows) if other_logit is not None else 0


def _as_partials(total, x, k, size):
    """(B, K, size) fp32 partial rows holding total (B, size) in row 0 and zeros elsewhere: the Triton
    passes' partial-row shape, from a PyTorch pass that sums in one go."""
    parts = torch.zeros((x.shape[0], k, size), device=x.device, dtype=torch.float32)
    if k:
        parts[:, 0] = total
    return parts


@torch.library.custom_op("fastsca::attention_rows", mutates_args=())
def _rows_op(grad: torch.Tensor, x: torch.Tensor, spatial_logit: torch.Tensor | None,
             channel_logit: torch.Tensor, additive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward pass 1 by channel rows (reads dF'' and F): (dlogit_c (B, C) fp32, the gate's share of
    dlogit_s as K partial rows (B, K, N) fp32; K = 0 without a spatial logit)."""
    if use_triton(x):
        return gate_logit_grad_rows(grad, x, spatial_logit, channel_logit, additive=additive)
    dgate, ds_factor, dc_factor = _gate_parts(grad, x, spatial_logit, channel_logit, additive)
    k = _partial_rows(grad, x, spatial_logit, True)
    parts = _as_partials((dgate * ds_factor).sum(dim=1).flatten(1) if k else None, x, k, x.shape[2] * x.shape[3])
    return (dgate * dc_factor).sum(dim=(2, 3)), parts


@_rows_op.register_fake
def _(grad, x, spatial_logit, channel_logit, additive):
    return (x.new_empty(x.shape[:2], dtype=torch.float32),
            x.new_empty((x.shape[0], _partial_rows(grad, x, spatial_logit, True), x.shape[2] * x.shape[3]),
                        dtype=torch.float32))


@torch.library.custom_op("fastsca::attention_columns", mutates_args=())
def _columns_op(grad: torch.Tensor, x: torch.Tensor, spatial_logit: torch.Tensor,
                channel_logit: torch.Tensor | None, additive: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Backward pass 1 by spatial columns (reads dF'' and F): (dlogit_s (B, 1, T, F) fp32, the gate's
    share of dlogit_c as J partial rows (B, J, C) fp32; J = 0 without a channel logit)."""
    if use_triton(x):
        return gate_logit_grad_columns(grad, x, spatial_logit, channel_logit, additive=additive)
    dgate, ds_factor, dc_factor = _gate_parts(grad, x, spatial_logit, channel_logit, additive)
    j = _partial_rows(grad, x, channel_logit, False)
    parts = _as_partials((dgate * dc_factor).sum(dim=(2, 3)) if j else None, x, j, x.shape[1])
    return (dgate * ds_factor).sum(dim=1, keepdim=True).contiguous(), parts


@_columns_op.register_fake
def _(grad, x, spatial_logit, channel_logit, additive):
    return (x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]), dtype=torch.float32),
            x.new_empty((x.shape[0], _partial_rows(grad, x, channel_logit, False), x.shape[1]), dtype=torch.float32))


@torch.library.custom_op("fastsca::attention_squeeze_logit_grad", mutates_args=())
def _squeeze_logit_grad_op(x: torch.Tensor, spatial_logit: torch.Tensor, grad: torch.Tensor,
                           parts: torch.Tensor) -> torch.Tensor:
    """SCA's backward pass 2 (reads F): dlogit_s (B, 1, T, F) fp32 = the squeeze's share given dZ, plus
    the partial rows of pass 1."""
    if use_triton(x):
        return spatial_squeeze_logit_grad(x, spatial_logit, grad, parts)
    gate = torch.sigmoid(spatial_logit.float())
    total = (grad.float()[:, :, None, None] * x.float()).sum(dim=1, keepdim=True)
    return (gate * (1 - gate) * total / (x.shape[2] * x.shape[3]) + parts.sum(dim=1).view_as(gate)).contiguous()


@_squeeze_logit_grad_op.register_fake
def _(x, spatial_logit, grad, parts):
    return x.new_empty((x.shape[0], 1, x.shape[2], x.shape[3]), dtype=torch.float32)


@torch.library.custom_op("fastsca::attention_pool_logit_grad", mutates_args=())
def _pool_logit_grad_op(x: torch.Tensor, channel_logit: torch.Tensor, grad: torch.Tensor,
                        parts: torch.Tensor) -> torch.Tensor:
    """CSA's backward pass 2 (reads F): dlogit_c (B, C) fp32 = the channel pool's share given dS, plus the
    partial rows of pass 1."""
    if use_triton(x):
        return channel_pool_logit_grad(x, channel_logit, grad, parts)
    weight = torch.sigmoid(channel_logit.float())
    total = (grad.float() * x.float()).sum(dim=(2, 3))
    return weight * (1 - weight) * total / x.shape[1] + parts.sum(dim=1)


@_pool_logit_grad_op.register_fake
def _(x, channel_logit, grad, parts):
    return x.new_empty(x.shape[:2], dtype=torch.float32)


@torch.library.custom_op("fastsca::attention_input_grad", mutates_args=())
def _input_grad_op(grad: torch.Tensor, like: torch.Tensor, spatial_logit: torch.Tensor | None,
                   channel_logit: torch.Tensor | None, additive: bool, squeeze_grad: torch.Tensor | None,
                   squeeze_gated: bool, pool_grad: torch.Tensor | None, pool_weighted: bool) -> torch.Tensor:
    """The last backward pass (reads dF'', writes dF in like's layout): the gate's term plus the
    squeeze's (given dZ) and the channel pool's (given dS), added in registers. An additive (C//S) gate
    comes with neither a gated squeeze nor a weighted pool (its masks both come from F)."""
    if additive and (squeeze_gated or pool_weighted):
        raise ValueError("attention_input_grad: an additive gate has no gated squeeze and no weighted pool")
    if use_triton(like):
        return gate_input_grad(grad, like, spatial_logit, channel_logit, additive=additive,
                               squeeze_grad=squeeze_grad, squeeze_gated=squeeze_gated,
                               pool_grad=pool_grad, pool_weighted=pool_weighted)
    n = like.shape[2] * like.shape[3]
    ones = torch.ones((), device=like.device)
    sig_s = torch.sigmoid(spatial_logit.float()) if spatial_logit is not None else ones
    sig_c = torch.sigmoid(channel_logit.float())[:, :, None, None] if channel_logit is not None else ones
    gate = (torch.sigmoid(spatial_logit.float() + channel_logit.float()[:, :, None, None]) if additive
            else sig_s * sig_c)
    dx = grad.float() * gate
    if squeeze_grad is not None:
        dx = dx + squeeze_grad.float()[:, :, None, None] / n * (sig_s if squeeze_gated else ones)
    if pool_grad is not None:
        dx = dx + pool_grad.float() / like.shape[1] * (sig_c if pool_weighted else ones)
    return dx.to(like.dtype).contiguous(memory_format=output_format(like))


@_input_grad_op.register_fake
def _(grad, like, spatial_logit, channel_logit, additive, squeeze_grad, squeeze_gated, pool_grad, pool_weighted):
    return torch.empty(like.shape, device=like.device, dtype=like.dtype, memory_format=output_format(like))


PASSES = ("attention_pool", "attention_squeeze", "attention_gate", "attention_rows", "attention_columns",
          "attention_squeeze_logit_grad", "attention_pool_logit_grad", "attention_input_grad")
"""The ops the unit calls (torch.ops.fastsca.<name>): every F-sized pass of every arrangement."""


# ---- the sub-networks and the arrangement's forward and backward, in plain PyTorch around the passes ----

def _spatial_forward(s, params: AttentionParams, training):
    """logit_s = global(S) + local(S) (eq. 7 before the sigmoid), with the BatchNorm statistics used."""
    logit, mean, var = torch.zeros_like(s), s.new_empty((0,)), s.new_empty((0,))
    if params.global_branch is not None:
        branch, mean, var = global_forward(s, params.global_branch, training, params.bn_eps)
        logit = logit + branch
    if params.local is not None:
        logit = logit + local_forward(s, params.local)
    return logit, mean, var


def _spatial_backward(grad, s, params: AttentionParams, mean, var, training):
    """(dS, the global branch's GlobalParams of gradients or None, the local branch's LocalParams or None)."""
    ds, glob_grads, local_grads = torch.zeros_like(s), None, None
    if params.global_branch is not None:
        d, dw1, dbn_w, dbn_b, dw2, db2 = global_backward(grad, s, params.global_branch, mean, var, training, params.bn_eps)
        glob_grads = GlobalParams(dw1, dbn_w, dbn_b, None, None, dw2, db2)
        ds = ds + d
    if params.local is not None:
        d, *grads = local_backward(grad, s, params.local)
        local_grads = LocalParams(*grads)
        ds = ds + d
    return ds, glob_grads, local_grads


def _forward(x, arrangement: ArrangementFlags, params: AttentionParams, training) -> tuple[torch.Tensor, Saved]:
    """(F'', what the backward needs)."""
    ops = torch.ops.fastsca
    # Distinct empty tensors: each is a separate output or saved tensor of the autograd node.
    s, logit_s, z, logit_c, mean, var = (x.new_empty((0,), dtype=torch.float32) for _ in Saved._fields)
    if arrangement.pool_weighted:                            # CSA: Z from F, then S from M_c * F
        z = ops.attention_squeeze(x, None)
        logit_c = channel_forward(z, params.channel)
        s = ops.attention_pool(x, torch.sigmoid(logit_c))
        logit_s, mean, var = _spatial_forward(s, params, training)
    else:
        if arrangement.spatial:                              # S from F
            s = ops.attention_pool(x, None)
            logit_s, mean, var = _spatial_forward(s, params, training)
        if arrangement.channel:                              # Z from M_s * F (SCA) or F
            z = ops.attention_squeeze(x, logit_s if arrangement.squeeze_gated else None)
            logit_c = channel_forward(z, params.channel)
    out = ops.attention_gate(x, logit_s if arrangement.spatial else None, logit_c if arrangement.channel else None,
                             additive=arrangement.additive)
    return out, Saved(s, logit_s, z, logit_c, mean, var)


def _backward(grad, x, arrangement: ArrangementFlags, params: AttentionParams, saved: Saved, training) -> Gradients:
    """dF and the sub-networks' gradients. Pass 1 runs by channel rows where the channel logit's gradient
    feeds a second pass or the spatial one is not needed (SCA, C//S, AT-C), else by spatial columns."""
    ops = torch.ops.fastsca
    spatial_logit = saved.logit_s if arrangement.spatial else None
    channel_logit = saved.logit_c if arrangement.channel else None
    dz = ds = glob_grads = local_grads = channel_grads = None
    if arrangement.channel and not arrangement.pool_weighted:
        # Pass 1 by channel rows: dlogit_c complete, the gate's share of dlogit_s as partial rows.
        dlogit_c, parts = ops.attention_rows(grad, x, spatial_logit, channel_logit, additive=arrangement.additive)
        dz, *grads = channel_backward(dlogit_c, saved.z, params.channel)
        channel_grads = ChannelParams(*grads)
        if arrangement.spatial:
            if arrangement.squeeze_gated:   # pass 2 reads F: the squeeze's share of dlogit_s
                dlogit_s = ops.attention_squeeze_logit_grad(x, saved.logit_s, dz, parts)
            else:
                dlogit_s = parts.sum(dim=1).view_as(saved.logit_s)
            ds, glob_grads, local_grads = _spatial_backward(dlogit_s, saved.s, params, saved.bn_mean, saved.bn_var,
                                                            training)
    else:
        # Pass 1 by spatial columns: dlogit_s complete, the gate's share of dlogit_c as partial rows.
        dlogit_s, parts = ops.attention_columns(grad, x, spatial_logit, channel_logit, additive=arrangement.additive)
        ds, glob_grads, local_grads = _spatial_backward(dlogit_s, saved.s, params, saved.bn_mean, saved.bn_var,
                                                        training)
        if arrangement.pool_weighted:       # pass 2 reads F: the pool's share of dlogit_c
            dlogit_c = ops.attention_pool_logit_grad(x, saved.logit_c, ds, parts)
            dz, *grads = channel_backward(dlogit_c, saved.z, params.channel)
            channel_grads = ChannelParams(*grads)
    dx = ops.attention_input_grad(grad, x, spatial_logit, channel_logit, additive=arrangement.additive,
                                  squeeze_grad=dz, squeeze_gated=arrangement.squeeze_gated,
                                  pool_grad=ds, pool_weighted=arrangement.pool_weighted)
    return Gradients(dx, AttentionParams(glob_grads, local_grads, channel_grads, params.bn_eps))


_BRANCH_TYPES = (GlobalParams, LocalParams, ChannelParams)


def _flatten(params: AttentionParams) -> tuple[tuple[bool, bool, bool], list[torch.Tensor | None]]:
    """(which branches are present, their tensors in field order): autograd.Function takes flat tensors."""
    branches = (params.global_branch, params.local, params.channel)
    return tuple(b is not None for b in branches), [t for b in branches if b is not None for t in b]


def _unflatten(present, tensors, bn_eps) -> AttentionParams:
    """The inverse of _flatten."""
    tensors, branches = iter(tensors), []
    for has, kind in zip(present, _BRANCH_TYPES):
        branches.append(kind(*(next(tensors) for _ in kind._fields)) if has else None)
    return AttentionParams(*branches, bn_eps)


def _without_running_stats(params: AttentionParams) -> AttentionParams:
    """params with BatchNorm's running statistics dropped: buffers the module updates in place after the
    forward (the backward uses the statistics the forward returned instead)."""
    if params.global_branch is None:
        return params
    return params._replace(global_branch=params.global_branch._replace(running_mean=None, running_var=None))


class AttentionUnit(torch.autograd.Function):
    """One arrangement, forward and backward, as one autograd node (see the module docstring)."""

    @staticmethod
    def forward(ctx, x, arrangement, training, bn_eps, present, *tensors):
        params = _unflatten(present, tensors, bn_eps)
        with torch.autocast(x.device.type, enabled=False):   # the sub-networks run in fp32 whatever the autocast
            out, saved = _forward(x, arrangement, params, training)
        _, kept = _flatten(_without_running_stats(params))
        ctx.arrangement, ctx.training, ctx.bn_eps, ctx.present = arrangement, training, bn_eps, present
        ctx.kept = [t is not None for t in kept]
        ctx.save_for_backward(x, *saved, *[t for t in kept if t is not None])
        ctx.mark_non_differentiable(saved.bn_mean, saved.bn_var)
        return out, saved.bn_mean, saved.bn_var

    @staticmethod
    def backward(ctx, grad, _mean_grad, _var_grad):
        x, *rest = ctx.saved_tensors
        saved, stored = Saved(*rest[:len(Saved._fields)]), iter(rest[len(Saved._fields):])
        tensors = [next(stored) if kept else None for kept in ctx.kept]
        params = _unflatten(ctx.present, tensors, ctx.bn_eps)
        with torch.autocast(x.device.type, enabled=False):
            grads = _backward(grad, x, ctx.arrangement, params, saved, ctx.training)
        _, flat_grads = _flatten(grads.params)
        flat_grads = [g.to(t.dtype) if g is not None else None for g, t in zip(flat_grads, tensors)]
        return (grads.x, None, None, None, None, *flat_grads)


_FLAGS = ArrangementFlags.__annotations__


def _check(x: torch.Tensor, arrangement: ArrangementFlags, params: AttentionParams) -> None:
    check_map("attention", x)
    missing = [flag for flag in _FLAGS if not hasattr(arrangement, flag)]
    if missing:
        raise ValueError(f"attention: arrangement must describe the arrangement (a fastsca.config.Arrangement), "
                         f"got {type(arrangement).__name__} without {', '.join(missing)}")
    if not isinstance(params, AttentionParams):
        raise ValueError(f"attention: params must be an AttentionParams, got {type(params).__name__}")
    name = arrangement.name
    if arrangement.spatial and params.global_branch is None and params.local is None:
        raise ValueError(f"attention: arrangement {name!r} needs the global or the local spatial branch")
    if arrangement.channel and params.channel is None:
        raise ValueError(f"attention: arrangement {name!r} needs the channel MLP (AttentionParams.channel)")
    if not arrangement.spatial and (params.global_branch is not None or params.local is not None):
        raise ValueError(f"attention: arrangement {name!r} takes no spatial branch")
    if not arrangement.channel and params.channel is not None:
        raise ValueError(f"attention: arrangement {name!r} takes no channel MLP")
    _, c, t, f = x.shape
    if params.local is not None and tuple(params.local.b2.shape) != (f, t):
        raise ValueError(f"attention: the local branch is built for (T, F) = {tuple(params.local.b2.shape[::-1])}, "
                         f"the map is {(t, f)}")
    if params.channel is not None and tuple(params.channel.fc2_bias.shape) != (c,):
        raise ValueError(f"attention: the channel MLP is built for {params.channel.fc2_bias.shape[0]} channels, "
                         f"the map has {c}")


def attention(
    x: torch.Tensor,                 # (B, C, T, F)
    arrangement: ArrangementFlags,   # which masks, in what order, how combined
    params: AttentionParams,         # the arrangement's sub-networks
    *,
    bn_training: bool,               # BatchNorm of the global branch normalises with batch statistics
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The arrangement's whole module as one autograd unit. Returns (F'' in x's layout, and the global
    branch's BatchNorm mean and biased variance, empty without it, for the running statistics)."""
    _check(x, arrangement, params)
    present, tensors = _flatten(params)
    return AttentionUnit.apply(x, arrangement, bn_training, params.bn_eps, present, *tensors)
