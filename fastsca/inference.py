"""A trained model from a training checkpoint (written by train/checkpoint.py), for tagging and evaluation.

A checkpoint is a dict saved with torch.save; this module reads the parts inference needs: the model's
weights and config, the front-end config and the label names. It is read with `weights_only=True`, so a
checkpoint from an untrusted source cannot run code when loaded.
"""
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.model import ATSCA, build_model

CHECKPOINT_FORMAT = "fastsca-checkpoint/1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at `path` (tensors on the CPU), checked to be a fastsca training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; `python -m train.run --out DIR` writes DIR/best.pt "
                              f"and DIR/latest.pt")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError) as error:
        # torch's own message runs to several sentences of advice; its first says what failed
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); it may be truncated: use "
                              f"best.pt or latest.pt as written by `python -m train.run`") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a fastsca training checkpoint (no {CHECKPOINT_FORMAT!r} format "
                              f"field); use best.pt or latest.pt as written by `python -m train.run`")
    return payload


@dataclass(frozen=True)
class TrainedModel:
    """A model in eval mode with what it needs to be fed and read."""

    model: ATSCA
    """The network, in eval mode, on its device."""
    log_mel: LogMelConfig
    """The front end it was trained with (sample rate, clip length, mel bins)."""
    label_names: tuple[str, ...]
    """Name of each output class."""
    step: int
    """Optimiser steps it was trained for."""
    configs: dict
    """The training run's configs as dicts (model, log_mel, data, optim, run)."""


def load_trained_model(path: str | Path, device: torch.device = torch.device("cpu")) -> TrainedModel:
    """The model saved in a training checkpoint, ready for inference on `device`."""
    payload = read_checkpoint(path)
    model = build_model(ModelConfig(**payload["config"]["model"]))
    model.load_state_dict(payload["model"])
    return TrainedModel(model=model.to(device).eval(),
                        log_mel=LogMelConfig(**payload["config"]["log_mel"]),
                        label_names=tuple(payload["label_names"]),
                        step=int(payload["step"]),
                        configs=payload["config"])
