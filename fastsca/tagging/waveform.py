"""A waveform in memory (numpy or torch, (samples,) or (channels, samples), any sample rate) checked and
written to an in-memory float32 WAV file, which the engine then reads as it reads the same samples in a
file (mixed to mono and resampled with soxr), so a waveform and a file give the same numbers.

Bad input is one ValueError line: a sample rate that is not a whole number of Hz in [1, MAX_SAMPLE_RATE],
a shape that is not audio, soundfile's (samples, channels) order (with the hint to transpose), a dtype
that is not float or integer PCM, a NaN or infinite sample (its index). Torch's bfloat16 and float16 are
read as float32 (every such value is exactly a float32).
"""
import io

import numpy as np
import soundfile
import torch

# What a waveform is called in results, events and messages.
WAVEFORM_NAME = "waveform"
# The highest sample rate taken: 768 kHz is the highest rate audio interfaces and formats use; anything
# above is a mistake (a sample count or a rate in mHz), which soxr would spend minutes resampling.
MAX_SAMPLE_RATE = 768_000


def check_sample_rate(sample_rate) -> int:
    """`sample_rate` as an int, or a one-line ValueError when it is not a whole number of Hz in range."""
    whole = isinstance(sample_rate, (int, np.integer)) or (isinstance(sample_rate, float) and sample_rate.is_integer())
    if isinstance(sample_rate, bool) or not whole or not 1 <= sample_rate <= MAX_SAMPLE_RATE:
        raise ValueError(f"sample_rate must be a whole number of Hz from 1 to {MAX_SAMPLE_RATE}, got {sample_rate!r}")
    return int(sample_rate)


def _as_numpy(waveform) -> np.ndarray:
    """numpy or torch samples as a numpy array (torch's half-precision floats as float32)."""
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu()
        if waveform.dtype in (torch.bfloat16, torch.float16):   # numpy has no bfloat16
            waveform = waveform.float()
        return waveform.numpy()
    return np.asarray(waveform)


def soundfile_frames(waveform, sample_rate: int) -> np.ndarray:
    """(samples,) or (channels, samples) numpy or torch audio as float32 (samples, channels) for soundfile;
    ValueError (one line) for anything that is not finite audio."""
    check_sample_rate(sample_rate)
    waveform = _as_numpy(waveform)
    if waveform.ndim not in (1, 2) or waveform.size == 0:
        raise ValueError(f"waveform must be (samples,) or (channels, samples) with samples in it, got shape "
                         f"{waveform.shape}")
    if waveform.ndim == 2 and waveform.shape[0] > waveform.shape[1]:
        raise ValueError(f"waveform of shape {waveform.shape} has more channels than samples; give (channels, "
                         f"samples): soundfile.read gives (samples, channels), pass its transpose (waveform.T)")
    if np.issubdtype(waveform.dtype, np.integer):   # PCM integers: full scale is the type's range
        waveform = waveform / (np.iinfo(waveform.dtype).max + 1.0)
    elif not np.issubdtype(waveform.dtype, np.floating):
        raise ValueError(f"waveform must hold float or integer samples, got {waveform.dtype}")
    if not np.isfinite(waveform).all():
        bad = int(np.flatnonzero(~np.isfinite(waveform.reshape(-1, waveform.shape[-1])).all(axis=0))[0])
        raise ValueError(f"waveform: sample {bad} ({bad / sample_rate:.3f} s) is NaN or infinite; repair it first")
    return np.ascontiguousarray(np.atleast_2d(waveform).T, dtype=np.float32)   # (samples, channels)


def as_wav_file(waveform, sample_rate: int, name: str = WAVEFORM_NAME) -> io.BytesIO:
    """The waveform as an in-memory float32 WAV file called `name` (the engine names an open file by it)."""
    wav = io.BytesIO()
    wav.name = name
    soundfile.write(wav, soundfile_frames(waveform, sample_rate), int(sample_rate), format="WAV", subtype="FLOAT")
    return wav
