"""The checkpointer of a training run: what goes into latest.pt, when it is written, the resume, best.pt and the
model folder OUT/pretrained.

latest.pt is written before the first step, at every evaluation, every --checkpoint-minutes (checked at log
steps) and when a signal stops the run; every rank's loader position and RNG states go into rank 0's file
(train/checkpoint.py writes it atomically). best.pt is a copy of latest.pt made when validation improves.
"""
import sys
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm import tqdm

from fastsca.events import EventConfig, stored_event_config
from fastsca.hub import save_pretrained_from_checkpoint
from fastsca.inference import CheckpointError
from train import checkpoint, distributed
from train.checkpoint import TrainState
from train.config import RunConfig, TrainConfig
from train.data.out_folder import describe_os_error
from train.trainer.guard import DivergenceGuard

PRETRAINED_FOLDER = "pretrained"
"""OUT/pretrained: the trained model as a folder in the Hugging Face layout, written beside best.pt at the end."""


def check_out(run: RunConfig, is_main: bool) -> Path:
    """The run's folder, created on rank 0; a ValueError (one line) where latest.pt there says another run is
    in it and --resume was not given, or --resume was given and there is nothing to resume."""
    out = Path(run.out)
    latest = out / "latest.pt"
    if latest.exists() and not run.resume:
        raise ValueError(f"{latest} exists; pass --resume to continue that run, or another --out to start a new one")
    if run.resume and not latest.exists():
        raise ValueError(f"--resume: no checkpoint at {latest}; drop --resume to start a new run there")
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
    return out


class Checkpointer:
    """Writes and reads one run's checkpoints; `model` is the plain module (not its compiled or DDP wrapper)."""

    def __init__(self, out: Path, config: TrainConfig, ctx: distributed.Context, fingerprints: dict,
                 guard: DivergenceGuard, model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, train_loader) -> None:
        self.out, self.config, self.ctx, self.fingerprints, self.guard = out, config, ctx, fingerprints, guard
        self.model, self.optimiser, self.scheduler, self.train_loader = model, optimiser, scheduler, train_loader
        self.latest = out / "latest.pt"
        self.best = out / "best.pt"
        self.cadence = checkpoint.Cadence(config.run.checkpoint_minutes)

    def resume(self) -> tuple[TrainState, EventConfig]:
        """Load latest.pt into the model, optimiser, scheduler, loader and RNGs, checked against this run's config
        and data; the loop counters and the event post-processing chosen so far on validation."""
        payload = checkpoint.load_for_resume(self.latest, self.config, self.fingerprints)
        if len(payload["loader"]) != self.ctx.world_size:
            raise CheckpointError(f"{self.latest} was written by {len(payload['loader'])} process(es) but this run "
                                  f"has {self.ctx.world_size}; resume with torchrun --nproc_per_node="
                                  f"{len(payload['loader'])} (or without torchrun for 1)")
        checkpoint.load_state(self.model, payload["model"], self.latest, "model")
        groups = len(payload["optimizer"].get("param_groups", ())) if isinstance(payload["optimizer"], dict) else 0
        if 0 < groups < len(self.optimiser.param_groups):
            raise CheckpointError(f"{self.latest}: its optimiser has {groups} parameter groups, this run's "
                                  f"{len(self.optimiser.param_groups)}: it was written before the attention's global "
                                  f"branch got a learning rate of its own (train/optim.py); finish that run with the "
                                  f"fastsca that started it, or start a new run with another --out")
        checkpoint.load_state(self.optimiser, payload["optimizer"], self.latest, "optimizer")
        checkpoint.load_state(self.scheduler, payload["scheduler"], self.latest, "scheduler")
        self.train_loader.load_state_dict(payload["loader"][self.ctx.rank])
        checkpoint.set_rng_state(payload["rng"][self.ctx.rank])
        return checkpoint.restore_train_state(payload), stored_event_config(payload["config"])

    def save(self, state: TrainState, events: EventConfig) -> None:
        """Write latest.pt (never with non-finite weights: the guard stops the run first)."""
        self.guard.check(state.step, weights=True)
        loader_states = distributed.gather_objects(self.train_loader.state_dict())
        rng_states = distributed.gather_objects(checkpoint.rng_state())
        if self.ctx.is_main:
            # every epoch has len(train_loader) steps, so this is the epoch the loader is in
            epoch = state.step // len(self.train_loader)
            checkpoint.save(self.latest, checkpoint.make_payload(
                self.model, self.optimiser, self.scheduler, loader_states, rng_states, state, epoch, self.config,
                tuple(self.train_loader.label_names), self.fingerprints, asdict(events)))
        self.guard.saved(state.step)
        self.cadence.reset()

    def due(self, step: int) -> bool:
        """Whether --checkpoint-minutes have passed since the last write (asked at log steps, on every rank)."""
        return step % self.config.run.log_every == 0 and distributed.any_rank(self.cadence.due(), self.ctx.device)

    def keep_best(self) -> None:
        """best.pt := latest.pt (just written after an improving evaluation)."""
        if self.ctx.is_main:
            checkpoint.copy(self.latest, self.best)

    def store_best_events(self, best: dict, events: EventConfig) -> None:
        """best.pt rewritten (atomically) from its payload `best` (read_best's, updated in place) with `events`, the
        per-class settings chosen for its model."""
        best["config"]["events"] = asdict(events)
        checkpoint.save(self.best, best)

    def read_best(self) -> dict:
        """best.pt, once rank 0 has written it."""
        distributed.gather_objects(None)   # a barrier
        return checkpoint.read_checkpoint(self.best)

    def write_model_folder(self, label_mids: tuple[str, ...]) -> None:
        """OUT/pretrained: best.pt in the Hugging Face layout (fastsca/hub.py), what `fastsca.Tagger.from_pretrained`
        and the Hub take. best.pt is already whole, so a failure here (a full disk) is one warning line."""
        folder = self.out / PRETRAINED_FOLDER
        try:
            save_pretrained_from_checkpoint(self.best, folder, label_mids=label_mids)
        except (OSError, ValueError) as error:
            reason = describe_os_error(error, f"write {folder}") if isinstance(error, OSError) else error
            tqdm.write(f"warning: {reason}; best.pt is whole: write the folder later with `python -m fastsca.hub "
                       f"{self.best} --out {folder}`", file=sys.stderr)
