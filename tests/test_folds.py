"""Folds: `train.run --fold K` tests on fold K and trains on the others; `python -m train.folds` runs every fold
once (a finished fold is not trained again) and writes the mean ± std table; data without folds is one line."""
import csv
import json
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest

import train.run
from train import evaluate, folds, sweep
from train.profiles import PROFILES
from train.data.shards import ShardWriter
from train.data.synth import make_clip
from train.trainer.flags import build_config

from test_train_run import BUILTIN, records

TINY = ["--profile", "cpu", "--channels", "4,8,8,16,16,16,16", "--batch-size", "8", "--steps", "2",
        "--eval-every", "2", "--warmup-steps", "0", "--num-workers", "0", "--validation-fraction", "0.2"]


def fold_split(path: Path, fold_sizes: list[int], with_folds: bool = True) -> Path:
    """A shard of built-in clips (BUILTIN's generator, 1 s) with fold k holding fold_sizes[k] clips, each two
    consecutive clips cut from one recording (a group)."""
    count = sum(fold_sizes)
    clips = [make_clip(BUILTIN, 0, i) for i in range(count)]
    fold_of = np.repeat(np.arange(len(fold_sizes)), fold_sizes)
    with ShardWriter(path, tuple(f"/synth/{c}" for c in BUILTIN.class_names), BUILTIN.class_names, 16000,
                     BUILTIN.clip_samples) as writer:
        writer.add(np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips]), [f"clip{i}" for i in range(count)],
                   folds=fold_of.tolist() if with_folds else None,
                   groups=[f"rec{i // 2}" for i in range(count)] if with_folds else None)
        writer.commit()
    return path


def test_a_fold_is_the_test_split(tmp_path, capsys):
    sizes = [int(n) for n in np.random.default_rng(38).integers(8, 13, 3) * 2]   # whole groups of 2 per fold
    data = fold_split(tmp_path / "folds.h5", sizes)
    train.run.main(["--data", str(data), "--fold", "1", "--out", str(tmp_path / "run"), *TINY])
    [test] = records(tmp_path / "run", "test")
    assert test["clips"] == sizes[1]
    [val] = records(tmp_path / "run", "val")
    # validation: a fifth of the other folds' clips, in whole recordings of 2 clips
    wanted = round(0.2 * (sizes[0] + sizes[2]))
    assert val["clips"] % 2 == 0 and wanted - 2 < val["clips"] <= wanted
    assert f"test fold 1 of {data}" in capsys.readouterr().out
    # train.evaluate with no --data evaluates the run's own test split: fold 1, the same clips and figures
    evaluate.main(["--checkpoint", str(tmp_path / "run" / "best.pt"), "--num-workers", "0"])
    printed = capsys.readouterr().out
    assert f"on fold 1 of {data}: {sizes[1]} clips" in printed
    assert f"{test['mAP']:.4f}" in printed


@pytest.mark.parametrize("with_folds, words", [(False, "has no folds (it was packed without a fold per clip)"),
                                               (True, "has no fold 7; its folds are 0, 1")])
def test_a_missing_fold_is_one_line(tmp_path, with_folds, words, capsys):
    data = fold_split(tmp_path / "d.h5", [4, 4], with_folds)
    with pytest.raises(SystemExit) as stopped:
        train.run.main(["--data", str(data), "--fold", "7", "--out", str(tmp_path / "run"), *TINY])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: {data} {words}" + (
        "; drop --fold, or pack it with folds" if not with_folds else "")


def test_fold_with_eval_data_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.run.main(["--data", "x.h5", "--eval-data", "y.h5", "--fold", "0", "--out", str(tmp_path)])
    assert capsys.readouterr().err.strip() == ("error: --fold holds a fold of --data out as the test split: give "
                                                "--data without --eval-data")


@pytest.mark.slow
def test_folds_command_trains_each_fold_once_and_writes_mean_and_std(tmp_path):
    data = fold_split(tmp_path / "folds.h5", [20, 20])
    out = tmp_path / "cv"
    command = [sys.executable, "-m", "train.folds", "--data", str(data), "--out", str(out), *TINY]
    first = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert first.returncode == 0, first.stderr
    tests = [records(out / f"fold-{k}", "test")[0] for k in (0, 1)]
    maps = [t["mAP"] for t in tests]
    with (out / "folds.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert [r["fold"] for r in rows] == ["0", "1", "mean ± std (2 folds)"]
    assert [float(r["mAP"]) for r in rows[:2]] == pytest.approx(maps, abs=5e-5)
    assert rows[2]["mAP"] == f"{np.mean(maps):.4f} ± {np.std(maps, ddof=1):.4f}"
    assert f"| mean ± std (2 folds) |  | {rows[2]['mAP']} |" in (out / "folds.md").read_text()
    again = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0
    logs = [(out / f"fold-{k}" / "log.txt").read_text() for k in (0, 1)]
    assert [log.count("$ ") for log in logs] == [1, 1]   # finished folds are not trained again


def test_folds_command_on_data_without_folds_is_one_line(tmp_path, capsys):
    data = fold_split(tmp_path / "d.h5", [4, 4], with_folds=False)
    with pytest.raises(SystemExit) as stopped:
        folds.main(["--data", str(data), "--out", str(tmp_path / "cv")])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {data} has no folds")
    assert not (tmp_path / "cv").exists()


def test_packed_data_gets_the_mixup_chosen_on_real_recordings(tmp_path):
    """The cpu profile: mixup 0.5 on --data (results/real-audio), none on the built-in set (results/tables)."""
    data = fold_split(tmp_path / "d.h5", [4, 4])
    packed = train.run.parse_args(["--data", str(data), "--fold", "0", "--out", str(tmp_path / "a")])
    assert build_config(packed, PROFILES["cpu"], False)[0].data.loader.mixup_alpha == 0.5
    builtin = train.run.parse_args(["--builtin-dir", str(tmp_path / "b"), "--builtin-train", "8", "--builtin-eval",
                                    "4", "--out", str(tmp_path / "c")])
    assert build_config(builtin, PROFILES["cpu"], False)[0].data.loader.mixup_alpha == 0.0
    given = train.run.parse_args(["--data", str(data), "--fold", "0", "--mixup-alpha", "0.2", "--out", str(tmp_path / "d")])
    assert build_config(given, PROFILES["cpu"], False)[0].data.loader.mixup_alpha == 0.2


class FakeTrainer:
    """Stands in for the train.run subprocess: records each command and writes its test record (mAP 0.1 x call
    number; accuracy only for fold 0), so the reuse rules are tested without training."""

    def __init__(self) -> None:
        self.commands: list[list[str]] = []

    def __call__(self, command: list[str], run_dir: Path) -> int:
        self.commands.append(command)
        fold = int(command[command.index("--fold") + 1])
        record = {"kind": "test", "clips": 4, "mAP": 0.1 * len(self.commands),
                  **({"accuracy": 0.5} if fold == 0 else {})}
        (run_dir / "metrics.jsonl").write_text(json.dumps(record) + "\n")
        return 0


def test_folds_made_with_other_settings_or_data_are_never_reused(tmp_path, monkeypatch, capsys):
    trainer = FakeTrainer()
    monkeypatch.setattr(sweep, "train_logged", trainer)
    data = fold_split(tmp_path / "d.h5", [4, 4])
    out = tmp_path / "cv"
    folds.main(["--data", str(data), "--out", str(out), "--steps", "2"])
    assert len(trainer.commands) == 2
    folds.main(["--data", str(data), "--out", str(out), "--steps", "2"])   # the same settings: finished, reused
    shutil.copy(data, tmp_path / "copy.h5")                                  # the same clips elsewhere: reused too
    folds.main(["--data", str(tmp_path / "copy.h5"), "--out", str(out), "--steps", "2"])
    assert len(trainer.commands) == 2
    capsys.readouterr()
    other = fold_split(tmp_path / "other.h5", [4, 4], with_folds=True)
    with h5py.File(other, "r+") as handle:
        handle["target"][0] = 1 - handle["target"][0]                        # other labels: other data
    for changed in (["--data", str(data), "--steps", "3"], ["--data", str(data), "--steps", "2", "--lr", "0.01"],
                    ["--data", str(other), "--steps", "2"]):
        with pytest.raises(SystemExit) as stopped:
            folds.main([*changed, "--out", str(out)])
        assert stopped.value.code == 2 and capsys.readouterr().err == (
            f"error: {out / 'fold-0'} holds a run made with other settings or data (and 1 more): its results would "
            f"be reported under this command; use another --out, the command that made it, or --overwrite to train "
            f"it again\n")
    assert len(trainer.commands) == 2
    folds.main(["--data", str(data), "--out", str(out), "--steps", "3", "--overwrite"])
    assert len(trainer.commands) == 4 and all(c[-2:] == ["--steps", "3"] for c in trainer.commands[2:])
    table = (out / "folds.md").read_text()
    assert "--steps 3 --overwrite`" in table
    # fold 0 gives accuracy, fold 1 does not: the total says over how many folds each column is averaged
    assert "| mean ± std (2 folds) |  | 0.3500 ± 0.0707 | 0.5000 ± 0.0000 (1 of 2 folds) |" in table


def test_a_fold_folder_without_a_settings_record_is_not_reused(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(sweep, "train_logged", FakeTrainer())
    data = fold_split(tmp_path / "d.h5", [4, 4])
    (tmp_path / "cv" / "fold-1").mkdir(parents=True)
    (tmp_path / "cv" / "fold-1" / "metrics.jsonl").write_text('{"kind": "test", "clips": 4, "mAP": 0.9}\n')
    with pytest.raises(SystemExit):
        folds.main(["--data", str(data), "--out", str(tmp_path / "cv")])
    assert capsys.readouterr().err.startswith(f"error: {tmp_path / 'cv' / 'fold-1'} holds a run without a record of "
                                              f"its settings (settings.json): its results would be reported")


def test_a_fold_that_wrote_nothing_is_started_again_with_the_new_settings(tmp_path, monkeypatch):
    """A first try that failed before writing anything (a mistyped flag) does not lock its folder's settings."""
    data = fold_split(tmp_path / "d.h5", [4, 4])

    def refused(command: list[str], run_dir: Path) -> int:   # train.run refuses the mistyped flag, writing nothing
        (run_dir / "log.txt").write_text("error: unrecognized arguments: --stpes 2\n")
        return 2

    monkeypatch.setattr(sweep, "train_logged", refused)
    with pytest.raises(SystemExit):
        folds.main(["--data", str(data), "--out", str(tmp_path / "cv"), "--stpes", "2"])
    trainer = FakeTrainer()
    monkeypatch.setattr(sweep, "train_logged", trainer)
    folds.main(["--data", str(data), "--out", str(tmp_path / "cv"), "--steps", "2"])
    assert len(trainer.commands) == 2
    assert json.loads((tmp_path / "cv" / "fold-0" / "settings.json").read_text())["command"][-2:] == ["--steps", "2"]


@pytest.mark.parametrize("name", ["folds.md", "folds.csv"])
def test_a_summary_file_it_did_not_write_is_refused_before_training_and_kept(tmp_path, monkeypatch, capsys, name):
    trainer = FakeTrainer()
    monkeypatch.setattr(sweep, "train_logged", trainer)
    data = fold_split(tmp_path / "d.h5", [4, 4])
    out = tmp_path / "cv"
    out.mkdir()
    (out / name).write_text("my own notes\n")
    with pytest.raises(SystemExit) as stopped:
        folds.main(["--data", str(data), "--out", str(out), "--steps", "2"])
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"error: {out / name} was not written by train.folds; it was left as it is: use another --out, or "
        f"--overwrite to replace it\n")
    assert trainer.commands == [] and (out / name).read_text() == "my own notes\n"
    folds.main(["--data", str(data), "--out", str(out), "--steps", "2", "--overwrite"])
    folds.main(["--data", str(data), "--out", str(out), "--steps", "2"])   # its own summary: replaced again
    assert len(trainer.commands) == 2 and (out / name).read_text() != "my own notes\n"
