"""The Python API: `tagger = fastsca.Tagger.from_pretrained(PATH)`, then `tagger(waveform, sample_rate)`.

PATH is a training checkpoint (best.pt), a folder in the Hugging Face layout or a Hub repo id
(fastsca/hub.py). A call returns a `TagResult`: clip probabilities, frame probabilities (10 Hz) and
the detected events, with the label names and `top_k`. Everything goes through `fastsca.tag.tag_file`,
the streaming path of `python -m fastsca.tag`, so the API and the command give the same numbers:
a file of any length is read in blocks in bounded memory, and a waveform in memory (numpy or torch,
(samples,) or (channels, samples), any sample rate) is handed to it as an in-memory float32 WAV file,
which it then mixes to mono and resamples with soxr exactly as it would the same samples in a file.
"""
import io
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile
import torch

from fastsca.audio import AudioError
from fastsca.events import Event, EventConfig, detect_events
from fastsca.hub import Pretrained, load_pretrained
from fastsca.inference import CheckpointError, FileTags, TrainedModel
from fastsca.tag import StreamConfig, tag_file

# What a waveform is called in results, events and messages.
WAVEFORM_NAME = "waveform"


@dataclass(frozen=True)
class TagResult:
    """What the model says about one waveform or file."""

    name: str
    """The file as given, or "waveform"."""
    seconds: float
    """Duration of the audio."""
    label_names: tuple[str, ...]
    """Name of each class: column k of `clip` and `frame`."""
    clip: np.ndarray
    """(K,) clip probabilities: the largest over the model's windows (0 for digital silence)."""
    frame: np.ndarray
    """(T', K) frame probabilities, frame t covering [t, t + 1) x frame_seconds."""
    frame_seconds: float
    """Duration of one frame (0.1 s: 10 Hz)."""
    events: list[Event]
    """Detected events (file, onset, offset, label, score), by onset."""
    silent: bool
    """The whole audio is digital silence: no tag, no event."""

    def top_k(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable labels with their clip probabilities, most probable first (none when silent)."""
        if self.silent:
            return []
        order = np.argsort(-self.clip, kind="stable")[:k]
        return [(self.label_names[i], float(self.clip[i])) for i in order]

    def probability(self, label: str) -> float:
        """The clip probability of one class, by name."""
        if label not in self.label_names:
            raise KeyError(f"{label!r} is not a class of the model ({', '.join(self.label_names[:5])}"
                           f"{', ...' if len(self.label_names) > 5 else ''})")
        return float(self.clip[self.label_names.index(label)])


def _as_soundfile_frames(waveform, sample_rate: int) -> np.ndarray:
    """(samples,) or (channels, samples) numpy or torch audio as float32 (samples, channels) for soundfile;
    ValueError (one line) for anything that is not finite audio."""
    whole = isinstance(sample_rate, (int, np.integer)) or (isinstance(sample_rate, float) and sample_rate.is_integer())
    if isinstance(sample_rate, bool) or not whole or sample_rate <= 0:
        raise ValueError(f"sample_rate must be a positive integer (Hz), got {sample_rate!r}")
    if isinstance(waveform, torch.Tensor):
        waveform = waveform.detach().cpu().numpy()
    waveform = np.asarray(waveform)
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


class Tagger:
    """A trained model with its front end, windowing and event detector: audio in, `TagResult` out."""

    def __init__(self, pretrained: Pretrained, stream: StreamConfig = StreamConfig()) -> None:
        self.trained: TrainedModel = pretrained.trained
        self.label_mids = pretrained.label_mids
        self.events: EventConfig = pretrained.events
        self.stream = stream

    @classmethod
    def from_pretrained(cls, source: str | Path, device: str | torch.device | None = None,
                        stream: StreamConfig = StreamConfig(), revision: str | None = None) -> "Tagger":
        """A tagger from best.pt, a folder in the Hugging Face layout or a Hub repo id (at `revision`), on
        `device` (default: CUDA where available, else the CPU)."""
        device = torch.device(device if device is not None else "cuda" if torch.cuda.is_available() else "cpu")
        return cls(load_pretrained(source, device, revision), stream)

    @property
    def label_names(self) -> tuple[str, ...]:
        """Name of each class the model tags."""
        return self.trained.label_names

    def __call__(self, audio, sample_rate: int | None = None) -> TagResult:
        """Tag a waveform (numpy or torch, (samples,) or (channels, samples), at `sample_rate` Hz) or an audio
        file (a path; any length, streamed)."""
        if isinstance(audio, (str, Path)):
            if sample_rate is not None:
                raise ValueError("a file carries its own sample rate: give sample_rate only with a waveform")
            return self.tag_file(audio)
        if sample_rate is None:
            raise ValueError("give the waveform's sample_rate: tagger(waveform, sample_rate)")
        wav = io.BytesIO()
        wav.name = WAVEFORM_NAME   # fastsca.tag names an open file by its `name`
        soundfile.write(wav, _as_soundfile_frames(audio, sample_rate), int(sample_rate), format="WAV", subtype="FLOAT")
        return self._result(WAVEFORM_NAME, tag_file(self.trained, wav, self.stream))

    def tag_file(self, path: str | Path) -> TagResult:
        """Tag one audio file of any length (wav, flac, ogg, mp3), streamed in bounded memory; AudioError (one
        line) when it cannot be read."""
        return self._result(str(path), tag_file(self.trained, str(path), self.stream))

    def tag_files(self, paths: list[str | Path]) -> tuple[list[TagResult], dict[str, str]]:
        """Tag several files: the results of those that could be read, in order, and the one-line error of each
        file that could not (by path); a bad file is skipped, the others are tagged."""
        results, errors = [], {}
        for path in paths:
            try:
                results.append(self.tag_file(path))
            except (AudioError, CheckpointError) as error:
                errors[str(path)] = str(error)
        return results, errors

    def _result(self, name: str, tags: FileTags) -> TagResult:
        events = detect_events(tags.frame, tags.frame_seconds, self.label_names, name, self.events,
                               clip_probs=tags.clip)
        return TagResult(name=name, seconds=tags.seconds, label_names=self.label_names, clip=tags.clip,
                         frame=tags.frame, frame_seconds=tags.frame_seconds, events=events, silent=tags.silent)
