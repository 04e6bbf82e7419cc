"""Per-class event settings chosen on validation and the clip-probability gate: the choice of thresholds on hand-made
frame probabilities, the gate in `detect_events`, the settings' way from a checkpoint through OUT/pretrained to the
Tagger, the localisation figures of a run's test record, and checkpoints written before settings were stored
(train/postprocess.py's search itself: tests/test_postprocess.py)."""
import csv
import json
import re
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pytest
import torch

from fastsca import Tagger
from fastsca.events import EventConfig, detect_events, stored_event_config
from fastsca.hub import load_pretrained, main as hub_main, save_pretrained_from_checkpoint
from train import checkpoint, evaluate, localisation, postprocess
from train.data import holdout
from train.data.synth import SynthConfig, ensure_builtin
from train.evaluate import summary_text

from test_checkpoint import LABELS, tiny_config, tiny_payload
from test_train_run import records

FRAME = 0.1
CLIP_FRAMES = 100


def hand_made(rng: np.random.Generator, clips: int) -> tuple[np.ndarray, dict, list[str]]:
    """Frame probabilities of `clips` 10 s clips with one reference event of a, b and c each: a's events peak at
    0.35 and a false alarm elsewhere at 0.25 (best threshold 0.3); b's at 0.85 with false alarms at 0.65 (0.7 and
    0.8 both perfect: the tie goes to the value nearer 0.5); c is never detected (no settings of its own)."""
    probs = np.full((clips, CLIP_FRAMES, 3), 0.01, dtype=np.float32)
    reference, ids = {}, [f"clip{i}" for i in range(clips)]
    for i, clip in enumerate(ids):
        reference[clip] = []
        for k, (true, false) in enumerate([(0.35, 0.25), (0.85, 0.65), (0.01, 0.01)]):
            start, length = int(rng.integers(0, 30)), int(rng.integers(5, 20))
            alarm = int(rng.integers(60, 85))
            probs[i, start:start + length, k] = true
            probs[i, alarm:alarm + 10, k] = false
            reference[clip].append((round(start * FRAME, 6), round((start + length) * FRAME, 6), "abc"[k]))
    return probs, reference, ids


def test_each_class_gets_its_best_threshold_on_hand_made_frames():
    rng = np.random.default_rng(59339)
    probs, reference, ids = hand_made(rng, int(rng.integers(3, 7)))
    chosen = postprocess.select_postprocessing(probs, None, ids, reference, ("a", "b", "c"), FRAME).events
    assert chosen.class_thresholds == (("a", 0.3), ("b", 0.7))
    # the other settings tie, and stay at the defaults
    assert chosen == EventConfig(class_thresholds=chosen.class_thresholds,
                                 **{field: ((name, value), ("b", value)) for field, name, value in [
                                     ("class_hysteresis", "a", 0.6), ("class_median_seconds", "a", 0.3),
                                     ("class_min_event_seconds", "a", 0.2), ("class_min_gap_seconds", "a", 0.2)]})
    # with them, every reference event of a and b is found and nothing else; at 0.5, a has no event and b's
    # false alarms halve its precision
    scored = localisation.localisation_metrics(probs, ids, reference, ("a", "b", "c"), FRAME, chosen, quick=True)
    fixed = localisation.localisation_metrics(probs, ids, reference, ("a", "b", "c"), FRAME, quick=True)
    assert [scored.per_class[c]["event_f1"] for c in "abc"] == [1.0, 1.0, 0.0]
    # a class with reference events and no detection counts 0 in the macro F1 (it used to be left out)
    assert [fixed.per_class[c]["event_f1"] for c in "abc"] == [0.0, pytest.approx(2 / 3, abs=1e-12), 0.0]
    assert fixed.event_f1 == pytest.approx(2 / 9, abs=1e-12) and scored.event_f1 == pytest.approx(2 / 3, abs=1e-12)


def test_the_clip_gate_drops_events_of_classes_the_clip_is_not_tagged_with():
    rng = np.random.default_rng(25169)
    probs = np.zeros((50, 2), dtype=np.float32)
    probs[10:20] = 0.92   # both classes peak high in the frames
    low, high = float(rng.uniform(0.05, 0.29)), float(rng.uniform(0.5, 0.95))
    clip = np.array([low, high])
    ungated = detect_events(probs, FRAME, ("drilling", "siren"), "f")
    assert [e.label for e in ungated] == ["drilling", "siren"]
    # the default gate, 0.3: drilling, tagged at `low`, loses its event; siren, at `high`, keeps its own
    assert [e.label for e in detect_events(probs, FRAME, ("drilling", "siren"), "f", clip_probs=clip)] == ["siren"]
    # clip_gate None gates by the class's onset threshold: one below the clip probability opens the gate;
    # clip_gate 0 turns gating off
    opened = EventConfig(class_thresholds=(("drilling", round(low - 0.01, 3)),), clip_gate=None)
    assert len(detect_events(probs, FRAME, ("drilling", "siren"), "f", EventConfig(clip_gate=None),
                             clip_probs=np.array([0.49, 0.5]))) == 1
    assert len(detect_events(probs, FRAME, ("drilling", "siren"), "f", opened, clip_probs=clip)) == 2
    assert len(detect_events(probs, FRAME, ("drilling", "siren"), "f", EventConfig(clip_gate=0.0),
                             clip_probs=clip)) == 2
    assert detect_events(probs, FRAME, ("drilling", "siren"), "f", EventConfig(clip_gate=0.99),
                         clip_probs=clip) == []
    with pytest.raises(ValueError, match="clip_gate"):
        EventConfig(clip_gate=1.5)


def test_settings_go_from_checkpoint_through_the_model_folder_to_the_tagger(tmp_path):
    rng = np.random.default_rng(35527)
    ranges = {"class_thresholds": (0.1, 0.9), "class_hysteresis": (0.3, 1.0), "class_median_seconds": (0.1, 0.9),
              "class_min_event_seconds": (0.0, 1.0), "class_min_gap_seconds": (0.0, 0.5)}
    events = EventConfig(**{field: tuple((str(name), round(float(rng.uniform(*span)), 2))
                                         for name in rng.permutation(LABELS)[:3]) for field, span in ranges.items()})
    payload = tiny_payload(tiny_config())
    payload["config"]["events"] = json.loads(json.dumps(asdict(events)))   # as JSON would give it back
    path = tmp_path / "best.pt"
    checkpoint.save(path, payload)
    assert load_pretrained(path).events == events
    folder = save_pretrained_from_checkpoint(path, tmp_path / "pretrained")
    tagger = Tagger.from_pretrained(folder)
    assert tagger.events == events
    result = tagger(np.asarray(rng.normal(0, 0.1, 16000), dtype=np.float32), 16000)
    assert result.events == detect_events(result.frame, result.frame_seconds, LABELS, result.name, events,
                                          clip_probs=result.clip)
    # the converter's --threshold wins over the stored thresholds
    hub_main([str(path), "--out", str(tmp_path / "fixed"), "--threshold", "0.3"])
    assert Tagger.from_pretrained(tmp_path / "fixed").events == EventConfig(threshold=0.3)


def test_a_checkpoint_without_thresholds_loads_with_the_defaults(tmp_path):
    path = tmp_path / "old.pt"
    checkpoint.save(path, tiny_payload(tiny_config()))   # no config["events"], as before thresholds were stored
    assert "events" not in torch.load(path, weights_only=True)["config"]
    assert load_pretrained(path).events == EventConfig()
    assert Tagger.from_pretrained(save_pretrained_from_checkpoint(path, tmp_path / "p")).events == EventConfig()
    assert stored_event_config({}) == EventConfig()


def test_thresholds_stored_before_the_other_per_class_settings_load_with_the_defaults(tmp_path):
    # the events dict and config.json as they were written when only onset thresholds were chosen per class
    old = {"threshold": 0.5, "hysteresis": 0.6, "class_thresholds": [["drilling", 0.3]], "clip_gate": 0.3,
           "median_seconds": 0.3, "min_event_seconds": 0.2, "min_gap_seconds": 0.2}
    expected = EventConfig(class_thresholds=(("drilling", 0.3),))
    assert stored_event_config({"events": old}) == expected
    payload = tiny_payload(tiny_config())
    payload["config"]["events"] = {**old, "class_thresholds": [[LABELS[1], 0.3]]}
    checkpoint.save(tmp_path / "old.pt", payload)
    folder = save_pretrained_from_checkpoint(tmp_path / "old.pt", tmp_path / "p")
    config = json.loads((folder / "config.json").read_text())
    config["events"] = payload["config"]["events"]
    (folder / "config.json").write_text(json.dumps(config))
    assert load_pretrained(folder).events == load_pretrained(tmp_path / "old.pt").events == EventConfig(
        class_thresholds=((LABELS[1], 0.3),))


def test_the_test_record_carries_localisation_with_best_pts_thresholds(full_run, tmp_path, capsys):
    test = records(full_run, "test")[-1]
    assert f"event F1 {test['event_f1']:.4f}  segment F1 {test['segment_f1']:.4f}" in summary_text(test)
    assert {"event_f1", "segment_f1", "psds1", "psds2", "frame_ap", "localisation_clips"} <= set(test)
    assert test["localisation_clips"] == test["clips"] == 101
    stored = stored_event_config(torch.load(full_run / "best.pt", weights_only=True)["config"])
    assert stored.class_thresholds   # chosen on the validation split's strong labels
    saved = json.loads((full_run / "pretrained" / "config.json").read_text())["events"]
    assert stored_event_config({"events": saved}) == stored
    # train.evaluate on the same split with the same (stored) thresholds and gate gives the record's figures
    evaluate.main(["--checkpoint", str(full_run / "best.pt"), "--out", str(tmp_path), "--num-workers", "0"])
    shown = dict(re.findall(r"^(event F1|segment F1|PSDS1|PSDS2|frame AP)\s+(\S+)", capsys.readouterr().out, re.M))
    assert {name: float(shown[label]) for name, label in [("event_f1", "event F1"), ("segment_f1", "segment F1"),
                                                          ("psds1", "PSDS1"), ("psds2", "PSDS2"),
                                                          ("frame_ap", "frame AP")]} == \
        {name: test[name] for name in ("event_f1", "segment_f1", "psds1", "psds2", "frame_ap")}


def test_evaluate_prints_each_classs_psds_beside_the_overall(full_run, tmp_path, capsys):
    evaluate.main(["--checkpoint", str(full_run / "best.pt"), "--out", str(tmp_path), "--num-workers", "0"])
    out = capsys.readouterr().out
    rows = {row["name"]: row for row in csv.DictReader(open(tmp_path / "per_class_localisation.csv"))}
    shown = {line.split()[0]: line.split()[1:] for line in out[out.index("per class "):].splitlines()[1:len(rows) + 1]}
    assert set(shown) == set(rows) and len(rows) > 1
    for name, row in rows.items():   # event F1, segment F1, PSDS1, PSDS2, frame AP as the CSV has them (4 digits)
        assert [float(v) for v in shown[name][:5]] == [round(float(row[f]), 4) for f in
                                                        ("event_f1", "segment_f1", "psds1", "psds2", "frame_ap")]
    overall = next(line for line in out.splitlines() if line.startswith("overall "))
    psds1 = re.search(r"^PSDS1\s+(\S+)", out, re.M).group(1)
    assert overall.split()[3] == psds1
    assert "event settings: stored with the model" in out


def test_settings_are_chosen_on_the_validation_split_only(full_run, tmp_path, capsys, monkeypatch):
    """train.run's stored settings are those chosen again on its validation split (whose clips, and only those,
    the choice is given), and not those the test split would give."""
    seen = []
    choose = postprocess.select_postprocessing

    def spy(frame_probs, clip_probs, clip_ids, *args, **kwargs):
        seen.append(list(clip_ids))
        return choose(frame_probs, clip_probs, clip_ids, *args, **kwargs)
    monkeypatch.setattr(postprocess, "select_postprocessing", spy)
    evaluate.main(["--checkpoint", str(full_run / "best.pt"), "--out", str(tmp_path), "--num-workers", "0",
                   "--post-processing", "validation"])
    out = capsys.readouterr().out
    payload = torch.load(full_run / "best.pt", weights_only=True)
    data = payload["config"]["data"]
    train_path, eval_path = ensure_builtin(Path(data["builtin_dir"]).expanduser(), SynthConfig(**data["builtin"]))
    validation = holdout.split_run(str(train_path), str(eval_path), data["validation_fraction"],
                                   data["validation_max_clips"], data["loader"]["seed"], say=lambda text: None)[1]
    names = localisation.split_reference(str(train_path))[0]
    assert seen == [[names[i] for i in validation.clips]]
    assert not set(seen[0]) & set(localisation.split_reference(str(eval_path))[0])
    assert "event settings: chosen again on its run's validation split" in out
    stored = stored_event_config(payload["config"])
    trained = load_pretrained(full_run / "best.pt").trained
    table = out.split("event settings: chosen again on its run's validation split\n")[1].splitlines()
    chosen_rows = [line for line in table if line.split()[:1] and line.split()[0] in trained.label_names]
    assert len(chosen_rows) == len(dict(stored.class_thresholds)) > 0   # one line per class with its own settings
    assert all(re.search(r"  \d\.\d{3} -> \d\.\d{3}$", line) for line in chosen_rows)   # validation F1s
    reselected = spy_result(trained, str(train_path), validation)
    assert reselected == stored   # what train.run stored is the choice on its validation split ...
    assert spy_result(trained, str(eval_path), None) != stored   # ... which the test split would not give


def spy_result(trained, path: str, part) -> EventConfig:
    """The settings chosen on a split's (or its part's) outputs."""
    from train.data.loader import LoaderConfig, LogMelLoader
    names, reference = localisation.split_reference(path)
    frames: list = []
    with LogMelLoader(part if part is not None else path, LoaderConfig(batch_size=64, sampler="sequential",
                                                                       num_workers=0, drop_last=False),
                      log_mel=trained.log_mel, device=torch.device("cpu")) as loader:
        evaluate.evaluate(trained.model, loader, torch.device("cpu"), frames)
    clips = [names[i] for i in part.clips] if part is not None else names
    return postprocess.select_postprocessing(frames[0], frames[1], clips, reference, trained.label_names,
                                             trained.log_mel.clip_seconds / frames[0].shape[1]).events


def test_a_run_chooses_on_its_validation_clips_and_prints_the_settings(tmp_path, builtin_dir, monkeypatch, capsys):
    import train.run
    from test_train_run import tiny_args
    seen, chosen = [], []
    choose = postprocess.select_postprocessing

    def spy(frame_probs, clip_probs, clip_ids, *args, **kwargs):
        seen.append(list(clip_ids))
        chosen.append(choose(frame_probs, clip_probs, clip_ids, *args, **kwargs))
        return chosen[-1]
    monkeypatch.setattr(postprocess, "select_postprocessing", spy)
    out = tmp_path / "short"
    train.run.main(tiny_args(out, builtin_dir, 20, "--eval-every", "10"))
    best = torch.load(out / "best.pt", weights_only=True)
    data = best["config"]["data"]
    train_path, eval_path = ensure_builtin(Path(data["builtin_dir"]).expanduser(), SynthConfig(**data["builtin"]))
    validation = holdout.split_run(str(train_path), str(eval_path), data["validation_fraction"],
                                   data["validation_max_clips"], data["loader"]["seed"], say=lambda text: None)[1]
    names = localisation.split_reference(str(train_path))[0]
    # one choice, at the end of the run (best.pt's outputs), on the validation clips in the loader's order, none of
    # the test's: not one at each better evaluation (two of them here), which would cost minutes to an hour each on an
    # AudioSet-sized split
    assert len(records(out, "val")) == 2
    assert seen == [[names[i] for i in validation.clips]]
    assert not set(seen[0]) & set(localisation.split_reference(str(eval_path))[0])
    stored = stored_event_config(best["config"])
    assert chosen[-1].events == stored and stored.class_thresholds
    printed = capsys.readouterr().out
    assert ("event settings chosen per class on the validation split (stored in best.pt and the model folder):\n"
            f"{postprocess.format_selection(stored, tuple(best['label_names']), chosen[-1])}\n") in printed


@pytest.mark.parametrize("extra, message", [
    (["--post-processing", "defaults", "--threshold", "0.4"],
     "error: --threshold sets the event settings, as --post-processing defaults does: give one of them"),
    (["--post-processing", "validation"], "which does not name its run's data; give its best.pt"),
    (["--post-processing", "validation", "--train-split"], "which holds the validation clips the settings would be "
                                                           "chosen on; give another split")])
def test_post_processing_that_cannot_be_used_is_one_line_exit_2(full_run, tmp_path, capsys, extra, message):
    data = torch.load(full_run / "best.pt", weights_only=True)["config"]["data"]
    train_path, eval_path = ensure_builtin(Path(data["builtin_dir"]).expanduser(), SynthConfig(**data["builtin"]))
    model, split = ((full_run / "best.pt", train_path) if "--train-split" in extra else
                    (full_run / "pretrained", eval_path))
    with pytest.raises(SystemExit) as stop:
        evaluate.main(["--checkpoint", str(model), "--data", str(split), "--out", str(tmp_path), "--num-workers", "0",
                       *[flag for flag in extra if flag != "--train-split"]])
    error = capsys.readouterr().err.strip()
    assert stop.value.code == 2 and message in error and "\n" not in error
