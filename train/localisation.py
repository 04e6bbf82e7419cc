"""Localisation scores of frame-level outputs against strong labels (reference events).

From the (N, T', K) frame probabilities of N clips and their reference events:
- event-based F1 (sed_eval): onset collar 200 ms, offset collar max(200 ms, 20 % of the event), on the
  events `fastsca.events.detect_events` makes with the given settings (train.run: best.pt's), gated by
  the clip probabilities;
- segment-based F1 (sed_eval) over 1 s segments of the same events;
- the threshold-independent PSDS (sed_scores_eval, Ebbers et al. 2022) in DCASE 2021+ scenario 1
  (DTC = GTC = 0.7, no cross-trigger cost) and scenario 2 (DTC = GTC = 0.1, CTTC 0.3, alpha_ct 0.5),
  both with alpha_st 1 and eFPR up to 100 per hour, on the raw frame probabilities;
- frame-level AP at 10 Hz (sed_scores_eval's segment-based AP over 100 ms segments).
F1 and AP are macro averages over the classes that have at least one reference event; PSDS covers
the same classes. Only clips with strong labels (at least one reference event of a class) are scored: a
clip nobody annotated is not an event-free clip. Reference events are cut to the clip and a clip's
overlapping or touching events of one class are merged first (`fastsca.events.clean_events`).
The event settings are chosen per class on a validation split by train/postprocess.py (train.run stores
them with best.pt). `split_reference` reads the strong labels packed into a split's shards; a strong-label TSV
is read by `fastsca.events.read_reference` and matched to the clips by `match_reference`. `format_per_class`
shows each class's figures: its PSDS is sed_scores_eval's single-class PSDS (the area under that class's own
PSD-ROC, with cross-triggers from the other classes counted in scenario 2, without the spread-across-classes
penalty alpha_st of the overall figure).
"""
import csv
import re
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from fastsca.events import EventConfig, ReferenceReport, clean_events, detect_events, read_reference
from train.data.shards import ShardIndex

with warnings.catch_warnings():   # dcase_util (under sed_eval) imports pkg_resources, which warns on import
    warnings.simplefilter("ignore")
    import sed_eval
    from sed_scores_eval import intersection_based, segment_based
    from sed_scores_eval.base_modules.scores import create_score_dataframe

EVENT_COLLAR_SECONDS = 0.2
"""Onset collar and least offset collar of the event-based F1."""
OFFSET_COLLAR_RATE = 0.2
"""The offset collar is at least this fraction of the reference event's length."""
SEGMENT_SECONDS = 1.0
"""Segment length of the segment-based F1."""
FRAME_AP_SECONDS = 0.1
"""Segment length of the frame-level AP: the model's 10 Hz frames."""
PSDS_SCENARIOS = {
    "psds1": dict(dtc_threshold=0.7, gtc_threshold=0.7, cttc_threshold=None, alpha_ct=0.0, alpha_st=1.0,
                  max_efpr=100.0),
    "psds2": dict(dtc_threshold=0.1, gtc_threshold=0.1, cttc_threshold=0.3, alpha_ct=0.5, alpha_st=1.0,
                  max_efpr=100.0),
}
"""The DCASE 2021+ PSDS scenarios (1: tight localisation; 2: detection, with cross-triggers penalised)."""

Reference = dict[str, list[tuple[float, float, str]]]


@dataclass(frozen=True)
class LocalisationMetrics:
    """Localisation scores of a set of clips, macro-averaged and per class."""

    event_f1: float
    """Event-based F1 (macro over classes with reference events)."""
    segment_f1: float
    """Segment-based F1 over 1 s segments (macro)."""
    psds1: float
    """Threshold-independent PSDS, DCASE scenario 1."""
    psds2: float
    """Threshold-independent PSDS, DCASE scenario 2."""
    frame_ap: float
    """Frame-level (10 Hz) average precision (macro)."""
    clips: int
    """Clips scored: those with strong labels."""
    split_clips: int
    """Clips given (those without strong labels are not scored)."""
    per_class: dict[str, dict[str, float]]
    """Per class: event_f1, segment_f1, psds1, psds2, frame_ap, reference_events."""

    def summary(self) -> dict[str, float]:
        """The figures that were computed (a quick score leaves some out)."""
        figures = {"event_f1": self.event_f1, "segment_f1": self.segment_f1, "psds1": self.psds1,
                   "psds2": self.psds2, "frame_ap": self.frame_ap}
        return {name: value for name, value in figures.items() if not np.isnan(value)}


def score_events(detected: dict[str, list], reference: Reference, durations: dict[str, float],
                 classes: list[str], segments: bool = True) -> tuple[dict[str, float], dict[str, float]]:
    """Per-class event-based and segment-based F1 (sed_eval) of detected events against the reference
    (NaN segment F1 without `segments`). Both take lists of (onset, offset, label) by clip id; a class
    with no reference and no detection is NaN, one with reference events but no detection 0 (sed_eval
    leaves its precision undefined; a macro average that skipped it would rise as a class goes silent)."""
    event_metrics = sed_eval.sound_event.EventBasedMetrics(
        event_label_list=classes, t_collar=EVENT_COLLAR_SECONDS, percentage_of_length=OFFSET_COLLAR_RATE,
        evaluate_onset=True, evaluate_offset=True)
    segment_metrics = sed_eval.sound_event.SegmentBasedMetrics(event_label_list=classes,
                                                               time_resolution=SEGMENT_SECONDS)
    for clip, truth in reference.items():
        as_dicts = [[{"filename": clip, "event_label": label, "onset": onset, "offset": offset}
                     for onset, offset, label in events if label in classes]
                    for events in (truth, detected.get(clip, []))]
        event_metrics.evaluate(reference_event_list=as_dicts[0], estimated_event_list=as_dicts[1])
        if segments:
            segment_metrics.evaluate(reference_event_list=as_dicts[0], estimated_event_list=as_dicts[1],
                                     evaluated_length_seconds=durations[clip])
    event = event_metrics.results_class_wise_metrics()
    segment = segment_metrics.results_class_wise_metrics()

    def f1(metrics: dict, name: str) -> float:
        value = metrics[name]["f_measure"]["f_measure"]
        return 0.0 if np.isnan(value) and metrics[name]["count"]["Nref"] > 0 else value
    return ({c: f1(event, c) for c in classes}, {c: f1(segment, c) if segments else float("nan") for c in classes})


@dataclass(frozen=True)
class ScoredClips:
    """The clips with strong labels and their reference events, ready for scoring."""

    rows: list[int]
    """Rows of the frame probabilities scored."""
    classes: list[str]
    """Classes with at least one reference event there."""
    counts: dict[str, int]
    """Reference events by class."""
    truth: Reference
    """Reference events of the scored classes, by clip id."""
    durations: dict[str, float]
    """Seconds of each scored clip."""


def scored_clips(frame_probs: np.ndarray, clip_ids: list[str], reference: Reference, label_names: tuple[str, ...],
                 frame_seconds: float) -> ScoredClips:
    """What to score: clips without reference events (of a class in `label_names`, inside the clip) left out."""
    duration = frame_probs.shape[1] * frame_seconds
    reference = {clip: clean_events([e for e in reference.get(clip, ()) if e[2] in label_names], duration)
                 for clip in clip_ids}
    rows = [i for i, clip in enumerate(clip_ids) if reference[clip]]
    if not rows:
        raise ValueError("no clip of the split has strong labels; check that the strong-label ids match the "
                         "clip names")
    counts = {name: 0 for name in label_names}
    for i in rows:
        for _, _, label in reference[clip_ids[i]]:
            counts[label] += 1
    classes = [name for name in label_names if counts[name]]
    truth = {clip_ids[i]: [e for e in reference[clip_ids[i]] if e[2] in classes] for i in rows}
    return ScoredClips(rows, classes, counts, truth, {clip_ids[i]: duration for i in rows})


def _detected(frame_probs: np.ndarray, clip_probs: np.ndarray | None, clip_ids: list[str], rows: list[int],
              label_names: tuple[str, ...], frame_seconds: float, events: EventConfig) -> Reference:
    """The (onset, offset, label) events `detect_events` finds in each scored clip, gated by its clip probabilities
    when they are given."""
    return {clip_ids[i]: [(e.onset, e.offset, e.label)
                          for e in detect_events(frame_probs[i], frame_seconds, label_names, clip_ids[i], events,
                                                 clip_probs=None if clip_probs is None else clip_probs[i])]
            for i in rows}


def localisation_metrics(frame_probs: np.ndarray, clip_ids: list[str], reference: Reference,
                         label_names: tuple[str, ...], frame_seconds: float,
                         events: EventConfig = EventConfig(), quick: bool = False,
                         clip_probs: np.ndarray | None = None) -> LocalisationMetrics:
    """Score (N, T', K) frame probabilities of clips `clip_ids`; clips without reference events (of a class in
    `label_names`, inside the clip) are left out. With the (N, K) `clip_probs`, events are gated by them
    (`EventConfig.clip_gate`). `quick` (for evaluations during training) computes only the event F1 and PSDS1,
    the two cheapest that cover both views: PSDS2's cross-trigger search, the segment F1 and the frame AP take
    ~80 % of the time."""
    scored = scored_clips(frame_probs, clip_ids, reference, label_names, frame_seconds)
    rows, classes, counts, truth, durations = (scored.rows, scored.classes, scored.counts, scored.truth,
                                               scored.durations)
    columns = [label_names.index(name) for name in classes]
    detected = _detected(frame_probs, clip_probs, clip_ids, rows, label_names, frame_seconds, events)
    event_f1, segment_f1 = score_events(detected, truth, durations, classes, segments=not quick)
    timestamps = np.arange(frame_probs.shape[1] + 1) * frame_seconds
    scores = {clip_ids[i]: create_score_dataframe(frame_probs[i][:, columns], timestamps, classes) for i in rows}
    missing = (float("nan"), {c: float("nan") for c in classes})
    # with one class there is nothing to cross-trigger (and sed_scores_eval fails on an empty cross-trigger set)
    scenarios = {name: scenario if len(classes) > 1 else {**scenario, "cttc_threshold": None, "alpha_ct": 0.0}
                 for name, scenario in PSDS_SCENARIOS.items()}
    psds = {name: intersection_based.psds(scores, truth, durations, **scenario)[:2]
            if name == "psds1" or not quick else missing for name, scenario in scenarios.items()}
    frame_ap = (segment_based.average_precision(scores, truth, durations, segment_length=FRAME_AP_SECONDS)[0]
                if not quick else {"mean": float("nan"), **missing[1]})
    per_class = {c: {"event_f1": event_f1[c], "segment_f1": segment_f1[c], "psds1": psds["psds1"][1][c],
                     "psds2": psds["psds2"][1][c], "frame_ap": frame_ap[c], "reference_events": counts[c]}
                 for c in classes}
    return LocalisationMetrics(event_f1=_macro(event_f1), segment_f1=_macro(segment_f1),
                               psds1=float(psds["psds1"][0]), psds2=float(psds["psds2"][0]),
                               frame_ap=float(frame_ap["mean"]), clips=len(rows), split_clips=len(clip_ids),
                               per_class=per_class)


def _macro(per_class: dict[str, float]) -> float:
    """Mean over the classes where the figure is defined (NaN when none is)."""
    values = [v for v in per_class.values() if not np.isnan(v)]
    return float(np.mean(values)) if values else float("nan")


def split_reference(path: str | Path) -> tuple[list[str], Reference | None]:
    """The clip names of a split in order, and the reference events by clip name from the strong labels
    packed into its shards (None when none were). A clip is in the reference when it has events (a clip of a
    shard packed with strong labels may have none: the TSV did not cover it); a clip's overlapping or touching
    events of one class are merged (shards packed before that was done may hold them)."""
    index = ShardIndex.open(path)
    names: list[str] = []
    reference: Reference = {}
    packed = False
    for shard in index.paths:
        with h5py.File(shard, "r") as handle:
            shard_names = [n.decode() if isinstance(n, bytes) else str(n) for n in handle["audio_name"][:]]
            names += shard_names
            if not handle.attrs.get("has_strong", False):
                continue
            packed = True
            for row, onset, offset, label in zip(handle["strong_clip"][:], handle["strong_onset"][:],
                                                 handle["strong_offset"][:], handle["strong_label"][:]):
                reference.setdefault(shard_names[row], []).append((float(onset), float(offset),
                                                                   index.label_names[label]))
    return names, ({clip: clean_events(events) for clip, events in reference.items()} if packed else None)


def match_reference(reference: Reference, clip_names: list[str], report: ReferenceReport | None = None) -> Reference:
    """`reference` keyed by the split's clip names: an id matches a clip name as it is, as a file name (its stem),
    or AudioSet's <YTID>_<start ms> (with or without the Y) matches the packed clip Y<YTID>; `report` counts
    the ids that match no clip."""
    by_name = set(clip_names)
    matched = {}
    for key, events in reference.items():
        stem = Path(key).stem
        ytid = re.sub(r"_\d+$", "", stem)
        name = next((c for c in (key, stem, "Y" + ytid, ytid) if c in by_name), None)
        if name is not None:
            matched.setdefault(name, []).extend(events)
        elif report is not None:
            report.unmatched += 1
            report.unmatched_example = report.unmatched_example or key
    return {name: clean_events(events) for name, events in matched.items()}


def gathered_order(num_clips: int, world_size: int) -> np.ndarray:
    """Clip index of each row of evaluation outputs gathered from `world_size` ranks (each rank takes every
    world_size-th clip of the sequential order, and the ranks' rows are concatenated)."""
    return np.concatenate([np.arange(rank, num_clips, world_size) for rank in range(world_size)])


def write_per_class_csv(path: Path, metrics: LocalisationMetrics) -> None:
    """One row per class with reference events: name, event F1, segment F1, PSDS1, PSDS2, frame AP, events."""
    fields = ["event_f1", "segment_f1", "psds1", "psds2", "frame_ap"]
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["name", *fields, "reference_events"])
        for name, row in metrics.per_class.items():
            writer.writerow([name, *("" if np.isnan(row[f]) else f"{row[f]:.6f}" for f in fields),
                             row["reference_events"]])


def format_table(metrics: LocalisationMetrics) -> str:
    """The headline localisation figures, one per line (as train.evaluate prints the tagging ones); '-' where a
    figure is undefined (no event of any class detected)."""
    def shown(value: float) -> str:
        return "-" if np.isnan(value) else f"{value:.4f}"
    return "\n".join([f"{'event F1':<18}{shown(metrics.event_f1)} (collars 200 ms / max(200 ms, 20 %))",
                      f"{'segment F1':<18}{shown(metrics.segment_f1)} (1 s segments)",
                      f"{'PSDS1':<18}{shown(metrics.psds1)}", f"{'PSDS2':<18}{shown(metrics.psds2)}",
                      f"{'frame AP':<18}{shown(metrics.frame_ap)} (10 Hz)",
                      f"{'strong clips':<18}{metrics.clips} of {metrics.split_clips} (only clips with strong "
                      f"labels are scored)"])


def format_per_class(metrics: LocalisationMetrics) -> str:
    """Each class's localisation figures beside the overall ones, one line per class with reference events: its
    event F1, segment F1, single-class PSDS1 and PSDS2 (sed_scores_eval's: see the module's docstring), frame AP
    and reference events; '-' where a figure is undefined or was not computed."""
    def shown(value: float) -> str:
        return f"{'-':>8}" if np.isnan(value) else f"{value:>8.4f}"
    fields = ("event_f1", "segment_f1", "psds1", "psds2", "frame_ap")
    lines = [f"{'per class':<24}{'event F1':>8}{'seg F1':>8}{'PSDS1':>8}{'PSDS2':>8}{'frame AP':>9}{'events':>8}"]
    lines += [f"{name[:23]:<24}{''.join(shown(row[f]) for f in fields[:4])} {shown(row['frame_ap'])}"
              f"{row['reference_events']:>8}" for name, row in metrics.per_class.items()]
    lines.append(f"{'overall':<24}{''.join(shown(getattr(metrics, f)) for f in fields[:4])} "
                 f"{shown(metrics.frame_ap)}  (macro F1 and AP; PSDS over all classes, alpha_st 1)")
    return "\n".join(lines)


def reference_for_split(data: str | Path, strong: str | Path | None, report: ReferenceReport | None = None
                        ) -> tuple[list[str], Reference] | None:
    """(clip names in split order, reference events by clip name) for evaluating `data`: from the TSV
    `strong` when given (AudioSet strong layout with mids, or ids with display names), else from the strong
    labels packed into the split; None when there are neither. `report` counts what reading the TSV changed
    or left out (unknown labels, merged events, ids matching no clip)."""
    names, packed = split_reference(data)
    if strong is None:
        return (names, packed) if packed is not None else None
    index = ShardIndex.open(data)
    report = report if report is not None else ReferenceReport()
    reference = match_reference(read_reference(Path(strong), index.label_names,
                                               dict(zip(index.label_names, index.label_mids)), report), names, report)
    if not reference:
        raise ValueError(f"--strong {strong}: none of its ids matches a clip of {data} (e.g. "
                         f"{report.unmatched_example!r}; clips are named like {names[0]!r}; AudioSet ids "
                         f"<YTID>_<start ms> match clips packed as Y<YTID>)")
    return names, reference


def test_reference(part, path: str | Path) -> tuple[list[str], Reference] | None:
    """(clip names in the test loader's order, reference events) of a run's test split `part` (the split at
    `path`, or a `holdout.SubsetIndex` of it: a fold) from the strong labels packed into it; None without them."""
    strong = reference_for_split(path, None)
    if strong is None:
        return None
    names, reference = strong
    clips = getattr(part, "clips", None)
    return ([names[i] for i in clips] if clips is not None else names), reference


def score_during_training(frames: list | None, strong: tuple[list[str], Reference] | None,
                          label_names: tuple[str, ...], clip_seconds: float, world_size: int,
                          events: EventConfig = EventConfig(), quick: bool = True) -> dict[str, float]:
    """The localisation figures (`quick`: event F1 and PSDS1 only) of an evaluation's gathered frame and clip
    probabilities (`evaluate(..., frames)`) with the event settings `events`, the clips they cover and the
    seconds they took; {} when the split has no strong labels. Scoring never stops training: whatever goes
    wrong in it comes back as one line under "localisation_error" (the run reports it and goes on)."""
    if strong is None:
        return {}
    start = time.perf_counter()
    names, reference = strong
    frame_probs, clip_probs = frames
    clip_ids = [names[i] for i in gathered_order(len(names), world_size)]
    try:
        metrics = localisation_metrics(frame_probs, clip_ids, reference, label_names,
                                       clip_seconds / frame_probs.shape[1], events, quick=quick, clip_probs=clip_probs)
    except Exception as error:   # a scoring library's assertion must not end hours of training
        return {"localisation_error": fault_text(error)}
    return {**{k: round(v, 4) for k, v in metrics.summary().items()}, "localisation_clips": metrics.clips,
            "localisation_seconds": round(time.perf_counter() - start, 2)}


def fault_text(error: Exception) -> str:
    """What went wrong while scoring, on one line of a readable length (a scoring library's message may list
    whole event lists)."""
    text = " ".join(str(error).split())
    return f"localisation not scored ({type(error).__name__}: {text[:300]}{'...' if len(text) > 300 else ''})"


def progress_text(located: dict[str, float], clips: int | None = None) -> str:
    """The localisation figures for the progress line ('' when there are none), with the share of the `clips`
    evaluated that they cover when that is not all of them."""
    if not located:
        return ""
    if "localisation_error" in located:
        return "  localisation not scored"
    def shown(name: str) -> str:   # a figure is left out where it is undefined (no event detected at all)
        return f"{located[name]:.3f}" if name in located else "-"
    scored = located.get("localisation_clips", clips)
    share = f" (on the {scored} of {clips} clips with strong labels)" if clips is not None and scored < clips else ""
    return f"  event F1 {shown('event_f1')}  PSDS1 {shown('psds1')}{share}"
