"""Fine-tuning (`train.run --init MODEL`, MODEL a checkpoint, a model folder or a Hub id): the model comes from it, a new head for a new label set,
frozen blocks stay as trained, a model flag that disagrees is one line, `--resume` stays exact, and a
pretrained start reaches a validation mAP in fewer steps than a start from scratch.

The pretrained checkpoint is conftest.py's `full_run` (40 steps on the tiny built-in set's 10 classes); the
fine-tuning set comes from the same generator (train/data/synth.py) with all 12 of its classes and other clips.
"""
import os
import signal
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

import train.run
import train.step
from fastsca.hub import load_pretrained
from train.data.shards import ShardWriter
from train.data.synth import make_clip

from test_train_run import BUILTIN, CHANNELS, records, tiny_args

# 12 classes (the built-in set's 10 and two it never saw), other clips (seed 7)
TWELVE = replace(BUILTIN, n_classes=12, seed=7)
# a run of the fine-tuning set, its evaluations every 5 steps (no mixup: the step counts below were measured so)
FLAGS = ["--profile", "cpu", "--batch-size", "16", "--steps", "30", "--eval-every", "5", "--warmup-steps", "5",
         "--log-every", "1", "--num-workers", "1", "--validation-fraction", "0.25", "--mixup-alpha", "0"]


def write_split(path: Path, split: int, count: int) -> Path:
    """Clips 0..count-1 of split 0 (train) or 1 (eval) of the 12-class set, as a shard."""
    clips = [make_clip(TWELVE, split, i) for i in range(count)]
    with ShardWriter(path, tuple(f"/synth/{c}" for c in TWELVE.class_names), TWELVE.class_names, 16000,
                     TWELVE.clip_samples) as writer:
        writer.add(np.stack([c[0] for c in clips]), np.stack([c[1] for c in clips]), [f"c{i}" for i in range(count)])
        writer.commit()
    return path


@pytest.fixture(scope="module")
def twelve(tmp_path_factory) -> tuple[Path, Path]:
    folder = tmp_path_factory.mktemp("twelve")
    return write_split(folder / "train.h5", 0, 128), write_split(folder / "eval.h5", 1, 48)


def data_flags(twelve) -> list[str]:
    return ["--data", str(twelve[0]), "--eval-data", str(twelve[1])]


@pytest.fixture(scope="module")
def finetuned(tmp_path_factory, full_run, twelve) -> Path:
    """30 steps on the 12-class set from full_run's best.pt, the backbone at a tenth of the head's lr."""
    out = tmp_path_factory.mktemp("finetune") / "run"
    train.run.main([*FLAGS, *data_flags(twelve), "--init", str(full_run / "best.pt"), "--backbone-lr-scale", "0.1",
                    "--out", str(out)])
    return out


def first_step_reaching(out: Path, target: float) -> int | None:
    return next((r["step"] for r in records(out, "val") if r["mAP"] >= target), None)


@pytest.mark.slow
def test_pretrained_start_reaches_the_map_sooner_than_scratch(finetuned, twelve, tmp_path):
    scratch = tmp_path / "scratch"
    train.run.main([*FLAGS, *data_flags(twelve), "--channels", CHANNELS, "--clip-seconds", "1",
                    "--out", str(scratch)])
    # validation mAP every 5 steps, measured (with the frame loss on the set's strong labels and the attention's
    # global branch at lr / fan-in): from full_run 0.405 0.600 0.656 0.683 0.694 0.694, from scratch
    # 0.314 0.246 0.270 0.312 0.395 0.489: 0.45 at the second evaluation instead of the last
    curves = [[round(r["mAP"], 3) for r in records(run, "val")] for run in (finetuned, scratch)]
    assert (first_step_reaching(finetuned, 0.45), first_step_reaching(scratch, 0.45)) == (10, 30), curves


@pytest.mark.slow
def test_the_model_comes_from_the_checkpoint_with_a_new_head(finetuned, full_run):
    saved, tuned = (torch.load(run / name, weights_only=True) for run, name in ((full_run, "best.pt"),
                                                                                 (finetuned, "latest.pt")))
    assert tuned["config"]["model"] == {**saved["config"]["model"], "num_classes": 12}
    assert tuned["config"]["log_mel"] == saved["config"]["log_mel"]
    assert tuned["model"]["pooling.tagging.weight"].shape == (12, 128)
    assert tuned["label_names"] == list(TWELVE.class_names)


@pytest.mark.slow
def test_resume_of_a_finetuning_run_repeats_its_losses(finetuned, full_run, twelve, tmp_path, monkeypatch, capsys):
    out = tmp_path / "run"
    args = [*FLAGS, *data_flags(twelve), "--init", str(full_run / "best.pt"), "--backbone-lr-scale", "0.1",
            "--out", str(out)]
    clip_bce, calls = train.step.clip_bce, 0
    stop_at = int(np.random.default_rng(59259).integers(3, 12))

    def loss_then_signal(prob, target):
        nonlocal calls
        calls += 1
        if calls == stop_at:
            os.kill(os.getpid(), signal.SIGTERM)
        return clip_bce(prob, target)

    monkeypatch.setattr(train.step, "clip_bce", loss_then_signal)
    with pytest.raises(SystemExit):
        train.run.main(args)
    monkeypatch.undo()
    train.run.main([*args, "--resume"])
    resumed = {r["step"]: r["loss"] for r in records(out, "train") if r["step"] > stop_at + 1}
    expected = {r["step"]: r["loss"] for r in records(finetuned, "train") if r["step"] > stop_at + 1}
    assert resumed == expected and len(resumed) == 30 - stop_at - 1
    assert records(out, "test")[-1]["mAP"] == records(finetuned, "test")[-1]["mAP"]


@pytest.mark.slow
def test_same_labels_keep_the_head_and_frozen_blocks_stay(full_run, builtin_dir, tmp_path, capsys):
    out = tmp_path / "run"
    train.run.main([*tiny_args(out, builtin_dir, 2), "--init", str(full_run / "best.pt"), "--freeze-blocks", "3"])
    printed = capsys.readouterr().out
    assert f"fine-tuning from the weights and head of {full_run / 'best.pt'} (same 10 labels)" in printed
    saved = torch.load(full_run / "best.pt", weights_only=True)["model"]
    tuned = torch.load(out / "latest.pt", weights_only=True)["model"]
    # BatchNorm statistics too (only their batch counter, unused with a momentum, goes on counting)
    frozen = [k for k in saved if k.startswith(("input_norm.", "blocks.0.", "blocks.1.", "blocks.2."))
              and not k.endswith("num_batches_tracked")]
    assert frozen and all(torch.equal(saved[k], tuned[k]) for k in frozen)
    assert not torch.equal(saved["blocks.3.conv1.weight"], tuned["blocks.3.conv1.weight"])
    assert not torch.equal(saved["pooling.tagging.weight"], tuned["pooling.tagging.weight"])


def as_reference(kind: str, full_run: Path, monkeypatch) -> str:
    """full_run's model as `--init` takes it: latest.pt, its model folder, or a Hub id (the Hub answered from that
    folder, as tests/test_hub.py does)."""
    if kind == "hub":
        import huggingface_hub
        monkeypatch.setattr(huggingface_hub, "snapshot_download",
                            lambda repo_id, revision=None, allow_patterns=None: str(full_run / "pretrained"))
        return "someone/at-sca-3"
    return str(full_run / {"latest": "latest.pt", "folder": "pretrained"}[kind])


@pytest.mark.parametrize("kind", ["latest", "folder", "hub"])
def test_init_takes_every_model_reference(kind, full_run, builtin_dir, tmp_path, monkeypatch, capsys):
    reference = as_reference(kind, full_run, monkeypatch)
    out = tmp_path / "run"
    train.run.main([*tiny_args(out, builtin_dir, 2), "--init", reference, "--freeze-blocks", "7"])
    printed = capsys.readouterr()
    assert f"fine-tuning from the weights and head of {reference} (same 10 labels)" in printed.out
    assert "no such checkpoint" not in printed.err
    source = load_pretrained(reference).trained.model.state_dict()
    tuned = torch.load(out / "latest.pt", weights_only=True)["model"]
    # frozen, so as given (BatchNorm statistics too; only their batch counter, unused with a momentum, counts on)
    frozen = [k for k in source if k.startswith("blocks.6.") and not k.endswith("num_batches_tracked")]
    assert frozen and all(torch.equal(source[k], tuned[k]) for k in frozen)
    assert not torch.equal(source["pooling.tagging.weight"], tuned["pooling.tagging.weight"])   # the head trained


@pytest.mark.parametrize("flags, words", [
    (("--preset", "at-c-2"), "--preset asks for another model than --init"),
    (("--channels", "4,4,8,8,8,8,8"), "--channels asks for another model than --init"),
    (("--clip-seconds", "2"), "--clip-seconds 2: --init"),
    (("--pooling-plan", "six-pool"), "--pooling-plan asks for another model than --init"),
    (("--pooling", "linear_softmax"), "--pooling asks for another model than --init"),
])
def test_a_model_flag_that_disagrees_with_init_is_one_line(full_run, builtin_dir, tmp_path, flags, words, capsys):
    args = [a for a in tiny_args(tmp_path / "run", builtin_dir, 2) if a not in ("--channels", CHANNELS)]
    with pytest.raises(SystemExit) as stopped:
        train.run.main([*args, "--init", str(full_run / "best.pt"), *flags])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert line.startswith("error: ") and words in line
    assert not (tmp_path / "run").exists()


def test_freeze_without_init_is_one_line(builtin_dir, tmp_path, capsys):
    with pytest.raises(SystemExit):
        train.run.main([*tiny_args(tmp_path / "run", builtin_dir, 2), "--freeze-blocks", "2"])
    assert capsys.readouterr().err.strip() == ("error: --freeze-blocks freezes blocks of the model --init starts "
                                                "from: give --init CKPT too")


def test_backbone_lr_scale_gives_the_backbone_a_fraction_of_the_lr():
    from fastsca.model import build_model
    from train.config import OptimConfig
    from train.optim import build_optimiser, build_scheduler

    scale = float(np.random.default_rng(49345).uniform(0.01, 0.9))
    model = build_model("at-sca-1", channels=(4, 4, 8, 8, 8, 8, 8), num_classes=3, input_frames=40)
    optimiser = build_optimiser(model, OptimConfig(lr=2e-3, warmup_steps=0, backbone_lr_scale=scale))
    scheduler = build_scheduler(optimiser, OptimConfig(lr=2e-3, warmup_steps=0, backbone_lr_scale=scale), 10)
    head = {id(p) for p in model.pooling.parameters()}
    last = {id(p) for p in model.blocks[6].attention.spatial.global_branch.conv2.parameters()}   # at lr / 200 too
    for group, lr in zip(optimiser.param_groups, scheduler.get_last_lr()):
        in_head = {id(p) in head for p in group["params"]}
        in_last = {id(p) in last for p in group["params"]}
        assert len(in_head) == 1 and len(in_last) == 1
        assert lr == pytest.approx((2e-3 if in_head == {True} else 2e-3 * scale) / (200 if in_last == {True} else 1))
    assert sum(len(g["params"]) for g in optimiser.param_groups) == len(list(model.parameters()))
