"""Audio file reading: any soundfile format (wav, flac, ogg, mp3) -> float32 mono at one sample rate.

Decoding is libsndfile's through soundfile (its wheels bundle libsndfile >= 1.1, which reads MPEG
layer III); resampling is soxr's anti-aliased "HQ" filter; stereo is averaged to mono. Used by the
packer (train/pack.py) and for tagging single files.
"""
from pathlib import Path

import numpy as np
import soundfile
import soxr


class AudioError(Exception):
    """A file that cannot be read as audio; the message names the file and what to do."""


def fit_length(waveform: np.ndarray, length: int) -> np.ndarray:
    """Cut `waveform` (N,) to `length` samples or zero-pad it at the end."""
    if waveform.shape[0] >= length:
        return waveform[:length]
    return np.pad(waveform, (0, length - waveform.shape[0]))


def load_audio(path: str | Path, sample_rate: int = 16000, clip_samples: int | None = None) -> np.ndarray:
    """Read `path` as float32 mono at `sample_rate`; pad or cut to `clip_samples` when given."""
    if not Path(path).is_file():
        raise AudioError(f"{path}: no such file; check the path")
    try:
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)   # (N, channels)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(f"{path}: cannot decode audio ({error}); re-download or re-encode the file "
                         f"(wav, flac, ogg or mp3)") from error
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples; re-download or re-encode it")
    waveform = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if file_rate != sample_rate:
        waveform = soxr.resample(waveform, file_rate, sample_rate, quality="HQ")
    if clip_samples is not None:
        waveform = fit_length(waveform, clip_samples)
    return np.ascontiguousarray(waveform, dtype=np.float32)
