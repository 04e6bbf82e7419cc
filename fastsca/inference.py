"""A trained model from a training checkpoint (written by train/checkpoint.py), and what it says about a file.

A checkpoint is a dict saved with torch.save; this module reads the parts inference needs: the model's
weights and config, the front-end config and the label names. It is read with `weights_only=True`, so a
checkpoint from an untrusted source cannot run code when loaded. A model config stored by an older fastsca
with fields that are no longer the model's (`RETIRED_MODEL_FIELDS`) is read without them.
"""
import pickle
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch

from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.model import ATSCA, build_model
from fastsca.run_options import options_for_device

CHECKPOINT_FORMAT = "fastsca-checkpoint/1"
RETIRED_MODEL_FIELDS = ("fused_attention",)
"""Fields older checkpoints and model folders stored in the model config that no longer describe the model
(fused attention is a run option now: fastsca/run_options.py); dropped when read."""


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message names the file and what to do."""


# First bytes of files often given where a checkpoint belongs, and what to call them in the error.
FILE_KINDS = {b"RIFF": "a WAV audio file", b"fLaC": "a FLAC audio file", b"OggS": "an Ogg audio file",
              b"ID3": "an MP3 audio file", b"\xff\xfb": "an MP3 audio file", b"FORM": "an AIFF audio file",
              b"\x89HDF": "an HDF5 file (a packed shard?)"}


def _head(path: Path) -> bytes:
    """The first bytes of a file (empty when it cannot be read)."""
    try:
        with open(path, "rb") as handle:
            return handle.read(8)
    except OSError:
        return b""


def current_model_fields(saved: dict) -> dict:
    """A stored model config dict without the `RETIRED_MODEL_FIELDS`."""
    return {name: value for name, value in saved.items() if name not in RETIRED_MODEL_FIELDS}


def read_checkpoint(path: str | Path) -> dict:
    """The checkpoint dict at `path` (tensors on the CPU), checked to be a fastsca training checkpoint."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{path}: no such checkpoint; `python -m train.run --out DIR` writes DIR/best.pt "
                              f"and DIR/latest.pt")
    head = _head(path)
    if not head.startswith(b"PK\x03\x04"):   # torch.save writes a zip archive; anything else would reach torch's
        # legacy reader, whose errors on other files are stray tracebacks (IndexError on a WAV, KeyError on text)
        kind = next((name for magic, name in FILE_KINDS.items() if head.startswith(magic)), "")
        raise CheckpointError(f"{path}: not a checkpoint{f' but {kind}' if kind else ''} (a checkpoint is the zip "
                              f"archive torch.save writes); give best.pt or latest.pt as written by "
                              f"`python -m train.run`")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError, KeyError,
            IndexError) as error:
        # torch's own message runs to several sentences of advice; its first says what failed
        reason = str(error).strip().split(". ")[0].splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: not a readable checkpoint ({reason}); it may be truncated: use "
                              f"best.pt or latest.pt as written by `python -m train.run`") from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{path}: not a fastsca training checkpoint (no {CHECKPOINT_FORMAT!r} format "
                              f"field); use best.pt or latest.pt as written by `python -m train.run`")
    if isinstance(payload.get("config"), dict) and isinstance(payload["config"].get("model"), dict):
        payload["config"]["model"] = current_model_fields(payload["config"]["model"])
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
    """The model saved in a training checkpoint, ready for inference on `device` (with the fused attention ops
    on CUDA, the reference elsewhere: fastsca/run_options.py's `options_for_device`); a hand-edited checkpoint (an
    entry missing, a config that does not build, weights of another shape, labels of another count) is a
    one-line CheckpointError."""
    payload = read_checkpoint(path)
    advice = "use best.pt or latest.pt as written by `python -m train.run`"
    try:
        model = build_model(ModelConfig(**payload["config"]["model"]), options_for_device(device))
        model.load_state_dict(payload["model"])
        trained = TrainedModel(model=model.to(device).eval(),
                               log_mel=LogMelConfig(**payload["config"]["log_mel"]),
                               label_names=tuple(payload["label_names"]),
                               step=int(payload["step"]),
                               configs=payload["config"])
    except KeyError as error:
        raise CheckpointError(f"{path}: no {error} entry; the file was edited or written by other code: "
                              f"{advice}") from None
    except (TypeError, RuntimeError, ValueError) as error:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"{path}: its config and weights do not fit together ({reason}); the file was edited "
                              f"or damaged: {advice}") from None
    classes = trained.configs["model"]["num_classes"]
    if len(trained.label_names) != classes:
        raise CheckpointError(f"{path}: {len(trained.label_names)} label names for a model of {classes} classes; "
                              f"the file was edited or damaged: {advice}")
    return trained
