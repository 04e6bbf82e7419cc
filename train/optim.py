"""AdamW with decoupled weight decay on weight matrices and kernels only, and a warm-up + cosine schedule."""
import math

import torch
from torch import nn

from train.config import OptimConfig


def _decay_groups(params: list[nn.Parameter], config: OptimConfig, lr: float) -> list[dict]:
    """Tensors of 2+ dims decay (conv kernels, linear weights, and the local FC's per-row weights and biases),
    vectors (norm scales and shifts, biases) do not."""
    return [{"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay, "lr": lr},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0, "lr": lr}]


def build_optimizer(model: nn.Module, config: OptimConfig, head_prefix: str = "pooling.") -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model`, weight decay as `_decay_groups`; with a
    config.backbone_lr_scale other than 1, the parameters outside the head (names not starting with
    `head_prefix`) learn at lr x that scale, in groups after the head's (so the first group's lr is the peak)."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    if config.backbone_lr_scale == 1.0:   # two groups, as checkpoints written before the scale existed hold
        groups = _decay_groups([p for _, p in named], config, config.lr)
    else:
        groups = (_decay_groups([p for name, p in named if name.startswith(head_prefix)], config, config.lr)
                  + _decay_groups([p for name, p in named if not name.startswith(head_prefix)], config,
                                  config.lr * config.backbone_lr_scale))
    return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas)


def lr_factor(step: int, config: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak lr at `step`: linear from 1/warmup to 1, then a cosine down to min_lr_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - 1 - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def build_scheduler(optimizer: torch.optim.Optimizer, config: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule; its state (the step count) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda step: lr_factor(step, config, total_steps))
