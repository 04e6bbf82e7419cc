"""`python -m train.sweep`: every row trained once per seed, the table written, finished runs not retrained."""
import csv
import json
import os
import re
from pathlib import Path

import pytest

from train import sweep
from train.sweep import TABLES, Row

TINY = ["--profile", "cpu", "--channels", "4,8,8,16,16,16,16", "--clip-seconds", "1", "--builtin-train", "96",
        "--builtin-eval", "37", "--batch-size", "16", "--steps", "3", "--eval-every", "3", "--warmup-steps", "1",
        "--num-workers", "0"]


def test_tables_hold_every_row_of_the_paper():
    assert [r.preset for r in TABLES[1]] == ["baseline", "at-s-global", "at-s-local", "at-s", "at-c", "at-sca",
                                            "at-csa", "at-cps"]
    assert {r.preset for r in TABLES[2]} == {f"{a}{d}" for a in ("at-s", "at-c", "at-sca") for d in ("", "-2", "-3")}


def test_flags_the_sweep_sets_itself_are_refused(capsys):
    with pytest.raises(SystemExit):
        sweep.parse_args(["--table", "1", "--out", "x", "--seed", "3"])
    assert "--seed: the sweep sets these" in capsys.readouterr().err


def test_an_interrupted_run_resumes(tmp_path):
    args, passed_on = sweep.parse_args(["--table", "1", "--out", str(tmp_path), "--steps", "9"])
    assert "--resume" not in sweep.run_command("at-c", 1, tmp_path, args, passed_on)
    (tmp_path / "latest.pt").write_bytes(b"")
    command = sweep.run_command("at-c", 1, tmp_path, args, passed_on)
    assert command[-3:] == ["--resume", "--steps", "9"] and command[command.index("--seed") + 1] == "1"


@pytest.mark.slow
def test_sweep_writes_the_table_and_skips_finished_runs(tmp_path, monkeypatch, capsys):
    rows = (Row("Baseline", "baseline", "-", (0.367, 0.967, 2.591)),
            Row("AT-SCA", "at-sca-2", "2 layers", (0.387, 0.969, 2.648)))
    monkeypatch.setitem(TABLES, 2, rows)
    argv = ["--table", "2", "--seeds", "2", "--out", str(tmp_path), "--builtin-dir", str(tmp_path / "data"), *TINY]
    sweep.main(argv)
    printed = capsys.readouterr().out
    with (tmp_path / "table2.csv").open() as handle:
        table = list(csv.DictReader(handle))
    assert [r["preset"] for r in table] == ["baseline", "at-sca-2"] and {r["seeds"] for r in table} == {"2"}
    for row in table:
        mean, std = (float(v) for v in row["mAP"].split(" ± "))
        assert 0 < mean <= 1 and std >= 0
        assert float(row["GFLOPs/clip"]) > 0 and row["params"].endswith(" M")
    assert float(table[1]["GFLOPs/clip"]) > float(table[0]["GFLOPs/clip"])   # attention costs a little
    assert "| Baseline | - | baseline | 2 |" in printed and "python -m train.sweep --table 2" in printed
    logs = {p.parent.name: p.read_text() for p in Path(tmp_path / "runs").glob("*/log.txt")}
    assert sorted(logs) == ["at-sca-2-seed0", "at-sca-2-seed1", "baseline-seed0", "baseline-seed1"]
    assert all(log.count("$ ") == 1 for log in logs.values())

    sweep.main(argv)   # again: everything is finished, nothing is trained
    assert all(p.read_text().count("$ ") == 1 for p in Path(tmp_path / "runs").glob("*/log.txt"))
    assert len(re.findall(r"\d ± \d", (tmp_path / "table2.md").read_text())) == 6   # 2 rows x 3 metrics


def test_a_run_locked_by_a_live_process_is_left_to_it(tmp_path):
    assert sweep.claim(tmp_path)
    assert not sweep.claim(tmp_path)                       # held by this (live) process
    (tmp_path / "sweep.lock").write_text("999999999")      # a process id that does not exist
    assert sweep.claim(tmp_path) and (tmp_path / "sweep.lock").read_text() == str(os.getpid())


def test_runs_made_with_other_settings_are_refused_or_overwritten(tmp_path, monkeypatch, capsys):
    commands = []

    def fake_train(command: list[str], run_dir: Path) -> int:   # writes the test record train.run would
        commands.append(command)
        (run_dir / "metrics.jsonl").write_text('{"kind": "test", "mAP": 0.5, "mAUC": 0.9, "d_prime": 1.5}\n')
        return 0

    monkeypatch.setattr(sweep, "train_logged", fake_train)
    monkeypatch.setitem(TABLES, 2, (Row("AT-C", "at-c", "1 layer", (0.378, 0.969, 2.632)),))
    argv = ["--table", "2", "--seeds", "1", "--out", str(tmp_path)]
    sweep.main([*argv, "--steps", "5"])
    sweep.main([*argv, "--steps", "5"])
    assert len(commands) == 1
    capsys.readouterr()
    with pytest.raises(SystemExit) as stopped:
        sweep.main([*argv, "--steps", "6"])
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"error: {tmp_path / 'runs' / 'at-c-seed0'} holds a run made with other settings or data: its results would "
        f"be reported under this command; use another --out, the command that made it, or --overwrite to train it "
        f"again\n")
    sweep.main([*argv, "--steps", "6", "--overwrite"])
    assert len(commands) == 2 and commands[1][-2:] == ["--steps", "6"]


def test_a_run_another_command_started_meanwhile_is_left_to_it(tmp_path, capsys):
    (tmp_path / "settings.json").write_text('{"command": ["other"], "data": {}}')
    (tmp_path / "latest.pt").write_bytes(b"")                  # the other command's run has begun
    assert sweep.run_job(tmp_path, lambda: pytest.fail("nothing may be trained"), {"command": ["this"], "data": {}}) \
        == "failed"
    assert capsys.readouterr().out == (f"{tmp_path} holds a run made with other settings or data (started by another "
                                       f"command meanwhile); left to it\n")
    assert not (tmp_path / "sweep.lock").exists()


@pytest.mark.parametrize("settings", [None, {"command": ["--steps", "1"], "data": {}}])
def test_overwrite_never_removes_a_run_folder_holding_files_train_run_did_not_write(tmp_path, settings):
    """--overwrite trains stale runs again by removing their folders: one that also holds a user's file (with or
    without a record of its settings) is refused, and the file kept."""
    run_dir = tmp_path / "fold-3"
    (run_dir / "pretrained").mkdir(parents=True)
    (run_dir / "latest.pt").write_bytes(b"a run")
    (run_dir / "notes.txt").write_text("mine\n")
    if settings is not None:
        (run_dir / sweep.SETTINGS_FILE).write_text(json.dumps(settings))
    with pytest.raises(sweep.SettingsError, match=rf"^{run_dir} holds 'notes.txt', which train.run did not write; "):
        sweep.check_runs([(run_dir, {"command": ["--steps", "2"], "data": {}})], overwrite=True)
    assert (run_dir / "notes.txt").read_text() == "mine\n" and (run_dir / "latest.pt").is_file()
    (run_dir / "notes.txt").unlink()   # only train.run's files left: removed, to be trained again
    sweep.check_runs([(run_dir, {"command": ["--steps", "2"], "data": {}})], overwrite=True)
    assert not run_dir.exists()


@pytest.mark.parametrize("name", ["table2.md", "table2.csv"])
def test_a_table_it_did_not_write_is_refused_before_training_and_kept(tmp_path, monkeypatch, capsys, name):
    commands = []
    monkeypatch.setattr(sweep, "train_logged", lambda command, run_dir: commands.append(command) or 0)
    monkeypatch.setitem(TABLES, 2, (Row("AT-C", "at-c", "1 layer", (0.378, 0.969, 2.632)),))
    (tmp_path / name).write_text("# my own table\n")
    with pytest.raises(SystemExit) as stopped:
        sweep.main(["--table", "2", "--seeds", "1", "--out", str(tmp_path), "--steps", "5"])
    assert stopped.value.code == 2 and capsys.readouterr().err == (
        f"error: {tmp_path / name} was not written by train.sweep; it was left as it is: use another --out, or "
        f"--overwrite to replace it\n")
    assert commands == [] and (tmp_path / name).read_text() == "# my own table\n"
