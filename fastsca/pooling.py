"""Multiple-instance pooling: clip probabilities from per-frame (10 Hz) instances, by one of five functions.

Each pooling is Y_k = sum_t w_k(t) v_k(t) with v = sigmoid of a linear map of the frame features x_t (the frame
probabilities, used for localisation) and weights w that sum to 1 over time; the functions differ in w
(`ModelConfig.pooling`, TALNet's comparison: Wang, Li and Metze, ICASSP 2019, eqs. 1-5):
- "attention", the paper's eq. 2 and the presets' default: w = e / sum_t e with e = exp of a second linear map.
  e / sum_t e is a softmax over time, which torch computes max-subtracted: every exp() is <= 1 and the largest is
  exactly 1, so no clamp is needed for it to stay finite, and none is applied (a clamp would change eq. 2
  wherever a logit passes it and cut those logits' gradients);
- "linear_softmax": w = v / sum_t v, so Y = sum_t v^2 / sum_t v;
- "exp_softmax": w = exp(v) / sum_t exp(v), so Y = sum_t v exp(v) / sum_t exp(v);
- "max": w is 1 at the frame of the largest v, so Y = max_t v (the gradient reaches that frame only);
- "average": w = 1 / T', so Y = mean_t v.
`clip_embedding` is the frame features' mean under the same weights (averaged over classes), the clip's
embedding for retrieval and clustering.
"""
from collections.abc import Callable

import torch
from torch import nn

from fastsca.config import POOLINGS


class MILPooling(nn.Module):
    """(B, T', D) frame features -> clip probs (B, K) and frame probs (B, T', K); `weights` is the pooling."""

    tagging: nn.Linear   # logit of v(.)

    def frame_probs(self, x: torch.Tensor) -> torch.Tensor:    # x: (B, T', D)
        """The frame probabilities v, (B, T', K) in float32."""
        return torch.sigmoid(self.tagging(x).float())

    def weights(self, x: torch.Tensor, frame_prob: torch.Tensor) -> torch.Tensor:
        """The pooling weights w, (B, T', K), summing to 1 over time."""
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:   # x: (B, T', D)
        frame_prob = self.frame_probs(x)                           # v, (B, T', K)
        clip_prob = (self.weights(x, frame_prob) * frame_prob).sum(dim=1)   # (B, K)
        return clip_prob, frame_prob

    def clip_embedding(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, T', D)
        """The frames' mean weighted by the pooling weights averaged over the classes, (B, D) in float32."""
        weight = self.weights(x, self.frame_probs(x)).mean(dim=2)  # (B, T')
        return (weight[..., None] * x.float()).sum(dim=1)          # (B, D)


class AttentionPooling(MILPooling):
    """Eq. 2: the weights are a softmax over time of a learnt linear map of the frame features."""

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

    def weights(self, x: torch.Tensor, frame_prob: torch.Tensor) -> torch.Tensor:   # x: (B, T', D)
        """Eq. 2's attention weights e_k(x_t) / sum_t e_k(x_t), (B, T', K)."""
        att_logit = self.attention(x).float()                     # log e, (B, T', K)
        if self.logit_clamp is not None:
            att_logit = att_logit.clamp(-self.logit_clamp, self.logit_clamp)
        return torch.softmax(att_logit, dim=1)                    # max-subtracted


def linear_softmax_weights(frame_prob: torch.Tensor) -> torch.Tensor:   # (B, T', K)
    """v / sum_t v. The sum is 0 only where every frame's sigmoid underflowed to 0; the floor (float32's smallest
    normal number) then gives Y = 0, the formula's limit, instead of 0 / 0."""
    return frame_prob / frame_prob.sum(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)


def exp_softmax_weights(frame_prob: torch.Tensor) -> torch.Tensor:      # (B, T', K)
    """exp(v) / sum_t exp(v); v is in [0, 1], so no exp() can overflow."""
    return torch.softmax(frame_prob, dim=1)


def max_weights(frame_prob: torch.Tensor) -> torch.Tensor:              # (B, T', K)
    """1 at each class's frame of largest v, 0 elsewhere (a constant: the gradient flows through v there)."""
    return torch.zeros_like(frame_prob).scatter_(1, frame_prob.argmax(dim=1, keepdim=True), 1.0)


def average_weights(frame_prob: torch.Tensor) -> torch.Tensor:          # (B, T', K)
    """1 / T' everywhere."""
    return torch.full_like(frame_prob, 1.0 / frame_prob.shape[1])


FRAME_WEIGHTS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "linear_softmax": linear_softmax_weights,
    "exp_softmax": exp_softmax_weights,
    "max": max_weights,
    "average": average_weights,
}
"""The poolings whose weights are a function of the frame probabilities alone, by ModelConfig.pooling name."""


class FramePooling(MILPooling):
    """A pooling whose weights come from the frame probabilities alone (FRAME_WEIGHTS): no parameters of its own."""

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        frame_weights: Callable[[torch.Tensor], torch.Tensor],
    ) -> None:
        super().__init__()
        self.tagging = nn.Linear(in_features, num_classes)     # logit of v(.)
        self.frame_weights = frame_weights

    def weights(self, x: torch.Tensor, frame_prob: torch.Tensor) -> torch.Tensor:   # frame_prob: (B, T', K)
        return self.frame_weights(frame_prob)


def build_pooling(name: str, in_features: int, num_classes: int, logit_clamp: float | None = None) -> MILPooling:
    """The pooling called `name` (one of fastsca.config.POOLINGS); ValueError listing the valid names otherwise."""
    if name == "attention":
        return AttentionPooling(in_features, num_classes, logit_clamp)
    if name not in FRAME_WEIGHTS:
        raise ValueError(f"unknown pooling {name!r}; valid: {', '.join(POOLINGS)}")
    return FramePooling(in_features, num_classes, FRAME_WEIGHTS[name])
