"""Checkpoints: atomic writes, RNG round trips, weights_only loading, and one-line errors for wrong files or configs."""
import json
import random
from dataclasses import replace

import numpy as np
import pytest
import torch

from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.hub import load_pretrained, save_pretrained_from_checkpoint
from fastsca.inference import CheckpointError, load_trained_model, read_checkpoint
from fastsca.model import build_model
from train import checkpoint
from train.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from train.finetune import read_init
from train.data.loader import LoaderConfig
from train.optim import build_optimiser, build_scheduler
from train.data.shards import ShardWriter

LABELS = ("a", "b", "c", "d", "e")


def tiny_config(preset: str = "at-sca-3", **data) -> TrainConfig:
    model = ModelConfig.from_name(preset, num_classes=len(LABELS), input_frames=40,
                                  channels=(4, 4, 8, 8, 8, 8, 8))
    return TrainConfig(model=model, log_mel=LogMelConfig(clip_samples=16000), data=DataConfig(**data),
                       optim=OptimConfig(warmup_steps=2), run=RunConfig(steps=10))


def tiny_payload(config: TrainConfig) -> dict:
    model = build_model(config.model)
    optimiser = build_optimiser(model, config.optim)
    scheduler = build_scheduler(optimiser, config.optim, 10)
    model(torch.randn(2, 1, 40, 64)).clip.sum().backward()
    optimiser.step()
    scheduler.step()
    state = checkpoint.TrainState(step=1, best_map=0.25)
    return checkpoint.make_payload(model, optimiser, scheduler, [{"sampler": {"epoch": 0, "position": 2}}],
                                   [checkpoint.rng_state()], state, 0, config, LABELS)


def test_save_is_atomic_and_loads_with_weights_only(tmp_path):
    config = tiny_config()
    path = tmp_path / "latest.pt"
    checkpoint.save(path, tiny_payload(config))
    assert [p.name for p in tmp_path.iterdir()] == ["latest.pt"]   # the temporary file was renamed
    payload = read_checkpoint(path)
    assert payload["step"] == 1 and payload["best_map"] == 0.25 and payload["epoch"] == 0
    assert payload["config"]["model"]["channels"] == (4, 4, 8, 8, 8, 8, 8)   # tuples survive
    trained = load_trained_model(path)
    assert not trained.model.training and trained.label_names == LABELS
    assert trained.log_mel == config.log_mel and trained.model.config == config.model


def test_copy_replaces_the_target_whole(tmp_path):
    source, target = tmp_path / "latest.pt", tmp_path / "best.pt"
    checkpoint.save(source, tiny_payload(tiny_config()))
    target.write_bytes(b"old")
    checkpoint.copy(source, target)
    assert target.read_bytes() == source.read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["best.pt", "latest.pt"]


def test_rng_state_round_trip(tmp_path):
    state = checkpoint.rng_state()
    checkpoint.save(tmp_path / "rng.pt", {"rng": state})
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    checkpoint.set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected


def test_another_preset_is_refused_naming_both(tmp_path):
    path = tmp_path / "latest.pt"
    checkpoint.save(path, tiny_payload(tiny_config("at-sca-3")))
    with pytest.raises(CheckpointError) as error:
        checkpoint.load_for_resume(path, tiny_config("at-c-2"))
    message = str(error.value)
    assert len(message.splitlines()) == 1
    assert "holds model 'at-sca-3' but this run builds 'at-c-2'" in message
    assert "arrangement 'sca' vs 'channel'" in message and "attention_depth 3 vs 2" in message
    assert "--preset" in message and "--out" in message


def test_same_model_under_another_preset_name_is_accepted(tmp_path):
    path = tmp_path / "latest.pt"
    checkpoint.save(path, tiny_payload(tiny_config("at-sca-1")))
    assert checkpoint.load_for_resume(path, tiny_config("at-sca"))["step"] == 1


def test_other_batches_are_refused_but_other_worker_counts_are_not(tmp_path):
    path = tmp_path / "latest.pt"
    checkpoint.save(path, tiny_payload(tiny_config(loader=LoaderConfig(batch_size=16, num_workers=2))))
    checkpoint.load_for_resume(path, tiny_config(loader=LoaderConfig(batch_size=16, num_workers=1)))
    with pytest.raises(CheckpointError,
                       match=r"other data settings \(loader.batch_size 16 vs 8, checkpoint vs this run\)"):
        checkpoint.load_for_resume(path, tiny_config(loader=LoaderConfig(batch_size=8, num_workers=2)))


def test_other_front_end_is_refused(tmp_path):
    path = tmp_path / "latest.pt"
    config = tiny_config()
    checkpoint.save(path, tiny_payload(config))
    with pytest.raises(CheckpointError, match="other log_mel settings .*f_max 8000.0 vs 7000.0"):
        checkpoint.load_for_resume(path, replace(config, log_mel=replace(config.log_mel, f_max=7000.0)))


@pytest.mark.parametrize("content, message", [
    (None, "no such checkpoint"),
    (b"not a zip or pickle", "not a checkpoint (a checkpoint is the zip archive"),
    ({"model": {}}, "not a fastsca training checkpoint"),
])
def test_bad_files_are_one_line_errors(tmp_path, content, message):
    path = tmp_path / "bad.pt"
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        torch.save(content, path)
    with pytest.raises(CheckpointError) as error:
        read_checkpoint(path)
    assert message in str(error.value) and str(path) in str(error.value)
    assert len(str(error.value).splitlines()) == 1


def test_truncated_checkpoint_is_a_one_line_error(tmp_path):
    path = tmp_path / "latest.pt"
    checkpoint.save(path, tiny_payload(tiny_config()))
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="not a readable checkpoint"):
        read_checkpoint(path)


def test_a_checkpoint_from_before_folds_and_fine_tuning_still_resumes(tmp_path):
    path = tmp_path / "latest.pt"
    payload = tiny_payload(tiny_config())
    del payload["config"]["data"]["fold"], payload["config"]["optim"]["backbone_lr_scale"]
    del payload["config"]["run"]["freeze_blocks"], payload["config"]["run"]["init"], payload["data_fingerprints"]
    checkpoint.save(path, payload)
    assert checkpoint.load_for_resume(path, tiny_config())["step"] == 1


def test_a_checkpoint_that_stored_fused_attention_in_its_model_loads_everywhere(tmp_path):
    """Before fused attention became a run option (fastsca/run_options.py) it was a ModelConfig field, which
    checkpoints and model folders stored with the model; they are read without it."""
    path = tmp_path / "latest.pt"
    payload = tiny_payload(tiny_config())
    payload["config"]["model"]["fused_attention"] = True
    payload["config"].pop("options")   # older checkpoints had none
    checkpoint.save(path, payload)
    assert "fused_attention" not in read_checkpoint(path)["config"]["model"]
    assert checkpoint.load_for_resume(path, tiny_config())["step"] == 1   # resumes
    assert load_trained_model(path).model.config == tiny_config().model   # tags, evaluates, exports
    assert read_init(str(path)).model == tiny_config().model   # fine-tunes
    folder = save_pretrained_from_checkpoint(path, tmp_path / "pretrained")
    config = json.loads((folder / "config.json").read_text())
    config["model"]["fused_attention"] = False
    (folder / "config.json").write_text(json.dumps(config))
    assert load_pretrained(folder).trained.model.config == tiny_config().model


def write_shard(path, targets: np.ndarray) -> str:
    with ShardWriter(path, tuple(LABELS), LABELS, 16000, 160) as writer:
        writer.add(np.zeros((len(targets), 160), np.int16), targets, [f"clip{i}" for i in range(len(targets))])
        writer.commit()
    return str(path)


def test_data_fingerprint_follows_the_content_not_the_path(tmp_path):
    rng = np.random.default_rng(94396)
    targets = (rng.random((int(rng.integers(5, 40)), len(LABELS))) < 0.4).astype(np.uint8)
    first = checkpoint.data_fingerprint(write_shard(tmp_path / "a.h5", targets))
    (tmp_path / "sub").mkdir()
    assert checkpoint.data_fingerprint(write_shard(tmp_path / "sub" / "b.h5", targets)) == first
    targets[rng.integers(len(targets)), rng.integers(len(LABELS))] ^= 1   # one label of one clip flipped
    other = checkpoint.data_fingerprint(write_shard(tmp_path / "c.h5", targets))
    assert other["clips"] == first["clips"] and other["sha1"] != first["sha1"]
    path = tmp_path / "latest.pt"
    checkpoint.save(path, tiny_payload(tiny_config()) | {"data_fingerprints": {"train": first, "test": first}})
    with pytest.raises(CheckpointError, match=r"was trained on other data: the train split of the built-in set "
                                              r"holds the same number of clips but other labels or clip names"):
        checkpoint.load_for_resume(path, tiny_config(), {"train": other, "test": first})
    assert checkpoint.load_for_resume(path, tiny_config(), {"train": first, "test": first})["step"] == 1
