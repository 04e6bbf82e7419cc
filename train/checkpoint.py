"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model, optimiser and scheduler states, the loader's position inside its epoch,
every rank's RNG states (python, numpy, torch, cuda), the step, epoch and best eval mAP, the configs of
the run (each dataclass as a dict) and the label names. `fastsca.inference` reads the same files.
"""
import os
import random
import shutil
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch

from fastsca.config import ModelConfig
from fastsca.inference import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint
from train.config import TrainConfig


@dataclass
class TrainState:
    """The loop's counters, saved with the weights."""

    step: int = 0
    """Optimiser steps taken."""
    best_map: float = -1.0
    """Best validation mAP so far (best.pt holds that model)."""
    best_step: int = 0
    """The step best.pt was written at (early stopping counts evaluations since)."""


def rng_state() -> dict:
    """This process's RNG states; numpy's key array as a list so the checkpoint loads with weights_only."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"python": random.getstate(),
            "numpy": (name, keys.tolist(), pos, has_gauss, cached),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}


def set_rng_state(state: dict) -> None:
    """Restore what `rng_state` captured."""
    random.setstate(state["python"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def config_dict(config: TrainConfig) -> dict:
    """Each part of the run's config as a plain dict (tuples stay tuples)."""
    return {f.name: asdict(getattr(config, f.name)) for f in fields(config)}


def save(path: Path, payload: dict) -> None:
    """Write `payload` to `path` through a temporary file and a rename, so `path` is always a whole file."""
    tmp = path.with_name(path.name + ".tmp")
    torch.save(payload, tmp)
    os.replace(tmp, path)


def copy(source: Path, target: Path) -> None:
    """Copy a checkpoint file atomically (best.pt from latest.pt)."""
    tmp = target.with_name(target.name + ".tmp")
    shutil.copyfile(source, tmp)
    os.replace(tmp, target)


def make_payload(model: torch.nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, loader_states: list[dict], rng_states: list[dict],
                 state: TrainState, epoch: int, config: TrainConfig, label_names: tuple[str, ...]) -> dict:
    """The checkpoint dict; `model` is the plain module (not its compiled or DDP wrapper); loader and RNG
    states are one per rank; `epoch` (the loader's) is for reading only, the loader states hold it."""
    return {"format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(),
            "loader": loader_states,
            "rng": rng_states,
            **asdict(state),
            "epoch": epoch,
            "config": config_dict(config),
            "label_names": list(label_names)}


# Loader fields that change how fast batches come, not which: free to differ on resume.
EXECUTION_FIELDS = ("num_workers", "dali_threads", "prefetch_batches")


def _without_execution(part: dict) -> dict:
    if "loader" not in part:
        return part
    return {**part, "loader": {k: v for k, v in part["loader"].items() if k not in EXECUTION_FIELDS}}


def _differences(saved: dict, current: dict, prefix: str = "") -> list[str]:
    """'field saved vs current' for every leaf that differs, nested fields dotted (loader.batch_size)."""
    found = []
    for key, value in current.items():
        if isinstance(value, dict) and isinstance(saved.get(key), dict):
            found += _differences(saved[key], value, f"{prefix}{key}.")
        elif saved.get(key) != value:
            found.append(f"{prefix}{key} {saved.get(key)!r} vs {value!r}")
    return found


def check_compatible(path: Path, payload: dict, config: TrainConfig) -> None:
    """Raise CheckpointError (one line) unless the checkpoint's model, front end and data settings are this run's."""
    saved = payload["config"]
    saved_model = ModelConfig(**saved["model"])
    if saved_model != config.model:   # ModelConfig's equality leaves out the preset name
        differences = ", ".join(d for d in _differences(saved["model"], asdict(config.model)) if not d.startswith("name "))
        raise CheckpointError(
            f"{path} holds model {saved_model.name!r} but this run builds {config.model.name!r} ({differences}, "
            f"checkpoint vs this run); resume with the checkpoint's --preset/--profile options, or start a new run "
            f"with another --out")
    current = config_dict(config)
    for part in ("log_mel", "data"):
        if _without_execution(saved[part]) != _without_execution(current[part]):
            differences = ", ".join(_differences(saved[part], current[part]))
            raise CheckpointError(
                f"{path} was written with other {part} settings ({differences}, checkpoint vs this run); resume "
                f"with the same data options, or start a new run with another --out")


def load_for_resume(path: Path, config: TrainConfig) -> dict:
    """The checkpoint at `path`, checked against this run's config."""
    payload = read_checkpoint(path)
    check_compatible(path, payload, config)
    return payload


def restore_train_state(payload: dict) -> TrainState:
    """The loop counters of a checkpoint."""
    return TrainState(**{f.name: payload[f.name] for f in fields(TrainState) if f.name in payload})   # older: no best_step
