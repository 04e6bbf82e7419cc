"""Audio file reading: any soundfile format (wav, flac, ogg, mp3) -> float32 mono at one sample rate.

Decoding is libsndfile's through soundfile (its wheels bundle libsndfile >= 1.1, which reads MPEG
layer III); resampling is soxr's anti-aliased "HQ" filter; stereo is averaged to mono. Used by the
packer (train/pack.py) and for tagging single files.

Two kinds of damage decode without an error and are refused here: a truncated file (its header
declares more audio than it holds; libsndfile returns the part that is there) and NaN or infinite
samples (float files), which would make every score NaN. Non-finite samples are refused rather than
repaired: zeroing them would tag a different sound than the file holds, without saying so.
"""
import re
from pathlib import Path

import numpy as np
import soundfile
import soxr


class AudioError(Exception):
    """A file that cannot be read as audio; the message names the file and what to do."""


class TruncatedAudioError(AudioError):
    """A file that holds less audio than its header declares (an interrupted download or copy)."""


# libsndfile's log of a header that declares more audio than the file holds (it then returns what is there):
# WAV "data : 192000 (should be 29956)", the declared and the present bytes of the data chunk;
# AIFF "Frame count read from 'COMM' chunk (96000) not equal to ...", the declared frames.
_SHORT_WAV_DATA = re.compile(r"^data\s*:\s*(\d+)\s*\(should be (\d+)\)", re.MULTILINE)
_AIFF_FRAMES = re.compile(r"Frame count read from 'COMM' chunk \((\d+)\)")


def check_whole(path: str | Path, info, decoded_frames: int) -> None:
    """Raise TruncatedAudioError if the file holds fewer frames than its header declares; `info` is
    soundfile.info's (frames, samplerate and libsndfile's header log in extra_info)."""
    declared_frames = info.frames
    if wav := _SHORT_WAV_DATA.search(info.extra_info):   # info.frames counts only the bytes present
        declared_frames = round(info.frames * int(wav.group(1)) / max(1, int(wav.group(2))))
    elif aiff := _AIFF_FRAMES.search(info.extra_info):
        declared_frames = int(aiff.group(1))
    if decoded_frames < declared_frames:
        raise TruncatedAudioError(
            f"{path}: truncated: the header declares {declared_frames / info.samplerate:.2f} s but the file holds "
            f"{decoded_frames / info.samplerate:.2f} s; re-download or copy the whole file again")


def _check_finite(path: str | Path, data: np.ndarray, sample_rate: int) -> None:
    """Raise AudioError if any sample is NaN or infinite (refused, not repaired: see the module docstring)."""
    bad = ~np.isfinite(data).all(axis=1)
    if bad.any():
        first = int(np.argmax(bad))
        raise AudioError(f"{path}: {int(bad.sum())} sample(s) are NaN or infinite (first at {first / sample_rate:.3f} "
                         f"s); the file is damaged: re-export it (refused, not zeroed, so that no tag describes "
                         f"audio the file does not hold)")


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
        info = soundfile.info(str(path))
        data, file_rate = soundfile.read(str(path), dtype="float32", always_2d=True)   # (N, channels)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(f"{path}: cannot decode audio ({error}); re-download or re-encode the file "
                         f"(wav, flac, ogg or mp3)") from error
    if data.shape[0] == 0:
        raise AudioError(f"{path}: the file holds no samples; re-download or re-encode it")
    check_whole(path, info, data.shape[0])
    _check_finite(path, data, file_rate)
    waveform = data.mean(axis=1) if data.shape[1] > 1 else data[:, 0]
    if file_rate != sample_rate:
        waveform = soxr.resample(waveform, file_rate, sample_rate, quality="HQ")
    if clip_samples is not None:
        waveform = fit_length(waveform, clip_samples)
    return np.ascontiguousarray(waveform, dtype=np.float32)
