"""Localisation scores (train/localisation.py): event and segment F1 checked by hand, a perfect and a
constant detector through the whole scoring, packed strong labels, TSV matching and the evaluate CLI."""
import numpy as np
import pytest

from train import evaluate, localisation
from train.data.synth import SynthConfig, ensure_builtin

from test_checkpoint import tiny_config, tiny_payload


def test_event_and_segment_f1_by_hand():
    reference = {"c1": [(0.2, 0.7, "a"), (1.0, 1.5, "b")], "c2": [(0.0, 1.0, "a")]}
    detected = {
        "c1": [(0.25, 0.8, "a"),    # onset 50 ms off, offset 100 ms off (collar 200 ms): a hit
               (1.5, 1.9, "b")],    # onset 500 ms off: a false alarm, and b's reference is missed
        "c2": [(0.1, 0.5, "a")],    # offset 500 ms off (collar max(0.2, 20 % of 1 s) = 0.2 s): miss + false alarm
    }
    event_f1, segment_f1 = localisation.score_events(detected, reference, {"c1": 2.0, "c2": 2.0}, ["a", "b"])
    # a: TP 1, FP 1, FN 1 -> P = R = 1/2, F1 = 1/2; b: TP 0 -> F1 = 0
    assert event_f1 == pytest.approx({"a": 0.5, "b": 0.0})
    # 1 s segments: a is active in segment 0 of both clips in reference and detection, b in segment 1 of c1
    assert segment_f1 == pytest.approx({"a": 1.0, "b": 1.0})


def random_reference(rng, clips: int, names: tuple[str, ...], frames: int) -> dict:
    """Events on the 0.1 s grid, 1-3 per clip, so that a frame-exact detector can reproduce them."""
    reference = {}
    for i in range(clips):
        events = []
        for k in rng.choice(len(names), size=rng.integers(1, 4), replace=False):
            start = int(rng.integers(0, frames - 5))
            events.append((start / 10, (start + int(rng.integers(3, frames - start))) / 10, names[k]))
        reference[f"clip{i}"] = events
    return reference


def test_perfect_detector_scores_one_and_a_constant_one_scores_chance():
    rng = np.random.default_rng(50796)
    names, frames = ("a", "b", "c"), 37
    reference = random_reference(rng, 11, names, frames)
    probs = np.zeros((11, frames, 3), np.float32) + rng.uniform(0.0, 0.05, (11, frames, 3)).astype(np.float32)
    for i, events in enumerate(reference.values()):
        for onset, offset, label in events:
            probs[i, round(onset * 10): round(offset * 10), names.index(label)] = rng.uniform(0.9, 1.0)
    ids = list(reference)
    perfect = localisation.localisation_metrics(probs, ids, reference, names, 0.1)
    assert perfect.summary() == pytest.approx({"event_f1": 1.0, "segment_f1": 1.0, "psds1": 1.0, "psds2": 1.0,
                                               "frame_ap": 1.0})
    constant = localisation.localisation_metrics(np.full_like(probs, 0.5), ids, reference, names, 0.1)
    # every frame of every class is an event: frame AP = the share of active frames, event F1 small
    active = sum((off - on) for events in reference.values() for on, off, _ in events) * 10
    assert constant.frame_ap == pytest.approx(active / (11 * frames * 3), abs=0.15)
    assert constant.event_f1 < perfect.event_f1 and constant.psds1 < 0.5
    quick = localisation.localisation_metrics(probs, ids, reference, names, 0.1, quick=True)
    assert set(quick.summary()) == {"event_f1", "psds1"}


def test_clips_without_strong_labels_are_left_out_and_an_empty_match_is_an_error():
    names = ("a",)
    probs = np.random.default_rng(85558).uniform(0, 1, (4, 20, 1)).astype(np.float32)
    scored = localisation.localisation_metrics(probs, ["w", "x", "y", "z"], {"y": [(0.0, 1.0, "a")],
                                                                              "z": [(0.5, 1.5, "a")]}, names, 0.1)
    assert scored.clips == 2
    with pytest.raises(ValueError, match="no clip of the split has strong labels"):
        localisation.localisation_metrics(probs, ["w", "x", "y", "z"], {"v": []}, names, 0.1)
    assert localisation.match_reference({"abc_30000": [(0.0, 1.0, "a")], "zzz_0": []}, ["Yabc", "Yq"]) == {
        "Yabc": [(0.0, 1.0, "a")]}
    order = localisation.gathered_order(7, 3)
    assert order.tolist() == [0, 3, 6, 1, 4, 2, 5]


@pytest.fixture(scope="module")
def strong_split(tmp_path_factory):
    """A 1 s built-in eval split (strong labels packed) with the checkpoint fixture's 5 classes."""
    _, eval_path = ensure_builtin(tmp_path_factory.mktemp("synth"),
                                  SynthConfig(n_classes=5, clip_seconds=1.0, event_seconds=(0.2, 0.6), n_train=4,
                                              n_eval=24, max_events=2), workers=1)
    return eval_path


def test_packed_strong_labels_are_read(strong_split):
    names, reference = localisation.split_reference(strong_split)
    assert len(names) == 24 and set(reference) == set(names)
    assert all(1 <= len(events) <= 2 and all(0 <= on < off <= 1.0 for on, off, _ in events)
               for events in reference.values())


@pytest.mark.slow
def test_evaluate_cli_scores_localisation_from_a_strong_tsv(tmp_path, strong_split, capsys):
    from train import checkpoint
    from train.data.synth import CLASS_NAMES
    path = tmp_path / "latest.pt"
    payload = tiny_payload(tiny_config())
    payload["label_names"] = list(CLASS_NAMES[:5])
    checkpoint.save(path, payload)
    names, reference = localisation.split_reference(strong_split)
    tsv = tmp_path / "strong.tsv"   # the name layout: id, onset, offset, display name
    tsv.write_text("".join(f"{clip}\t{on}\t{off}\t{label}\n" for clip in names[:10] for on, off, label in
                           reference[clip]))
    evaluate.main(["--checkpoint", str(path), "--data", str(strong_split), "--strong", str(tsv), "--out",
                   str(tmp_path / "out"), "--num-workers", "0"])
    out = capsys.readouterr().out
    assert "event F1" in out and "PSDS2" in out and "strong clips      10" in out
    rows = (tmp_path / "out" / "per_class_localisation.csv").read_text().splitlines()
    assert rows[0] == "name,event_f1,segment_f1,psds1,psds2,frame_ap,reference_events" and len(rows) > 1


def test_progress_text_shows_an_undefined_figure_as_a_dash():
    # with no event detected at all the event F1 is undefined and left out of the summary
    f1, psds1 = np.random.default_rng(12896).uniform(size=2)
    assert localisation.progress_text({"psds1": psds1}) == f"  event F1 -  PSDS1 {psds1:.3f}"
    assert localisation.progress_text({"event_f1": f1, "psds1": psds1}) == f"  event F1 {f1:.3f}  PSDS1 {psds1:.3f}"
    assert localisation.progress_text({}) == ""
