"""The front end of train.run's GPU step, counted: DALI's log-mel priced from its bytes, then the torch work on the
device (train/data/loader.py's transpose and cut, the targets' cast, mixup and SpecAugment where the profile has them).

DALI's spectrogram, mel filter bank and dB are not torch ops, so nothing here can record them; `dali_rows` prices
them from the bytes each DALI GPU operator must move, one kernel per operator except the spectrogram (three:
framing with the window, cuFFT, power and transpose to mel-major). The model, per clip of S samples, N = n_fft,
H = N / 2 + 1 bins, T + 1 frames, M mel bins (fp32 = 4 bytes):
- cast int16 -> float: read 2S, write 4S;  scale by 1/32768: read 4S, write 4S;
- framing + window: read 4S, write 4 N (T + 1);  FFT: read 4 N (T + 1), write 8 H (T + 1);
  power: read 8 H (T + 1), write 4 H (T + 1);
- mel filter bank: read 4 H (T + 1), write 4 M (T + 1);  to dB: read and write 4 M (T + 1);
- the copy of the dB batch and of the uint8 targets into torch's buffers (feed_ndarray): read and write each.
The FFT's and the filter bank's arithmetic is left out (fp32 on CUDA cores, under the memory time at these sizes);
the host-to-device copy of the int16 waveforms runs on a copy engine, overlapped with the step, and is left out.
"""
import numpy as np
import torch

from fastsca.frontend import LogMelConfig
from train.data.augment import SpecAugmentConfig, mixup, spec_augment

AUGMENT_SEED = 0
"""Seed of the augmentations' draws (how much they mask or mix changes no launch and no byte)."""


def dali_rows(batch: int, log_mel: LogMelConfig, classes: int) -> list[dict]:
    """One row per DALI kernel of a batch (see the module docstring), as bench/whole_step.py's rows."""
    samples, n_fft, frames, mels = log_mel.clip_samples, log_mel.n_fft, log_mel.frames + 1, log_mel.n_mels
    bins = n_fft // 2 + 1
    kernels = (("cast int16 to float", 2 * samples, 4 * samples), ("scale 1/32768", 4 * samples, 4 * samples),
               ("spectrogram: framing + window", 4 * samples, 4 * n_fft * frames),
               ("spectrogram: FFT", 4 * n_fft * frames, 8 * bins * frames),
               ("spectrogram: power", 8 * bins * frames, 4 * bins * frames),
               ("mel filter bank", 4 * bins * frames, 4 * mels * frames),
               ("to decibels", 4 * mels * frames, 4 * mels * frames),
               ("copy dB into torch", 4 * mels * frames, 4 * mels * frames),
               ("copy targets into torch", classes, classes))
    return [{"kind": "dali", "name": name, "phase": "front end", "programs": None, "flops": 0,
             "bytes": batch * (read + written), "launches": 1, "in_graph": False} for name, read, written in kernels]


def device_front_end(db: torch.Tensor, target: torch.Tensor, frames: int, mixup_alpha: float,
                     spec_augment_on: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """train/data/loader.py's torch work on one DALI batch: db (B, M, T + 1) fp32, target (B, K) uint8 ->
    log-mel (B, 1, T, M) and float targets, mixed and masked as the profile asks."""
    log_mel = db[:, None, :, :frames].transpose(2, 3).contiguous()   # (B, 1, T, F)
    target = target.float()
    rng = np.random.default_rng(AUGMENT_SEED)
    if mixup_alpha > 0:
        log_mel, target = mixup(log_mel, target, mixup_alpha, rng)
    if spec_augment_on:
        log_mel, _ = spec_augment(log_mel, SpecAugmentConfig(), rng)
    return log_mel, target
