"""The training loss, eq. 3: binary cross-entropy between the clip probabilities of eq. 2 and the weak labels."""
import torch
import torch.nn.functional as F

# The clip output is already a probability (an attention-weighted mean of sigmoids), so the logits-based
# BCE cannot be used. Clamping to [1e-7, 1 - 1e-7] keeps log() and its gradient 1/p finite where a
# frame's sigmoid saturates; 1 - 1e-7 is still distinct from 1 in fp32 (its spacing there is 6e-8).
PROB_EPS = 1e-7


def clip_bce(clip_prob: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean BCE over clips and classes of (B, K) probabilities against (B, K) targets in [0, 1].

    Computed in fp32 whatever the autocast dtype: bf16's 8-bit mantissa cannot represent 1 - 1e-7, so
    a confident positive would lose its gradient.
    """
    prob = clip_prob.float().clamp(PROB_EPS, 1.0 - PROB_EPS)
    return F.binary_cross_entropy(prob, target.float())
