"""Faults and bad input, as a new user meets them: each case asserts the one-line message (no traceback) or the
skip-and-report with its exit code, and that nothing done before the fault is lost.

Covers damaged audio (truncated, NaN/inf samples), packing (no audio folder, nothing packed, a truncated clip),
the run folder (a second run, a time cadence of checkpoints, crash/kill -9 and resume without duplicated
metrics, signals' exit codes, a changed schedule on resume), workers outliving a killed parent, file-system
faults (disk full, read-only or file --out) in pack, run and evaluate, hand-edited checkpoints, a shard
truncated during training and a damaged built-in data cache. Disk full is simulated in-process (the write
raises ENOSPC), which works on any machine without root.
"""
import csv
import errno
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
import soundfile
import torch

import train.run
import train.step
from fastsca.audio import AudioError, TruncatedAudioError, load_audio
from fastsca import tag
from train import checkpoint, evaluate, pack
from train.data.out_folder import RunLock
from train.data.shards import ShardIndex, ShardWriter
from train.data.synth import SynthConfig, ensure_builtin

from test_checkpoint import LABELS, tiny_config, tiny_payload
from test_train_run import BUILTIN, records, tiny_args

# tqdm's bar redraws: a percentage and a bar, and the cursor-up code it moves between its lines with
PROGRESS_BAR = re.compile(r"\d+%\|")
CURSOR_UP = "\x1b[A"
DISK_FULL = OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def one_line(stderr: str) -> str:
    """The single error line of `stderr`, beside tqdm's progress bars; fails on a traceback or several lines."""
    assert "Traceback" not in stderr, stderr
    lines = [line.strip() for line in re.split(r"[\r\n]", stderr.replace(CURSOR_UP, ""))
             if line.strip() and not PROGRESS_BAR.search(line)]
    assert len(lines) == 1, stderr
    return lines[0]


def read_only_folder(tmp_path: Path) -> Path:
    """A folder no file can be written into: mode 0o555, or where that does not bind (root), sysfs's /sys/kernel."""
    folder = tmp_path / "read-only"
    folder.mkdir()
    folder.chmod(0o555)
    return folder if not os.access(folder, os.W_OK) else Path("/sys/kernel")


def bad_out(kind: str, tmp_path: Path) -> tuple[Path, str]:
    """An --out that is a file or read-only, and the words its error must hold."""
    if kind == "file":
        path = tmp_path / "taken"
        path.write_text("not a folder\n")
        return path, "is a file, not a folder"
    return read_only_folder(tmp_path), "cannot write into the folder"


def write_wav(path: Path, seconds: float, rate: int = 16000, subtype: str = "PCM_16") -> np.ndarray:
    wave = (0.1 * np.random.default_rng(42084).standard_normal(int(seconds * rate))).astype(np.float32)
    soundfile.write(path, wave, rate, subtype=subtype)
    return wave


def truncate(path: Path, size: int) -> None:
    with open(path, "r+b") as handle:
        handle.truncate(size)


def descendants(pid: int) -> list[int]:
    """Every live process below `pid` (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            parent = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(parent, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, not yet reaped by a container's PID 1) counts as gone."""
    try:
        return (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def describe(pids: list[int]) -> list[str]:
    """PID and command line of each live process of `pids`."""
    return [f"{p}: " + (Path("/proc") / str(p) / "cmdline").read_bytes().replace(b"\0", b" ")[:120].decode()
            for p in pids if alive(p)]


def assert_gone_within(pids: list[int], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(p) for p in pids):
        assert time.monotonic() < deadline, f"still alive {seconds} s after their parent: {describe(pids)}"
        time.sleep(0.1)


# --- damaged audio ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ext, subtype", [("wav", "PCM_16"), ("wav", "PCM_24"), ("wav", "FLOAT"), ("aiff", "PCM_16")])
def test_truncated_file_is_refused(tmp_path, ext, subtype):
    path = tmp_path / f"clip.{ext}"
    write_wav(path, 6.0, subtype=subtype)
    keep = int(np.random.default_rng(55358).integers(20000, 60000))
    truncate(path, keep)
    with pytest.raises(TruncatedAudioError, match=r"truncated: the header declares 6\.00 s but the file holds") as info:
        load_audio(path)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_non_finite_samples_are_refused(tmp_path, value):
    rng = np.random.default_rng(70248)
    wave = write_wav(tmp_path / "ok.wav", 1.3, subtype="FLOAT")
    count = int(rng.integers(1, 12))
    wave[rng.choice(len(wave), count, replace=False)] = value
    soundfile.write(tmp_path / "bad.wav", wave, 16000, subtype="FLOAT")
    with pytest.raises(AudioError, match=rf"{count} sample\(s\) are NaN or infinite .*refused, not zeroed"):
        load_audio(tmp_path / "bad.wav")
    assert np.isfinite(load_audio(tmp_path / "ok.wav")).all()


@pytest.mark.slow
def test_tag_reports_damaged_files_and_tags_the_rest(tmp_path):
    path = tmp_path / "model.pt"
    checkpoint.save(path, tiny_payload(tiny_config()))
    good, short, bad = tmp_path / "good.wav", tmp_path / "short.wav", tmp_path / "bad.wav"
    write_wav(good, 1.5)
    write_wav(short, 6.0)
    truncate(short, 30000)
    wave = write_wav(bad, 1.0, subtype="FLOAT")
    wave[[3, 500, 9000]] = [np.nan, np.inf, -np.inf]
    soundfile.write(bad, wave, 16000, subtype="FLOAT")
    result = subprocess.run([sys.executable, "-m", "fastsca.tag", str(short), str(good), str(bad), "--checkpoint",
                             str(path), "--top-k", "1"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    errors = result.stderr.strip().splitlines()
    assert errors[0].startswith(f"error: {short}: truncated: the header declares 6.00 s but the file holds 0.94 s")
    assert errors[1].startswith(f"error: {bad}: sample 3 (0.000 s) is NaN or infinite")
    assert errors[2] == "error: 2 of 3 files could not be read"
    assert result.stdout.startswith(f"{good} (1.5 s)\n")


# --- packing -----------------------------------------------------------------------------------------------------

def pack_tree(root: Path, clips: dict[str, float | None]) -> list[str]:
    """labels.csv, a.csv with one row per clip and audio/Y<ytid>.wav of the given seconds (None: no file);
    the pack command line."""
    (root / "audio").mkdir(parents=True)
    (root / "labels.csv").write_text('index,mid,display_name\n0,/m/a,"Alpha"\n1,/m/b,"Beta"\n')
    rows = [f'{ytid}, 0.000, 10.000, "/m/a"' for ytid in clips]
    (root / "a.csv").write_text("# YTID, start_seconds, end_seconds, positive_labels\n" + "\n".join(rows) + "\n")
    for ytid, seconds in clips.items():
        if seconds is not None:
            write_wav(root / "audio" / f"Y{ytid}.wav", seconds)
    return ["--csv", str(root / "a.csv"), "--labels", str(root / "labels.csv"), "--audio-dir", str(root / "audio"),
            "--out", str(root / "out"), "--shard-size", "1", "--workers", "1"]


def test_pack_without_the_audio_folder_is_an_error(tmp_path, capsys):
    args = pack_tree(tmp_path, {"a1": 1.0})
    args[args.index("--audio-dir") + 1] = str(tmp_path / "no-such-folder")
    with pytest.raises(SystemExit) as stopped:
        pack.main(args)
    assert stopped.value.code == 2
    assert capsys.readouterr().err.strip() == f"error: --audio-dir {tmp_path / 'no-such-folder'}: no such folder; give the " \
                                                f"folder holding the Y<YTID>.<ext> clips"
    assert not (tmp_path / "out").exists()


def test_packing_no_clip_is_an_error_after_the_report(tmp_path, capsys):
    args = pack_tree(tmp_path, {"gone1": None, "gone2": None})
    with pytest.raises(SystemExit) as stopped:
        pack.main(args)
    assert stopped.value.code == 2
    assert one_line(capsys.readouterr().err).startswith("error: no clip of the 2 CSV rows could be packed")
    rows = list(csv.reader((tmp_path / "out" / "pack_report.csv").open()))
    assert [r[0] for r in rows[1:]] == ["Ygone1", "Ygone2"] and all(r[2].startswith("missing") for r in rows[1:])


def test_truncated_clip_is_reported_not_packed(tmp_path):
    args = pack_tree(tmp_path, {"whole": 10.0, "cut": 10.0, "whole2": 4.0})
    truncate(tmp_path / "audio" / "Ycut.wav", 30000)
    pack.main(args)
    rows = list(csv.reader((tmp_path / "out" / "pack_report.csv").open()))
    assert [r[:2] for r in rows] == [["clip", "shard"], ["Ywhole", "shard_00000.h5"], ["Ycut", "shard_00001.h5"],
                                     ["Ywhole2", "shard_00002.h5"]]    # every row listed, with what was stored
    assert rows[2][2].startswith("truncated: ") and "declares 10.00 s but the file holds 0.94 s" in rows[2][2]
    index = ShardIndex.open(tmp_path / "out")
    assert index.num_clips == 2


@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_pack_into_an_unusable_out_is_one_line(tmp_path, kind, capsys):
    args = pack_tree(tmp_path, {"a1": 1.0})
    out, words = bad_out(kind, tmp_path)
    args[args.index("--out") + 1] = str(out)
    with pytest.raises(SystemExit) as stopped:
        pack.main(args)
    assert stopped.value.code == 2
    message = one_line(capsys.readouterr().err)
    assert message.startswith(f"error: --out {out}") and words in message


def test_pack_on_a_full_disk_is_one_line_and_keeps_finished_shards(tmp_path, monkeypatch, capsys):
    args = pack_tree(tmp_path, {"a1": 1.0, "a2": 2.0, "a3": 3.0})
    add = ShardWriter.add
    calls = 0

    def add_until_full(self, *a, **k):
        nonlocal calls
        calls += 1
        if calls == 2:
            raise DISK_FULL
        return add(self, *a, **k)

    monkeypatch.setattr(ShardWriter, "add", add_until_full)
    with pytest.raises(SystemExit) as stopped:
        pack.main(args)
    assert stopped.value.code == 2
    assert one_line(capsys.readouterr().err) == (f"error: cannot write into {tmp_path / 'out'}: No space left on "
                                                 f"device; the disk is full: free space there or choose another --out")
    assert not list((tmp_path / "out").glob("*.tmp"))
    with h5py.File(tmp_path / "out" / "shard_00000.h5") as shard:   # the shard finished before stays whole
        assert shard["waveform"].shape == (1, 160000)


# --- evaluate ----------------------------------------------------------------------------------------------------

def tiny_split(path: Path, clips: int = 12) -> Path:
    """A shard of random 1 s clips labelled with LABELS (every class with a positive and a negative)."""
    rng = np.random.default_rng(72139)
    target = rng.integers(0, 2, (clips, len(LABELS))).astype(np.uint8)
    target[0], target[1] = 1, 0
    with ShardWriter(path, tuple(f"/x/{n}" for n in LABELS), LABELS, 16000, 16000) as writer:
        writer.add(rng.integers(-3000, 3000, (clips, 16000)).astype(np.int16), target,
                   [f"clip{i}" for i in range(clips)])
        writer.commit()
    return path


@pytest.fixture
def eval_inputs(tmp_path) -> tuple[Path, Path]:
    path = tmp_path / "run" / "latest.pt"
    path.parent.mkdir()
    checkpoint.save(path, tiny_payload(tiny_config()))
    return path, tiny_split(tmp_path / "eval.h5")


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_evaluate_checks_its_out_before_the_work(eval_inputs, tmp_path, kind, monkeypatch, capsys):
    path, split = eval_inputs
    out, words = bad_out(kind, tmp_path)

    def no_work(*args):
        raise AssertionError("evaluate ran before --out was checked")

    monkeypatch.setattr(evaluate, "evaluate", no_work)
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--checkpoint", str(path), "--data", str(split), "--out", str(out), "--num-workers", "0"])
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out}") and words in line


@pytest.mark.slow
def test_evaluate_on_a_full_disk_prints_the_metrics_and_leaves_no_partial_csv(eval_inputs, monkeypatch, capsys):
    path, split = eval_inputs

    class FillingWriter:
        """Writes the header, then the disk is full."""

        def __init__(self, file):
            self.file = file

        def writerow(self, row):
            if row[0] != "name":
                raise DISK_FULL
            self.file.write(",".join(row) + "\n")

    monkeypatch.setattr(evaluate.csv, "writer", FillingWriter)
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--checkpoint", str(path), "--data", str(split), "--num-workers", "0"])
    captured = capsys.readouterr()
    assert stopped.value.code == 2
    csv_path = path.parent / "per_class_metrics.csv"
    assert one_line(captured.err) == f"error: cannot write {csv_path}: No space left on device; the disk is full: " \
                                     f"free space there or choose another --out"
    assert "mAP" in captured.out and "d-prime" in captured.out   # the metrics computed are not lost
    assert sorted(p.name for p in path.parent.iterdir()) == ["latest.pt"]


def edit_checkpoint(payload: dict, edit: str) -> str:
    """Apply a hand edit to `payload`; the words the error must hold."""
    if edit in ("model", "config", "label_names", "step"):
        del payload[edit]
        return f"no '{edit}' entry"
    if edit == "class count in config":
        payload["config"]["model"]["num_classes"] = len(LABELS) + 2
        return "its config and weights do not fit together"
    payload["label_names"] = payload["label_names"][:3]
    return f"3 label names for a model of {len(LABELS)} classes"


@pytest.mark.slow
@pytest.mark.parametrize("edit", ["model", "config", "label_names", "step", "class count in config",
                                  "class count in labels"])
def test_evaluate_a_hand_edited_checkpoint_is_one_line(eval_inputs, edit, capsys):
    path, split = eval_inputs
    payload = torch.load(path, weights_only=True)
    words = edit_checkpoint(payload, edit)
    torch.save(payload, path)
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--checkpoint", str(path), "--data", str(split), "--num-workers", "0"])
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {path}: ") and words in line



@pytest.mark.parametrize("edit", ["model", "config", "label_names", "class count in config", "class count in labels"])
def test_tag_with_a_hand_edited_checkpoint_is_one_line(eval_inputs, edit, tmp_path, capsys):
    path, _ = eval_inputs
    payload = torch.load(path, weights_only=True)
    words = edit_checkpoint(payload, edit)
    edited = tmp_path / "edited.pt"
    torch.save(payload, edited)
    clip = tmp_path / "clip.wav"
    soundfile.write(clip, np.random.default_rng(92477).standard_normal(16000).astype(np.float32) * 0.1, 16000)
    with pytest.raises(SystemExit) as stopped:
        tag.main([str(clip), "--checkpoint", str(edited)])
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {edited}: ") and words in line


# --- training runs (in this process, on the tiny built-in set of test_train_run; builtin_dir and full_run are
# conftest.py's session fixtures) --------------------------------------------------------------------------------

def losses(out: Path) -> dict[int, float]:
    return {r["step"]: r["loss"] for r in records(out, "train")}


def assert_every_step_once(out: Path) -> None:
    keys = [(r["kind"], r["step"]) for r in map(json.loads, (out / "metrics.jsonl").read_text().splitlines())]
    assert len(keys) == len(set(keys)), [k for k in keys if keys.count(k) > 1]


def crash_at(monkeypatch, step: int, action=None) -> None:
    """Make the loss of step `step` run `action` (a signal, a damaged file) or, without one, raise (a crash)."""
    clip_bce, calls = train.step.clip_bce, 0

    def loss(prob, target):
        nonlocal calls
        calls += 1
        if calls == step:
            if action is None:
                raise RuntimeError("simulated crash")
            action()
        return clip_bce(prob, target)

    monkeypatch.setattr(train.step, "clip_bce", loss)


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["file", "read-only"])
def test_run_into_an_unusable_out_is_one_line(tmp_path, builtin_dir, kind, capsys):
    out, words = bad_out(kind, tmp_path)
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(out, builtin_dir))
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: --out {out}") and words in line


def test_run_with_an_unwritable_builtin_dir_is_one_line(tmp_path, capsys):
    cache = read_only_folder(tmp_path) / "fastsca-cache"
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(tmp_path / "run", cache))
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: cannot write {cache}") and "choose a folder you can write to" in line
    assert not (tmp_path / "run").exists()


def test_a_second_run_into_a_held_out_is_refused(tmp_path, builtin_dir, capsys):
    out = tmp_path / "run"
    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from train.data.out_folder import RunLock; lock = RunLock(Path(sys.argv[1])).__enter__(); "
                               "print('held', flush=True); time.sleep(120)", str(out)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        with pytest.raises(SystemExit) as stopped:
            train.run.main(tiny_args(out, builtin_dir))
        assert stopped.value.code == 2
        assert one_line(capsys.readouterr().err) == (
            f"error: {out} is in use by another training run (PID {holder.pid}); wait for it to end, stop it, or "
            f"choose another --out")
        assert not (out / "metrics.jsonl").exists()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(out):   # the kernel released the killed holder's lock
        pass


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_stops_with_128_plus_its_number_after_a_checkpoint(tmp_path, builtin_dir, signum, monkeypatch,
                                                                      capsys):
    out = tmp_path / "run"
    step = int(np.random.default_rng(44871).integers(3, 8))
    crash_at(monkeypatch, step, lambda: os.kill(os.getpid(), signum))
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(out, builtin_dir))
    assert stopped.value.code == 128 + signum
    assert f"stopped by {signal.Signals(signum).name} after step {step}" in capsys.readouterr().out
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == step


@pytest.mark.slow
def test_checkpoints_come_on_a_time_cadence(tmp_path, builtin_dir, monkeypatch):
    out = tmp_path / "run"
    crash_at(monkeypatch, 7)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.run.main(tiny_args(out, builtin_dir, 40, "--eval-every", "1000", "--checkpoint-minutes", "1e-9"))
    # no evaluation came, yet the crash during step 7 loses only that step
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 6
    assert not list(out.glob("*.tmp"))


@pytest.mark.slow
def test_crash_then_resume_keeps_every_step_once(tmp_path, builtin_dir, full_run, monkeypatch):
    out = tmp_path / "run"
    crash_at(monkeypatch, 15)
    with pytest.raises(RuntimeError, match="simulated crash"):
        train.run.main(tiny_args(out, builtin_dir, 40, "--eval-every", "10"))
    monkeypatch.undo()
    assert max(losses(out)) == 14 and torch.load(out / "latest.pt", weights_only=True)["step"] == 10
    before = (out / "metrics.jsonl").read_text().splitlines()
    train.run.main(tiny_args(out, builtin_dir, 40, "--eval-every", "10", "--resume"))
    assert_every_step_once(out)
    lines = (out / "metrics.jsonl").read_text().splitlines()
    kept = [line for line in before if json.loads(line)["step"] <= 10]
    assert lines[:len(kept)] == kept                                   # nothing up to the checkpoint is lost
    marker = json.loads(lines[len(kept)])
    assert marker["kind"] == "resume" and marker["step"] == 10 and marker["dropped_records"] == 4
    expected = {s: v for s, v in losses(full_run).items() if s > 11}   # step 11 is the resumed first_step
    assert {s: v for s, v in losses(out).items() if s > 10} == expected


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory, builtin_dir) -> Path:
    """A 40-step run stopped by SIGTERM at step 5."""
    out = tmp_path_factory.mktemp("stopped") / "run"
    patch = pytest.MonkeyPatch()
    crash_at(patch, 5, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit):
        train.run.main(tiny_args(out, builtin_dir))
    patch.undo()
    return out


@pytest.mark.parametrize("flags, words", [
    (("--steps", "80"), "run.steps 40 vs 80, checkpoint vs this run); the lr at step 5 would jump from"),
    (("--lr", "0.01"), "optim.lr "),
    (("--warmup-steps", "9"), "optim.warmup_steps 5 vs 9"),
])
def test_resume_with_another_schedule_is_refused(stopped_run, tmp_path, builtin_dir, flags, words, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    saved = (out / "latest.pt").read_bytes()
    with pytest.raises(SystemExit) as stopped:
        train.run.main([*tiny_args(out, builtin_dir, 40, "--resume"), *flags])
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert "was started with another learning-rate schedule" in line and words in line
    assert (out / "latest.pt").read_bytes() == saved


@pytest.mark.parametrize("edit", ["optimizer", "config", "rng", "best_map", "weights of another class count",
                                  "two optimiser groups"])
def test_resume_from_a_hand_edited_checkpoint_is_one_line(stopped_run, tmp_path, builtin_dir, edit, capsys):
    out = tmp_path / "run"
    shutil.copytree(stopped_run, out)
    payload = torch.load(out / "latest.pt", weights_only=True)
    if edit == "two optimiser groups":   # as written before the global branch's last conv had its own lr
        groups = payload["optimizer"]["param_groups"]
        for kept, scaled in ((groups[0], groups[2]), (groups[1], groups[3])):
            kept["params"] = kept["params"] + scaled["params"]
        payload["optimizer"]["param_groups"] = groups[:2]
        words = "its optimiser has 2 parameter groups, this run's 4: it was written before"
    elif edit == "weights of another class count":
        last = [k for k, v in payload["model"].items() if v.shape[:1] == (len(BUILTIN.class_names),)][-1]
        payload["model"][last] = payload["model"][last][:7]
        words = "its model state does not fit this run's model"
    else:
        del payload[edit]
        words = f"no {edit} entry"
    torch.save(payload, out / "latest.pt")
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(out, builtin_dir, 40, "--resume"))
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {out / 'latest.pt'}") and words in line


@pytest.mark.slow
def test_disk_full_while_checkpointing_is_one_line_and_keeps_the_last_checkpoint(tmp_path, builtin_dir,
                                                                                   monkeypatch, capsys):
    out = tmp_path / "run"
    save, calls = torch.save, 0

    def save_until_full(obj, path):
        nonlocal calls
        calls += 1
        if calls == 3:   # the checkpoints before step 1 and at step 5 are written; the one at step 10 fills the disk
            Path(path).write_bytes(b"partial")   # the disk fills up half way through the file
            raise DISK_FULL
        save(obj, path)

    monkeypatch.setattr(checkpoint.torch, "save", save_until_full)
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(out, builtin_dir, 40, "--eval-every", "5"))
    monkeypatch.undo()
    assert stopped.value.code == 2
    assert one_line(capsys.readouterr().err) == (
        f"error: cannot write {out / 'latest.pt'}: No space left on device; the disk is full: free space there or "
        f"choose another --out (the previous latest.pt, if any, is kept)")
    assert not list(out.glob("*.tmp"))
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 5


@pytest.mark.slow
def test_a_shard_truncated_during_training_stops_the_run(tmp_path, builtin_dir, monkeypatch, capsys):
    data = tmp_path / "data"
    data.mkdir()
    for split in ("train", "eval"):
        shutil.copy(next(builtin_dir.glob(f"synth-*/{split}.h5")), data / f"{split}.h5")
    out = tmp_path / "run"
    crash_at(monkeypatch, 4, lambda: truncate(data / "train.h5", (data / "train.h5").stat().st_size // 2))
    args = tiny_args(out, builtin_dir, 40, "--data", str(data / "train.h5"), "--eval-data", str(data / "eval.h5"),
                     "--checkpoint-minutes", "1e-9")
    with pytest.raises(SystemExit) as stopped:
        train.run.main(args)
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {data / 'train.h5'}: the file changed while in use (")
    step = torch.load(out / "latest.pt", weights_only=True)["step"]   # the checkpoint before the fault is kept
    assert 3 <= step < 40 and max(losses(out)) < 40


def test_a_damaged_builtin_cache_is_regenerated(tmp_path, capsys):
    config = SynthConfig(clip_seconds=1.0, event_seconds=(0.1, 0.4), n_train=40, n_eval=9)
    train_path, eval_path = ensure_builtin(tmp_path, config, workers=1)
    index = ShardIndex.open(train_path)
    expected = [index.read(i)[0] for i in (0, 39)]
    index.close()
    truncate(train_path, train_path.stat().st_size // 3)
    capsys.readouterr()
    assert ensure_builtin(tmp_path, config, workers=1) == (train_path, eval_path)
    assert f"the cached built-in set file {train_path} is damaged; regenerating it" in capsys.readouterr().err
    index = ShardIndex.open(train_path)
    np.testing.assert_array_equal([index.read(i)[0] for i in (0, 39)], expected)
    index.close()


# --- kill -9 (subprocesses) -------------------------------------------------------------------------------------

def start_run(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "train.run", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def wait_for_step(process: subprocess.Popen, out: Path, step: int, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    while not ((out / "metrics.jsonl").exists() and any(r["step"] >= step for r in records(out, "train"))):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_then_resume_reproduces_the_uninterrupted_run(tmp_path, builtin_dir, full_run):
    out = tmp_path / "run"
    process = start_run(tiny_args(out, builtin_dir, 40, "--checkpoint-minutes", "0.002"))
    wait_for_step(process, out, 8)
    process.kill()
    process.wait()
    step = torch.load(out / "latest.pt", weights_only=True)["step"]
    assert 1 <= step < 40
    train.run.main(tiny_args(out, builtin_dir, 40, "--resume"))
    assert_every_step_once(out)
    expected = {s: v for s, v in losses(full_run).items() if s > step + 1}
    assert {s: v for s, v in losses(out).items() if s > step + 1} == expected
    assert records(out, "test")[-1]["mAP"] == records(full_run, "test")[-1]["mAP"]


@pytest.mark.slow
def test_kill_9_of_a_run_ends_its_workers_and_frees_its_out(tmp_path, builtin_dir, capsys):
    out = tmp_path / "run"
    process = start_run(tiny_args(out, builtin_dir, 100000))
    try:
        wait_for_step(process, out, 2)
        # the second run in this process: a subprocess would spend seconds importing torch to print one line
        with pytest.raises(SystemExit) as second:
            train.run.main(tiny_args(out, builtin_dir, 100000))
        assert second.value.code == 2
        assert one_line(capsys.readouterr().err) == (f"error: {out} is in use by another training run (PID "
                                                     f"{process.pid}); wait for it to end, stop it, or choose "
                                                     f"another --out")
        workers = descendants(process.pid)
        assert workers   # DALI's reader workers
    finally:
        process.kill()
        process.wait()
    assert_gone_within(workers, 5)
    with RunLock(out):
        pass


@pytest.mark.slow
def test_kill_9_of_pack_ends_its_workers(tmp_path):
    args = pack_tree(tmp_path, {"seed": None})
    source = tmp_path / "source.flac"
    soundfile.write(source, 0.1 * np.random.default_rng(38737).standard_normal(441000), 44100)
    ytids = [f"clip{i:05d}" for i in range(4000)]   # many symlinks to one 10 s 44.1 kHz file: minutes of decoding
    for ytid in ytids:
        (tmp_path / "audio" / f"Y{ytid}.flac").symlink_to(source)
    rows = [f'{ytid}, 0.000, 10.000, "/m/a"' for ytid in ytids]
    (tmp_path / "a.csv").write_text("# YTID, start_seconds, end_seconds, positive_labels\n" + "\n".join(rows) + "\n")
    args[args.index("--workers") + 1] = "2"
    args[args.index("--shard-size") + 1] = "1000"
    log = tmp_path / "stderr.txt"
    with open(log, "w") as stderr:
        process = subprocess.Popen([sys.executable, "-m", "train.pack", *args], stdout=subprocess.DEVNULL,
                                   stderr=stderr)
    try:
        deadline = time.monotonic() + 120
        # clips decoded: both workers are up and working (a worker killed while it still imports also
        # ends, but only once its imports are done)
        while not re.search(r"packing:.*\| *([1-9]\d*)/4000", log.read_text()):
            assert process.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.1)
        workers = descendants(process.pid)
        assert len(workers) >= 2
    finally:
        process.kill()
        process.wait()
    assert_gone_within(workers, 5)
