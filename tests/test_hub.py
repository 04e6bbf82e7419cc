"""`fastsca.hub`: a checkpoint saved in the Hugging Face layout loads back to the same model, labels, front end
and event thresholds; the converter's command line; one-line errors for folders that cannot be used."""
import json
from pathlib import Path

import pytest
import torch

from fastsca.events import EventConfig
from fastsca.hub import PRETRAINED_FORMAT, PretrainedError, load_folder, load_pretrained, main, \
    save_pretrained_from_checkpoint
from fastsca.inference import load_trained_model
from train import checkpoint

from test_checkpoint import LABELS, tiny_config, tiny_payload

MIDS = ("/m/0a", "/m/0b", "/m/0c", "/m/0d", "/m/0e")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    """One-step checkpoints of an SCA-3 model and of the baseline (1 s clips, 5 classes)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for preset in ("at-sca-3", "baseline"):
        paths[preset] = folder / f"{preset}.pt"
        checkpoint.save(paths[preset], tiny_payload(tiny_config(preset)))
    return paths


def test_folder_round_trip_gives_the_same_model(checkpoints, tmp_path):
    events = EventConfig(threshold=0.4, class_thresholds=(("c", 0.7),), median_seconds=0.5)
    folder = save_pretrained_from_checkpoint(checkpoints["at-sca-3"], tmp_path / "pretrained", MIDS, events)
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "labels.csv", "model.safetensors"]
    # readable by whoever may read the folder's other files, as a shared model must be
    assert (folder / "model.safetensors").stat().st_mode == (folder / "config.json").stat().st_mode
    loaded, original = load_folder(folder), load_trained_model(checkpoints["at-sca-3"])
    assert loaded.trained.label_names == LABELS and loaded.label_mids == MIDS and loaded.events == events
    assert loaded.trained.log_mel == original.log_mel and loaded.trained.model.config == original.model.config
    assert loaded.trained.step == 1 and not loaded.trained.model.training
    log_mel = torch.randn(3, 1, 40, 64) * 20 - 40
    with torch.no_grad():
        got, want = loaded.trained.model(log_mel), original.model(log_mel)
    assert torch.equal(got.clip, want.clip) and torch.equal(got.frame, want.frame)
    assert (folder / "labels.csv").read_text() == "index,mid,display_name\n" + "".join(
        f"{i},{mid},{name}\n" for i, (name, mid) in enumerate(zip(LABELS, MIDS)))
    assert json.loads((folder / "config.json").read_text())["format"] == PRETRAINED_FORMAT
    # load_pretrained tells a checkpoint from a folder
    assert load_pretrained(checkpoints["at-sca-3"]).label_mids == ("",) * 5
    assert load_pretrained(str(folder)).events == events


def test_command_converts_a_checkpoint_twice_into_the_same_folder(checkpoints, tmp_path, capsys):
    labels = tmp_path / "class_labels_indices.csv"
    labels.write_text("index,mid,display_name\n" + "".join(f'{i},{mid},"{name}"\n' for i, (name, mid)
                                                          in enumerate(zip(reversed(LABELS), reversed(MIDS)))))
    out = tmp_path / "out"
    for _ in range(2):
        main([str(checkpoints["baseline"]), "--out", str(out), "--labels", str(labels), "--threshold", "0.3"])
        assert capsys.readouterr().out == f"wrote {out}: config.json, model.safetensors, labels.csv\n"
    assert sorted(p.name for p in out.iterdir()) == ["config.json", "labels.csv", "model.safetensors"]
    loaded = load_folder(out)
    assert loaded.label_mids == MIDS and loaded.events == EventConfig(threshold=0.3)   # matched by name, not row


def run_main(argv, capsys) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and err.startswith("error: ")
    return err


def test_command_errors_are_one_line(checkpoints, tmp_path, capsys):
    notes = tmp_path / "notes.pt"
    notes.write_text("not a checkpoint\n")
    assert "not a checkpoint" in run_main([str(notes), "--out", str(tmp_path / "x")], capsys)
    labels = tmp_path / "labels.csv"
    labels.write_text("index,mid,display_name\n0,/m/0a,a\n")
    assert "has no mid for 'b'" in run_main([str(checkpoints["baseline"]), "--out", str(tmp_path / "y"),
                                             "--labels", str(labels)], capsys)
    assert "--threshold: threshold must be in (0, 1), got 2.0" in run_main(
        [str(checkpoints["baseline"]), "--out", str(tmp_path / "y"), "--threshold", "2"], capsys)
    afile = tmp_path / "afile"
    afile.write_text("")
    assert "is a file, not a folder" in run_main([str(checkpoints["baseline"]), "--out", str(afile)], capsys)
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()


@pytest.fixture
def folder(checkpoints, tmp_path) -> Path:
    return save_pretrained_from_checkpoint(checkpoints["at-sca-3"], tmp_path / "model")


def one_line_error(folder) -> str:
    with pytest.raises(PretrainedError) as error:
        load_pretrained(folder)
    assert len(str(error.value).splitlines()) == 1
    return str(error.value)


def test_missing_file(folder):
    (folder / "labels.csv").unlink()
    assert f"{folder}: no labels.csv in the folder" in one_line_error(folder)


def test_corrupt_safetensors(folder):
    weights = folder / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])   # a broken download
    assert "model.safetensors: not readable safetensors" in one_line_error(folder)


def test_another_librarys_config(folder):
    (folder / "config.json").write_text(json.dumps({"model_type": "bert", "hidden_size": 768}))
    assert "not a fastsca model folder" in one_line_error(folder)


def test_config_from_a_newer_fastsca(folder):
    config = json.loads((folder / "config.json").read_text())
    config["model"]["rotary_heads"] = 4
    (folder / "config.json").write_text(json.dumps(config))
    assert "model field 'rotary_heads' is unknown to this fastsca" in one_line_error(folder)


def test_weights_of_another_model(folder, checkpoints, tmp_path):
    other = save_pretrained_from_checkpoint(checkpoints["baseline"], tmp_path / "baseline")
    (folder / "model.safetensors").write_bytes((other / "model.safetensors").read_bytes())
    assert "its weights do not fit the model of config.json (no blocks.4.attention.channel.fc1.bias and 47 more)" \
        in one_line_error(folder)   # the baseline's weights lack the attention modules of blocks 5-7


def test_a_missing_local_path_is_not_sent_to_the_hub(tmp_path):
    assert "no such checkpoint or folder" in one_line_error(tmp_path / "runs" / "best.pt")



def test_a_hub_repo_id_is_downloaded_then_read_as_a_folder(folder, monkeypatch):
    import huggingface_hub
    asked = []

    def snapshot_download(repo_id, revision=None, allow_patterns=None):   # the Hub, answered from a local folder
        asked.append((repo_id, revision, sorted(allow_patterns)))
        return str(folder)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    loaded = load_pretrained("someone/at-sca-3", revision="v1")
    assert asked == [("someone/at-sca-3", "v1", ["config.json", "labels.csv", "model.safetensors"])]
    assert loaded.trained.label_names == LABELS


def test_an_unreachable_hub_repo_is_one_line(monkeypatch):
    import huggingface_hub.constants
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)   # as with no network, but at once
    assert "someone/no-such-model: not a local checkpoint or folder, and the Hugging Face Hub did not give it" in \
        one_line_error("someone/no-such-model")
    assert "no such checkpoint, folder or Hub repo id" in one_line_error("not a repo id!")
