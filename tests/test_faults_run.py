"""The `train.run` family at its limits: every numeric option at 0, negative, NaN, infinite and huge; the same
data and output folder under other spellings on --resume (and other data under the same name); signals at odd
moments; a file that is not a checkpoint; a run that diverges. Each case is handled or one clear line.
"""
import os
import shutil
import signal
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import train.run
import train.step
import train.trainer.flags
from fastsca import tag
from train import checkpoint, evaluate
from train.data import holdout
from train.cli import check_numbers
from train.run import parse_args
from train.trainer.flags import NUMBER_LIMITS

from test_faults import crash_at, one_line
from test_train_run import records, tiny_args

EXTREMES = {"zero": "0", "negative": "-3", "nan": "nan", "inf": "inf", "huge": "1e300", "huge int": str(10**30)}
# (option, extreme) pairs that are valid settings, not faults (0 of a count that may be 0, a huge float bound)
ACCEPTED = {("patience", "zero"), ("warmup_steps", "zero"), ("mixup_alpha", "zero"), ("weight_decay", "zero"),
            ("grad_clip", "zero"), ("num_workers", "zero"), ("seed", "zero"), ("fold", "zero"),
            ("freeze_blocks", "zero"), ("backbone_lr_scale", "zero"), ("mixup_alpha", "huge"),
            ("grad_clip", "huge"), ("backbone_lr_scale", "huge"), ("checkpoint_minutes", "huge"),
            ("warmup_clips", "zero"), ("strong_loss_weight", "zero")}
INTEGER_OPTIONS = {dest for dest in NUMBER_LIMITS
                   if isinstance(getattr(parse_args([f"--{dest.replace('_', '-')}", "1"]), dest), int)}


def cases() -> list[tuple[str, str]]:
    """Every numeric option with every extreme of its type (an int option takes no NaN, inf or 1e300; a float
    option reads 10**30 as 1e30, a huge float like 1e300)."""
    return [(dest, extreme) for dest in NUMBER_LIMITS for extreme in EXTREMES
            if extreme not in (("nan", "inf", "huge") if dest in INTEGER_OPTIONS else ("huge int",))]


@pytest.mark.parametrize("dest, extreme", cases())
def test_every_numeric_option_at_its_extremes(dest, extreme, tmp_path, monkeypatch, capsys):
    option, value = f"--{dest.replace('_', '-')}", EXTREMES[extreme]
    args = ["--profile", "cpu", "--out", str(tmp_path / "run"), "--builtin-dir", str(tmp_path / "cache"),
            f"{option}={value}"]
    if (dest, extreme) in ACCEPTED:
        check_numbers(parse_args(args), NUMBER_LIMITS)   # accepted; test_accepted_extremes_train trains with them
        return
    def no_data(*_):
        raise AssertionError(f"{option} {value} was not refused before the data")

    monkeypatch.setattr(train.trainer.flags, "_data_paths", no_data)
    with pytest.raises(SystemExit) as stopped:
        train.run.main(args)
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {option}") or line.startswith("error: --lr ") and dest in ("lr", "weight_decay")
    assert not (tmp_path / "cache").exists() and not (tmp_path / "run").exists()   # refused before any work


@pytest.mark.slow
@pytest.mark.parametrize("flags", [
    ("--patience", "0", "--warmup-steps", "0", "--weight-decay", "0", "--grad-clip", "0", "--num-workers", "0",
     "--seed", "0", "--freeze-blocks", "0", "--backbone-lr-scale", "0", "--mixup-alpha", "0",
     "--strong-loss-weight", "0"),
    ("--mixup-alpha", "1e300", "--grad-clip", "1e300", "--checkpoint-minutes", "1e300", "--steps", str(2**62),
     "--eval-every", str(2**62), "--log-every", str(2**62), "--patience", str(2**62),
     "--validation-max-clips", str(2**62), "--seed", str(2**32 - 1)),
])
def test_accepted_extremes_train(flags, tmp_path, builtin_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    crash_at(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit) as stopped:
        train.run.main([*tiny_args(out, builtin_dir, 40), *flags])
    assert stopped.value.code == 128 + signal.SIGTERM, capsys.readouterr().err
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 3


@pytest.mark.slow
@pytest.mark.parametrize("flags", [("--batch-size", "0"), ("--batch-size", str(10**30)),
                                   ("--num-workers", "-1"), ("--num-workers", str(10**6))])
def test_evaluate_numeric_options_are_one_line(flags, full_run, capsys):
    with pytest.raises(SystemExit) as stopped:
        evaluate.main(["--checkpoint", str(full_run / "best.pt"), *flags])
    assert stopped.value.code == 2
    assert one_line(capsys.readouterr().err).startswith(f"error: {flags[0]} must be ")


@pytest.mark.slow
def test_divergence_stops_naming_the_step_and_keeps_the_last_good_checkpoint(tmp_path, builtin_dir, monkeypatch,
                                                                             capsys):
    out = tmp_path / "run"
    step = int(np.random.default_rng(11508).integers(2, 12))
    clip_bce, calls = train.step.clip_bce, 0

    def loss_turning_nan(prob, target):
        nonlocal calls
        calls += 1
        loss = clip_bce(prob, target)
        return loss * float("nan") if calls >= step else loss

    monkeypatch.setattr(train.step, "clip_bce", loss_turning_nan)
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(out, builtin_dir, 40, "--eval-every", "20", "--log-every", "3"))
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: training diverged: the loss at step {step} was not finite; the likely cause is "
                           f"a learning rate too high (lr ")
    assert (f"{out / 'latest.pt'} holds the last good state (step 0); start a new run with a lower --lr "
            f"(e.g. 0.0003)") in line
    saved = torch.load(out / "latest.pt", weights_only=True)   # written before the first step, never after
    assert saved["step"] == 0 and all(torch.isfinite(v).all() for v in saved["model"].values() if v.is_floating_point())


@pytest.mark.slow
@pytest.mark.parametrize("spelling", ["relative", "dot", "absolute", "symlink"])
def test_resume_under_another_spelling_of_out_and_data(spelling, full_run, builtin_dir, tmp_path, monkeypatch,
                                                       capsys):
    run = tmp_path / "run"
    shutil.copytree(full_run, run)
    (tmp_path / "link").symlink_to(run)
    (tmp_path / "cache-link").symlink_to(builtin_dir)
    monkeypatch.chdir(tmp_path)
    relative = os.path.relpath(builtin_dir)
    out, cache = {"relative": ("run", relative), "dot": ("./run", "./" + relative),
                  "absolute": (str(run), str(builtin_dir)), "symlink": ("link", "cache-link")}[spelling]
    train.run.main(tiny_args(Path(out), Path(cache), 40, "--resume"))   # finished: only the test split again
    assert f"resumed from {Path(out) / 'latest.pt'} at step 40" in capsys.readouterr().out
    assert records(run, "test")[-1]["mAP"] == records(full_run, "test")[-1]["mAP"]


@pytest.mark.slow
def test_other_data_under_the_same_name_is_refused_and_moved_data_accepted(full_run, builtin_dir, tmp_path,
                                                                           monkeypatch, capsys):
    train_h5, eval_h5 = (next(builtin_dir.glob(f"synth-*/{split}.h5")) for split in ("train", "eval"))
    first, second = tmp_path / "a", tmp_path / "b"
    for folder in (first, second):
        (folder / "data").mkdir(parents=True)
        shutil.copy(eval_h5, folder / "data" / "eval.h5")
    shutil.copy(train_h5, first / "data" / "train.h5")
    shutil.copy(eval_h5, second / "data" / "train.h5")   # other clips under the same relative name
    data = ["--data", "data/train.h5", "--eval-data", "data/eval.h5"]
    monkeypatch.chdir(first)
    run = tmp_path / "run"
    crash_at(monkeypatch, 3, lambda: os.kill(os.getpid(), signal.SIGTERM))
    with pytest.raises(SystemExit):
        train.run.main([*tiny_args(run, builtin_dir, 6), *data])
    monkeypatch.undo()
    monkeypatch.chdir(second)
    with pytest.raises(SystemExit) as stopped:
        train.run.main([*tiny_args(run, builtin_dir, 6, "--resume"), *data])
    assert stopped.value.code == 2
    line = one_line(capsys.readouterr().err)
    assert line.startswith(f"error: {run / 'latest.pt'} was trained on other data: the train split data/train.h5 "
                           f"holds 101 clips where the checkpoint's had 256")
    shutil.move(first / "data", tmp_path / "moved")   # the same data, moved: accepted under its new path
    train.run.main([*tiny_args(run, builtin_dir, 6, "--resume"), "--data", str(tmp_path / "moved" / "train.h5"),
                    "--eval-data", str(tmp_path / "moved" / "eval.h5")])
    assert records(run, "test")


@pytest.mark.slow
def test_sigterm_before_the_first_step_writes_a_resumable_checkpoint(tmp_path, builtin_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    split_run = holdout.split_run

    def split_then_signal(*args, **kwargs):
        os.kill(os.getpid(), signal.SIGTERM)   # during start-up: the data is being opened
        return split_run(*args, **kwargs)

    monkeypatch.setattr(holdout, "split_run", split_then_signal)
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(out, builtin_dir, 4))
    monkeypatch.undo()
    assert stopped.value.code == 128 + signal.SIGTERM
    assert "stopped by SIGTERM after step 0" in capsys.readouterr().out
    assert torch.load(out / "latest.pt", weights_only=True)["step"] == 0
    train.run.main(tiny_args(out, builtin_dir, 4, "--resume"))
    assert records(out, "test")


@pytest.mark.slow
@pytest.mark.parametrize("signals", [(signal.SIGTERM,), (signal.SIGINT, signal.SIGINT)])
def test_signals_during_a_checkpoint_save(signals, tmp_path, builtin_dir, monkeypatch, capsys):
    out = tmp_path / "run"
    save, calls = torch.save, 0

    def save_with_signals(obj, path):
        nonlocal calls
        calls += 1
        if calls == 2:   # the save after step 2 (the first is before step 1)
            for signum in signals:
                os.kill(os.getpid(), signum)   # a second SIGINT interrupts the save itself
        save(obj, path)

    monkeypatch.setattr(checkpoint.torch, "save", save_with_signals)
    with pytest.raises(SystemExit) as stopped:
        train.run.main(tiny_args(out, builtin_dir, 40, "--eval-every", "2"))
    monkeypatch.undo()
    captured = capsys.readouterr()
    assert not list(out.glob("*.tmp"))
    if len(signals) == 1:   # the save finishes, then the run stops with a checkpoint of that step
        assert stopped.value.code == 128 + signal.SIGTERM and "stopped by SIGTERM after step 2" in captured.out
        assert torch.load(out / "latest.pt", weights_only=True)["step"] == 2
    else:                   # the save is abandoned: the previous latest.pt stays whole
        assert stopped.value.code == 128 + signal.SIGINT
        assert one_line(captured.err).startswith("stopped at once by a second Ctrl-C; the last latest.pt written is "
                                                 "whole")
        assert torch.load(out / "latest.pt", weights_only=True)["step"] == 0


@pytest.fixture
def audio_file(tmp_path) -> Path:
    path = tmp_path / "clip.wav"
    soundfile.write(path, (0.1 * np.random.default_rng(81070).standard_normal(16000)).astype(np.float32), 16000)
    return path


def test_an_audio_file_as_checkpoint_is_one_line_in_tag_evaluate_and_run(audio_file, builtin_dir, tmp_path, capsys):
    words = f"error: {audio_file}: not a checkpoint but a WAV audio file"
    for command in (lambda: tag.main([str(audio_file), "--checkpoint", str(audio_file)]),
                    lambda: evaluate.main(["--checkpoint", str(audio_file)]),
                    lambda: train.run.main([*tiny_args(tmp_path / "run", builtin_dir, 2), "--init", str(audio_file)])):
        with pytest.raises(SystemExit) as stopped:
            command()
        assert stopped.value.code == 2
        assert one_line(capsys.readouterr().err).startswith(words)
    out = tmp_path / "resumed"
    out.mkdir()
    shutil.copy(audio_file, out / "latest.pt")
    with pytest.raises(SystemExit):
        train.run.main(tiny_args(out, builtin_dir, 2, "--resume"))
    assert one_line(capsys.readouterr().err).startswith(f"error: {out / 'latest.pt'}: not a checkpoint but a WAV")
