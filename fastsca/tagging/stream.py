"""Long audio in bounded memory: blocks of samples -> a continuous log-mel -> overlapping model windows.

`read_blocks` decodes a file (a path, or an open binary file such as an archive member) block by block
with soundfile, mixes it to mono as the packer does (`fastsca.audio.downmix`: the channels' mean, or
the loudest channel where the mean cancels; decided block by block) and resamples it with soxr's
streaming resampler. `LogMelStream` turns those blocks into the file's log-mel frames as one continuous
sequence: frame j is centred on sample j x hop and sees its neighbours' samples; only the file's two
ends are padded (the front end's `pad_mode`), exactly as `frontend.log_mel` pads a clip.
`WindowCutter` cuts the frames into model windows that overlap by about `overlap` of a window; the
last window is aligned to the file's end, so no window holds padding. `WindowPlan.join` says where one
window hands over to the next: each keeps the output frames nearest its middle, where it sees context on both sides.
"""
import os
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np
import soundfile
import soxr
import torch

from fastsca.audio import AudioError, check_whole, downmix
from fastsca.frontend import LogMelConfig, log_mel

# Log-mel frames computed per STFT call: 4000 frames (100 s at 40 frames/s) is ~66 MB of float64
# spectrum, and large enough that the per-call overhead is lost in the FFT.
FRAMES_PER_CHUNK = 4000


def source_name(source: "str | Path | BinaryIO") -> str:
    """What messages call an audio source: a path as given, or an open file's `name` (an archive member's
    "ARCHIVE/MEMBER")."""
    return str(source) if isinstance(source, (str, Path)) else str(getattr(source, "name", "audio"))


def _openable(path: "str | Path") -> str | bytes:
    """The path as soundfile can open it: soundfile encodes a name strictly, so a name with bytes that are not
    in the file system's encoding (a folder copied from another system; os.fsdecode's surrogate escapes) is
    passed as those bytes."""
    try:
        str(path).encode(sys.getfilesystemencoding())
        return str(path)
    except UnicodeEncodeError:
        return os.fsencode(path)


def audio_info(path: "str | Path | BinaryIO"):
    """soundfile.info of an audio file, or of an open binary file (read from its start): frames, sample rate,
    libsndfile's header log; one-line AudioError otherwise."""
    name = source_name(path)
    if isinstance(path, (str, Path)):
        if Path(path).is_dir():
            raise AudioError(f"{name}: a folder, not an audio file; tag the files in it with "
                             f"tagger.tag_files([folder]) or python -m fastsca.tag FOLDER")
        if not Path(path).is_file():
            raise AudioError(f"{name}: no such file; check the path")
        try:   # libsndfile says only "System error" for a file it may not open
            with open(path, "rb"):
                pass
        except OSError as error:
            raise AudioError(f"{name}: cannot open it ({error.strerror or error}); check its permissions") from None
    else:
        path.seek(0)
    try:
        return soundfile.info(_openable(path) if isinstance(path, (str, Path)) else path)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(f"{name}: cannot decode audio ({error}); re-download or re-encode the file "
                         f"(wav, flac, ogg or mp3)") from None


def audio_frames(path: "str | Path | BinaryIO") -> tuple[int, int]:
    """(samples per channel, sample rate) of an audio file, from its header; one-line AudioError otherwise."""
    info = audio_info(path)
    return info.frames, info.samplerate


def read_blocks(path: "str | Path | BinaryIO", sample_rate: int, block_seconds: float = 30.0) -> Iterator[np.ndarray]:
    """The file (a path, or an open binary file read from its start) as float32 mono blocks at `sample_rate`; a
    NaN or infinite sample, or a file that holds less audio than its header declares, raises AudioError."""
    info = audio_info(path)
    name = source_name(path)
    file_rate = info.samplerate
    resampler = (soxr.ResampleStream(file_rate, sample_rate, 1, dtype="float32", quality="HQ")
                 if file_rate != sample_rate else None)
    position = 0
    if not isinstance(path, (str, Path)):
        path.seek(0)
    try:
        blocks = soundfile.blocks(_openable(path) if isinstance(path, (str, Path)) else path,
                                  blocksize=max(1, int(block_seconds * file_rate)), dtype="float32", always_2d=True)
        for block in blocks:
            if not np.isfinite(block).all():
                bad = position + int(np.flatnonzero(~np.isfinite(block).all(axis=1))[0])
                raise AudioError(f"{name}: sample {bad} ({bad / file_rate:.3f} s) is NaN or infinite; "
                                 f"repair or re-encode the file")
            position += len(block)
            mono = downmix(block)
            yield resampler.resample_chunk(mono) if resampler is not None else mono
        check_whole(name, info, position)
        if resampler is not None:
            yield resampler.resample_chunk(np.zeros(0, np.float32), last=True)
    except (soundfile.SoundFileError, RuntimeError, OSError) as error:
        raise AudioError(f"{name}: cannot decode audio after {position / file_rate:.1f} s ({error}); "
                         f"re-download or re-encode the file") from None


class LogMelStream:
    """Samples in, log-mel frames out, continuous over block boundaries (`frontend.log_mel` of the whole)."""

    def __init__(self, config: LogMelConfig) -> None:
        self.config = config
        self.half = config.n_fft // 2
        self.samples = 0                 # samples pushed so far
        self.frames = 0                  # frames emitted so far
        self._buffer = np.zeros(0, np.float64)   # padded samples from frame `self.frames`'s first one on
        self._started = False

    def _compute(self, count: int) -> torch.Tensor:
        """The next `count` frames from the buffer: (count, n_mels) float32."""
        hop, out = self.config.hop_length, []
        for first in range(0, count, FRAMES_PER_CHUNK):
            m = min(FRAMES_PER_CHUNK, count - first)
            row = torch.from_numpy(self._buffer[first * hop: first * hop + (m - 1) * hop + self.config.n_fft])
            chunk_config = replace(self.config, clip_samples=m * hop, pad_mode="constant")
            out.append(log_mel(row[None], chunk_config, with_context=True)[0, 0])
        self._buffer = self._buffer[count * hop:]
        self.frames += count
        return torch.cat(out) if out else torch.zeros(0, self.config.n_mels)

    def _ready(self, limit: int | None = None) -> int:
        """Frames whose samples are all in the buffer (at most `limit`)."""
        if len(self._buffer) < self.config.n_fft:
            return 0
        count = (len(self._buffer) - self.config.n_fft) // self.config.hop_length + 1
        return count if limit is None else min(count, limit)

    def push(self, samples: np.ndarray) -> torch.Tensor:
        """Add samples; returns the frames they complete (n, n_mels)."""
        self.samples += len(samples)
        self._buffer = np.concatenate([self._buffer, samples.astype(np.float64)])
        if not self._started:
            if len(self._buffer) <= self.half:
                return torch.zeros(0, self.config.n_mels)   # the front pad needs half + 1 samples
            self._buffer = self._pad(self._buffer, front=True)
            self._started = True
        return self._compute(self._ready())

    def finish(self) -> torch.Tensor:
        """The remaining frames: the file has samples // hop of them in all (as a clip has clip_samples // hop)."""
        total = self.samples // self.config.hop_length
        if not self._started:
            self._buffer = self._pad(self._buffer, front=True)
            self._started = True
        self._buffer = self._pad(self._buffer, front=False)
        return self._compute(self._ready(total - self.frames))

    def _pad(self, buffer: np.ndarray, front: bool) -> np.ndarray:
        """The centring pad (config.pad_mode) at the file's start or end."""
        width = (self.half, 0) if front else (0, self.half)
        mode = "reflect" if self.config.pad_mode == "reflect" and len(buffer) > self.half else "constant"
        return np.pad(buffer, width, mode=mode)


@dataclass(frozen=True)
class WindowPlan:
    """Where the model's windows sit in the log-mel of a file, in input frames."""

    window: int
    """Input frames per model window (the model's input_frames)."""
    hop: int
    """Input frames between regular window starts (a multiple of `ratio`)."""
    ratio: int
    """Input frames per output frame (the model's time pooling)."""

    @classmethod
    def for_model(cls, input_frames: int, output_frames: int, overlap: float) -> "WindowPlan":
        """Windows sharing about `overlap` of their length with the next one."""
        if not 0 <= overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {overlap}")
        ratio = input_frames // output_frames
        hop = max(ratio, int(round(input_frames * (1 - overlap) / ratio)) * ratio)
        return cls(window=input_frames, hop=hop, ratio=ratio)

    def starts(self, frames: int) -> list[int]:
        """Every window start for a file of `frames` input frames (>= window): regular ones, then one
        aligned to the end (rounded down to whole output frames) unless a regular one already ends there."""
        usable = frames // self.ratio * self.ratio
        starts = list(range(0, usable - self.window + 1, self.hop))
        if starts[-1] + self.window < usable:
            starts.append(usable - self.window)
        return starts

    def join(self, start: int, next_start: int) -> int:
        """The output frame where window `start` hands over to window `next_start`: the middle of their
        overlap, so each keeps the frames nearest its own middle."""
        return (start // self.ratio + self.window // self.ratio + next_start // self.ratio) // 2


class WindowCutter:
    """Log-mel frames in, (start, (window, n_mels) frames) out, holding only the frames a window still needs."""

    def __init__(self, plan: WindowPlan) -> None:
        self.plan = plan
        self._frames = torch.zeros(0)
        self._offset = 0            # input frame index of self._frames[0]
        self._next = 0              # start of the next regular window
        self._received = 0

    def push(self, frames: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Add frames; the regular windows they complete."""
        self._frames = torch.cat([self._frames, frames]) if self._received else frames
        self._received += len(frames)
        windows = []
        while self._next + self.plan.window <= self._received:
            windows.append(self._take(self._next))
            self._next += self.plan.hop
        keep_from = max(0, self._next - self.plan.hop)   # the end-aligned last window starts after the last regular one
        self._frames = self._frames[keep_from - self._offset:]
        self._offset = keep_from
        return windows

    def finish(self) -> list[tuple[int, torch.Tensor]]:
        """The last window, aligned to the end, if the regular ones do not reach it."""
        last = self.plan.starts(self._received)[-1]
        return [self._take(last)] if last > self._next - self.plan.hop else []

    def _take(self, start: int) -> tuple[int, torch.Tensor]:
        local = start - self._offset
        return start, self._frames[local: local + self.plan.window]
