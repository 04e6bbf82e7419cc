"""The training loss: eq. 3's binary cross-entropy between the clip probabilities and the weak labels, plus, on the
clips with strong labels, the binary cross-entropy between the frame probabilities and the frame targets."""
import torch
import torch.nn.functional as F

from train.data.frame_targets import StrongTargets

# The clip output is already a probability (a weighted mean of sigmoids), so the logits-based BCE cannot be
# used. Clamping to [1e-7, 1 - 1e-7] keeps log() and its gradient 1/p finite where a frame's sigmoid
# saturates; 1 - 1e-7 is still distinct from 1 in fp32 (its spacing there is 6e-8).
PROB_EPS = 1e-7


def clip_bce(clip_prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE over clips and classes of (B, K) probabilities against (B, K) targets in [0, 1].

    Computed in fp32 whatever the autocast dtype: bf16's 8-bit mantissa cannot represent 1 - 1e-7, so
    a confident positive would lose its gradient.
    """
    prob = clip_prob.float().clamp(PROB_EPS, 1.0 - PROB_EPS)
    return F.binary_cross_entropy(prob, target.float())


def frame_bce(frame_prob: torch.Tensor, strong: StrongTargets) -> torch.Tensor:
    """Mean BCE over the frames and classes of (B, T', K) frame probabilities against the frame targets, averaged
    over the clips with strong labels only (0 when the batch has none): a clip without them adds nothing, and the
    figure does not shrink with their share of the batch. Frames SpecAugment hid (`strong.seen` 0) are left out
    the same way. In fp32 with the clip BCE's clamp, for its reasons."""
    prob = frame_prob.float().clamp(PROB_EPS, 1.0 - PROB_EPS)
    per_frame = F.binary_cross_entropy(prob, strong.frame.float(), reduction="none").mean(dim=2)   # (B, T')
    weight = strong.strong[:, None] if strong.seen is None else strong.strong[:, None] * strong.seen   # (B, 1|T')
    # a sum over a count kept on the device (no host sync); clamped so that a batch without strong clips is 0 / 1
    return (per_frame * weight).sum() / weight.expand_as(per_frame).sum().clamp_min(1.0)
