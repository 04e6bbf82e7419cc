"""Audio file reading: any soundfile format (wav, flac, ogg, mp3) -> float32 mono at one sample rate.

Decoding is libsndfile's through soundfile (its wheels bundle libsndfile >= 1.1, which reads MPEG
layer III); resampling is soxr's anti-aliased "HQ" filter; stereo is averaged to mono. Used by the
packer (train/pack.py) and for tagging single files.

Only the part asked for is decoded: `load_audio(..., start=, seconds=)` and `clip_samples` make
soundfile seek and read just those frames, so a 3-hour file costs what its 10 s do. Channels are
averaged to mono, except where the average cancels (channels in antiphase, e.g. one wired with
inverted polarity): then the loudest channel is kept (the first, among equals), not silence.

Two kinds of damage decode without an error and are refused here: a truncated file (its header
declares more audio than it holds; libsndfile returns the part that is there) and NaN or infinite
samples (float files), which would make every score NaN. Non-finite samples are refused rather than
repaired: zeroing them would tag a different sound than the file holds, without saying so.
"""
import math
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


# A mono average this far below the loudest channel (-40 dB) means the channels cancel: keep the first channel
# within 1 % of the loudest (antiphase channels are equally loud but for rounding).
CANCELLED_MIX_RATIO = 0.01
# Extra input read before a part that starts inside the file, then dropped: soxr's filter settles on real
# audio instead of the zeros it would otherwise assume there (its HQ filter spans a few ms).
RESAMPLE_LEAD_SECONDS = 0.05


def declared_frames(info) -> int:
    """Frames the header declares; `info` is soundfile.info's or an open SoundFile (frames, extra_info)."""
    if wav := _SHORT_WAV_DATA.search(info.extra_info):   # info.frames counts only the bytes present
        return round(info.frames * int(wav.group(1)) / max(1, int(wav.group(2))))
    if aiff := _AIFF_FRAMES.search(info.extra_info):
        return int(aiff.group(1))
    return info.frames


def check_whole(path: str | Path, info, decoded_frames: int, expected_frames: int | None = None) -> None:
    """Raise TruncatedAudioError if the file holds fewer frames than its header declares (or than
    `expected_frames`, the end of the part read); `info` is soundfile.info's (frames, samplerate and
    libsndfile's header log in extra_info)."""
    declared = declared_frames(info)
    if decoded_frames < (declared if expected_frames is None else min(expected_frames, declared)):
        raise TruncatedAudioError(
            f"{path}: truncated: the header declares {declared / info.samplerate:.2f} s but the file holds "
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


def downmix(data: np.ndarray) -> np.ndarray:
    """(N, channels) -> (N,) mono: the channels' mean, or the loudest channel where the mean cancels."""
    if data.shape[1] == 1:
        return data[:, 0]
    mono = data.mean(axis=1)
    channel_rms = np.sqrt(np.mean(np.square(data, dtype=np.float64), axis=0))
    mono_rms = np.sqrt(np.mean(np.square(mono, dtype=np.float64)))
    if channel_rms.max() > 0 and mono_rms < CANCELLED_MIX_RATIO * channel_rms.max():
        return data[:, int(np.flatnonzero(channel_rms >= 0.99 * channel_rms.max())[0])]   # the first at full level
    return mono


def audio_seconds(path: str | Path) -> float:
    """Length of an audio file in seconds as its header declares it (a truncated file's reads then fail);
    AudioError (one line) if it cannot be read."""
    if not Path(path).is_file():
        raise AudioError(f"{path}: no such file; check the path")
    try:
        info = soundfile.info(str(path))
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(f"{path}: cannot decode audio ({error}); re-download or re-encode the file "
                         f"(wav, flac, ogg or mp3)") from None
    return declared_frames(info) / info.samplerate


def load_audio(path: str | Path,
               sample_rate: int = 16000,
               clip_samples: int | None = None,
               start: float = 0.0,
               seconds: float | None = None) -> np.ndarray:
    """Read `path` as float32 mono at `sample_rate`: the `seconds` from `start` (default: to the end), then
    cut or zero-padded to `clip_samples` when given. Only the frames needed are decoded."""
    if not Path(path).is_file():
        raise AudioError(f"{path}: no such file; check the path")
    if clip_samples is not None:
        seconds = clip_samples / sample_rate if seconds is None else min(seconds, clip_samples / sample_rate)
    try:
        with soundfile.SoundFile(str(path)) as handle:
            file_rate = handle.samplerate
            first = min(round(start * file_rate), handle.frames)
            lead = min(first, round(RESAMPLE_LEAD_SECONDS * file_rate)) if file_rate != sample_rate else 0
            wanted = -1 if seconds is None else math.ceil(seconds * file_rate)
            tail = round(RESAMPLE_LEAD_SECONDS * file_rate) if wanted >= 0 and file_rate != sample_rate else 0
            if first - lead:
                handle.seek(first - lead)
            data = handle.read(-1 if wanted < 0 else lead + wanted + tail, dtype="float32", always_2d=True)
            check_whole(path, handle, first - lead + data.shape[0],
                        None if wanted < 0 else first + wanted)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(f"{path}: cannot decode audio ({error}); re-download or re-encode the file "
                         f"(wav, flac, ogg or mp3)") from error
    if data.shape[0] == 0 and first == 0:
        raise AudioError(f"{path}: the file holds no samples; re-download or re-encode it")
    _check_finite(path, data, file_rate)
    waveform = downmix(data)
    if file_rate != sample_rate:
        waveform = soxr.resample(waveform, file_rate, sample_rate, quality="HQ")
        waveform = waveform[round(lead * sample_rate / file_rate):]
    if seconds is not None:
        waveform = waveform[:round(seconds * sample_rate)]
    if clip_samples is not None:
        waveform = fit_length(waveform, clip_samples)
    return np.ascontiguousarray(waveform, dtype=np.float32)
