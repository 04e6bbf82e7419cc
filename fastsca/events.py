"""Sound events from frame-level probabilities: (file, onset, offset, label, score), and their file layouts.

The model's v_t (eq. 2) are per-class probabilities at 10 Hz. An event of class k is a run of frames
whose (median-filtered) probability stays at or above the class's offset threshold and reaches its
onset threshold somewhere (hysteresis: a start needs a confident frame, a dip to the lower threshold
does not end it); runs closer than `min_gap_seconds` are joined, and events shorter than
`min_event_seconds` are dropped. An event's score is the largest raw frame probability inside it.

Layouts: AudioSet's strong labels (segment_id, start_time_seconds, end_time_seconds, label = the class
mid), DCASE's (filename, onset, offset, event_label), and JSON.
"""
import csv
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.ndimage import median_filter


class Event(NamedTuple):
    """One detected (or reference) sound event."""

    file: str
    onset: float      # seconds from the file's start
    offset: float     # seconds from the file's start
    label: str        # display name of the class
    score: float      # largest frame probability inside the event (1.0 for a reference event)


@dataclass(frozen=True)
class EventConfig:
    """How frame probabilities become events."""

    threshold: float = 0.5
    """Onset threshold: an event needs a frame at or above it."""
    hysteresis: float = 0.6
    """An event goes on while the probability stays at or above threshold x this (1: no hysteresis)."""
    class_thresholds: tuple[tuple[str, float], ...] = ()
    """Per-class onset thresholds as (label, threshold) pairs, overriding `threshold` for those classes."""
    median_seconds: float = 0.3
    """Length of the median filter over time before thresholding (0: off); 0.3 s = 3 frames at 10 Hz."""
    min_event_seconds: float = 0.2
    """Events shorter than this are dropped (after gaps are joined)."""
    min_gap_seconds: float = 0.2
    """Two events of a class closer than this are joined into one."""

    def __post_init__(self) -> None:
        if not 0 < self.threshold < 1:
            raise ValueError(f"threshold must be in (0, 1), got {self.threshold}")
        if not 0 < self.hysteresis <= 1:
            raise ValueError(f"hysteresis must be in (0, 1], got {self.hysteresis}")
        bad = [(name, t) for name, t in self.class_thresholds if not 0 < t < 1]
        if bad:
            raise ValueError(f"class threshold {bad[0][1]} for {bad[0][0]!r} is not in (0, 1)")
        if min(self.median_seconds, self.min_event_seconds, self.min_gap_seconds) < 0:
            raise ValueError("median_seconds, min_event_seconds and min_gap_seconds must be >= 0")

    def onset_thresholds(self, label_names: tuple[str, ...]) -> np.ndarray:
        """(K,) onset threshold of each class; a per-class entry naming no class is an error."""
        overrides = dict(self.class_thresholds)
        unknown = sorted(set(overrides) - set(label_names))
        if unknown:
            raise ValueError(f"class threshold for {unknown[0]!r}, which is not a class of the model "
                             f"({', '.join(label_names[:5])}{', ...' if len(label_names) > 5 else ''})")
        return np.array([overrides.get(name, self.threshold) for name in label_names])


def smooth(frame_probs: np.ndarray, frame_seconds: float, config: EventConfig) -> np.ndarray:
    """(T, K) probabilities median-filtered over time with the config's filter (an odd number of frames)."""
    width = int(round(config.median_seconds / frame_seconds)) | 1
    if width <= 1:
        return frame_probs
    return median_filter(frame_probs, size=(width, 1), mode="nearest")


def _runs(active: np.ndarray) -> np.ndarray:
    """(R, 2) [start, stop) frame ranges of the True runs of a 1-D bool array."""
    edges = np.diff(np.concatenate([[0], active.astype(np.int8), [0]]))
    return np.stack([np.flatnonzero(edges == 1), np.flatnonzero(edges == -1)], axis=1)


def detect_events(frame_probs: np.ndarray, frame_seconds: float, label_names: tuple[str, ...], file: str,
                  config: EventConfig = EventConfig(), start_seconds: float = 0.0) -> list[Event]:
    """Events in (T, K) frame probabilities, frame t covering [t, t + 1) x frame_seconds after
    `start_seconds`, sorted by onset then label."""
    frame_probs = np.asarray(frame_probs, dtype=np.float32)
    high = config.onset_thresholds(label_names)
    smoothed = smooth(frame_probs, frame_seconds, config)
    min_gap = int(round(config.min_gap_seconds / frame_seconds))
    min_length = int(round(config.min_event_seconds / frame_seconds))
    events = []
    for k, name in enumerate(label_names):
        runs = _runs(smoothed[:, k] >= high[k] * config.hysteresis)
        runs = [(a, b) for a, b in runs if smoothed[a:b, k].max() >= high[k]]
        joined: list[list[int]] = []
        for a, b in runs:
            if joined and a - joined[-1][1] < min_gap:
                joined[-1][1] = b
            else:
                joined.append([a, b])
        events += [Event(file, start_seconds + a * frame_seconds, start_seconds + b * frame_seconds, name,
                         float(frame_probs[a:b, k].max()))
                   for a, b in joined if b - a >= max(min_length, 1)]
    return sorted(events, key=lambda e: (e.onset, e.label))


def _rounded(event: Event) -> tuple[str, float, float, str, float]:
    """Times to the millisecond and scores to 4 decimals, as the files carry them."""
    return event.file, round(event.onset, 3), round(event.offset, 3), event.label, round(event.score, 4)


def write_strong_tsv(path: Path, events: list[Event], label_mids: dict[str, str]) -> None:
    """AudioSet's strong-label layout: segment_id (the file's stem), start, end, label mid."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["segment_id", "start_time_seconds", "end_time_seconds", "label"])
        for file, onset, offset, label, _ in map(_rounded, events):
            writer.writerow([Path(file).stem, f"{onset:.3f}", f"{offset:.3f}", label_mids[label]])


def write_dcase_tsv(path: Path, events: list[Event]) -> None:
    """DCASE's layout: filename (the file's name), onset, offset, event_label."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "onset", "offset", "event_label"])
        for file, onset, offset, label, _ in map(_rounded, events):
            writer.writerow([Path(file).name, f"{onset:.3f}", f"{offset:.3f}", label])


def events_as_dicts(events: list[Event]) -> list[dict]:
    """JSON-ready events (finite numbers only)."""
    return [dict(zip(("file", "onset", "offset", "label", "score"), _rounded(e))) for e in events]


def write_json(path: Path, events: list[Event]) -> None:
    """The events as a JSON list of objects; NaN or infinity would raise rather than write invalid JSON."""
    path.write_text(json.dumps(events_as_dicts(events), indent=1, allow_nan=False) + "\n")


def read_reference(path: Path, label_names: tuple[str, ...], label_mids: dict[str, str] | None = None
                   ) -> dict[str, list[tuple[float, float, str]]]:
    """Reference events from a TSV, by clip id: AudioSet's strong layout (segment_id, start, end, label mid,
    mapped to names through `label_mids` name -> mid), DCASE's (filename, onset, offset, event_label), or
    the name layout (id, onset, offset, display name). Labels that are not classes of the model are
    left out; a row that does not parse raises ValueError naming the file and line."""
    names = set(label_names)
    by_mid = {mid: name for name, mid in (label_mids or {}).items()}
    events: dict[str, list[tuple[float, float, str]]] = {}
    known = 0
    try:
        lines = Path(path).read_text().splitlines()
    except (OSError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: cannot read the strong labels ({error}); check the path") from None
    for number, line in enumerate(lines, 1):
        fields = line.rstrip("\n").split("\t")
        if not line.strip() or line.startswith("#") or fields[0] in ("segment_id", "filename"):
            continue
        if len(fields) != 4:
            raise ValueError(f"{path}:{number}: expected 4 tab-separated fields (id, onset, offset, label), "
                             f"got {len(fields)}")
        try:
            onset, offset = float(fields[1]), float(fields[2])
        except ValueError:
            raise ValueError(f"{path}:{number}: onset/offset {fields[1]!r}, {fields[2]!r} are not numbers") from None
        if not 0 <= onset <= offset:
            raise ValueError(f"{path}:{number}: onset {onset} and offset {offset} are not 0 <= onset <= offset")
        label = fields[3] if fields[3] in names else by_mid.get(fields[3])
        events.setdefault(fields[0], [])
        if label is not None:
            events[fields[0]].append((onset, offset, label))
            known += 1
    if events and not known:
        raise ValueError(f"{path}: none of its labels is a class of the model ({', '.join(label_names[:3])}, ...); "
                         f"give the labels file that maps its mids to names")
    return events


def reference_for(file: str, reference: dict[str, list]) -> list | None:
    """A file's reference events, found by its name or stem (AudioSet's Y<YTID> names match <YTID>_<ms> ids)."""
    stem = Path(file).stem
    keys = [Path(file).name, stem] + ([stem[1:]] if stem.startswith("Y") else [])
    for key in keys:
        if key in reference:
            return reference[key]
    by_ytid = {re.sub(r"_\d+$", "", key): value for key, value in reference.items()}   # <YTID>_<start ms>
    return next((by_ytid[key] for key in keys if key in by_ytid), None)
