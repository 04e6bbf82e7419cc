"""One optimisation step, exactly as `train.run` takes it, and the one `bench.whole_step` counts.

Forward under the run's autocast (bf16 on CUDA), the fp32 BCE of eq. 3 (plus the frame BCE on the clips with
strong labels, where the batch carries frame targets: train/loss.py), backward, gradient clipping, the optimiser's
step. A loss that is not finite is recorded on the device (`NonFiniteWatch`), so the step makes
no host sync; the run reads the watch only before a log line, an evaluation or a checkpoint.
"""
from dataclasses import dataclass

import torch

from train.evaluate import autocast
from train.data.frame_targets import StrongTargets
from train.loss import clip_bce, frame_bce


class NonFiniteOutput(RuntimeError):
    """The model's clip or frame probabilities were NaN or infinite, so the BCE refused them (a diverged run)."""


@dataclass
class NonFiniteWatch:
    """The first step whose loss was NaN or infinite (0: none yet), kept on the device: no sync per step."""

    first_bad_step: torch.Tensor

    @classmethod
    def on(cls, device: torch.device) -> "NonFiniteWatch":
        return cls(torch.zeros((), dtype=torch.long, device=device))

    def record(self, loss: torch.Tensor | None, step: int) -> None:
        """Mark `step` as the first bad one if nothing is marked yet and `loss` is not finite (None: it is not)."""
        unmarked = self.first_bad_step == 0
        bad = unmarked if loss is None else unmarked & ~torch.isfinite(loss.detach())
        self.first_bad_step.masked_fill_(bad, step)

    def first_bad(self) -> int:
        """The first step marked bad, 0 if none (one host sync)."""
        return int(self.first_bad_step.item())


def training_step(train_model: torch.nn.Module, parameters: list[torch.nn.Parameter],
                  optimiser: torch.optim.Optimizer, log_mel: torch.Tensor, target: torch.Tensor,
                  grad_clip: float, watch: NonFiniteWatch, step: int, strong: StrongTargets | None = None,
                  strong_weight: float = 0.0) -> torch.Tensor:
    """Step `step` (1-based) on one batch: log_mel (B, 1, T, F), target (B, K), and where given the frame targets
    `strong` weighted by `strong_weight`; returns the loss (on the device).

    `train_model` is what runs the forward (compiled, DDP-wrapped or plain); `parameters` are the model's own,
    clipped to a total norm of `grad_clip` (0: no clipping). Raises NonFiniteOutput (after marking the step in
    `watch`) where the clip or frame probabilities are not finite."""
    with autocast(log_mel.device):
        output = train_model(log_mel)
    try:
        loss = clip_bce(output.clip, target)
        if strong is not None:
            loss = loss + strong_weight * frame_bce(output.frame, strong)
    except RuntimeError as error:   # the BCE refuses probabilities outside [0, 1]: NaN ones after a divergence
        if bool(torch.isfinite(output.clip).all()) and bool(torch.isfinite(output.frame).all()):
            raise
        watch.record(None, step)
        raise NonFiniteOutput(f"step {step}: the model's probabilities are not finite") from error
    watch.record(loss, step)
    optimiser.zero_grad(set_to_none=True)
    loss.backward()
    if grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(parameters, grad_clip)
    optimiser.step()
    return loss
