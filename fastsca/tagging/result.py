"""What the model says about one audio file or waveform: `TagResult`, the one result type of the engine, the
Python API and the command, and `PlotView`, the part of a file kept for its figure."""
from dataclasses import dataclass, field

import numpy as np

from fastsca.events import Event


@dataclass(frozen=True)
class PlotView:
    """The part of a file kept for its figure: the log-mel and spatial attention maps over a time range."""

    start: float
    """Seconds from the file's start where the view begins."""
    end: float
    """Seconds from the file's start where it ends (at most the analysed audio's end)."""
    log_mel: np.ndarray
    """(T, n_mels) log-mel over [start, end), in dB."""
    spatial_maps: dict[str, np.ndarray]
    """Per attention block ("block 7"), its spatial attention map M_s (T_s, F_s) over [start, end)."""


@dataclass(frozen=True)
class TagResult:
    """What the model says about one file or waveform."""

    name: str
    """The file as given (an archive member as "ARCHIVE/MEMBER"), or "waveform"."""
    seconds: float
    """Duration of the audio."""
    label_names: tuple[str, ...]
    """Name of each class: column k of `clip` and `frame`."""
    clip: np.ndarray
    """(K,) clip probabilities: the largest over the model's windows (0 where the audio is digital silence)."""
    frame: np.ndarray
    """(T', K) frame probabilities over the analysed audio, frame t covering [t, t + 1) x frame_seconds."""
    frame_seconds: float
    """Duration of one frame (0.1 s: 10 Hz)."""
    silent: bool
    """The whole audio is digital silence: no tag, no event."""
    events: list[Event] = field(default_factory=list)
    """Detected events (file, onset, offset, label, score), by onset; empty when none were asked for."""
    embedding: np.ndarray | None = None
    """(C,) clip embedding: the frame embeddings' mean weighted by eq. 2's attention (averaged over classes),
    when asked for."""
    frame_embeddings: np.ndarray | None = None
    """(T', C) frame embeddings: the head's frame features x_t (the last block's output averaged over
    frequency), stitched like `frame`, when asked for."""
    view: PlotView | None = None
    """The log-mel and attention maps over a figure's range, when a figure was asked for."""

    @property
    def analysed_seconds(self) -> float:
        """Seconds of audio the frame probabilities cover (the file's last partial output frame is left out)."""
        return len(self.frame) * self.frame_seconds

    def top_k(self, k: int = 5) -> list[tuple[str, float]]:
        """The k most probable labels with their clip probabilities, most probable first (none when silent)."""
        if self.silent:
            return []
        order = np.argsort(-self.clip, kind="stable")[:k]
        return [(self.label_names[i], float(self.clip[i])) for i in order]

    def as_pipeline(self, top_k: int = 5) -> list[dict[str, float | str]]:
        """The top labels as Hugging Face's audio-classification pipeline returns them: [{"label", "score"}]."""
        return [{"label": label, "score": score} for label, score in self.top_k(top_k)]

    def probability(self, label: str) -> float:
        """The clip probability of one class, by name."""
        if label not in self.label_names:
            raise KeyError(f"{label!r} is not a class of the model ({', '.join(self.label_names[:5])}"
                           f"{', ...' if len(self.label_names) > 5 else ''})")
        return float(self.clip[self.label_names.index(label)])
