"""Post-processing chosen per class on a validation split: the settings that turn each class's frame probabilities
into events (fastsca/events.py's `EventConfig`: median filter, onset threshold, hysteresis, least event length and
gap) that give it the best event-based F1 there.

The F1 is train/localisation.py's (sed_eval's rules: onset collar 200 ms, offset collar max(200 ms, 20 % of the
reference event), one-to-one matching of most pairs), counted here in numpy so that a search of a hundred settings
per class takes seconds: events come from `fastsca.events.event_runs` (what `detect_events` runs, on all clips
at once), pairs that meet both collars from sorted arrays, and the matching from scipy's maximum bipartite
matching (sed_eval's "optimal" matching). tests/test_postprocess.py checks it against sed_eval.

The search is by coordinates: the median filter, the onset threshold and the hysteresis together (180
settings), then the gap and the least length one at a time, round after round until nothing changes; a value
replaces the current one only when it scores strictly better, or equal and nearer the defaults. A class whose
F1 is 0 everywhere, or that has no reference event, keeps the global settings. Only validation outputs may be
given: train.run passes its validation split's (train/trainer/evaluator.py), train.evaluate the run's
validation split's.
"""
from dataclasses import dataclass, replace
from typing import NamedTuple

import numpy as np
from scipy.ndimage import median_filter
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import maximum_bipartite_matching

from fastsca.events import CLASS_FIELDS, EventConfig, event_runs, median_frames
from train import localisation
from train.localisation import EVENT_COLLAR_SECONDS, OFFSET_COLLAR_RATE, Reference


@dataclass(frozen=True)
class SelectionGrid:
    """The values tried for each class's settings."""

    median_seconds: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)
    """Median filter lengths (0.1 s at 10 Hz: one frame, no filtering); at most 0.9 s, so that the filter's
    half-width and the longest gap joined stay within the second the tagger keeps past a figure's end."""
    threshold: tuple[float, ...] = tuple(round(0.1 * i, 1) for i in range(1, 10))
    """Onset thresholds: 0.1, 0.2, ..., 0.9."""
    hysteresis: tuple[float, ...] = (1.0, 0.8, 0.6, 0.4)
    """Offset threshold as a fraction of the onset threshold (1: no hysteresis)."""
    min_gap_seconds: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5)
    """Least gap between two events of a class (closer ones are joined)."""
    min_event_seconds: tuple[float, ...] = (0.0, 0.1, 0.2, 0.3, 0.5, 1.0)
    """Least event length (shorter ones are dropped)."""
    rounds: int = 4
    """Most rounds of the coordinate search (it stops earlier when a round changes nothing)."""


class Selection(NamedTuple):
    """What the search chose and how much it gained on the validation split."""

    events: EventConfig
    """The base settings with the chosen per-class values."""
    f1_before: dict[str, float]
    """Each scored class's validation event F1 with the base settings."""
    f1_after: dict[str, float]
    """... and with the chosen ones."""


class _Class(NamedTuple):
    """One class's validation data, ready for the search."""

    probs: np.ndarray        # (N, T') frame probabilities of the scored clips
    clip_prob: np.ndarray    # (N,) clip probability, for the clip gate (ones without clip probabilities)
    ref_clip: np.ndarray     # (R,) reference events: clip row, onset, offset, sorted by clip
    ref_onset: np.ndarray
    ref_offset: np.ndarray


def class_event_f1(est: tuple[np.ndarray, np.ndarray, np.ndarray], ref_clip: np.ndarray, ref_onset: np.ndarray,
                   ref_offset: np.ndarray) -> float:
    """Event-based F1 of one class: estimated (clip, onset, offset) arrays sorted by clip against the reference's,
    with sed_eval's collars and its optimal one-to-one matching; 0 where nothing is estimated."""
    est_clip, est_onset, est_offset = est
    if len(est_clip) == 0:
        return 0.0
    low = np.searchsorted(est_clip, ref_clip, side="left")
    counts = np.searchsorted(est_clip, ref_clip, side="right") - low
    refs = np.repeat(np.arange(len(ref_clip)), counts)                   # every (reference, estimate) of a clip
    ests = np.arange(counts.sum()) - np.repeat(np.cumsum(counts) - counts, counts) + np.repeat(low, counts)
    collar = np.maximum(EVENT_COLLAR_SECONDS, OFFSET_COLLAR_RATE * (ref_offset - ref_onset))
    hit = ((np.abs(ref_onset[refs] - est_onset[ests]) <= EVENT_COLLAR_SECONDS)
           & (np.abs(ref_offset[refs] - est_offset[ests]) <= collar[refs]))
    refs, ests = refs[hit], ests[hit]
    if len(refs) == 0 or (np.bincount(refs).max() == 1 and np.bincount(ests).max() == 1):
        matched = len(refs)   # every pair stands alone (the common case): the matching is all of them
    else:
        graph = csr_matrix((np.ones(len(refs), dtype=np.int8), (refs, ests)), shape=(len(ref_clip), len(est_clip)))
        matched = int((maximum_bipartite_matching(graph, perm_type="column") >= 0).sum())
    return 2 * matched / (len(ref_clip) + len(est_clip))


SEARCH_STEPS = (("median_seconds", "threshold", "hysteresis"), ("min_gap_seconds",), ("min_event_seconds",))
"""The coordinates of the search, in order: the median filter, onset threshold and hysteresis together (each
changes what the others see: one at a time stalls where only a lower offset threshold and a higher onset one
together help), then the gap and the least length one at a time."""


class _Search:
    """One class's coordinate search; `score` evaluates one setting on all its clips."""

    def __init__(self, data: _Class, frame_seconds: float, clip_gate: float | None, grid: SelectionGrid) -> None:
        self.data, self.frame_seconds, self.clip_gate, self.grid = data, frame_seconds, clip_gate, grid
        self.smoothed: dict[int, np.ndarray] = {}

    def _smoothed(self, median_seconds: float) -> np.ndarray:
        width = median_frames(median_seconds, self.frame_seconds)
        if width not in self.smoothed:
            self.smoothed[width] = (self.data.probs if width == 1 else
                                    median_filter(self.data.probs, size=(1, width), mode="nearest"))
        return self.smoothed[width]

    def score(self, setting: dict[str, float]) -> float:
        """Event F1 of the setting (keys: the fields of `ClassSettings`)."""
        gate = self.clip_gate if self.clip_gate is not None else setting["threshold"]
        rows = np.flatnonzero(self.data.clip_prob >= gate)
        clip, start, stop = event_runs(self._smoothed(setting["median_seconds"])[rows], setting["threshold"],
                                       setting["threshold"] * setting["hysteresis"],
                                       int(round(setting["min_gap_seconds"] / self.frame_seconds)),
                                       int(round(setting["min_event_seconds"] / self.frame_seconds)))
        estimated = (rows[clip], np.round(start * self.frame_seconds, 6), np.round(stop * self.frame_seconds, 6))
        return class_event_f1(estimated, self.data.ref_clip, self.data.ref_onset, self.data.ref_offset)

    def best(self, start: dict[str, float], base: dict[str, float]) -> tuple[dict[str, float], float]:
        """The search from `start`: the best setting found and its F1 (ties go to the setting nearer `base`)."""
        grid = self.grid
        spans = {name: (max(getattr(grid, name)) - min(getattr(grid, name))) or 1.0 for name in base}

        def distance(setting: dict[str, float]) -> float:   # from the defaults, each setting over its grid's span
            return sum(abs(setting[name] - base[name]) / spans[name] for name in base)
        current, current_f1 = dict(start), self.score(start)
        for _ in range(grid.rounds):
            moved = False
            for names in SEARCH_STEPS:
                for values in np.array(np.meshgrid(*(getattr(grid, n) for n in names))).reshape(len(names), -1).T:
                    candidate = {**current, **dict(zip(names, map(float, values)))}
                    f1 = self.score(candidate)
                    # 1e-12: F1s that differ only by rounding are ties
                    if f1 > current_f1 + 1e-12 or (f1 > current_f1 - 1e-12
                                                   and distance(candidate) < distance(current) - 1e-12):
                        current, current_f1, moved = candidate, f1, True
            if not moved:
                break
        return current, current_f1


def _class_data(frame_probs: np.ndarray, clip_probs: np.ndarray | None, rows: list[int], truth: Reference,
                clip_ids: list[str], k: int, name: str) -> _Class:
    """Class `name` (column k) of the scored clips `rows`."""
    events = [(row, onset, offset) for row, i in enumerate(rows) for onset, offset, label in truth[clip_ids[i]]
              if label == name]
    ref = np.array(events, dtype=np.float64).reshape(-1, 3)
    clip_prob = np.ones(len(rows)) if clip_probs is None else clip_probs[rows, k].astype(np.float64)
    return _Class(frame_probs[rows, :, k].astype(np.float32), clip_prob, ref[:, 0].astype(np.int64), ref[:, 1],
                  ref[:, 2])


def select_postprocessing(frame_probs: np.ndarray, clip_probs: np.ndarray | None, clip_ids: list[str],
                          reference: Reference, label_names: tuple[str, ...], frame_seconds: float,
                          base: EventConfig = EventConfig(), grid: SelectionGrid = SelectionGrid()) -> Selection:
    """Each class's settings that maximise its event F1 on these validation clips: (N, T') frame probabilities,
    (N, K) clip probabilities for the clip gate (None: no gate), the clips' ids and their reference events. Only
    clips with reference events are scored (train/localisation.py's rule). The result keeps `base`'s global
    values and clip gate and replaces its per-class values."""
    scored = localisation.scored_clips(frame_probs, clip_ids, reference, label_names, frame_seconds)
    defaults = base.per_class(label_names)
    chosen: dict[str, list[tuple[str, float]]] = {field: [] for field in CLASS_FIELDS.values()}
    before, after = {}, {}
    for name in scored.classes:
        k = label_names.index(name)
        search = _Search(_class_data(frame_probs, clip_probs, scored.rows, scored.truth, clip_ids, k, name),
                         frame_seconds, base.clip_gate, grid)
        start = {field: float(getattr(defaults, field)[k]) for field in CLASS_FIELDS}
        global_values = {field: float(getattr(base, field)) for field in CLASS_FIELDS}
        before[name] = search.score(start)
        setting, after[name] = search.best(start, global_values)
        if after[name] > 0:   # (0: no setting finds an event of the class; it keeps the global ones)
            for field, per_class in CLASS_FIELDS.items():
                chosen[per_class].append((name, round(setting[field], 6)))
    return Selection(replace(base, **{field: tuple(pairs) for field, pairs in chosen.items()}), before, after)


def select_during_training(frames: list, strong: tuple[list[str], Reference], label_names: tuple[str, ...],
                           clip_seconds: float, world_size: int) -> Selection | None:
    """The event settings to store with a model, chosen on the validation split's gathered (frame, clip)
    probabilities `frames` (train/evaluate.py's `evaluate(..., frames)`) and its strong labels `strong` (clip
    names in the loader's order, reference events); None when choosing fails (training goes on with the defaults:
    the fault is reported by the localisation scoring of the same outputs)."""
    names, reference = strong
    frame_probs, clip_probs = frames
    clip_ids = [names[i] for i in localisation.gathered_order(len(names), world_size)]
    try:
        return select_postprocessing(frame_probs, clip_probs, clip_ids, reference, label_names,
                                     clip_seconds / frame_probs.shape[1])
    except Exception:   # as in localisation.score_during_training: scoring never stops training
        return None


def format_selection(events: EventConfig, label_names: tuple[str, ...], selection: Selection | None = None) -> str:
    """The event settings, one line per class that has its own (with the validation F1 before and after the
    choice where `selection` gives it), and one line for the others."""
    settings = events.per_class(label_names)
    own = {name for field in CLASS_FIELDS.values() for name, _ in getattr(events, field)}
    rows = [k for k, name in enumerate(label_names) if name in own]
    lines = [f"{'class':<24}{'onset':>6}{'hyst':>6}{'median':>8}{'min len':>9}{'min gap':>9}"
             f"{'  validation event F1 (defaults -> chosen)' if selection is not None else ''}"] if rows else []
    for k in rows:
        name = label_names[k]
        gain = (f"  {selection.f1_before[name]:.3f} -> {selection.f1_after[name]:.3f}"
                if selection is not None and name in selection.f1_after else "")
        lines.append(f"{name[:23]:<24}{settings.threshold[k]:>6.2f}{settings.hysteresis[k]:>6.2f}"
                     f"{settings.median_seconds[k]:>7.1f}s{settings.min_event_seconds[k]:>8.1f}s"
                     f"{settings.min_gap_seconds[k]:>8.1f}s{gain}")
    if len(rows) < len(label_names):
        lines.append(f"{f'{len(label_names) - len(rows)} other class(es)' if rows else 'every class'}: onset "
                     f"{events.threshold:g}, hysteresis {events.hysteresis:g}, median {events.median_seconds:g} s, min "
                     f"length {events.min_event_seconds:g} s, min gap {events.min_gap_seconds:g} s")
    return "\n".join(lines)
