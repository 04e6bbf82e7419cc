"""Multiple-instance attention pooling, eq. 2: clip probability from per-frame (10 Hz) instances.

Y_k = sum_t e_k(x_t) v_k(x_t) / sum_t e_k(x_t), with e = exp of a linear map and v = sigmoid of a linear
map. e / sum_t e is a softmax over time, which torch computes max-subtracted: every exp() is <= 1 and the
largest is exactly 1, so no clamp is needed for it to stay finite, and none is applied (a clamp would
change eq. 2 wherever a logit passes it and cut those logits' gradients). v_t are the frame-level
predictions used for localisation. `clip_embedding` is the frame features' mean under the same weights
(averaged over classes), the clip's embedding for retrieval and clustering.
"""
import torch
from torch import nn


class AttentionPooling(nn.Module):
    """Eq. 2 over frames: (B, T', D) features -> clip probs (B, K) and frame probs (B, T', K)."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        logit_clamp: float | None = None,
    ) -> None:
        super().__init__()
        self.attention = nn.Linear(in_features, num_classes)   # log e(.)
        self.tagging = nn.Linear(in_features, num_classes)     # logit of v(.)
        # Only for checkpoints trained with a clamp (ModelConfig.pool_logit_clamp); None is eq. 2.
        self.logit_clamp = logit_clamp

    def weights(self, x: torch.Tensor) -> torch.Tensor:        # x: (B, T', D)
        """Eq. 2's attention weights e_k(x_t) / sum_t e_k(x_t), (B, T', K)."""
        att_logit = self.attention(x).float()                     # log e, (B, T', K)
        if self.logit_clamp is not None:
            att_logit = att_logit.clamp(-self.logit_clamp, self.logit_clamp)
        return torch.softmax(att_logit, dim=1)                    # max-subtracted

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:   # x: (B, T', D)
        weight = self.weights(x)                                  # (B, T', K)
        frame_prob = torch.sigmoid(self.tagging(x).float())       # v, (B, T', K)
        clip_prob = (weight * frame_prob).sum(dim=1)              # (B, K)
        return clip_prob, frame_prob

    def clip_embedding(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, T', D)
        """The frames' mean weighted by eq. 2's attention averaged over the classes, (B, D) in float32."""
        weight = self.weights(x).mean(dim=2)                      # (B, T')
        return (weight[..., None] * x.float()).sum(dim=1)         # (B, D)
