"""Training checkpoints: everything needed to continue a run exactly, written atomically.

A checkpoint holds the model, optimiser and scheduler states, the loader's position inside its epoch,
every rank's RNG states (python, numpy, torch, cuda), the step, epoch and best eval mAP, the configs of
the run (each dataclass as a dict), the label names and a fingerprint of the data (`data_fingerprint`), by
which a resume recognises its data whatever path names it. `fastsca.inference` reads the same files.
"""
import hashlib
import random
import shutil
import time
from dataclasses import MISSING, asdict, dataclass, fields
from pathlib import Path

import h5py
import numpy as np
import torch

from fastsca.atomic import write_atomically
from fastsca.config import ModelConfig
from fastsca.inference import CHECKPOINT_FORMAT, CheckpointError, read_checkpoint
from train.config import DataConfig, OptimConfig, TrainConfig
from train.optim import lr_factor
from train.data.out_folder import OutFolderError, describe_os_error
from train.data.shards import TARGET_READ_ROWS, ShardIndex

# What a resume reads from a checkpoint, besides the TrainState fields.
RESUME_KEYS = ("model", "optimizer", "scheduler", "loader", "rng", "config", "label_names")
CONFIG_PARTS = ("model", "log_mel", "data", "optim", "run")
# Fields that shape the learning-rate schedule: changing one on resume would make the lr jump.
SCHEDULE_FIELDS = (("optim", "lr"), ("optim", "warmup_steps"), ("optim", "min_lr_ratio"), ("run", "steps"),
                   ("run", "epochs"), ("optim", "backbone_lr_scale"), ("run", "freeze_blocks"))
# DataConfig fields that name where the data is, not what it is: a resume compares the data's fingerprints instead.
DATA_PATH_FIELDS = ("train_path", "eval_path", "validation_path", "builtin_dir")


@dataclass
class TrainState:
    """The loop's counters, saved with the weights."""

    step: int = 0
    """Optimiser steps taken."""
    best_map: float = -1.0
    """Best validation mAP so far (best.pt holds that model)."""
    best_step: int = 0
    """The step best.pt was written at (early stopping counts evaluations since)."""


class Cadence:
    """Says when `minutes` have passed since the last checkpoint (a time cadence beside the eval cadence)."""

    def __init__(self, minutes: float) -> None:
        self.seconds = 60.0 * minutes
        self.last = time.monotonic()

    def due(self) -> bool:
        return time.monotonic() - self.last >= self.seconds

    def reset(self) -> None:
        self.last = time.monotonic()


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


def data_fingerprint(path: str) -> dict:
    """What a split holds, cheaply: clip count, clip length, sample rate, label names and a SHA-1 of every
    shard's targets and clip names (no waveform is read: 1 byte per class and a name per clip)."""
    index = ShardIndex.open(path)
    digest = hashlib.sha1()
    for shard in index.paths:
        with h5py.File(shard, "r") as handle:
            for start in range(0, handle["target"].shape[0], TARGET_READ_ROWS):
                digest.update(np.ascontiguousarray(handle["target"][start:start + TARGET_READ_ROWS]).tobytes())
                digest.update(b"\0".join(handle["audio_name"][start:start + TARGET_READ_ROWS]))
    return {"clips": index.num_clips, "clip_samples": index.clip_samples, "sample_rate": index.sample_rate,
            "label_names": list(index.label_names), "sha1": digest.hexdigest()}


def _fingerprint_difference(saved: dict, current: dict) -> str:
    """How the data differs, in words."""
    for key, words in (("clips", "clips"), ("clip_samples", "samples per clip"), ("sample_rate", "Hz")):
        if saved.get(key) != current.get(key):
            return f"{current.get(key)} {words} where the checkpoint's had {saved.get(key)}"
    if saved.get("label_names") != current.get("label_names"):
        return "other label names"
    return f"the same number of clips but other labels or clip names (checksum {current.get('sha1', '')[:8]} vs " \
           f"{saved.get('sha1', '')[:8]})"


def config_dict(config: TrainConfig) -> dict:
    """Each part of the run's config as a plain dict (tuples stay tuples)."""
    return {f.name: asdict(getattr(config, f.name)) for f in fields(config)}


def _write_atomically(path: Path, write) -> None:
    """`write(tmp)` then rename onto `path`, so `path` is always a whole file; on a file-system error (disk
    full) the temporary file is removed, `path` keeps its previous content and the error is one line."""
    try:
        write_atomically(path, write)
    except OSError as error:
        raise OutFolderError(describe_os_error(error, f"write {path}") + f" (the previous {path.name}, if any, "
                             f"is kept)") from None


def save(path: Path, payload: dict) -> None:
    """Write `payload` to `path` through a temporary file and a rename, so `path` is always a whole file."""
    _write_atomically(path, lambda tmp: torch.save(payload, tmp))


def copy(source: Path, target: Path) -> None:
    """Copy a checkpoint file atomically (best.pt from latest.pt)."""
    _write_atomically(target, lambda tmp: shutil.copyfile(source, tmp))


def make_payload(model: torch.nn.Module, optimiser: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, loader_states: list[dict], rng_states: list[dict],
                 state: TrainState, epoch: int, config: TrainConfig, label_names: tuple[str, ...],
                 fingerprints: dict | None = None, events: dict | None = None) -> dict:
    """The checkpoint dict; `model` is the plain module (not its compiled or DDP wrapper); loader and RNG
    states are one per rank; `epoch` (the loader's) is for reading only, the loader states hold it;
    `fingerprints` {"train": ..., "test": ...} are `data_fingerprint`s of the run's splits; `events` (an
    EventConfig as a dict: the per-class settings chosen on validation) goes in as config["events"]."""
    return {"format": CHECKPOINT_FORMAT,
            "model": model.state_dict(),
            "optimizer": optimiser.state_dict(),
            "scheduler": scheduler.state_dict(),
            "loader": loader_states,
            "rng": rng_states,
            **asdict(state),
            "epoch": epoch,
            "config": {**config_dict(config), **({"events": events} if events else {})},
            "label_names": list(label_names),
            "data_fingerprints": fingerprints}


# Loader fields that change how fast batches come, not which: free to differ on resume (and so may the run's
# RunOptions, config["options"], which no resume compares).
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


def check_contents(path: Path, payload: dict) -> None:
    """Raise CheckpointError (one line) if a checkpoint lacks what a resume reads (a hand-edited file)."""
    missing = [k for k in (*RESUME_KEYS, *(f.name for f in fields(TrainState))) if k not in payload]
    if not isinstance(payload.get("config", {}), dict):
        missing.append("config")
    missing += [f"config.{part}" for part in CONFIG_PARTS
                if "config" not in missing and not isinstance(payload.get("config", {}).get(part), dict)]
    if missing:
        raise CheckpointError(f"{path}: no {', '.join(missing)} entry; the file was edited or written by other "
                              f"code: resume from a latest.pt as written by `python -m train.run`, or start a new "
                              f"run with another --out")


def _check_schedule(path: Path, saved: dict, config: TrainConfig, step: int) -> None:
    """Raise CheckpointError if this run's learning-rate schedule differs from the checkpoint's.

    Refused rather than adopted: a schedule stretched or squeezed mid-run makes the lr jump at once (the issue
    that asked for this saw 3e-05 become 4.8e-04 with a larger --steps), and silently keeping the old one
    would ignore the flag the user just gave."""
    current = config_dict(config)
    # a field the checkpoint lacks (written before the field existed) had its default value
    defaults = {part: asdict(type(getattr(config, part))()) for part in ("optim", "run")}
    changed = [f"{part}.{name} {saved[part].get(name, defaults[part][name])!r} vs {current[part][name]!r}"
               for part, name in SCHEDULE_FIELDS if saved[part].get(name, defaults[part][name]) != current[part][name]]
    if not changed:
        return
    jump = ""
    if saved["run"].get("steps") and config.run.steps:
        before = saved["optim"]["lr"] * lr_factor(step, OptimConfig(**{**saved["optim"],
                                                                        "betas": tuple(saved["optim"]["betas"])}),
                                                  saved["run"]["steps"])
        after = config.optim.lr * lr_factor(step, config.optim, config.run.steps)
        jump = f"; the lr at step {step} would jump from {before:.3g} to {after:.3g}"
    raise CheckpointError(f"{path} was started with another learning-rate schedule ({', '.join(changed)}, checkpoint "
                          f"vs this run){jump}; resume with the checkpoint's --steps/--epochs/--lr/--warmup-steps, "
                          f"or start a new run with another --out")


def _check_data(path: Path, payload: dict, config: TrainConfig, fingerprints: dict | None) -> None:
    """Raise CheckpointError unless the checkpoint's data is this run's: the same content by the fingerprints
    (any path spelling, a moved or copied folder), and the same data settings."""
    # a field the checkpoint lacks (written before the field existed, e.g. fold) had its default value
    defaults = {f.name: f.default for f in fields(DataConfig) if f.default is not MISSING}
    saved, current = {**defaults, **payload["config"]["data"]}, config_dict(config)["data"]
    saved_prints = payload.get("data_fingerprints")
    ignored = DATA_PATH_FIELDS if saved_prints and fingerprints else ()   # older checkpoints: by path, as before
    for split in sorted(set(saved_prints) | set(fingerprints)) if ignored else ():
        if (split in saved_prints) != (split in fingerprints):
            raise CheckpointError(f"{path} was trained {'with' if split in saved_prints else 'without'} a "
                                  f"--{split}-data split of its own; resume with the data the run started on, or "
                                  f"start a new run with another --out")
        if saved_prints.get(split) != fingerprints.get(split):
            fold_or_train = split == "train" or config.data.fold is not None
            where = {"validation": config.data.validation_path, "test": config.data.eval_path}.get(
                split) if not fold_or_train else config.data.train_path
            raise CheckpointError(
                f"{path} was trained on other data: the {split} split {where or 'of the built-in set'} holds "
                f"{_fingerprint_difference(saved_prints.get(split) or {}, fingerprints.get(split) or {})}; resume with the data "
                f"the run started on (under any path), or start a new run with another --out")
    saved, current = ({k: v for k, v in part.items() if k not in ignored} for part in (saved, current))
    if _without_execution(saved) != _without_execution(current):
        differences = ", ".join(_differences(saved, current))
        raise CheckpointError(
            f"{path} was written with other data settings ({differences}, checkpoint vs this run); resume "
            f"with the same data options, or start a new run with another --out")


def check_compatible(path: Path, payload: dict, config: TrainConfig, fingerprints: dict | None = None) -> None:
    """Raise CheckpointError (one line) unless the checkpoint's model, front end, data and lr schedule are this
    run's; `fingerprints` are this run's data's (see `make_payload`)."""
    check_contents(path, payload)
    saved = payload["config"]
    saved_model = ModelConfig(**saved["model"])
    if saved_model != config.model:   # ModelConfig's equality leaves out the preset name
        differences = ", ".join(d for d in _differences(saved["model"], asdict(config.model))
                                if d.split(" ", 1)[0] != "name")
        raise CheckpointError(
            f"{path} holds model {saved_model.name!r} but this run builds {config.model.name!r} ({differences}, "
            f"checkpoint vs this run); resume with the checkpoint's --preset/--profile options, or start a new run "
            f"with another --out")
    current = config_dict(config)
    if saved["log_mel"] != current["log_mel"]:
        differences = ", ".join(_differences(saved["log_mel"], current["log_mel"]))
        raise CheckpointError(
            f"{path} was written with other log_mel settings ({differences}, checkpoint vs this run); resume "
            f"with the same data options, or start a new run with another --out")
    _check_data(path, payload, config, fingerprints)
    _check_schedule(path, saved, config, payload["step"])


def load_for_resume(path: Path, config: TrainConfig, fingerprints: dict | None = None) -> dict:
    """The checkpoint at `path`, checked against this run's config and data."""
    payload = read_checkpoint(path)
    check_compatible(path, payload, config, fingerprints)
    return payload


def load_state(module, state: dict, path: Path, what: str) -> None:
    """`module.load_state_dict(state)`, with a mismatch (a hand-edited file) as a one-line CheckpointError."""
    try:
        module.load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, TypeError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: its {what} state does not fit this run's {what} ({reason}); the file was "
                              f"edited or damaged: resume from a latest.pt as written by `python -m train.run`, or "
                              f"start a new run with another --out") from None


def restore_train_state(payload: dict) -> TrainState:
    """The loop counters of a checkpoint."""
    return TrainState(**{f.name: payload[f.name] for f in fields(TrainState) if f.name in payload})   # older: no best_step
