"""The loader baseline: a torch DataLoader whose workers read the HDF5 shard and compute the log-mel with librosa.

What a PANNs-style pipeline does, with the same settings as the DALI loader (`LogMelConfig`, the
call tests/test_frontend.py checks against fastsca's front end), the same shuffled batches of
(log_mel (B, 1, T, F), target (B, K)) float32, and the same number of worker processes. Workers are
spawned, as DALI's are: safe where CUDA is initialised, and each opens the shard lazily
(`ShardIndex` pickles without open handles).
"""
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from fastsca.frontend import LogMelConfig
from train.data.shards import ShardIndex


class LibrosaLogMelDataset(Dataset):
    """Clip i -> (log_mel (1, frames, n_mels), target (K,)), both float32."""

    def __init__(self, path: str | Path, log_mel: LogMelConfig) -> None:
        self.index = ShardIndex.open(path)
        self.log_mel = log_mel

    def __len__(self) -> int:
        return self.index.num_clips

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        import librosa

        c = self.log_mel
        waveform, target = self.index.read(i)
        mel = librosa.feature.melspectrogram(
            y=waveform.astype(np.float32) / 32768.0, sr=c.sample_rate, n_fft=c.n_fft, hop_length=c.hop_length,
            win_length=c.window_length, window="hann", center=True, pad_mode=c.pad_mode, power=2.0,
            n_mels=c.n_mels, fmin=c.f_min, fmax=c.f_max, htk=False, norm="slaney")      # (F, frames + 1)
        db = librosa.power_to_db(mel, ref=1.0, amin=c.amin, top_db=None).T[: c.frames]   # (T, F)
        return (torch.from_numpy(np.ascontiguousarray(db, dtype=np.float32))[None],
                torch.from_numpy(target.astype(np.float32)))


def librosa_loader(path: str | Path, log_mel: LogMelConfig, batch_size: int, num_workers: int,
                   device: torch.device) -> DataLoader:
    """Shuffled batches with persistent workers (started by the first epoch, kept for the next)."""
    return DataLoader(LibrosaLogMelDataset(path, log_mel), batch_size=batch_size, shuffle=True, drop_last=True,
                      num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=device.type == "cuda", generator=torch.Generator().manual_seed(0),
                      multiprocessing_context="spawn" if num_workers > 0 else None)


def shutdown(loader: DataLoader) -> None:
    """Stop the persistent workers now rather than at garbage collection."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()
    loader._iterator = None
