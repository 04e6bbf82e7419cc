"""AdamW with decoupled weight decay on weight matrices and kernels only, and a warm-up + cosine schedule.

A module may ask for learning-rate multipliers for some of its parameters (`lr_scales()`): the attention's global
spatial branch gives its last conv lr / its fan-in, without which Adam saturates block 7's spatial mask
(fastsca/attention.py, results/sed/masks.md). Those parameters get AdamW groups of their own.

On CUDA the step is torch's fused AdamW (`fused=True`: one multi-tensor kernel per group and chunk of
tensors, the fastest correct implementation torch offers); elsewhere torch's default (for-loop or foreach),
so a CPU run resumes bit-exact. The state dict is the same either way: a checkpoint loads across.
"""
import math

import torch
from torch import nn

from train.config import OptimConfig


def _decay_groups(params: list[nn.Parameter], config: OptimConfig, lr: float,
                  lr_scales: dict[int, float]) -> list[dict]:
    """Tensors of 2+ dims decay (conv kernels, linear weights, and the local FC's per-row weights and biases),
    vectors (norm scales and shifts, biases) do not. Parameters with an lr scale (`lr_scales_of`) get groups of
    their own at lr x it, after the two plain groups (so a model without any has the two groups it always had)."""
    def pair(mine: list[nn.Parameter], scale: float) -> list[dict]:
        return [{"params": [p for p in mine if p.dim() >= 2], "weight_decay": config.weight_decay, "lr": lr * scale},
                {"params": [p for p in mine if p.dim() < 2], "weight_decay": 0.0, "lr": lr * scale}]

    groups = pair([p for p in params if id(p) not in lr_scales], 1.0)
    for scale in sorted({lr_scales[id(p)] for p in params if id(p) in lr_scales}):
        groups += [g for g in pair([p for p in params if lr_scales.get(id(p)) == scale], scale) if g["params"]]
    return groups


def lr_scales_of(model: nn.Module) -> dict[int, float]:
    """id(parameter) -> its learning-rate multiplier, from every submodule with an `lr_scales()` (the attention's
    global spatial branch: fastsca/attention.py)."""
    return {id(p): scale for module in model.modules() if hasattr(module, "lr_scales")
            for p, scale in module.lr_scales()}


def fused_on(params: list[nn.Parameter]) -> bool:
    """Whether AdamW runs fused: all parameters on CUDA (torch's fused kernels there are the fastest)."""
    return bool(params) and all(p.device.type == "cuda" for p in params)


def build_optimiser(model: nn.Module, config: OptimConfig, head_prefix: str = "pooling.",
                    fused: bool | None = None) -> torch.optim.AdamW:
    """AdamW over the trainable parameters of `model`, weight decay as `_decay_groups`; with a
    config.backbone_lr_scale other than 1, the parameters outside the head (names not starting with
    `head_prefix`) learn at lr x that scale, in groups after the head's (so the first group's lr is the peak).
    `fused`: None decides by device (`fused_on`); bench.whole_step asks for True to count CUDA's step on CPU."""
    named = [(name, p) for name, p in model.named_parameters() if p.requires_grad]
    scales = lr_scales_of(model)
    if config.backbone_lr_scale == 1.0:   # two groups (and the lr-scaled ones), as checkpoints before that hold
        groups = _decay_groups([p for _, p in named], config, config.lr, scales)
    else:
        groups = (_decay_groups([p for name, p in named if name.startswith(head_prefix)], config, config.lr, scales)
                  + _decay_groups([p for name, p in named if not name.startswith(head_prefix)], config,
                                  config.lr * config.backbone_lr_scale, scales))
    fused = fused_on([p for _, p in named]) if fused is None else fused
    optimiser = torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, fused=fused or None)
    optimiser.register_load_state_dict_post_hook(_keep_implementation(fused or None))
    return optimiser


def _keep_implementation(fused: bool | None):
    """A load_state_dict post-hook: torch takes `fused`/`foreach` from the saved groups, so a checkpoint from a
    CPU run would make a CUDA run unfused and the other way round; keep this device's choice, and put each step
    count where that implementation wants it (on the parameter's device fused, else on the host)."""
    def hook(optimiser: torch.optim.Optimizer) -> None:
        for group in optimiser.param_groups:
            group["fused"], group["foreach"] = fused, None
            for p in group["params"]:
                state = optimiser.state.get(p, {})
                if "step" in state:
                    device = p.device if fused else torch.device("cpu")
                    state["step"] = state["step"].to(device=device, dtype=torch.float32)
    return hook


def lr_factor(step: int, config: OptimConfig, total_steps: int) -> float:
    """Multiplier of the peak lr at `step`: linear from 1/warmup to 1, then a cosine down to min_lr_ratio."""
    if step < config.warmup_steps:
        return (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - 1 - config.warmup_steps)
    cosine = 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))
    return config.min_lr_ratio + (1.0 - config.min_lr_ratio) * cosine


def build_scheduler(optimiser: torch.optim.Optimizer, config: OptimConfig,
                    total_steps: int) -> torch.optim.lr_scheduler.LambdaLR:
    """The per-step schedule; its state (the step count) goes into checkpoints."""
    return torch.optim.lr_scheduler.LambdaLR(optimiser, lambda step: lr_factor(step, config, total_steps))
