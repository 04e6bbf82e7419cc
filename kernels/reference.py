"""The attention of §3 in plain PyTorch, equation by equation: the reference the fused unit is checked against.

The one reference of the project: the model's reference path (fastsca.attention with fused=False), the
tests, the benchmarks' `eager` and `compile` providers and the fused unit's CPU passes all call it.
It computes as a user's model would under autocast: every F-sized tensor stays in F's dtype; the
reductions over F (eqs. 4 and 8) accumulate in fp32 inside the op (`sum(..., dtype=torch.float32)`),
so no F-sized fp32 tensor is made, forward or backward (tests/test_reference.py checks it); a sum
divided by the count, not `mean(..., dtype=torch.float32)`, whose backward divides the broadcast
gradient and so writes an F-sized fp32 tensor. In fp32 it is the numerical oracle, bitwise equal to
the means. The local FC (eq. 6) works on S, a C-th of F: it runs in fp32 whatever the
autocast and returns S's dtype.

`arrangement` is a description with the fields of fastsca.config.Arrangement (spatial, channel,
squeeze_gated, pool_weighted, additive); `spatial` and `channel` are the sub-networks of eqs. 5-7
(S -> logit_s) and eq. 9 (Z -> logit_c).
"""
from typing import Callable

import torch


def channel_pool(
    x: torch.Tensor,                          # F: (B, C, T, F)
    channel_weight: torch.Tensor | None = None,  # M_c: (B, C), for CSA
) -> torch.Tensor:                            # S: (B, 1, T, F)
    """Eq. 4: S = 1/C sum_c F_c (of M_c * F for CSA)."""
    if channel_weight is not None:
        x = x * channel_weight.to(x.dtype)[:, :, None, None]
    return (x.sum(dim=1, keepdim=True, dtype=torch.float32) / x.shape[1]).to(x.dtype)


def local_fc(
    s: torch.Tensor,   # S: (B, 1, T, F)
    w1: torch.Tensor,  # (F, H, T), H = T // r
    b1: torch.Tensor,  # (F, H)
    w2: torch.Tensor,  # (F, T, H)
    b2: torch.Tensor,  # (F, T)
) -> torch.Tensor:     # M_local: (B, 1, T, F)
    """Eq. 6: for every frequency row f, m^f = W2[f] ReLU(W1[f] s^f + b1[f]) + b2[f], in fp32."""
    rows = s[:, 0].float().transpose(1, 2)                                           # (B, F, T)
    hidden = torch.relu(torch.einsum("bft,fht->bfh", rows, w1.float()) + b1.float())  # (B, F, H)
    out = torch.einsum("bfh,fth->bft", hidden, w2.float()) + b2.float()              # (B, F, T)
    return out.transpose(1, 2).unsqueeze(1).to(s.dtype)


def spatial_squeeze(
    x: torch.Tensor,                            # F: (B, C, T, F)
    spatial_logit: torch.Tensor | None = None,  # logit_s: (B, 1, T, F), for SCA
) -> torch.Tensor:                              # Z: (B, C)
    """Eq. 8: Z = 1/(T F) sum_{t,f} F (of F' = sigma(logit_s) * F for SCA; F' is this op's own)."""
    if spatial_logit is not None:
        x = x * torch.sigmoid(spatial_logit.to(x.dtype))
    return (x.sum(dim=(2, 3), dtype=torch.float32) / (x.shape[2] * x.shape[3])).to(x.dtype)


def gate(
    x: torch.Tensor,                     # F: (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # logit_s: (B, 1, T, F)
    channel_logit: torch.Tensor | None,  # logit_c: (B, C)
    additive: bool = False,
) -> torch.Tensor:                       # F'': (B, C, T, F)
    """Eqs. 7, 9, 10: F'' = sigma(logit_s) * sigma(logit_c) * F (a missing mask is 1: at least one logit);
    C//S (additive): F'' = sigma(logit_s + logit_c) * F."""
    s = spatial_logit.to(x.dtype) if spatial_logit is not None else None
    c = channel_logit.to(x.dtype)[:, :, None, None] if channel_logit is not None else None
    if additive:
        if s is None or c is None:
            raise ValueError("reference.gate: additive (C//S) gating needs both a spatial and a channel logit")
        return x * torch.sigmoid(s + c)
    if s is None or c is None:                 # one mask (AT-S, AT-C)
        return x * torch.sigmoid(s if c is None else c)
    return x * (torch.sigmoid(s) * torch.sigmoid(c))


def attention(
    x: torch.Tensor,                                 # F: (B, C, T, F)
    arrangement,                                     # a fastsca.config.Arrangement
    spatial: Callable[[torch.Tensor], torch.Tensor] | None,   # S -> logit_s, eqs. 5-7
    channel: Callable[[torch.Tensor], torch.Tensor] | None,   # Z -> logit_c, eq. 9
) -> torch.Tensor:                                   # F'': (B, C, T, F)
    """One arrangement of §3.3: the masks in the arrangement's order, then one gate."""
    logit_s = logit_c = None
    if arrangement.pool_weighted:                     # CSA: M_c from F, then S from M_c * F
        logit_c = channel(spatial_squeeze(x))
        logit_s = spatial(channel_pool(x, torch.sigmoid(logit_c)))
    else:
        if arrangement.spatial:                       # S from F
            logit_s = spatial(channel_pool(x))
        if arrangement.channel:                       # Z from M_s * F (SCA) or F
            logit_c = channel(spatial_squeeze(x, logit_s if arrangement.squeeze_gated else None))
    return gate(x, logit_s, logit_c, arrangement.additive)
