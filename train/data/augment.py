"""Batch augmentations on log-mel in torch, on the training device: mixup and SpecAugment.

Random draws come from a numpy generator the caller seeds per batch (the loader uses
(seed, epoch, rank, batch)), so a resumed run augments its batches exactly as an uninterrupted one;
the draws are a few numbers per clip, moved to the device in one copy.

Mixup (Zhang et al. 2018, as PANNs uses it) here keeps the batch size: clip i is mixed with clip
perm[i] with its own lambda ~ Beta(alpha, alpha), targets (and frame targets) alike. SpecAugment (Park et al. 2019)
masks random time and frequency stripes; masked cells take the clip's mean log-mel, since the model's
input BatchNorm comes after this and a 0 dB fill would be a loud artefact. Where a clip has frame targets,
the model frames a time stripe hides are left out of the frame loss (`unmasked_frames`).
"""
from dataclasses import dataclass

import numpy as np
import torch

from train.data.frame_targets import StrongTargets


@dataclass(frozen=True)
class SpecAugmentConfig:
    """Mask counts and maximum widths for SpecAugment."""

    time_masks: int = 2
    """Time stripes masked per clip."""
    time_width: int = 64
    """Widest time stripe in frames (1.6 s at 40 frames/s)."""
    freq_masks: int = 2
    """Frequency stripes masked per clip."""
    freq_width: int = 8
    """Widest frequency stripe in mel bins."""

    def __post_init__(self) -> None:
        if min(self.time_masks, self.time_width, self.freq_masks, self.freq_width) < 0:
            raise ValueError("SpecAugment mask counts and widths must be >= 0")


def mixup_pairs(batch: int, alpha: float, rng: np.random.Generator,
                device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Each clip's lambda ~ Beta(alpha, alpha), (B,) float32, and its partner, (B,) int64."""
    lam = torch.from_numpy(rng.beta(alpha, alpha, batch).astype(np.float32)).to(device)
    partner = torch.from_numpy(rng.permutation(batch)).to(device)
    return lam, partner


def mix(x: torch.Tensor, lam: torch.Tensor, partner: torch.Tensor) -> torch.Tensor:
    """lam x + (1 - lam) x[partner] along the batch dimension of x (B, ...)."""
    return torch.lerp(x[partner], x, lam.view(-1, *[1] * (x.dim() - 1)))


def mix_strong(strong: StrongTargets, lam: torch.Tensor, partner: torch.Tensor) -> StrongTargets:
    """The frame targets mixed as the clips are; a mixed clip has strong labels only where both of its clips have
    (one clip's frames without the other's would be wrong wherever the other has an event)."""
    return StrongTargets(mix(strong.frame, lam, partner), strong.strong * strong.strong[partner])


def mixup(log_mel: torch.Tensor,
          target: torch.Tensor,
          alpha: float,
          rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix each clip with a random partner: log_mel (B, 1, T, F), target (B, K) -> same shapes."""
    lam, partner = mixup_pairs(log_mel.shape[0], alpha, rng, log_mel.device)
    return mix(log_mel, lam, partner), mix(target, lam, partner)


def _stripes(rng: np.random.Generator, batch: int, count: int, max_width: int, size: int, device) -> torch.Tensor:
    """(B, size) bool: `count` random stripes of width 0..max_width per clip."""
    width = rng.integers(0, min(max_width, size) + 1, (batch, count))
    start = rng.integers(0, size - width + 1)
    positions = torch.arange(size, device=device)
    start, stop = (torch.from_numpy(a).to(device)[..., None] for a in (start, start + width))   # (B, count, 1)
    return ((positions >= start) & (positions < stop)).any(dim=1)


def spec_augment(log_mel: torch.Tensor, config: SpecAugmentConfig,
                 rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Mask time and frequency stripes of log_mel (B, 1, T, F) with each clip's mean: the masked log-mel and the
    (B, T) bool of the frames a time stripe masked."""
    batch, _, frames, bins = log_mel.shape
    time = _stripes(rng, batch, config.time_masks, config.time_width, frames, log_mel.device)   # (B, T)
    freq = _stripes(rng, batch, config.freq_masks, config.freq_width, bins, log_mel.device)     # (B, F)
    mask = (time[:, None, :, None] | freq[:, None, None, :])                                     # (B, 1, T, F)
    fill = log_mel.mean(dim=(1, 2, 3), keepdim=True)
    return torch.where(mask, fill, log_mel), time


def unmasked_frames(strong: StrongTargets, time_masked: torch.Tensor) -> StrongTargets:
    """The frame targets with the model frames a time stripe hid left out of the frame loss (`StrongTargets.seen`):
    a model frame covers T / T' input frames and is left out when more than half of them are masked, since its
    event, if any, can no longer be heard there (its target would teach the model to call a blank an event)."""
    batch, frames = time_masked.shape
    model_frames = strong.frame.shape[1]
    if frames % model_frames:
        raise ValueError(f"{frames} input frames do not pool to {model_frames} model frames")
    hidden = time_masked.reshape(batch, model_frames, frames // model_frames).float().mean(dim=2) > 0.5   # (B, T')
    return strong._replace(seen=(~hidden).float())
