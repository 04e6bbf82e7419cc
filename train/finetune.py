"""Fine-tuning: a new training run that starts from a trained model (`python -m train.run --init MODEL`).

MODEL is any model reference `fastsca.hub.load_pretrained` reads: best.pt or latest.pt, a model folder
(OUT/pretrained) or a Hugging Face Hub id. The model (preset, widths, pooling plan) and the front end come from it; the run's data gives
the label set. The backbone's weights (input norm and the seven blocks) are loaded; the pooling head's too
when the labels are the checkpoint's, else the head starts afresh for the new labels. The first
`freeze_blocks` blocks (and the input norm) can be frozen, and the backbone can learn at a fraction of the
head's learning rate (`OptimConfig.backbone_lr_scale`, train/optim.py). Only the start differs from a run
from scratch: checkpoints, `--resume` and evaluation are the same.
"""
from dataclasses import dataclass, fields, replace

import torch
from torch import nn

from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.hub import load_pretrained
from fastsca.inference import CheckpointError

# Parameter names of the pooling head (eq. 2's two linear maps), whose shapes follow the label count.
HEAD_PREFIX = "pooling."
# ModelConfig fields a preset does not fix (the data, the profile and the model flags set them), so --preset is
# compared with a checkpoint on the others.
NOT_PRESET_FIELDS = ("num_classes", "channels", "pools", "pooling", "input_frames", "name")


def is_head(name: str) -> bool:
    """Whether a parameter or buffer name belongs to the pooling head."""
    return name.startswith(HEAD_PREFIX)


@dataclass(frozen=True)
class InitModel:
    """The trained model a fine-tuning run starts from."""

    weights: dict[str, torch.Tensor]
    """Its state dict (on the CPU)."""
    model: ModelConfig
    """Its model config."""
    log_mel: LogMelConfig
    """The front end it was trained with, which the fine-tuning run keeps."""
    label_names: tuple[str, ...]
    """Its classes, in output order."""


def read_init(reference: str) -> InitModel:
    """The model to start from: best.pt, latest.pt, a model folder or a Hub id; a one-line CheckpointError or
    PretrainedError (ValueErrors) otherwise."""
    trained = load_pretrained(reference).trained
    init = InitModel(weights=trained.model.state_dict(), model=trained.model.config, log_mel=trained.log_mel,
                     label_names=trained.label_names)
    checked_finite(init.weights, reference)
    return init


def check_model_flags(path: str, saved: ModelConfig, given: dict[str, ModelConfig | None]) -> None:
    """Raise ValueError (one line) if a model flag given with --init asks for another model than the
    checkpoint's; `given` maps each flag given ("--preset", "--channels", "--pooling-plan", "--pooling") to the config it asks
    for."""
    for flag, wanted in given.items():
        if wanted is None:
            continue
        compared = {"--channels": ("channels",), "--pooling-plan": ("pools",), "--pooling": ("pooling",)}.get(
            flag, tuple(f.name for f in fields(ModelConfig) if f.name not in NOT_PRESET_FIELDS))
        differing = [f"{name} {getattr(saved, name)!r} vs {getattr(wanted, name)!r}" for name in compared
                     if getattr(saved, name) != getattr(wanted, name)]
        if differing:
            raise ValueError(f"{flag} asks for another model than --init {path} holds ({', '.join(differing)}, "
                             f"checkpoint vs flag); with --init the model comes from the checkpoint: drop {flag}")


def finetune_model_config(saved: ModelConfig, num_classes: int) -> ModelConfig:
    """The checkpoint's model with the run's label count."""
    return replace(saved, num_classes=num_classes)


def load_init(model: nn.Module, init: InitModel, path: str, label_names: tuple[str, ...]) -> str:
    """Load the weights of `init` into `model`: all of them when `label_names` are its, else all but the pooling
    head's; what was loaded, in words."""
    same_labels = init.label_names == tuple(label_names)
    state = {k: v for k, v in init.weights.items() if same_labels or not is_head(k)}
    try:
        missing, unexpected = model.load_state_dict(state, strict=False)
    except RuntimeError as error:
        raise CheckpointError(f"{path}: its weights do not fit the model its config describes "
                              f"({str(error).strip().splitlines()[0]}); the file was edited or damaged") from None
    if unexpected or [k for k in missing if not is_head(k)] or (same_labels and missing):
        raise CheckpointError(f"{path}: its weights do not fit its model (missing {missing[:3]}, unexpected "
                              f"{unexpected[:3]}); the file was edited or damaged")
    if same_labels:
        return f"weights and head of {path} (same {len(label_names)} labels)"
    return (f"backbone of {path}, a new head for {len(label_names)} labels (the checkpoint's "
            f"{len(init.label_names)} differ)")


def freeze(model: nn.Module, blocks: int) -> None:
    """Stop training the input norm and the first `blocks` residual blocks (their BatchNorm statistics too)."""
    if blocks == 0:
        return
    for module in (model.input_norm, *model.blocks[:blocks]):
        module.requires_grad_(False)
        for norm in module.modules():
            if isinstance(norm, nn.modules.batchnorm._BatchNorm):
                norm.momentum = 0.0   # running statistics stay the checkpoint's in train mode too


def describe_freeze(model: nn.Module) -> str:
    """'trains 1234 of 5678 parameters' for the start-up summary."""
    trained = sum(p.numel() for p in model.parameters() if p.requires_grad)
    return f"trains {trained} of {sum(p.numel() for p in model.parameters())} parameters"


def checked_finite(weights: dict[str, torch.Tensor], path: str) -> None:
    """Raise CheckpointError if the weights hold NaN or infinity (a diverged run's)."""
    bad = [k for k, v in weights.items() if torch.is_floating_point(v) and not torch.isfinite(v).all()]
    if bad:
        raise CheckpointError(f"{path}: weights {bad[0]} hold NaN or infinity (a diverged run's); start from "
                              f"another checkpoint")
