"""Frame probabilities -> events (fastsca/events.py) on a hand-made case whose events are known exactly,
and the TSV/JSON layouts and reference reader."""
import json

import numpy as np
import pytest

from fastsca.events import (Event, EventConfig, detect_events, read_reference, reference_for, write_dcase_tsv,
                            write_json, write_strong_tsv)

NAMES = ("a", "b")
FRAME = 0.1


def hand_made() -> np.ndarray:
    """(20, 2) probabilities at 10 Hz with a little noise below every level that matters."""
    probs = np.random.default_rng(16760).uniform(0.0, 0.05, (20, 2))
    probs[[2, 3, 5, 6], 0] = 0.9     # a: 0.9 0.9 | dip 0.4 (above the 0.3 offset threshold) | 0.9 0.9
    probs[4, 0] = 0.4
    probs[[10, 11], 1] = 0.45        # b: never reaches 0.5: an event only at a class threshold of 0.4
    probs[13, 1] = 0.8               # b: one frame, 2 frames before the next run: too short, not joined
    probs[[16, 17, 19], 1] = 0.7     # b: a 1-frame gap (< min_gap_seconds): one event
    probs[18, 1] = 0.1
    return probs


def test_hand_made_events_are_exact():
    config = EventConfig(median_seconds=0.0)
    events = detect_events(hand_made(), FRAME, NAMES, "x.wav", config)
    assert [(e.label, round(e.onset, 6), round(e.offset, 6), e.score) for e in events] == [
        ("a", 0.2, 0.7, pytest.approx(0.9)), ("b", 1.6, 2.0, pytest.approx(0.7))]
    assert all(e.file == "x.wav" for e in events)
    # a per-class threshold of 0.4 for b makes its 0.45 run an event, joined over the 1-frame gap with the
    # blip at 1.3 s: [1.0, 1.4)
    lower = detect_events(hand_made(), FRAME, NAMES, "x.wav", EventConfig(median_seconds=0.0,
                                                                             class_thresholds=(("b", 0.4),)))
    assert [(e.label, round(e.onset, 6), round(e.offset, 6)) for e in lower] == [
        ("a", 0.2, 0.7), ("b", 1.0, 1.4), ("b", 1.6, 2.0)]
    # no hysteresis: the dip at 0.4 splits a, and the gap (1 frame) is joined again: still one event
    strict = detect_events(hand_made(), FRAME, NAMES, "x.wav", EventConfig(median_seconds=0.0, hysteresis=1.0,
                                                                              min_gap_seconds=0.0))
    assert [(e.label, round(e.onset, 6), round(e.offset, 6)) for e in strict][:2] == [("a", 0.2, 0.4), ("a", 0.5, 0.7)]


def test_median_filter_removes_a_one_frame_blip_and_keeps_runs():
    probs = np.zeros((30, 1)) + np.random.default_rng(68642).uniform(0, 0.05, (30, 1))
    probs[5, 0] = 0.99
    probs[10:17, 0] = 0.8
    events = detect_events(probs, FRAME, ("a",), "f", EventConfig(median_seconds=0.3, min_event_seconds=0.0))
    assert [(round(e.onset, 6), round(e.offset, 6)) for e in events] == [(1.0, 1.7)]


def test_bad_config_and_unknown_class_are_value_errors():
    with pytest.raises(ValueError, match="threshold"):
        EventConfig(threshold=1.5)
    with pytest.raises(ValueError, match="'zzz', which is not a class"):
        detect_events(hand_made(), FRAME, NAMES, "f", EventConfig(class_thresholds=(("zzz", 0.3),)))


def test_layouts_and_reference_round_trip(tmp_path):
    events = [Event("dir/Yabc.wav", 0.2, 0.7, "a", 0.91234), Event("dir/Yabc.wav", 1.6, 2.0, "b", 0.7)]
    write_strong_tsv(tmp_path / "s.tsv", events, {"a": "/m/a", "b": "/m/b"})
    write_dcase_tsv(tmp_path / "d.tsv", events)
    write_json(tmp_path / "e.json", events)
    assert (tmp_path / "s.tsv").read_text().splitlines() == [
        "segment_id\tstart_time_seconds\tend_time_seconds\tlabel",
        "Yabc\t0.200\t0.700\t/m/a", "Yabc\t1.600\t2.000\t/m/b"]
    assert (tmp_path / "d.tsv").read_text().splitlines()[1] == "Yabc.wav\t0.200\t0.700\ta"
    assert json.loads((tmp_path / "e.json").read_text())[0] == {"file": "dir/Yabc.wav", "onset": 0.2, "offset": 0.7,
                                                                "label": "a", "score": 0.9123}
    strong = read_reference(tmp_path / "s.tsv", NAMES, {"a": "/m/a", "b": "/m/b"})
    assert strong == {"Yabc": [(0.2, 0.7, "a"), (1.6, 2.0, "b")]}
    assert read_reference(tmp_path / "d.tsv", NAMES) == {"Yabc.wav": [(0.2, 0.7, "a"), (1.6, 2.0, "b")]}
    assert reference_for("elsewhere/Yabc.wav", strong) == strong["Yabc"]
    assert reference_for("Yabc.wav", {"abc_30000": [(0.0, 1.0, "a")]}) == [(0.0, 1.0, "a")]
    with pytest.raises(ValueError, match="none of its labels"):
        read_reference(tmp_path / "s.tsv", NAMES)   # mids without the mapping


def test_json_refuses_nan(tmp_path):
    with pytest.raises(ValueError):
        write_json(tmp_path / "e.json", [Event("f", 0.0, 1.0, "a", float("nan"))])


def test_same_named_files_in_different_folders_stay_apart_in_the_tsvs(tmp_path):
    onset = round(float(np.random.default_rng(36244).uniform(0, 5)), 3)
    events = [Event("one/same.wav", onset, onset + 1, "a", 0.9), Event("two/same.wav", onset, onset + 2, "b", 0.8),
              Event("two/other.flac", 0.5, 1.0, "a", 0.7)]
    write_strong_tsv(tmp_path / "s.tsv", events, {"a": "/m/a", "b": "/m/b"})
    write_dcase_tsv(tmp_path / "d.tsv", events)
    assert [line.split("\t")[0] for line in (tmp_path / "s.tsv").read_text().splitlines()[1:]] == [
        "one/same", "two/same", "other"]
    assert [line.split("\t")[0] for line in (tmp_path / "d.tsv").read_text().splitlines()[1:]] == [
        "one/same.wav", "two/same.wav", "other.flac"]


def test_event_times_are_plain_floats_without_float_noise():
    events = detect_events(hand_made(), FRAME, NAMES, "f")
    assert events and all(type(e.onset) is float and type(e.offset) is float for e in events)
    assert all(e.onset == round(e.onset, 6) and e.offset == round(e.offset, 6) for e in events)
