"""The attention's small sub-networks as plain functions with hand-written backward passes, in fp32.

Global spatial branch (eq. 5: conv5x5 -> BatchNorm -> ReLU -> conv5x5), local spatial branch (eq. 6:
kernels/reference.py's `local_fc`) and the channel MLP (eq. 9: Linear -> ReLU -> Linear). They act on S (B, 1, T, F) and
Z (B, C), a C-th and an N-th of F, so their cost is launches, not bytes: they are plain PyTorch, which
torch.compile traces into its graph and Inductor fuses. They run inside the arrangement's autograd unit
(kernels/attention.py), whose backward autograd does not see into: hence the explicit backward,
checked against autograd of the nn modules in tests/test_attention.py. BatchNorm follows
nn.BatchNorm2d: batch statistics in training (returned, so the caller updates the running ones; the
unit cannot mutate its inputs), running statistics in eval.
"""
from typing import NamedTuple

import torch
import torch.nn.functional as F

from kernels import reference


class GlobalParams(NamedTuple):
    """The global branch's tensors (GlobalSpatialBranch in fastsca/attention.py)."""

    conv1_weight: torch.Tensor   # (M, 1, k, k)
    bn_weight: torch.Tensor      # (M,)
    bn_bias: torch.Tensor        # (M,)
    running_mean: torch.Tensor   # (M,), used in eval (the caller updates it in training)
    running_var: torch.Tensor    # (M,), used in eval
    conv2_weight: torch.Tensor   # (1, M, k, k)
    conv2_bias: torch.Tensor     # (1,)


class LocalParams(NamedTuple):
    """The local branch's per-row MLP weights (LocalSpatialBranch)."""

    w1: torch.Tensor   # (F, H, T)
    b1: torch.Tensor   # (F, H)
    w2: torch.Tensor   # (F, T, H)
    b2: torch.Tensor   # (F, T)


class ChannelParams(NamedTuple):
    """The channel MLP's weights (ChannelAttention)."""

    fc1_weight: torch.Tensor   # (C/r, C)
    fc1_bias: torch.Tensor     # (C/r,)
    fc2_weight: torch.Tensor   # (C, C/r)
    fc2_bias: torch.Tensor     # (C,)


def _conv_backward(grad, inputs, weight, padding, has_bias):
    """(d inputs, d weight, d bias or None) of a stride-1 2D convolution."""
    return torch.ops.aten.convolution_backward(
        grad, inputs, weight, [weight.shape[0]] if has_bias else None, [1, 1], [padding, padding], [1, 1],
        False, [0, 0], 1, [True, True, has_bias])


def _hidden(s, p: GlobalParams, mean, invstd):
    """conv1 output h and its normalised, affine-mapped y (recomputed in backward: 8 maps of S's size)."""
    h = F.conv2d(s, p.conv1_weight.float(), padding=p.conv1_weight.shape[-1] // 2)
    xhat = (h - mean[:, None, None]) * invstd[:, None, None]
    return h, xhat, xhat * p.bn_weight.float()[:, None, None] + p.bn_bias.float()[:, None, None]


def global_forward(s, p: GlobalParams, training: bool, eps: float):
    """Eq. 5 on S (B, 1, T, F) fp32: (logit, mean, var), the (biased) statistics BatchNorm normalised with."""
    h = F.conv2d(s, p.conv1_weight.float(), padding=p.conv1_weight.shape[-1] // 2)
    if training:
        var, mean = torch.var_mean(h, dim=(0, 2, 3), correction=0)
    else:
        mean, var = p.running_mean.float().clone(), p.running_var.float().clone()
    _, _, y = _hidden(s, p, mean, torch.rsqrt(var + eps))
    logit = F.conv2d(torch.relu(y), p.conv2_weight.float(), p.conv2_bias.float(),
                     padding=p.conv2_weight.shape[-1] // 2)
    return logit, mean, var


def global_backward(grad, s, p: GlobalParams, mean, var, training: bool, eps: float):
    """Gradients of eq. 5 given dL/dlogit: (dS, dconv1_weight, dbn_weight, dbn_bias, dconv2_weight, dconv2_bias)."""
    padding = p.conv1_weight.shape[-1] // 2
    invstd = torch.rsqrt(var + eps)
    _, xhat, y = _hidden(s, p, mean, invstd)
    dact, dw2, db2 = _conv_backward(grad, torch.relu(y), p.conv2_weight.float(), padding, True)
    dy = dact * (y > 0)
    dbias = dy.sum(dim=(0, 2, 3))
    dweight = (dy * xhat).sum(dim=(0, 2, 3))
    scale = (p.bn_weight.float() * invstd)[:, None, None]
    if training:   # the batch statistics depend on h too
        count = dy.numel() // dy.shape[1]
        dh = scale * (dy - dbias[:, None, None] / count - xhat * dweight[:, None, None] / count)
    else:
        dh = scale * dy
    ds, dw1, _ = _conv_backward(dh, s, p.conv1_weight.float(), padding, False)
    return ds, dw1, dweight, dbias, dw2, db2


def local_forward(s, p: LocalParams):
    """Eq. 6 on S (B, 1, T, F) fp32, in plain PyTorch (batched matmuls Inductor sees)."""
    return reference.local_fc(s, *p).float()


def local_backward(grad, s, p: LocalParams):
    """Gradients of eq. 6 given dL/dlogit (B, 1, T, F): (dS, dw1, db1, dw2, db2), fp32."""
    w1, b1, w2, _ = (w.float() for w in p)
    rows = s[:, 0].float().transpose(1, 2)                                      # (B, F, T)
    dout = grad[:, 0].float().transpose(1, 2)                                   # (B, F, T)
    pre = torch.einsum("bft,fht->bfh", rows, w1) + b1                           # (B, F, H)
    dpre = torch.einsum("bft,fth->bfh", dout, w2) * (pre > 0)                   # (B, F, H)
    ds = torch.einsum("bfh,fht->bft", dpre, w1).transpose(1, 2).unsqueeze(1)    # (B, 1, T, F)
    grads = (ds, torch.einsum("bfh,bft->fht", dpre, rows), dpre.sum(dim=0),
             torch.einsum("bft,bfh->fth", dout, torch.relu(pre)), dout.sum(dim=0))
    return tuple(g.contiguous() for g in grads)


def channel_forward(z, p: ChannelParams):
    """Eq. 9 before the sigmoid on Z (B, C) fp32: logit_c = W2 ReLU(W1 Z + b1) + b2."""
    hidden = torch.relu(F.linear(z, p.fc1_weight.float(), p.fc1_bias.float()))
    return F.linear(hidden, p.fc2_weight.float(), p.fc2_bias.float())


def channel_backward(grad, z, p: ChannelParams):
    """Gradients of eq. 9 given dL/dlogit_c (B, C): (dZ, dfc1_weight, dfc1_bias, dfc2_weight, dfc2_bias)."""
    w1, w2 = p.fc1_weight.float(), p.fc2_weight.float()
    pre = F.linear(z, w1, p.fc1_bias.float())
    dpre = (grad @ w2) * (pre > 0)
    return dpre @ w1, dpre.t() @ z, dpre.sum(dim=0), grad.t() @ torch.relu(pre), grad.sum(dim=0)
