"""End to end on a tiny built-in set: train, checkpoint, stop on SIGTERM, resume exactly, evaluate, tag.

1 s clips, narrow blocks and a few dozen steps keep each run to seconds. Runs go through
`train.run.main` in this process (a subprocess where the test needs one: an external SIGTERM). The
uninterrupted reference run and the built-in set are conftest.py's session fixtures `full_run` and `builtin_dir`.
"""
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
import soxr
import torch

import train.run
import train.step
from fastsca import tag
from fastsca.events import stored_event_config
from train import evaluate
from train.data.synth import SynthConfig, make_clip
from train.trainer import progress
from train.trainer.trainer import warmup_warning

CHANNELS = "8,16,32,64,64,128,128"
BUILTIN = SynthConfig(clip_seconds=1.0, event_seconds=(0.1, 0.4), n_train=256, n_eval=101)


def tiny_args(out: Path, builtin_dir: Path, steps: int = 40, *extra: str) -> list[str]:
    """Flags of a run of `steps` steps on the tiny built-in set (BUILTIN) with per-step loss logging."""
    return ["--profile", "cpu", "--channels", CHANNELS, "--clip-seconds", "1", "--builtin-train", "256",
            "--builtin-eval", "101", "--builtin-dir", str(builtin_dir), "--batch-size", "16", "--steps", str(steps),
            "--warmup-steps", "5", "--eval-every", "20", "--log-every", "1", "--num-workers", "1",
            "--out", str(out), *extra]


def records(out: Path, kind: str) -> list[dict]:
    """The metrics.jsonl records of one kind."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["kind"] == kind]


def test_run_learns_and_writes_checkpoints(full_run):
    evals = records(full_run, "val")
    assert [e["step"] for e in evals] == [20, 40]
    # chance mAP is the positive rate: 2 events of 10 classes on average, 0.2
    assert evals[-1]["mAP"] > 0.5
    assert evals[-1]["mAUC"] > 0.7 and evals[-1]["d_prime"] > 0.7
    assert (full_run / "latest.pt").is_file() and (full_run / "best.pt").is_file()
    assert not list(full_run.glob("*.tmp"))
    latest = torch.load(full_run / "latest.pt", weights_only=True)
    assert latest["step"] == 40 and latest["best_map"] == pytest.approx(max(e["mAP"] for e in evals))
    best = max(evals, key=lambda e: e["mAP"])
    assert latest["best_step"] == best["step"] == torch.load(full_run / "best.pt", weights_only=True)["step"]
    assert latest["config"]["model"]["pools"] == ((2, 2), (2, 2), (1, 2), (1, 2), (1, 1), (1, 1), (1, 1))
    assert latest["label_names"] == list(BUILTIN.class_names)
    assert set(latest["config"]) == {"model", "log_mel", "data", "optim", "run", "options", "events"}
    for key in ("model", "optimizer", "scheduler", "loader", "rng", "epoch"):
        assert key in latest
    losses = [r["loss"] for r in records(full_run, "train")]
    assert len(losses) == 39 and np.mean(losses[-5:]) < np.mean(losses[:5])   # step 1 is logged as first_step


def test_validation_split_is_held_out_of_training(full_run, capsys):
    # 256 training clips: 26 held out (10 %), the other 230 trained on; printed at the start of the run
    [val] = {r["clips"] for r in records(full_run, "val")}
    assert val == 26


@pytest.mark.slow
def test_patience_stops_early_and_still_reports_the_test_split(tmp_path, builtin_dir, capsys):
    out = tmp_path / "patient"
    train.run.main(tiny_args(out, builtin_dir, 200, "--eval-every", "5", "--patience", "1", "--lr", "1e-9",
                             "--warmup-steps", "0"))
    vals = records(out, "val")
    # a learning rate of 1e-9 never beats the first evaluation by much: it stops at the first that is no better
    assert len(vals) < 40 and vals[-1]["mAP"] <= max(v["mAP"] for v in vals[:-1])
    [test] = records(out, "test")
    assert test["step"] == vals[-1]["step"] and "test split: mAP" in capsys.readouterr().out


def test_run_scores_localisation_at_each_evaluation(full_run):
    # the validation clips, held out of the built-in training split, carry strong labels: every evaluation scores them
    for record in records(full_run, "val"):
        assert 0 <= record["event_f1"] <= 1 and 0 <= record["psds1"] <= 1 and record["localisation_seconds"] > 0


@pytest.mark.slow
def test_sigterm_mid_run_then_resume_repeats_the_same_losses(tmp_path, builtin_dir, full_run, monkeypatch, capsys):
    out = tmp_path / "interrupted"
    calls = 0

    def loss_then_signal(prob, target):
        nonlocal calls
        calls += 1
        if calls == 13:   # SIGTERM arrives during step 13: the step finishes, then latest.pt is written
            os.kill(os.getpid(), signal.SIGTERM)
        return clip_bce(prob, target)

    clip_bce = train.step.clip_bce
    monkeypatch.setattr(train.step, "clip_bce", loss_then_signal)
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(out, builtin_dir))
    monkeypatch.undo()
    assert stopped.value.code == 128 + signal.SIGTERM
    printed = capsys.readouterr().out
    assert "stopped by SIGTERM after step 13" in printed
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 13
    assert not (out / "best.pt").exists() and "keeps the default event settings" not in printed   # no evaluation yet

    train.run.main(tiny_args(out, builtin_dir, 40, "--resume"))
    resumed = {r["step"]: r["loss"] for r in records(out, "train") if r["step"] > 13}
    expected = {r["step"]: r["loss"] for r in records(full_run, "train") if r["step"] > 14}
    # the resumed process's first step (14) is logged as first_step, without its loss
    assert sorted(resumed) == list(range(15, 41))
    assert resumed == expected
    assert records(out, "val")[-1]["mAP"] == records(full_run, "val")[-1]["mAP"]
    [resumed_test], [full_test] = records(out, "test"), records(full_run, "test")
    timings = {"time": 0, "localisation_seconds": 0}   # wall-clock figures; every score must be equal
    assert {**resumed_test, **timings} == {**full_test, **timings}


def test_a_run_stopped_after_an_evaluation_says_best_pt_has_no_chosen_event_settings_yet(tmp_path, builtin_dir,
                                                                                         monkeypatch, capsys):
    # the validation clips carry strong labels: their event settings are chosen once, at the end of the run, which a
    # run stopped at step 13 (after its evaluation at step 10) does not reach: best.pt keeps the defaults, and the
    # way to choose them for an evaluation now is printed
    out = tmp_path / "stopped"
    calls = 0

    def loss_then_signal(prob, target):
        nonlocal calls
        calls += 1
        if calls == 13:
            os.kill(os.getpid(), signal.SIGTERM)
        return clip_bce(prob, target)

    clip_bce = train.step.clip_bce
    monkeypatch.setattr(train.step, "clip_bce", loss_then_signal)
    with pytest.raises(SystemExit):
        train.run.main(tiny_args(out, builtin_dir, 40, "--eval-every", "10"))
    printed = capsys.readouterr().out
    assert records(out, "val") and not stored_event_config(
        torch.load(out / "best.pt", weights_only=True)["config"]).class_thresholds
    assert (f"{out / 'best.pt'} keeps the default event settings until the run finishes" in printed
            and f"python -m train.evaluate --checkpoint {out / 'best.pt'} --post-processing validation" in printed)


@pytest.mark.slow
def test_external_sigterm_writes_a_checkpoint(tmp_path, builtin_dir):
    out = tmp_path / "killed"
    process = subprocess.Popen([sys.executable, "-m", "train.run", *tiny_args(out, builtin_dir, 100000)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not ((out / "metrics.jsonl").exists() and records(out, "train")):
        assert process.poll() is None and time.monotonic() < deadline, process.communicate()
        time.sleep(0.2)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM, stderr
    step = torch.load(out / "latest.pt", weights_only=True)["step"]
    assert 2 <= step < 100000
    assert f"stopped by SIGTERM after step {step}" in stdout


@pytest.mark.slow
def test_evaluate_cli_matches_the_run(full_run, builtin_dir, tmp_path, capsys):
    # without --data: the run's test split, which the run evaluated once, at the end, with best.pt
    evaluate.main(["--checkpoint", str(full_run / "best.pt"), "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert f"on {next(builtin_dir.glob('synth-*/eval.h5'))}: 101 clips, 10 classes" in printed
    [final] = records(full_run, "test")
    assert final["clips"] == 101 and final["best_step"] in (20, 40)
    assert f"mAP               {final['mAP']:.4f}" in printed
    rows = (tmp_path / "per_class_metrics.csv").read_text().splitlines()
    assert rows[0] == "name,AP,AUC,positives" and len(rows) == 1 + len(BUILTIN.class_names)


def test_tag_a_clip_of_the_eval_split(full_run, tmp_path, capsys):
    # eval clip 0 of the built-in set, written at 44.1 kHz stereo so loading resamples and downmixes
    waveform, target, _ = make_clip(BUILTIN, 1, 0)
    path = tmp_path / "clip.flac"
    mono = waveform.astype(np.float32) / 32768
    resampled = soxr.resample(mono, 16000, 44100)
    soundfile.write(path, np.stack([resampled, resampled], axis=1), 44100)
    tag.main([str(path), "--checkpoint", str(full_run / "best.pt"), "--top-k", str(int(target.sum())), "--json"])
    result = json.loads(capsys.readouterr().out)
    labels = {entry["label"] for entry in result[0]["labels"]}
    assert labels & {BUILTIN.class_names[k] for k in np.flatnonzero(target)}


@pytest.mark.slow
def test_missing_data_is_one_line_exit_2(tmp_path):
    # a subprocess, to see exactly what a user sees: the profile line on stdout, one error line, no traceback
    result = subprocess.run([sys.executable, "-m", "train.run", "--out", str(tmp_path / "out"), "--data",
                             "/nonexistent/train.h5", "--eval-data", "/nonexistent/eval.h5"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == ["error: /nonexistent/train.h5: no such shard file or folder"]


def test_half_given_data_is_one_line_exit_2(tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.run.main(["--out", str(tmp_path / "out"), "--data", "/nonexistent/train.h5"])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.startswith("error: give both --data and --eval-data, or neither")


def test_resume_with_another_preset_is_one_line_exit_2(full_run, builtin_dir, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.run.main(tiny_args(full_run, builtin_dir, 40, "--resume", "--preset", "at-sca-1"))
    assert exit_info.value.code == 2
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1
    assert "holds model 'at-sca-3' but this run builds 'at-sca-1'" in error
    assert "attention_depth 3 vs 1" in error and "--out" in error


def test_new_run_into_a_used_out_folder_is_refused(full_run, builtin_dir, capsys):
    with pytest.raises(SystemExit):
        train.run.main(tiny_args(full_run, builtin_dir))
    assert "latest.pt exists; pass --resume" in capsys.readouterr().err


@pytest.mark.slow
def test_compiled_fused_run_learns_like_the_reference_and_says_so(full_run, builtin_dir, tmp_path, capsys):
    # Inductor on the CPU compiles forward and backward around the fused attention ops (their PyTorch passes here)
    out = tmp_path / "fused"
    train.run.main(tiny_args(out, builtin_dir, 40, "--fused-attention", "--compile"))
    printed = capsys.readouterr().out
    assert "fused attention True" in printed
    assert "compile inductor (mode default), contiguous memory format" in printed   # no CUDA: the CPU's defaults
    evals = records(out, "val")
    assert [e["step"] for e in evals] == [20, 40] and evals[-1]["mAP"] > 0.5
    assert (out / "latest.pt").is_file() and (out / "best.pt").is_file()
    latest = torch.load(out / "latest.pt", weights_only=True)
    options = latest["config"]["options"]
    assert options["fused_attention"] is True and options["compile_mode"] == "default"
    # the same model, data and seed as the uncompiled reference run: the first losses agree
    losses, reference = ([r["loss"] for r in records(run, "train")][:5] for run in (out, full_run))
    np.testing.assert_allclose(losses, reference, rtol=1e-3)
    # a fused checkpoint evaluates like any other
    evaluate.main(["--checkpoint", str(out / "best.pt"), "--out", str(tmp_path / "eval")])
    [test] = records(out, "test")
    assert f"mAP               {test['mAP']:.4f}" in capsys.readouterr().out


@pytest.mark.slow
def test_resume_with_fused_attention_is_the_same_model(full_run, builtin_dir, tmp_path, capsys):
    # fused attention is how the model runs, not what it is: the cpu profile's unfused checkpoint resumes with it
    out = tmp_path / "resumed"
    out.mkdir()
    for name in ("latest.pt", "best.pt", "metrics.jsonl"):
        shutil.copyfile(full_run / name, out / name)
    train.run.main(tiny_args(out, builtin_dir, 40, "--resume", "--fused-attention"))
    printed = capsys.readouterr().out
    assert f"resumed from {out / 'latest.pt'} at step 40" in printed and "fused attention True" in printed
    unfused, fused = records(out, "test")   # the copied run's test record, then the resumed run's, of one best.pt
    assert fused["mAP"] == pytest.approx(unfused["mAP"], abs=1e-4)


@pytest.mark.slow
def test_compile_mode_reaches_torch_compile(tmp_path, builtin_dir, monkeypatch, capsys):
    modes = []

    def record_mode(model, backend, mode):
        modes.append((backend, mode))
        return model

    monkeypatch.setattr(torch, "compile", record_mode)
    train.run.main(tiny_args(tmp_path / "out", builtin_dir, 2, "--eval-every", "2", "--compile", "--compile-mode",
                             "max-autotune-no-cudagraphs"))
    assert modes == [("inductor", "max-autotune-no-cudagraphs")]
    printed = capsys.readouterr()
    assert "compile inductor (mode max-autotune-no-cudagraphs)" in printed.out
    # the first step shows that it is compiling, with the seconds it has taken
    assert re.search(r"compiling the model \(first step\): 00:\d\d", printed.err)
    # 5 warm-up steps (tiny_args) in a 2-step run: the lr ends at 2/5 of its peak
    assert ("warning: the warm-up (5 steps) is longer than the run (2 steps), so the learning rate never reaches its "
            "peak --lr 0.003 (it ends at 0.0012); give fewer --warmup-steps or more --steps") in printed.err


def test_compile_status_counts_the_seconds_until_closed(monkeypatch, capsys):
    monkeypatch.setattr(progress, "COMPILE_STATUS_SECONDS", 0.01)
    redrawn = threading.Event()
    status = progress.CompileStatus(enabled=True)
    refresh = status.bar.refresh
    monkeypatch.setattr(status.bar, "refresh", lambda: (refresh(), redrawn.set()))
    assert redrawn.wait(timeout=30)   # redrawn from its thread while the caller is busy
    status.close()
    assert not status.thread.is_alive()
    lines = [line for line in re.split(r"[\r\n]", capsys.readouterr().err) if line.strip()]
    assert len(lines) >= 3 and all(re.fullmatch(r"compiling the model \(first step\): 00:\d\d", line.strip())
                                   for line in lines)   # drawn on creation, redrawn, and closed


def test_no_warning_where_the_warm_up_ends_within_the_run():
    from test_checkpoint import tiny_config
    config = tiny_config()   # 2 warm-up steps
    assert warmup_warning(config, 2) is None and warmup_warning(config, 3) is None   # the peak lr at the last step
    assert warmup_warning(config, 1).startswith("warning: the warm-up (2 steps) is longer than the run (1 step)")


def test_run_writes_its_model_folder_which_tags_as_best_pt(full_run):
    from fastsca import Tagger
    folder = full_run / "pretrained"
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "labels.csv", "model.safetensors"]
    config = json.loads((folder / "config.json").read_text())
    assert config["label_mids"] == [f"/synth/{name}" for name in BUILTIN.class_names]
    test = [json.loads(line) for line in (full_run / "metrics.jsonl").read_text().splitlines()][-1]
    assert test["kind"] == "test" and f"| mAP | {test['mAP']:.4f} |" in (folder / "README.md").read_text()
    waveform = np.random.default_rng(87644).standard_normal(23_456).astype(np.float32) * 0.1
    from_folder = Tagger.from_pretrained(folder)(waveform, 16000)
    from_checkpoint = Tagger.from_pretrained(full_run / "best.pt")(waveform, 16000)
    assert from_folder.label_names == from_checkpoint.label_names == BUILTIN.class_names
    np.testing.assert_array_equal(from_folder.clip, from_checkpoint.clip)
