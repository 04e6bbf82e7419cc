"""Each attention arrangement (§3.3) as ONE autograd unit: `fastsca::attention` and its backward op.

The op takes F and every parameter of the arrangement's small sub-networks (kernels/subnets.py) and
runs the whole module; its backward runs the whole module's backward. F therefore has one consumer
in the autograd graph and gets one gradient, written once: no F-sized tensor is summed by autograd,
and the gate's, the squeeze's and the channel pool's terms of dF are added in registers.

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
from collections.abc import Sequence

import torch

from kernels.channel_pool import channel_pool_forward, channel_pool_logit_grad, channel_pool_reference
from kernels.common import check_map, output_format, use_triton
from kernels.gate import (gate_factors, gate_forward, gate_input_grad, gate_logit_grad_columns, gate_logit_grad_rows,
                          gate_reference)
from kernels.spatial_squeeze import spatial_squeeze_forward, spatial_squeeze_logit_grad, spatial_squeeze_reference
from kernels.subnets import (ChannelParams, GlobalParams, LocalParams, channel_backward, channel_forward,
                             global_backward, global_forward, local_backward, local_forward)

ARRANGEMENTS = ("spatial", "channel", "sca", "csa", "cps")
"""Arrangement names, as in fastsca.config."""
PARAM_NAMES = (
    "conv1_weight", "bn_weight", "bn_bias", "bn_running_mean", "bn_running_var", "conv2_weight", "conv2_bias",
    "local_w1", "local_b1", "local_w2", "local_b2",
    "fc1_weight", "fc1_bias", "fc2_weight", "fc2_bias",
)
"""The sub-network tensors the op takes after F, in order; a branch that is absent passes None for all of its."""
_RUNNING_STATS = (3, 4)
"""Indices of BatchNorm's running statistics in PARAM_NAMES: buffers, mutated in training, no gradient."""


class _TritonPasses:
    """The F-sized passes as Triton kernels (CUDA, or CPU under TRITON_INTERPRET=1)."""

    triton = True

    @staticmethod
    def pool(x, weight):
        return channel_pool_forward(x, weight, torch.float32)

    @staticmethod
    def squeeze(x, spatial_logit):
        return spatial_squeeze_forward(x, spatial_logit, torch.float32)

    gate = staticmethod(gate_forward)
    rows = staticmethod(gate_logit_grad_rows)
    columns = staticmethod(gate_logit_grad_columns)
    squeeze_logit_grad = staticmethod(spatial_squeeze_logit_grad)
    pool_logit_grad = staticmethod(channel_pool_logit_grad)
    input_grad = staticmethod(gate_input_grad)


def _gate_parts(grad, x, spatial_logit, channel_logit, additive):
    """dout * x * gate, and d gate / d logit_s, d logit_c over gate, in fp32 (plain PyTorch)."""
    gate, ds_factor, dc_factor = gate_factors(x, spatial_logit, channel_logit, additive)
    return grad.float() * x.float() * gate, ds_factor, dc_factor


class _TorchPasses:
    """The same passes in plain PyTorch (CPU without the interpreter); partial sums come as one full row."""

    triton = False

    @staticmethod
    def pool(x, weight):
        return channel_pool_reference(x.float(), weight)

    @staticmethod
    def squeeze(x, spatial_logit):
        return spatial_squeeze_reference(x.float(), spatial_logit)

    @staticmethod
    def gate(x, spatial_logit, channel_logit, additive):
        return gate_reference(x, spatial_logit, channel_logit, additive).contiguous(memory_format=output_format(x))

    @staticmethod
    def rows(grad, x, spatial_logit, channel_logit, additive):
        dgate, ds_factor, dc_factor = _gate_parts(grad, x, spatial_logit, channel_logit, additive)
        parts = (dgate * ds_factor).sum(dim=1).flatten(1)[:, None] if spatial_logit is not None else None
        return (dgate * dc_factor).sum(dim=(2, 3)), parts

    @staticmethod
    def columns(grad, x, spatial_logit, channel_logit, additive):
        dgate, ds_factor, dc_factor = _gate_parts(grad, x, spatial_logit, channel_logit, additive)
        parts = (dgate * dc_factor).sum(dim=(2, 3))[:, None] if channel_logit is not None else None
        return (dgate * ds_factor).sum(dim=1, keepdim=True), parts

    @staticmethod
    def squeeze_logit_grad(x, spatial_logit, grad, parts):
        gate = torch.sigmoid(spatial_logit.float())
        n = x.shape[2] * x.shape[3]
        total = (grad.float()[:, :, None, None] * x.float()).sum(dim=1, keepdim=True)
        return gate * (1 - gate) * total / n + parts.sum(dim=1).view_as(gate)

    @staticmethod
    def pool_logit_grad(x, channel_logit, grad, parts):
        weight = torch.sigmoid(channel_logit.float())
        total = (grad.float() * x.float()).sum(dim=(2, 3))
        return weight * (1 - weight) * total / x.shape[1] + parts.sum(dim=1)

    @staticmethod
    def input_grad(grad, like, spatial_logit, channel_logit, additive, squeeze_grad=None, squeeze_gated=False,
                   pool_grad=None, pool_weighted=False):
        n = like.shape[2] * like.shape[3]
        ones = torch.ones((), device=like.device)
        sig_s = torch.sigmoid(spatial_logit.float()) if spatial_logit is not None else ones
        sig_c = torch.sigmoid(channel_logit.float())[:, :, None, None] if channel_logit is not None else ones
        gate = torch.sigmoid(spatial_logit.float() + channel_logit.float()[:, :, None, None]) if additive \
            else sig_s * sig_c
        dx = grad.float() * gate
        if squeeze_grad is not None:
            dx = dx + squeeze_grad.float()[:, :, None, None] / n * (sig_s if squeeze_gated else ones)
        if pool_grad is not None:
            dx = dx + pool_grad.float() / like.shape[1] * (sig_c if pool_weighted else ones)
        return dx.to(like.dtype).contiguous(memory_format=output_format(like))


def _branches(params: Sequence[torch.Tensor | None]):
    """The present sub-networks' parameter tuples (None where absent), split from the flat PARAM_NAMES order."""
    glob = GlobalParams(*params[0:7]) if params[0] is not None else None
    local = LocalParams(*params[7:11]) if params[7] is not None else None
    channel = ChannelParams(*params[11:15]) if params[11] is not None else None
    return glob, local, channel


def _spatial_forward(s, glob, local, triton, training, eps):
    """logit_s = global(S) + local(S) (eq. 7 before the sigmoid), with the BatchNorm statistics used."""
    logit, mean, var = torch.zeros_like(s), s.new_empty((0,)), s.new_empty((0,))   # distinct: op outputs
    if glob is not None:
        branch, mean, var = global_forward(s, glob, training, eps)
        logit = logit + branch
    if local is not None:
        logit = logit + local_forward(s, local, triton)
    return logit, mean, var


def _spatial_backward(grad, s, glob, local, triton, mean, var, training, eps):
    """(dS, the global branch's 5 gradients or Nones, the local branch's 4 or Nones)."""
    ds = torch.zeros_like(s)
    glob_grads, local_grads = (None,) * 5, (None,) * 4
    if glob is not None:
        d, *glob_grads = global_backward(grad, s, glob, mean, var, training, eps)
        ds = ds + d
    if local is not None:
        d, *local_grads = local_backward(grad, s, local, triton)
        ds = ds + d
    return ds, tuple(glob_grads), tuple(local_grads)


def _forward(x, arrangement, params, training, eps):
    """The module's forward: (F'', S, logit_s, Z, logit_c, BN mean, BN var); absent ones are empty."""
    passes = _TritonPasses if use_triton(x) else _TorchPasses
    glob, local, channel = _branches(params)
    s, logit_s, z, logit_c = (x.new_empty((0,), dtype=torch.float32) for _ in range(4))
    if arrangement == "csa":                                 # Z from F, then S from M_c * F
        z = passes.squeeze(x, None)
        logit_c = channel_forward(z, channel)
        s = passes.pool(x, torch.sigmoid(logit_c))
        logit_s, mean, var = _spatial_forward(s, glob, local, passes.triton, training, eps)
    else:
        if arrangement != "channel":                         # S from F
            s = passes.pool(x, None)
            logit_s, mean, var = _spatial_forward(s, glob, local, passes.triton, training, eps)
        if arrangement != "spatial":                         # Z from M_s * F (SCA) or F
            z = passes.squeeze(x, logit_s if arrangement == "sca" else None)
            logit_c = channel_forward(z, channel)
    if arrangement == "channel":
        mean, var = x.new_empty((0,), dtype=torch.float32), x.new_empty((0,), dtype=torch.float32)
    out = passes.gate(x, logit_s if logit_s.numel() else None, logit_c if logit_c.numel() else None,
                      arrangement == "cps")
    return out, s, logit_s, z, logit_c, mean, var


def _backward(grad, x, arrangement, params, saved, training, eps):
    """The module's backward: [dF, then one gradient per PARAM_NAMES entry (empty where absent or a buffer)]."""
    passes = _TritonPasses if use_triton(x) else _TorchPasses
    glob, local, channel = _branches(params)
    s, logit_s, z, logit_c, mean, var = saved
    spatial_logit = logit_s if logit_s.numel() else None
    channel_logit = logit_c if logit_c.numel() else None
    additive = arrangement == "cps"
    dz = ds = None
    glob_grads, local_grads, channel_grads = (None,) * 5, (None,) * 4, (None,) * 4
    if arrangement in ("sca", "cps", "channel"):
        # Pass 1 by channel rows: dlogit_c complete, the gate's share of dlogit_s as partial rows.
        dlogit_c, parts = passes.rows(grad, x, spatial_logit, channel_logit, additive)
        dz, *channel_grads = channel_backward(dlogit_c, z, channel)
        if arrangement != "channel":
            if arrangement == "sca":   # pass 2 reads F: the squeeze's share of dlogit_s
                dlogit_s = passes.squeeze_logit_grad(x, logit_s, dz, parts)
            else:
                dlogit_s = parts.sum(dim=1).view_as(logit_s)
            ds, glob_grads, local_grads = _spatial_backward(dlogit_s, s, glob, local, passes.triton, mean, var,
                                                            training, eps)
    else:
        # Pass 1 by spatial columns: dlogit_s complete, the gate's share of dlogit_c as partial rows.
        dlogit_s, parts = passes.columns(grad, x, spatial_logit, channel_logit, additive)
        ds, glob_grads, local_grads = _spatial_backward(dlogit_s, s, glob, local, passes.triton, mean, var,
                                                        training, eps)
        if arrangement == "csa":       # pass 2 reads F: the pool's share of dlogit_c
            dlogit_c = passes.pool_logit_grad(x, logit_c, ds, parts)
            dz, *channel_grads = channel_backward(dlogit_c, z, channel)
    dx = passes.input_grad(grad, x, spatial_logit, channel_logit, additive, dz, arrangement == "sca",
                           ds, arrangement == "csa")
    grads = [*glob_grads[:3], None, None, *glob_grads[3:], *local_grads, *channel_grads]
    return [dx] + [g.to(p.dtype) if g is not None else x.new_empty((0,)) for g, p in zip(grads, params)]


def _check(x, arrangement, params) -> None:
    check_map("attention", x)
    if arrangement not in ARRANGEMENTS:
        raise ValueError(f"attention: unknown arrangement {arrangement!r}; valid: {', '.join(ARRANGEMENTS)}")
    glob, local, channel = _branches(params)
    if arrangement != "channel" and glob is None and local is None:
        raise ValueError(f"attention: arrangement {arrangement!r} needs the global or the local spatial branch")
    if arrangement != "spatial" and channel is None:
        raise ValueError(f"attention: arrangement {arrangement!r} needs the channel MLP (fc1_weight ...)")


def _saved_shapes(x, arrangement, params):
    """Shapes of the op's saved outputs (S, logit_s, Z, logit_c, BN mean, BN var) for the fake kernel."""
    b, c, t, f = x.shape
    spatial = arrangement != "channel"
    channel = arrangement != "spatial"
    bn = spatial and params[0] is not None
    return [(b, 1, t, f) if spatial else (0,)] * 2 + [(b, c) if channel else (0,)] * 2 + \
        [(params[1].shape[0],) if bn else (0,)] * 2


@torch.library.custom_op("fastsca::attention", mutates_args=())
def _attention_op(
    x: torch.Tensor, arrangement: str,
    conv1_weight: torch.Tensor | None, bn_weight: torch.Tensor | None, bn_bias: torch.Tensor | None,
    bn_running_mean: torch.Tensor | None, bn_running_var: torch.Tensor | None,
    conv2_weight: torch.Tensor | None, conv2_bias: torch.Tensor | None,
    local_w1: torch.Tensor | None, local_b1: torch.Tensor | None,
    local_w2: torch.Tensor | None, local_b2: torch.Tensor | None,
    fc1_weight: torch.Tensor | None, fc1_bias: torch.Tensor | None,
    fc2_weight: torch.Tensor | None, fc2_bias: torch.Tensor | None,
    bn_training: bool, bn_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    params = (conv1_weight, bn_weight, bn_bias, bn_running_mean, bn_running_var, conv2_weight, conv2_bias,
              local_w1, local_b1, local_w2, local_b2, fc1_weight, fc1_bias, fc2_weight, fc2_bias)
    _check(x, arrangement, params)
    with torch.autocast(x.device.type, enabled=False):   # the sub-networks run in fp32 whatever the caller's autocast
        return _forward(x, arrangement, params, bn_training, bn_eps)


@_attention_op.register_fake
def _(x, arrangement, *args):
    params = args[:15]
    _check(x, arrangement, params)
    out = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=output_format(x))
    return (out, *(x.new_empty(shape, dtype=torch.float32) for shape in _saved_shapes(x, arrangement, params)))


@torch.library.custom_op("fastsca::attention_backward", mutates_args=())
def _attention_backward_op(
    grad: torch.Tensor, x: torch.Tensor, arrangement: str, params: list[torch.Tensor | None],
    saved: list[torch.Tensor], bn_training: bool, bn_eps: float,
) -> list[torch.Tensor]:
    with torch.autocast(x.device.type, enabled=False):
        return _backward(grad, x, arrangement, params, saved, bn_training, bn_eps)


@_attention_backward_op.register_fake
def _(grad, x, arrangement, params, saved, bn_training, bn_eps):
    dx = torch.empty(x.shape, device=x.device, dtype=x.dtype, memory_format=output_format(x))
    return [dx] + [torch.empty_like(p, memory_format=torch.contiguous_format)
                   if p is not None and i not in _RUNNING_STATS else x.new_empty((0,)) for i, p in enumerate(params)]


def _setup_context(ctx, inputs, output):
    x, arrangement, *params = inputs[:17]
    ctx.arrangement, ctx.bn_training, ctx.bn_eps = arrangement, inputs[17], inputs[18]
    # The running statistics are not needed (the saved mean and var are) and change in place each step.
    params = [p if i not in _RUNNING_STATS else None for i, p in enumerate(params)]
    ctx.present = [p is not None for p in params]
    ctx.save_for_backward(x, *[p for p in params if p is not None], *output[1:])
    ctx.mark_non_differentiable(*output[1:])


def _autograd_backward(ctx, grad, *unused):
    x, *rest = ctx.saved_tensors
    tensors, saved = iter(rest[:-6]), list(rest[-6:])
    params = [next(tensors) if present else None for present in ctx.present]
    dx, *grads = torch.ops.fastsca.attention_backward(grad, x, ctx.arrangement, params, saved, ctx.bn_training,
                                                      ctx.bn_eps)
    grads = [g if p is not None else None for g, p in zip(grads, params)]
    return (dx, None, *grads, None, None)


_attention_op.register_autograd(_autograd_backward, setup_context=_setup_context)


def attention(
    x: torch.Tensor,      # (B, C, T, F)
    arrangement: str,     # one of ARRANGEMENTS
    params: Sequence[torch.Tensor | None],   # the sub-networks' tensors in PARAM_NAMES order
    bn_training: bool,    # BatchNorm of the global branch normalises with batch statistics
    bn_eps: float,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The arrangement's whole module as the fused op: Triton kernels on CUDA (and on CPU under
    TRITON_INTERPRET=1), the same steps in plain PyTorch otherwise. Returns (F'' in x's layout, and the
    global branch's BatchNorm mean and biased variance, empty without it, for the running statistics)."""
    if len(params) != len(PARAM_NAMES):
        raise ValueError(f"attention: params must hold {len(PARAM_NAMES)} tensors or Nones ({', '.join(PARAM_NAMES)}), "
                         f"got {len(params)}")
    out, *_, mean, var = torch.ops.fastsca.attention(x, arrangement, *params, bn_training, bn_eps)
    return out, mean, var
