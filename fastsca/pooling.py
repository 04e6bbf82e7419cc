"""Multiple-instance attention pooling, eq. 2: clip probability from per-frame (10 Hz) instances.

Y_k = sum_t e_k(x_t) v_k(x_t) / sum_t e_k(x_t), with e = exp of a linear map (a softmax over time of
clamped logits) and v = sigmoid of a linear map. v_t are the frame-level predictions used for
localisation. The clamp is ours (the paper does not say how e is kept finite).
"""
import torch
from torch import nn


class AttentionPooling(nn.Module):
    """Eq. 2 over frames: (B, T', D) features -> clip probs (B, K) and frame probs (B, T', K)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        logit_clamp: float,
    ) -> None:
        super().__init__()
        self.attention = nn.Linear(in_features, num_classes)   # log e(.)
        self.tagging = nn.Linear(in_features, num_classes)     # logit of v(.)
        self.logit_clamp = logit_clamp

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:   # x: (B, T', D)
        att_logit = self.attention(x).float().clamp(-self.logit_clamp, self.logit_clamp)
        weight = torch.softmax(att_logit, dim=1)                  # e / sum_t e, (B, T', K)
        frame_prob = torch.sigmoid(self.tagging(x).float())       # v, (B, T', K)
        clip_prob = (weight * frame_prob).sum(dim=1)              # (B, K)
        return clip_prob, frame_prob
