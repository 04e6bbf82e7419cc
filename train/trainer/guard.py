"""The divergence guard: stops a run whose loss or weights turned NaN or infinite, with a one-line cause.

The training step records a non-finite loss on the device (train/step.py's `NonFiniteWatch`); the guard reads
it, and checks the weights, only before a log line, an evaluation or a checkpoint, so latest.pt only ever holds
finite weights and the steps between make no host sync.
"""
from pathlib import Path

import torch

from train import distributed
from train.config import OptimConfig
from train.optim import lr_factor
from train.step import NonFiniteWatch


class Diverged(ValueError):
    """The loss or the weights became NaN or infinite; the message names the step and the likely cause."""


class DivergenceGuard:
    """Watches one run's losses and weights; knows the last checkpoint written with finite weights."""

    def __init__(self, model: torch.nn.Module, optim: OptimConfig, total_steps: int, latest: Path,
                 device: torch.device, saved_step: int | None) -> None:
        self.model = model
        self.optim = optim
        self.total_steps = total_steps
        self.latest = latest
        self.device = device
        self.watch = NonFiniteWatch.on(device)
        self.saved_step = saved_step
        """The step latest.pt was last written at by this run (the resumed step on resume); None: not yet."""

    def saved(self, step: int) -> None:
        """latest.pt now holds the (finite) state after `step`."""
        self.saved_step = step

    def check(self, step: int, weights: bool) -> None:
        """Raise Diverged (on every rank) if a loss so far was not finite or, with `weights`, a weight is not."""
        bad_loss = self.watch.first_bad()
        bad_weights = weights and not all(bool(torch.isfinite(p).all()) for p in self.model.parameters())
        if not distributed.any_rank(bool(bad_loss) or bad_weights, self.device):
            return
        lr = self.optim.lr * lr_factor(bad_loss or step, self.optim, self.total_steps)
        what = (f"the loss at step {bad_loss} was not finite" if bad_loss
                else f"the weights after step {step} are not finite")
        kept = (f"{self.latest} holds the last good state (step {self.saved_step})" if self.saved_step is not None
                else "no checkpoint was written")
        raise Diverged(f"training diverged: {what}; the likely cause is a learning rate too high (lr {lr:.3g} "
                       f"there, --lr {self.optim.lr:g}{'' if self.optim.grad_clip else ', no --grad-clip'}): "
                       f"{kept}; start a new run with a lower --lr (e.g. {self.optim.lr / 10:g}) and another "
                       f"--out, or --init {self.latest}")
