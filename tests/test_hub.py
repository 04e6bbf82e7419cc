"""`fastsca.hub`: a checkpoint saved in the Hugging Face layout loads back to the same model, labels, front end
and event thresholds; id2label and the model card; the converter's command line, which writes only into a new,
empty or its own folder; push_to_hub through huggingface_hub (mocked: no network); one-line errors for folders
that cannot be used."""
import json
from pathlib import Path

import pytest
import torch

from fastsca.events import EventConfig
from fastsca.hub import PRETRAINED_FORMAT, PretrainedError, load_folder, load_pretrained, main, push_to_hub, \
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
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "labels.csv", "model.safetensors"]
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
        assert capsys.readouterr().out == f"wrote {out}: config.json, model.safetensors, labels.csv, README.md\n"
    assert sorted(p.name for p in out.iterdir()) == ["README.md", "config.json", "labels.csv", "model.safetensors"]
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


def test_config_has_id2label_and_label2id(folder):
    config = json.loads((folder / "config.json").read_text())
    assert config["id2label"] == {str(i): name for i, name in enumerate(LABELS)}
    assert config["label2id"] == {name: i for i, name in enumerate(LABELS)}
    config["id2label"]["0"] = "dog"   # a hand edit that would name class 0 one way here, another in label_names
    (folder / "config.json").write_text(json.dumps(config))
    assert "its id2label disagrees with its label_names" in one_line_error(folder)


def test_model_card_gives_the_runs_data_and_metrics(checkpoints, tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (run / "best.pt").write_bytes(checkpoints["at-sca-3"].read_bytes())
    test = {"kind": "test", "step": 10, "mAP": 0.61234, "mAUC": 0.8, "d_prime": 1.25, "clips": 37, "best_step": 0}
    other = {**test, "mAP": 0.1, "best_step": 7}   # scored with other weights: not these
    (run / "metrics.jsonl").write_text(f"{json.dumps(test)}\n{json.dumps(other)}\n{{cut by a cra")
    card = (save_pretrained_from_checkpoint(run / "best.pt", tmp_path / "model") / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: fastsca\npipeline_tag: audio-classification\n")
    assert "The built-in synthetic set of fastsca (train/data/synth.py)" in card
    assert f"not real-world sounds: {', '.join(LABELS)}." in card
    assert "Chosen at step 0 on validation mAP (0.2500)." in card   # tiny_payload's best_map
    assert "On the test split (37 clips)" in card and "| mAP | 0.6123 |" in card and "| d' | 1.2500 |" in card
    assert "| mAUC | 0.8000 |" in card and "0.1000" not in card and "## Intended use" in card
    assert "## Limitations" in card
    bare = (save_pretrained_from_checkpoint(checkpoints["at-sca-3"], tmp_path / "bare") / "README.md").read_text()
    assert "No test figures were recorded for these weights." in bare   # no metrics.jsonl beside it


@pytest.mark.parametrize("names", [("labels.csv",), ("model.safetensors", "labels.csv")])
def test_weights_or_labels_without_its_config_or_card_are_a_users(checkpoints, tmp_path, names, capsys):
    """A folder holding only a labels.csv (a data set's) or weights of those names: not a model folder this module
    wrote, so refused and kept."""
    data = tmp_path / "data"
    data.mkdir()
    for name in names:
        (data / name).write_text("filename,label,fold\na.wav,dog,1\n")
    assert "which fastsca.hub did not write" in run_main([str(checkpoints["baseline"]), "--out", str(data)], capsys)
    assert all((data / name).read_text() == "filename,label,fold\na.wav,dog,1\n" for name in names)
    assert sorted(p.name for p in data.iterdir()) == sorted(names)


def test_command_refuses_a_folder_it_did_not_write(checkpoints, tmp_path, capsys):
    run = tmp_path / "run"   # the run's own folder: the checkpoint and its metrics, which must stay as they are
    run.mkdir()
    best = run / "best.pt"
    best.write_bytes(checkpoints["baseline"].read_bytes())
    (run / "notes.txt").write_text("mine\n")
    (run / "README.md").write_text("# my project\n")
    assert f"error: {run}: holds README.md and 2 more, which fastsca.hub did not write; give a new or empty folder, " \
           f"or --overwrite" in run_main([str(best), "--out", str(run)], capsys)
    foreign = tmp_path / "hf-model"   # another library's model folder, under the same file names
    foreign.mkdir()
    (foreign / "config.json").write_text(json.dumps({"model_type": "bert"}))
    assert "holds config.json, which fastsca.hub did not write" in run_main([str(best), "--out", str(foreign)], capsys)
    assert (run / "README.md").read_text() == "# my project\n" and sorted(p.name for p in run.iterdir()) == \
        ["README.md", "best.pt", "notes.txt"]
    assert (foreign / "config.json").read_text() == json.dumps({"model_type": "bert"})
    main([str(best), "--out", str(run), "--overwrite"])   # other files kept; the card replaced, as asked
    assert sorted(p.name for p in run.iterdir()) == ["README.md", "best.pt", "config.json", "labels.csv",
                                                      "model.safetensors", "notes.txt"]
    assert load_folder(run).trained.label_names == LABELS and (run / "notes.txt").read_text() == "mine\n"
    renamed = run / "model.safetensors"   # a checkpoint under a name the folder would replace: never, even so
    renamed.write_bytes(best.read_bytes())
    assert "its model.safetensors is the input" in run_main([str(renamed), "--out", str(run), "--overwrite"], capsys)
    empty = tmp_path / "empty"
    empty.mkdir()
    main([str(best), "--out", str(empty)])
    assert load_folder(empty).trained.label_names == LABELS


class FakeHub:
    """huggingface_hub.HfApi, answering from memory: records the calls, keeps the uploaded files' bytes."""

    def __init__(self, calls: list, token=None):
        self.calls = calls
        calls.append(("token", token))

    def create_repo(self, repo_id, repo_type=None, private=False, exist_ok=False):
        self.calls.append(("create_repo", repo_id, repo_type, private, exist_ok))

    def upload_folder(self, repo_id, repo_type, folder_path, revision, allow_patterns, commit_message):
        files = {name: (Path(folder_path) / name).read_bytes() for name in allow_patterns}
        self.calls.append(("upload_folder", repo_id, revision, files, commit_message))
        return type("CommitInfo", (), {"commit_url": f"https://huggingface.co/{repo_id}/commit/0123abc"})()


def test_push_to_hub_uploads_the_folder(folder, checkpoints, monkeypatch):
    import huggingface_hub
    calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: FakeHub(calls, token))
    url = push_to_hub(folder, "someone/at-sca-3", private=True, token="hf_x", revision="main")
    assert url == "https://huggingface.co/someone/at-sca-3/commit/0123abc"
    assert calls[:2] == [("token", "hf_x"), ("create_repo", "someone/at-sca-3", "model", True, True)]
    _, repo, revision, files, message = calls[2]
    assert (repo, revision, message) == ("someone/at-sca-3", "main", "Upload fastsca model")
    assert files == {name: (folder / name).read_bytes()
                     for name in ("config.json", "model.safetensors", "labels.csv", "README.md")}
    calls.clear()   # a checkpoint is converted on the way
    push_to_hub(checkpoints["baseline"], "someone/baseline")
    uploaded = calls[2][3]
    assert json.loads(uploaded["config.json"])["model"]["name"] == "baseline" and "README.md" in uploaded


def test_push_to_hub_refuses_a_folder_that_does_not_load(folder, monkeypatch):
    import huggingface_hub
    calls = []
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: FakeHub(calls, token))
    (folder / "labels.csv").unlink()
    with pytest.raises(PretrainedError, match="no labels.csv in the folder"):
        push_to_hub(folder, "someone/at-sca-3")
    assert calls == []


def test_push_to_hub_refused_by_the_hub_is_one_line(folder, monkeypatch):
    import huggingface_hub
    from huggingface_hub.errors import HfHubHTTPError

    class Refusing(FakeHub):
        def create_repo(self, *args, **kwargs):
            # made without its HTTP response, whose class differs between huggingface_hub versions
            error = HfHubHTTPError.__new__(HfHubHTTPError)
            Exception.__init__(error, "401 Client Error: Unauthorized for url: https://huggingface.co/api/repos/create")
            raise error
    monkeypatch.setattr(huggingface_hub, "HfApi", lambda token=None: Refusing([], token))
    with pytest.raises(PretrainedError) as error:
        push_to_hub(folder, "someone/at-sca-3")
    assert str(error.value) == ("someone/at-sca-3: the Hugging Face Hub refused the upload (401 Client Error: "
                                "Unauthorized for url: https://huggingface.co/api/repos/create); check the repo id, "
                                "your token (`hf auth login`) and the network")
