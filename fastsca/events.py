"""Sound events from frame-level probabilities: (file, onset, offset, label, score), and their file layouts.

The model's v_t (eq. 2) are per-class probabilities at 10 Hz. An event of class k is a run of frames
whose (median-filtered) probability stays at or above the class's offset threshold and reaches its
onset threshold somewhere (hysteresis: a start needs a confident frame, a dip to the lower threshold
does not end it); runs closer than `min_gap_seconds` are joined, and events shorter than
`min_event_seconds` are dropped. An event's score is the largest raw frame probability inside it.
Given the clip probabilities, events of a class whose clip probability is below its gate are dropped
(`clip_gate`): a frame that peaks in a clip the model does not tag with that class is a false alarm.
Every setting may be chosen per class on a validation split (train/postprocess.py: the onset threshold,
hysteresis, median filter, least event length and gap; train.run stores them in the checkpoint's config,
`stored_event_config` reads them back); a class without a value of its own uses the global one.

Layouts: AudioSet's strong labels (segment_id, start_time_seconds, end_time_seconds, label = the class
mid), DCASE's (filename, onset, offset, event_label), and JSON. Reference events are read from any of
the tabular layouts as careless tools write them (`read_event_rows`: commas or semicolons for tabs,
header variants, decimal commas, a BOM, UTF-16, gzip) and cleaned (`clean_events`): cut to the clip,
empty ones dropped, and a clip's overlapping or touching events of one class merged into one, which
the scoring libraries require and which is what two annotations of one sound mean.
"""
import csv
import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
from scipy.ndimage import median_filter

from fastsca.text_files import open_text


class Event(NamedTuple):
    """One detected (or reference) sound event."""

    file: str
    onset: float      # seconds from the file's start
    offset: float     # seconds from the file's start
    label: str        # display name of the class
    score: float      # largest frame probability inside the event (1.0 for a reference event)


class ClassSettings(NamedTuple):
    """Each class's event settings, as (K,) arrays in class order."""

    threshold: np.ndarray
    hysteresis: np.ndarray
    median_seconds: np.ndarray
    min_event_seconds: np.ndarray
    min_gap_seconds: np.ndarray


# The per-class fields of EventConfig, by the global setting each overrides.
CLASS_FIELDS = {"threshold": "class_thresholds", "hysteresis": "class_hysteresis",
                "median_seconds": "class_median_seconds", "min_event_seconds": "class_min_event_seconds",
                "min_gap_seconds": "class_min_gap_seconds"}
# What each setting may be, checked on the global and the per-class values alike.
VALID = {"threshold": ("in (0, 1)", lambda v: 0 < v < 1), "hysteresis": ("in (0, 1]", lambda v: 0 < v <= 1),
         "median_seconds": (">= 0", lambda v: v >= 0), "min_event_seconds": (">= 0", lambda v: v >= 0),
         "min_gap_seconds": (">= 0", lambda v: v >= 0)}


@dataclass(frozen=True)
class EventConfig:
    """How frame probabilities become events."""

    threshold: float = 0.5
    """Onset threshold: an event needs a frame at or above it."""
    hysteresis: float = 0.6
    """An event goes on while the probability stays at or above threshold x this (1: no hysteresis)."""
    class_thresholds: tuple[tuple[str, float], ...] = ()
    """Per-class onset thresholds as (label, threshold) pairs, overriding `threshold` for those classes."""
    clip_gate: float | None = 0.3
    """Events of a class are kept only where its clip probability reaches this (None: the class's onset
    threshold; 0: no gate); 0.3 drops the events of classes the clip is not tagged with, and keeps those of a
    class whose onset threshold was tuned low (docs/labels.md has the measurement)."""
    median_seconds: float = 0.3
    """Length of the median filter over time before thresholding (0: off); 0.3 s = 3 frames at 10 Hz."""
    min_event_seconds: float = 0.2
    """Events shorter than this are dropped (after gaps are joined)."""
    min_gap_seconds: float = 0.2
    """Two events of a class closer than this are joined into one."""
    class_hysteresis: tuple[tuple[str, float], ...] = ()
    """Per-class (label, hysteresis) pairs, overriding `hysteresis` for those classes."""
    class_median_seconds: tuple[tuple[str, float], ...] = ()
    """Per-class (label, median filter seconds) pairs, overriding `median_seconds` (an event's typical length
    differs by class)."""
    class_min_event_seconds: tuple[tuple[str, float], ...] = ()
    """Per-class (label, least event seconds) pairs, overriding `min_event_seconds`."""
    class_min_gap_seconds: tuple[tuple[str, float], ...] = ()
    """Per-class (label, least gap seconds) pairs, overriding `min_gap_seconds`."""

    def __post_init__(self) -> None:
        for name, per_class in CLASS_FIELDS.items():
            rule, valid = VALID[name]
            if not valid(getattr(self, name)):
                raise ValueError(f"{name} must be {rule}, got {getattr(self, name)}")
            bad = [(label, v) for label, v in getattr(self, per_class) if not valid(v)]
            if bad:
                raise ValueError(f"{per_class}: {bad[0][1]} for {bad[0][0]!r} is not {rule}")
        if self.clip_gate is not None and not 0 <= self.clip_gate < 1:
            raise ValueError(f"clip_gate must be in [0, 1) or None, got {self.clip_gate}")

    def per_class(self, label_names: tuple[str, ...]) -> ClassSettings:
        """Each class's settings: its own where the config has one, else the global one; a per-class entry naming
        no class is an error."""
        values = {}
        for name, per_class in CLASS_FIELDS.items():
            overrides = dict(getattr(self, per_class))
            unknown = sorted(set(overrides) - set(label_names))
            if unknown:
                raise ValueError(f"{per_class} names {unknown[0]!r}, which is not a class of the model "
                                 f"({', '.join(label_names[:5])}{', ...' if len(label_names) > 5 else ''})")
            values[name] = np.array([overrides.get(label, getattr(self, name)) for label in label_names],
                                    dtype=np.float64)
        return ClassSettings(**values)

    def onset_thresholds(self, label_names: tuple[str, ...]) -> np.ndarray:
        """(K,) onset threshold of each class; a per-class entry naming no class is an error."""
        return self.per_class(label_names).threshold

    def gates(self, label_names: tuple[str, ...]) -> np.ndarray:
        """(K,) least clip probability of each class for its events to be kept."""
        if self.clip_gate is None:
            return self.onset_thresholds(label_names)
        return np.full(len(label_names), self.clip_gate)


def stored_event_config(configs: dict) -> EventConfig:
    """The event settings a training checkpoint's config dict stores under "events" (chosen per class on its
    validation split); the defaults for a checkpoint without them, and for the per-class settings a checkpoint
    written before they were stored lacks."""
    values = configs.get("events") or {}
    known = {name: value for name, value in values.items() if name in EventConfig.__dataclass_fields__}
    for name in CLASS_FIELDS.values():
        if name in known:
            known[name] = tuple((str(label), float(v)) for label, v in known[name])
    return EventConfig(**known)


def median_frames(seconds: float, frame_seconds: float) -> int:
    """The median filter's length in frames for `seconds`: an odd number (1: no filtering)."""
    return int(round(seconds / frame_seconds)) | 1


def smooth(frame_probs: np.ndarray, frame_seconds: float, median_seconds: np.ndarray) -> np.ndarray:
    """(T, K) probabilities, each class median-filtered over time with its own filter length (seconds, (K,))."""
    widths = np.array([median_frames(s, frame_seconds) for s in median_seconds])
    smoothed = frame_probs.copy()
    for width in np.unique(widths[widths > 1]):
        columns = np.flatnonzero(widths == width)
        smoothed[:, columns] = median_filter(frame_probs[:, columns], size=(width, 1), mode="nearest")
    return smoothed


def event_runs(smoothed: np.ndarray, high: float, low: float, min_gap: int, min_length: int
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The events of one class in (N, T) smoothed probabilities of N clips, as (clip, start, stop) arrays of
    frame indices, sorted by clip then start: runs at or above `low` that reach `high` somewhere, runs of a clip
    less than `min_gap` frames apart joined, then those shorter than `min_length` frames dropped."""
    count, frames = smoothed.shape
    # the clips end to end, each between zeros, so that no run crosses from one clip into the next
    padded = np.zeros((count, frames + 2), dtype=np.int8)
    padded[:, 1:-1] = smoothed >= low
    edges = np.diff(padded.ravel())                                  # +1 where a run starts, -1 after it stops
    at = np.flatnonzero(edges)
    begin, end = at[edges[at] == 1] + 1, at[edges[at] == -1] + 1     # [begin, end) in the padded clips
    highs = np.zeros((count, frames + 2), dtype=np.int32)
    highs[:, 1:-1] = smoothed >= high
    confident = np.concatenate([[0], np.cumsum(highs.ravel())])      # confident frames before each position
    reaching = confident[end] > confident[begin]
    begin, end = begin[reaching], end[reaching]
    clip, start, stop = begin // (frames + 2), begin % (frames + 2) - 1, end % (frames + 2) - 1
    opens = np.ones(len(clip), dtype=bool)                            # a run that starts a joined event
    opens[1:] = (clip[1:] != clip[:-1]) | (start[1:] - stop[:-1] >= min_gap)
    first = np.flatnonzero(opens)
    last = np.append(first[1:], len(clip))[:len(first)] - 1          # (no run: none)
    clip, start, stop = clip[first], start[first], stop[last]
    kept = stop - start >= max(min_length, 1)
    return clip[kept], start[kept], stop[kept]


def detect_events(frame_probs: np.ndarray, frame_seconds: float, label_names: tuple[str, ...], file: str,
                  config: EventConfig = EventConfig(), start_seconds: float = 0.0,
                  clip_probs: np.ndarray | None = None) -> list[Event]:
    """Events in (T, K) frame probabilities, frame t covering [t, t + 1) x frame_seconds after
    `start_seconds`, sorted by onset then label, each class with its own settings (`EventConfig.per_class`);
    with the (K,) `clip_probs` of the clip or file, only the classes whose clip probability reaches their gate
    (`EventConfig.gates`) have events."""
    frame_probs = np.asarray(frame_probs, dtype=np.float32)
    settings = config.per_class(label_names)
    open_gate = (np.ones(len(label_names), dtype=bool) if clip_probs is None
                 else np.asarray(clip_probs) >= config.gates(label_names))
    smoothed = smooth(frame_probs, frame_seconds, settings.median_seconds)
    events = []
    for k, name in enumerate(label_names):
        if not open_gate[k]:
            continue
        _, starts, stops = event_runs(smoothed[None, :, k], settings.threshold[k],
                                      settings.threshold[k] * settings.hysteresis[k],
                                      int(round(settings.min_gap_seconds[k] / frame_seconds)),
                                      int(round(settings.min_event_seconds[k] / frame_seconds)))
        events += [Event(file, round(float(start_seconds + a * frame_seconds), 6),
                         round(float(start_seconds + b * frame_seconds), 6), name, float(frame_probs[a:b, k].max()))
                   for a, b in zip(starts.tolist(), stops.tolist())]
    return sorted(events, key=lambda e: (e.onset, e.label))


def _rounded(event: Event) -> tuple[str, float, float, str, float]:
    """Times to the millisecond and scores to 4 decimals, as the files carry them."""
    return event.file, round(event.onset, 3), round(event.offset, 3), event.label, round(event.score, 4)


def file_keys(files) -> dict[str, str]:
    """Each file's name in the TSVs: its bare name (DCASE's and AudioSet's tools match on it), or, where two
    different files share that name (`one/a.wav`, `two/a.wav` from a folder), the file as given."""
    files = sorted(set(files))
    owners: dict[str, set[str]] = {}
    for file in files:
        owners.setdefault(Path(file).name, set()).add(file)
    return {file: Path(file).name if len(owners[Path(file).name]) == 1 else Path(file).as_posix() for file in files}


def write_strong_tsv(path: Path, events: list[Event], label_mids: dict[str, str]) -> None:
    """AudioSet's strong-label layout: segment_id (the file's key without its extension), start, end, label mid."""
    keys = file_keys(e.file for e in events)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["segment_id", "start_time_seconds", "end_time_seconds", "label"])
        for file, onset, offset, label, _ in map(_rounded, events):
            key = keys[file]
            writer.writerow([key[:-len(Path(key).suffix)] if Path(key).suffix else key, f"{onset:.3f}",
                             f"{offset:.3f}", label_mids[label]])


def write_dcase_tsv(path: Path, events: list[Event]) -> None:
    """DCASE's layout: filename (the file's key: its name unless two files share it), onset, offset, event_label."""
    keys = file_keys(e.file for e in events)
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle, delimiter="\t", lineterminator="\n")
        writer.writerow(["filename", "onset", "offset", "event_label"])
        for file, onset, offset, label, _ in map(_rounded, events):
            writer.writerow([keys[file], f"{onset:.3f}", f"{offset:.3f}", label])


def events_as_dicts(events: list[Event]) -> list[dict]:
    """JSON-ready events (finite numbers only)."""
    return [dict(zip(("file", "onset", "offset", "label", "score"), _rounded(e))) for e in events]


def write_json(path: Path, events: list[Event]) -> None:
    """The events as a JSON list of objects; NaN or infinity would raise rather than write invalid JSON."""
    path.write_text(json.dumps(events_as_dicts(events), indent=1, allow_nan=False) + "\n")


@dataclass
class ReferenceReport:
    """What reading reference events changed or left out, counted for a one-line summary."""

    merged: int = 0
    """Events merged into an overlapping, touching or repeated event of the same class and clip."""
    clipped: int = 0
    """Events cut to the clip, [0, clip length]."""
    empty: int = 0
    """Events dropped as empty: onset = offset, or nothing left inside the clip."""
    unknown: int = 0
    """Events dropped because their label is not a class."""
    unknown_example: str = ""
    """One such label."""
    unmatched: int = 0
    """Clip ids that match no clip of the data."""
    unmatched_example: str = ""
    """One such id."""

    def describe(self) -> str:
        """'2 overlapping or touching same-class events merged; ...', or '' when nothing changed."""
        parts = [f"{self.unknown} event(s) with a label that is not a class dropped (e.g. {self.unknown_example!r})"
                 if self.unknown else "",
                 f"{self.merged} overlapping, touching or repeated same-class event(s) merged" if self.merged else "",
                 f"{self.clipped} event(s) cut to the clip (negative onset or offset past its end)" if self.clipped
                 else "",
                 f"{self.empty} empty event(s) dropped (onset = offset, or outside the clip)" if self.empty else "",
                 f"{self.unmatched} clip id(s) match no clip (e.g. {self.unmatched_example!r})" if self.unmatched
                 else ""]
        return "; ".join(part for part in parts if part)


def clean_events(events: list[tuple[float, float, str]], clip_seconds: float | None = None,
                 report: ReferenceReport | None = None) -> list[tuple[float, float, str]]:
    """One clip's (onset, offset, label) events cut to [0, clip_seconds] (to [0, inf) without it), empty ones
    dropped, and overlapping or touching events of one label merged into one (sed_scores_eval refuses them,
    and one sound annotated twice is one event); sorted by onset, then label. `report` counts the changes."""
    report = report if report is not None else ReferenceReport()
    kept = []
    for onset, offset, label in events:
        low, high = max(onset, 0.0), offset if clip_seconds is None else min(offset, clip_seconds)
        if high <= low:
            report.empty += 1
            continue
        report.clipped += (low, high) != (onset, offset)
        kept.append((low, high, label))
    merged: list[tuple[float, float, str]] = []
    for onset, offset, label in sorted(kept, key=lambda e: (e[2], e[0], e[1])):
        if merged and merged[-1][2] == label and onset <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], offset), label)
            report.merged += 1
        else:
            merged.append((onset, offset, label))
    return sorted(merged, key=lambda e: (e[0], e[2]))


# Column names a header row may give (any case), by the column they name.
HEADER_NAMES = {
    "id": ("segment_id", "filename", "file_name", "file", "fname", "id", "clip", "clip_id", "ytid"),
    "onset": ("start_time_seconds", "onset", "start", "start_time", "begin"),
    "offset": ("end_time_seconds", "offset", "end", "end_time", "stop"),
    "label": ("label", "event_label", "class", "mid", "display_name", "name"),
}
# Field separators, in the order they are looked for on a file's first row (";" is what spreadsheets
# with a decimal comma write; spaces last, as labels may hold them).
DELIMITERS = {"\t": "tab", ";": "semicolon", ",": "comma", " ": "space"}


# How a time field can start; a header's onset field ("onset", "start_time_seconds") never does.
NUMBER_STARTS = frozenset("0123456789+-.")


class EventRow(NamedTuple):
    """One row of a reference-event file."""

    clip: str
    onset: float
    offset: float
    label: str


def _header(fields: list[str]) -> tuple[int, int, int, int] | None:
    """Positions of (id, onset, offset, label) named by a header row; None when it is not one."""
    names = [f.strip().lstrip("#").strip().lower().replace(" ", "_") for f in fields]
    found = [next((i for i, name in enumerate(names) if name in HEADER_NAMES[column]), None)
             for column in HEADER_NAMES]
    return None if None in found else tuple(found)


def _time(text: str, delimiter: str, where: str, line: int) -> float:
    """A time in seconds from line `line` of file `where`; a decimal comma ('1,5') reads as a point where commas
    do not separate fields."""
    if "," in text and delimiter != "," and re.fullmatch(r"[-+]?\d+,\d*", text):
        text = text.replace(",", ".")
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{where}:{line}: time {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ValueError(f"{where}:{line}: time {text!r} is not a finite number; give the event's onset and offset "
                         f"in seconds")
    return value


def read_event_rows(path: str | Path) -> list[EventRow]:
    """The events of a reference-event file: four columns (id, onset, offset, label), tab-, semicolon-, comma-
    or space-separated (whichever the first row holds, in that order), with or without a header row (which may
    name them in another order, among other columns), '#' comments, any line ends; plain or compressed,
    UTF-8/16/32 (fastsca/text_files.py). A row with an id and nothing else (DCASE's way of listing a clip
    without events) is skipped. A row that does not parse, or a file without events, raises ValueError naming
    the file and line. Times are in seconds; a decimal comma is read where commas do not separate fields."""
    where = str(path)
    with open_text(path) as handle:
        lines = [(n, line) for n, line in enumerate(handle.read().splitlines(), 1)
                 if line.strip() and not line.lstrip().startswith("#") or _is_commented_header(line)]
    if not lines:
        raise ValueError(f"{where}: no events found (the file is empty); give a strong-label TSV: "
                         f"id, onset, offset, label")
    delimiter = next((d for d in DELIMITERS if d in lines[0][1]), "\t")
    named, rows = False, []   # named: a header row gave the columns' positions
    at = (0, 1, 2, 3)         # positions of id, onset, offset, label
    reader = csv.reader([line for _, line in lines], delimiter=delimiter, skipinitialspace=True)
    for number, fields in zip((n for n, _ in lines), reader):
        fields = [f.strip() for f in fields]
        # an event row has a number where the onset is (tested first: the cheap test of most rows)
        if len(fields) <= at[1] or fields[at[1]][:1] not in NUMBER_STARTS:
            header = _header(fields)
            if header is not None:
                named, at = True, header
                continue
        if not named and len(fields) != 4:
            hint = ("; times with a decimal comma need tabs or semicolons between the fields"
                    if delimiter == "," and len(fields) > 4 else "")
            raise ValueError(f"{where}:{number}: expected 4 {DELIMITERS[delimiter]}-separated fields (id, onset, "
                             f"offset, label), got {len(fields)}; a file with more columns needs a header row naming "
                             f"them{hint}")
        if len(fields) <= max(at):
            raise ValueError(f"{where}:{number}: expected {max(at) + 1} fields as the header names, got {len(fields)}")
        clip, onset, offset, label = fields[at[0]], fields[at[1]], fields[at[2]], fields[at[3]]
        if clip and not (onset or offset or label):   # a clip listed without events
            continue
        if not rows and number == lines[0][0] and not _is_number(onset, delimiter):
            raise ValueError(f"{where}:{number}: neither an event (id, onset, offset, label) nor a header naming "
                             f"those columns (e.g. segment_id, start_time_seconds, end_time_seconds, label)")
        onset_s, offset_s = _time(onset, delimiter, where, number), _time(offset, delimiter, where, number)
        if offset_s < onset_s:
            raise ValueError(f"{where}:{number}: offset {offset_s} is before onset {onset_s}")
        if not clip or not label:
            raise ValueError(f"{where}:{number}: empty id or label")
        rows.append(EventRow(clip, onset_s, offset_s, label))
    if not rows:
        raise ValueError(f"{where}: no events found, only a header or clips without events; give a strong-label "
                         f"TSV: id, onset, offset, label")
    return rows


def _is_commented_header(line: str) -> bool:
    """A '# segment_id ...' line: a header some tools write as a comment."""
    stripped = line.lstrip()
    return stripped.startswith("#") and _header(re.split(r"[\t;,]", stripped)) is not None


def _is_number(text: str, delimiter: str) -> bool:
    """Whether `text` is a time, or NaN or infinity (refused later, with their own message)."""
    try:
        _time(text, delimiter, "", 0)
    except ValueError:
        return text.strip().lower() in ("nan", "inf", "-inf", "+inf", "infinity")
    return True


def read_reference(path: Path, label_names: tuple[str, ...], label_mids: dict[str, str] | None = None,
                   report: ReferenceReport | None = None) -> dict[str, list[tuple[float, float, str]]]:
    """Reference events from a TSV, by clip id: AudioSet's strong layout (segment_id, start, end, label mid,
    mapped to names through `label_mids` name -> mid), DCASE's (filename, onset, offset, event_label), or
    the name layout (id, onset, offset, display name); any layout `read_event_rows` reads. Labels that are
    not classes of the model are left out, and a clip's overlapping or touching events of one class are
    merged (`clean_events`); `report` counts both. A row that does not parse raises ValueError naming the
    file and line."""
    report = report if report is not None else ReferenceReport()
    names = set(label_names)
    by_mid = {mid: name for name, mid in (label_mids or {}).items()}
    events: dict[str, list[tuple[float, float, str]]] = {}
    for row in read_event_rows(path):
        label = row.label if row.label in names else by_mid.get(row.label)
        if label is None:
            report.unknown += 1
            report.unknown_example = report.unknown_example or row.label
            continue
        events.setdefault(row.clip, []).append((row.onset, row.offset, label))
    if not events:
        raise ValueError(f"{path}: none of its labels is a class of the model ({', '.join(label_names[:3])}, ...); "
                         f"give the labels file that maps its mids to names")
    return {clip: clean_events(clip_events, report=report) for clip, clip_events in events.items()}


def reference_for(file: str, reference: dict[str, list]) -> list | None:
    """A file's reference events, found by its name or stem (AudioSet's Y<YTID> names match <YTID>_<ms> ids)."""
    stem = Path(file).stem
    keys = [Path(file).name, stem] + ([stem[1:]] if stem.startswith("Y") else [])
    for key in keys:
        if key in reference:
            return reference[key]
    by_ytid = {re.sub(r"_\d+$", "", key): value for key, value in reference.items()}   # <YTID>_<start ms>
    return next((by_ytid[key] for key in keys if key in by_ytid), None)
