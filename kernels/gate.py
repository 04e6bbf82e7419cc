"""Sigmoid-gated rescaling, eqs. 7, 9 and 10.

Sequential (SCA, CSA):  out = sigma(logit_s) * sigma(logit_c) * F   (a missing logit gates with 1)
Parallel (C//S):        out = sigma(logit_s + logit_c) * F
Reference only so far; the Triton forward/backward kernels and the op registration go above it.
"""
import torch


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
