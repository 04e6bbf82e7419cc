"""Recipes of `python -m train.run --recipe NAME` (train/recipes.py) and the clips-seen schedule.

Each recipe runs a few steps on the tiny built-in set with its big values (length, batch, compile) replaced by
flags, which is also the check that a flag wins over the recipe; a run without --recipe keeps exactly the
profile's config; the clips-seen options turn into ceil(clips / (batch x processes)) steps.
"""
import random
from pathlib import Path

import pytest
import torch

import train.run
from fastsca.run_options import RunOptions
from test_train_run import BUILTIN, CHANNELS
from train.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from train.data.loader import LoaderConfig
from train.profiles import PROFILES
from train.recipes import RECIPES, apply, steps_for_clips
from train.trainer.flags import build_config, clip_schedule


def recipe_args(out: Path, builtin_dir: Path, *extra: str) -> list[str]:
    """A run on the tiny built-in set of test_train_run.BUILTIN, its length and recipe left to `extra`."""
    return ["--profile", "cpu", "--channels", CHANNELS, "--clip-seconds", "1", "--builtin-train", "256",
            "--builtin-eval", "101", "--builtin-dir", str(builtin_dir), "--batch-size", "16", "--num-workers", "1",
            "--warmup-steps", "1", "--log-every", "1", "--no-compile", "--out", str(out),
            *extra]


def run_config(out: Path) -> dict:
    return torch.load(out / "latest.pt", weights_only=True)["config"]


@pytest.mark.slow
def test_each_recipe_runs_and_flags_win(tmp_path, builtin_dir, capsys):
    scratch = tmp_path / "balanced"
    train.run.main(recipe_args(scratch, builtin_dir, "--recipe", "audioset-balanced", "--clips", "48",
                               "--eval-every", "20"))
    lines = capsys.readouterr().out.splitlines()
    assert ("recipe audioset-balanced: balanced sampler, mixup 1, SpecAugment on, 1,000,000 clips, eval every "
            "20,000 clips, warm-up 10,000 clips, batch 32 per process, lr 0.001, compile on (command line: --clips, "
            "--eval-every, --warmup-steps, --batch-size, --no-compile)") in lines
    assert "schedule at 16 clips per step: 48 clips = 3 steps (48 clips)" in lines
    config = run_config(scratch)
    assert (config["run"]["steps"], config["run"]["eval_every"], config["options"]["compile"]) == (3, 20, False)
    assert config["data"]["loader"]["batch_size"] == 16 and config["optim"]["warmup_steps"] == 1
    assert (config["data"]["loader"]["mixup_alpha"], config["data"]["loader"]["spec_augment"]) == (1.0, True)
    assert (config["optim"]["lr"], config["data"]["loader"]["sampler"]) == (1e-3, "balanced")

    full = tmp_path / "full"
    train.run.main(recipe_args(full, builtin_dir, "--recipe", "audioset-full", "--steps", "2", "--eval-every", "20",
                               "--mixup-alpha", "0", "--lr", "0.002"))
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("recipe audioset-full: balanced sampler, mixup 0.3, SpecAugment on, 20,000,000 clips")
               and line.endswith("(command line: --steps, --eval-every, --warmup-steps, --mixup-alpha, --batch-size, "
                                 "--lr, --no-compile)") for line in lines)
    assert not any(line.startswith("schedule at") for line in lines)   # no clips-seen option was left to convert
    config = run_config(full)
    assert (config["run"]["steps"], config["optim"]["lr"], config["data"]["loader"]["mixup_alpha"]) == (2, 2e-3, 0.0)
    assert config["data"]["loader"]["spec_augment"] is True

    tuned = tmp_path / "tuned"
    train.run.main(recipe_args(tuned, builtin_dir, "--recipe", "finetune", "--init", str(scratch / "best.pt"),
                               "--clips", "20", "--eval-every-clips", "16"))
    lines = capsys.readouterr().out.splitlines()
    assert ("recipe finetune: balanced sampler, mixup 0.3, SpecAugment off, 80 epochs, eval every 2,000 clips, "
            "warm-up 2,000 clips, batch 32 per process, lr 0.001 (backbone x0.1), compile off, needs --init "
            "(command line: --clips, --eval-every-clips, --warmup-steps, --batch-size, --no-compile)") in lines
    assert "schedule at 16 clips per step: 20 clips = 2 steps (32 clips); evaluation and latest.pt every 16 clips = " \
           "1 step" in lines
    config = run_config(tuned)
    assert (config["run"]["steps"], config["run"]["epochs"], config["run"]["eval_every"]) == (2, None, 1)
    assert (config["optim"]["backbone_lr_scale"], config["data"]["loader"]["mixup_alpha"]) == (0.1, 0.3)
    assert config["run"]["init"] == str(scratch / "best.pt")


def test_no_recipe_keeps_the_profile_config(tmp_path, builtin_dir):
    argv = ["--profile", "cpu", "--channels", CHANNELS, "--clip-seconds", "1", "--builtin-train", "256",
            "--builtin-eval", "101", "--builtin-dir", str(builtin_dir), "--out", str(tmp_path / "run")]
    args = train.run.parse_args(argv)
    assert apply(args) == (args, None)
    config, _ = build_config(args, PROFILES["cpu"], cuda=False)
    # the cpu profile's values (train/profiles.py) and the flags' defaults, as they were before recipes existed
    run = RunConfig(out=str(tmp_path / "run"), profile="cpu", steps=600, epochs=None, eval_every=100, log_every=5,
                    patience=0, seed=0, threads=1, resume=False, checkpoint_minutes=5.0, init=None, freeze_blocks=0)
    options = RunOptions(fused_attention=False, compile=False, compile_backend="inductor", compile_mode="default",
                         channels_last=False, precision="fp32")
    optim = OptimConfig(lr=3e-3, min_lr_ratio=0.01, warmup_steps=30, weight_decay=0.01, betas=(0.9, 0.999),
                        grad_clip=1.0, backbone_lr_scale=1.0)
    loader = LoaderConfig(batch_size=32, sampler="balanced", seed=0, num_workers=1, mixup_alpha=0.0,
                          spec_augment=False)
    data = DataConfig(train_path=None, eval_path=None, validation_fraction=0.1, validation_max_clips=5000,
                      builtin_dir=str(builtin_dir), builtin=BUILTIN, loader=loader, eval_batch_size=64, fold=None)
    assert config == TrainConfig(model=config.model, log_mel=config.log_mel, data=data, optim=optim, run=run,
                                 options=options)
    assert build_config(train.run.parse_args(argv), PROFILES["cpu"],
                        cuda=False, world_size=4)[0] == config   # no clips-seen option: world size moot


@pytest.mark.parametrize("argv, message", [
    (["--recipe", "audioset"], "error: --recipe audioset: no such recipe; the recipes are audioset-balanced, "
                               "audioset-full, finetune"),
    (["--recipe", "finetune"], "error: --recipe finetune fine-tunes a checkpoint: give --init CKPT (a best.pt or "
                               "latest.pt of an earlier run)"),
    (["--clips", "0"], "error: --clips must be >= 1 and <= 9223372036854775807, got 0"),
    (["--eval-every-clips", "-5"], "error: --eval-every-clips must be >= 1 and <= 9223372036854775807, got -5"),
    (["--warmup-clips", "-1"], "error: --warmup-clips must be >= 0 and <= 9223372036854775807, got -1"),
])
def test_bad_recipe_or_clips_is_one_line(tmp_path, argv, message, capsys):
    with pytest.raises(SystemExit) as exit_info:
        train.run.main(["--profile", "cpu", "--out", str(tmp_path / "run"), *argv])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.splitlines() == [message]
    assert not (tmp_path / "run").exists()


def test_clips_seen_become_steps_exactly():
    rng = random.Random(25)
    batch, world = rng.randint(1, 64), rng.randint(1, 8)
    clips, every, warmup = (rng.randint(1, 10**7) for _ in range(3))
    args = train.run.parse_args(["--clips", str(clips), "--eval-every-clips", str(every), "--warmup-clips",
                                 str(warmup), "--batch-size", str(batch)])
    steps, eval_every, warmup_steps = clip_schedule(args, PROFILES["cpu"], world)
    for clips_seen, in_steps in ((clips, steps), (every, eval_every), (warmup, warmup_steps)):
        # the fewest steps that see at least that many clips
        assert (in_steps - 1) * batch * world < clips_seen <= in_steps * batch * world
    # a recipe's schedule on 8 processes: 20,000,000 / 1024 = 19531.25, 100,000 / 1024 = 97.66, 800,000 / 1024
    args, _ = apply(train.run.parse_args(["--recipe", "audioset-full"]))
    assert clip_schedule(args, PROFILES["gpu"], 8) == (19532, 98, 782)
    assert (steps_for_clips(48, 16), steps_for_clips(49, 16), steps_for_clips(0, 3)) == (3, 4, 0)
    # step flags and the profile's defaults are untouched
    assert clip_schedule(train.run.parse_args([]), PROFILES["gpu"], 8) == (3000, 500, 200)
    assert clip_schedule(train.run.parse_args(["--epochs", "2"]), PROFILES["cpu"], 1) == (None, 100, 30)


def test_help_lists_every_recipe(capsys):
    with pytest.raises(SystemExit):
        train.run.parse_args(["--help"])
    text = " ".join(capsys.readouterr().out.split()).replace("- ", "-")   # argparse wraps lines after hyphens
    for name, recipe in RECIPES.items():
        assert f"{name}: {recipe.summary}" in text
    assert "--clips CLIPS" in text and "--eval-every-clips" in text and "--warmup-clips" in text
