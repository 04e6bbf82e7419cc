"""Event settings chosen per class on validation (train/postprocess.py): its F1 against sed_eval's, the events of
many clips at once against one clip at a time, the search on frame probabilities whose best settings are known,
and the per-class settings in `detect_events`."""
import numpy as np
import pytest

from fastsca.events import EventConfig, detect_events, event_runs
from train import localisation, postprocess

FRAME = 0.1
FRAMES = 97


def estimates_near(rng: np.random.Generator, reference: list[tuple[float, float, str]], names: tuple[str, ...]
                   ) -> list[tuple[float, float, str]]:
    """Estimates of a clip's reference events on the 0.1 s grid: each missed, moved by up to 0.3 s at either end
    (0.2 s: exactly on the collar), or cut in two pieces that may both meet the collars; and false alarms."""
    estimated = []
    for onset, offset, name in reference:
        kind = int(rng.integers(0, 3))
        if kind == 1:
            moved = (onset + int(rng.integers(-3, 4)) / 10, offset + int(rng.integers(-3, 4)) / 10)
            estimated.append((round(max(moved[0], 0.0), 6), round(max(moved[1], moved[0] + 0.1), 6), name))
        elif kind == 2:
            middle = round((onset + offset) / 2, 1)
            estimated += [(onset, middle, name), (round(middle + 0.1, 6), round(offset + 0.1, 6), name)]
    for _ in range(int(rng.integers(0, 3))):
        start = int(rng.integers(0, 90))
        estimated.append((start / 10, (start + int(rng.integers(1, 8))) / 10, names[int(rng.integers(0, 3))]))
    return localisation.clean_events(estimated)


def test_event_f1_is_sed_evals():
    # events on the 0.1 s grid, many short ones cut in two, so that onsets and offsets fall exactly on the collars'
    # edges and one reference meets several estimates: the cases where counting could go wrong
    rng = np.random.default_rng(73193)
    names = ("a", "b", "c")
    reference, estimated = {}, {}
    for i in range(41):
        starts = np.sort(rng.choice(np.arange(0, 90, 3), size=int(rng.integers(1, 6)), replace=False))
        reference[f"clip{i}"] = localisation.clean_events(
            [(start / 10, (start + int(rng.integers(1, 9))) / 10, names[int(rng.integers(0, 3))])
             for start in starts.tolist()])
        estimated[f"clip{i}"] = estimates_near(rng, reference[f"clip{i}"], names)
    # an onset exactly 0.2 s off (0.2 - 0.0 is 0.2 in floating point too): a hit, the collar's edge included
    reference["edge"], estimated["edge"] = [(0.0, 0.5, "a")], [(0.2, 0.5, "a")]
    expected = localisation.score_events(estimated, reference, {c: 10.0 for c in reference}, list(names),
                                         segments=False)[0]
    clips = sorted(reference)

    def arrays(events: dict, name: str) -> tuple[np.ndarray, ...]:
        rows = [(clips.index(c), on, off) for c in clips for on, off, label in events[c] if label == name]
        table = np.array(rows, dtype=np.float64).reshape(-1, 3)
        return table[:, 0].astype(np.int64), table[:, 1], table[:, 2]
    found = {name: postprocess.class_event_f1(arrays(estimated, name), *arrays(reference, name)) for name in names}
    # sed_eval computes 2PR / (P + R), this 2 TP / (Nref + Nsys): the same counts agree to rounding, while one
    # match more or fewer moves a class's F1 by more than 1e-3
    assert found == pytest.approx(expected, rel=1e-12, abs=0)
    assert 0.2 < min(found.values()) and max(found.values()) < 0.9
    # a reference event that two estimates meet (the matching then has to choose): there are some
    hits = [sum(abs(on - e_on) <= 0.2 and abs(off - e_off) <= max(0.2, 0.2 * (off - on))
                for e_on, e_off, e_name in estimated[c] if e_name == name)
            for c in clips for on, off, name in reference[c]]
    assert max(hits) >= 2


def test_events_of_many_clips_at_once_are_those_of_each_clip():
    # a run at a clip's end and one at the next clip's start must stay two events, never joined
    rng = np.random.default_rng(4219)
    smoothed = rng.uniform(0, 1, (13, 29)).astype(np.float32) ** 2
    smoothed[3, -2:] = smoothed[4, :2] = 0.95
    for high, low, gap, length in [(0.5, 0.3, 2, 2), (0.7, 0.7, 0, 0), (0.3, 0.1, 4, 5), (0.99, 0.5, 1, 1)]:
        clip, start, stop = event_runs(smoothed, high, low, gap, length)
        one_by_one = [(i, a, b) for i in range(13)
                      for _, a, b in zip(*event_runs(smoothed[i:i + 1], high, low, gap, length))]
        assert list(zip(clip.tolist(), start.tolist(), stop.tolist())) == one_by_one
    assert len(event_runs(np.zeros((3, 7), np.float32), 0.5, 0.3, 2, 2)[0]) == 0


def known_case(rng: np.random.Generator, clips: int) -> tuple[np.ndarray, dict, list[str], tuple[str, ...]]:
    """10 Hz frame probabilities of `clips` clips, each with one event of a, b, c and d, whose best settings differ
    from the defaults in one value each (the others are ties that stay at the defaults):
    a: events at 0.35, false alarms at 0.25: onset threshold 0.3;
    b: events of 12-25 frames at 0.9, false alarms of 5 frames at 0.9: least length 1.0 s;
    c: 3 frames at 0.9, then a plateau at 0.25; false alarms of 12 frames at 0.45: onset 0.5 and hysteresis 0.4
       (offset 0.2), found only by searching the two together;
    d: events at 0.8 with a 2-frame drop every 7 frames, false alarms of 2 frames at 0.9: a 0.5 s median filter;
    e: no events at all: no settings of its own."""
    names = ("a", "b", "c", "d", "e")
    probs = rng.uniform(0.0, 0.04, (clips, FRAMES, len(names))).astype(np.float32)
    reference, ids = {}, [f"clip{i}" for i in range(clips)]
    for i, clip in enumerate(ids):
        events = []
        for k, (level, alarm, alarm_frames) in enumerate([(0.35, 0.25, 8), (0.9, 0.9, 5)]):
            start, length, at = int(rng.integers(0, 30)), int(rng.integers(12, 26)), int(rng.integers(62, 85))
            probs[i, start:start + length, k] += level
            probs[i, at:at + alarm_frames, k] += alarm
            events.append((start, start + length, names[k]))
        start, length, at = int(rng.integers(0, 30)), int(rng.integers(10, 26)), int(rng.integers(62, 84))
        probs[i, start:start + 3, 2] += 0.9
        probs[i, start + 3:start + length, 2] += 0.25
        probs[i, at:at + 12, 2] += 0.45
        events.append((start, start + length, "c"))
        start, repeats = int(rng.integers(0, 20)), int(rng.integers(3, 6))
        length = 7 * repeats + 5
        probs[i, start:start + length, 3] += 0.8
        for r in range(repeats):
            probs[i, start + 5 + 7 * r:start + 7 + 7 * r, 3] -= 0.78
        for at in rng.choice(np.arange(start + length + 4, FRAMES - 3, 5), size=2, replace=False):
            probs[i, at:at + 2, 3] += 0.9
        events.append((start, start + length, "d"))
        reference[clip] = [(round(a * FRAME, 6), round(b * FRAME, 6), name) for a, b, name in events]
    return np.clip(probs, 0, 1), reference, ids, names


def test_the_search_finds_each_classs_known_best_settings():
    rng = np.random.default_rng(28807)
    probs, reference, ids, names = known_case(rng, 23)
    selection = postprocess.select_postprocessing(probs, None, ids, reference, names, FRAME)
    chosen = selection.events.per_class(names)
    as_rows = {name: tuple(float(getattr(chosen, field)[k]) for field in
                           ("threshold", "hysteresis", "median_seconds", "min_event_seconds", "min_gap_seconds"))
               for k, name in enumerate(names)}
    assert as_rows == {"a": (0.3, 0.6, 0.3, 0.2, 0.2), "b": (0.5, 0.6, 0.3, 1.0, 0.2), "c": (0.5, 0.4, 0.3, 0.2, 0.2),
                       "d": (0.5, 0.6, 0.5, 0.2, 0.2), "e": (0.5, 0.6, 0.3, 0.2, 0.2)}
    assert "e" not in dict(selection.events.class_thresholds)   # no validation event: the global settings
    assert selection.f1_after == {"a": 1.0, "b": 1.0, "c": 1.0, "d": 1.0}
    assert selection.f1_before == {"a": 0.0, "b": pytest.approx(2 / 3, abs=1e-12), "c": 0.0, "d": 0.0}
    # the F1s the search counted are those train/localisation.py scores with the chosen settings
    scored = localisation.localisation_metrics(probs, ids, reference, names, FRAME, selection.events, quick=True)
    assert {name: scored.per_class[name]["event_f1"] for name in "abcd"} == selection.f1_after
    table = postprocess.format_selection(selection.events, names, selection)
    assert table.splitlines()[3].split() == ["c", "0.50", "0.40", "0.3s", "0.2s", "0.2s", "0.000", "->", "1.000"]
    assert table.splitlines()[-1].startswith("1 other class(es): onset 0.5, hysteresis 0.6, median 0.3 s")


def test_the_clip_gate_is_applied_while_choosing():
    rng = np.random.default_rng(61129)
    probs, reference, ids, names = known_case(rng, 17)
    clip_probs = np.ones((17, len(names)))
    ungated = postprocess.select_postprocessing(probs, None, ids, reference, names, FRAME)
    assert postprocess.select_postprocessing(probs, clip_probs, ids, reference, names, FRAME) == ungated
    closed = clip_probs.copy()
    closed[:, 0] = 0.1   # below the 0.3 gate: class a has no events anywhere, so its F1 is 0 at every setting
    silent = postprocess.select_postprocessing(probs, closed, ids, reference, names, FRAME)
    assert silent.f1_after["a"] == 0.0 and "a" not in dict(silent.events.class_thresholds)
    assert dict(silent.events.class_thresholds) == {k: v for k, v in ungated.events.class_thresholds if k != "a"}


def test_detect_events_uses_each_classs_own_settings():
    rng = np.random.default_rng(9241)
    probs = rng.uniform(0.0, 0.04, (FRAMES, 2)).astype(np.float32)
    probs[10:30, :] += 0.8
    probs[[15, 16], :] = 0.0   # a 2-frame drop in both classes' event
    own = EventConfig(class_median_seconds=(("b", 0.5),), class_min_gap_seconds=(("a", 0.0),),
                      class_thresholds=(("a", 0.6),))
    events = [(e.label, e.onset, e.offset) for e in detect_events(probs, FRAME, ("a", "b"), "f", own)]
    # a: no filter to fill the drop and no gap joined: two events; b: the 5-frame median fills it: one
    assert events == [("a", 1.0, 1.5), ("b", 1.0, 3.0), ("a", 1.7, 3.0)]
    with pytest.raises(ValueError, match="class_median_seconds names 'zz', which is not a class"):
        detect_events(probs, FRAME, ("a", "b"), "f", EventConfig(class_median_seconds=(("zz", 0.5),)))
    with pytest.raises(ValueError, match=r"class_hysteresis: 1.5 for 'a' is not in \(0, 1\]"):
        EventConfig(class_hysteresis=(("a", 1.5),))
