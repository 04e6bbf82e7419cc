"""Per-frequency-band local FC attention, eq. 6: for each frequency row f its own MLP T -> T/r -> T.

m^f = W2[f] @ relu(W1[f] @ s^f + b1[f]) + b2[f], with s^f the time series of row f of S.
Reference only so far; the Triton forward/backward kernels and the op registration go above it.
"""
import torch


def local_fc_reference(
    s: torch.Tensor,   # (B, 1, T, F)
    w1: torch.Tensor,  # (F, H, T), H = T // r
    b1: torch.Tensor,  # (F, H)
    w2: torch.Tensor,  # (F, T, H)
    b2: torch.Tensor,  # (F, T)
) -> torch.Tensor:     # (B, 1, T, F)
    """Local attention logits M_local, accumulated in fp32."""
    rows = s[:, 0].float().transpose(1, 2)                                           # (B, F, T)
    hidden = torch.relu(torch.einsum("bft,fht->bfh", rows, w1.float()) + b1.float())  # (B, F, H)
    out = torch.einsum("bfh,fth->bft", hidden, w2.float()) + b2.float()              # (B, F, T)
    return out.transpose(1, 2).unsqueeze(1).to(s.dtype)
