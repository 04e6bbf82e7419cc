"""Cross-channel average pooling, eq. 4: S = mean over C of F (optionally channel-weighted, for CSA).

Reference only so far; the Triton forward/backward kernels and the op registration go above it.
"""
import torch


def channel_pool_reference(
    x: torch.Tensor,                      # (B, C, T, F)
    channel_weight: torch.Tensor | None,  # (B, C) or None
) -> torch.Tensor:                        # (B, 1, T, F)
    """S[b, 0, t, f] = 1/C * sum_c w[b, c] * x[b, c, t, f], accumulated in fp32."""
    xf = x.float()
    if channel_weight is not None:
        xf = xf * channel_weight.float()[:, :, None, None]
    return xf.mean(dim=1, keepdim=True).to(x.dtype)
