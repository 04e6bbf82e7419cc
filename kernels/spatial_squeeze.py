"""Channel descriptor of the spatially weighted map, eq. 8: Z = mean over (T, F) of sigma(logit_s) * F.

With no spatial logit it is the plain SE squeeze of F. F' = sigma(logit_s) * F is never written.
Reference only so far; the Triton forward/backward kernels and the op registration go above it.
"""
import torch


def spatial_squeeze_reference(
    x: torch.Tensor,                     # (B, C, T, F)
    spatial_logit: torch.Tensor | None,  # (B, 1, T, F) or None
) -> torch.Tensor:                       # (B, C)
    """Z[b, c] = 1/(T*F) * sum_{t,f} sigma(logit_s[b, 0, t, f]) * x[b, c, t, f], accumulated in fp32."""
    xf = x.float()
    if spatial_logit is not None:
        xf = xf * torch.sigmoid(spatial_logit.float())
    return xf.mean(dim=(2, 3)).to(x.dtype)
