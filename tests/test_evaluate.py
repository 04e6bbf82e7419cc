"""Evaluation: the metrics of a model over a loader, the table, the one-line form and per-class CSV, and the
CLI's errors."""
import shutil

import numpy as np
import pytest
import torch

from fastsca.inference import load_trained_model
from fastsca.metrics import tagging_metrics
from fastsca.model import build_model
from train import checkpoint, evaluate
from train.data.synth import SynthConfig, ensure_builtin

from test_checkpoint import tiny_config, tiny_payload


@pytest.mark.slow
def test_evaluate_equals_metrics_of_the_model_outputs():
    model = build_model("at-sca-2", num_classes=5, input_frames=40, channels=(4, 4, 8, 8, 8, 8, 8))
    batches = [(torch.randn(n, 1, 40, 64), (torch.rand(n, 5) > 0.6).float()) for n in (7, 7, 3)]
    metrics, clips = evaluate.evaluate(model, batches, torch.device("cpu"))
    assert model.training   # put back as it was
    model.eval()
    with torch.no_grad():
        scores = torch.cat([model(x).clip for x, _ in batches]).numpy()
    expected = tagging_metrics(torch.cat([y for _, y in batches]).numpy(), scores)
    assert clips == 17
    np.testing.assert_allclose(metrics.average_precision, expected.average_precision)
    assert metrics.summary() == pytest.approx(expected.summary())


def test_table_and_per_class_csv(tmp_path):
    targets = np.array([[1, 0, 0], [0, 1, 0], [1, 1, 0], [0, 0, 0]])
    scores = np.array([[0.9, 0.5, 0.1], [0.3, 0.8, 0.5], [0.6, 0.4, 0.2], [0.1, 0.1, 0.3]])
    metrics = tagging_metrics(targets, scores)
    table = evaluate.format_table(metrics)
    assert "mAP               0.9167" in table and "mAUC              0.8750" in table
    assert "excluded classes  1" in table
    evaluate.write_per_class_csv(tmp_path / "m.csv", metrics, ("x", "y", "z"))
    assert (tmp_path / "m.csv").read_text().splitlines() == [
        "name,AP,AUC,positives", "x,1.000000,1.000000,2", "y,0.833333,0.750000,2", "z,,,0"]


def test_table_and_line_show_undefined_figures_and_single_label_accuracy():
    rng = np.random.default_rng(5734)
    truth = rng.integers(0, 3, 20)
    truth[:3] = [0, 1, 2]
    scores = rng.random((20, 3))
    metrics = tagging_metrics(np.eye(3)[truth], scores)
    accuracy = float((scores.argmax(axis=1) == truth).mean())
    assert evaluate.format_table(metrics).splitlines()[-1] == (f"accuracy          {accuracy:.4f} (top-1: every clip "
                                                               f"has one label)")
    summary = metrics.summary()
    assert evaluate.summary_text(summary) == (f"mAP {summary['mAP']:.4f}  mAUC {summary['mAUC']:.4f}  "
                                              f"d' {summary['d_prime']:.3f}  accuracy {accuracy:.4f}")
    unscorable = tagging_metrics(np.ones((7, 2)), rng.random((7, 2)))
    assert evaluate.format_table(unscorable).splitlines()[:3] == ["mAP               -", "mAUC              -",
                                                                  "d-prime           -"]
    assert evaluate.summary_text(unscorable.summary()) == ("mAP -  mAUC -  d' -  (2 classes not scored: no positive "
                                                           "or no negative clip)")


@pytest.fixture(scope="module")
def other_labels_split(tmp_path_factory):
    """A 1 s built-in eval split whose 3 classes are not the checkpoint's 5."""
    _, eval_path = ensure_builtin(tmp_path_factory.mktemp("synth"),
                                  SynthConfig(n_classes=3, clip_seconds=1.0, event_seconds=(0.1, 0.4), n_train=4,
                                              n_eval=8, max_events=2), workers=1)
    return eval_path


@pytest.mark.parametrize("case, message", [
    ("labels", "has labels (3: tone, up-chirp, down-chirp) but"),
    ("labels", "was trained on (5: a, b, c, ...)"),
    ("checkpoint", "no such checkpoint"),
    ("data", "no such shard file or folder"),
])
def test_cli_errors_are_one_line_exit_2(tmp_path, other_labels_split, case, message, capsys):
    path = tmp_path / "latest.pt"
    checkpoint.save(path, tiny_payload(tiny_config()))
    args = {"labels": [path, other_labels_split], "checkpoint": [tmp_path / "missing.pt", other_labels_split],
            "data": [path, tmp_path / "missing.h5"]}[case]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", str(args[0]), "--data", str(args[1])])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1 and lines[0].startswith("error: ")
    assert message in lines[0]


@pytest.mark.parametrize("kind", ["folder", "hub"])
def test_a_model_folder_or_hub_id_evaluates_as_its_checkpoint(kind, full_run, tmp_path, monkeypatch, capsys):
    from test_finetune import as_reference
    split, _ = evaluate.run_eval_split(load_trained_model(full_run / "best.pt"), str(full_run / "best.pt"))
    evaluate.main(["--checkpoint", str(full_run / "best.pt"), "--data", split, "--out", str(tmp_path / "ckpt")])
    expected = capsys.readouterr().out.splitlines()[1:5]   # the table: mAP, mAUC, d-prime, excluded classes
    reference = as_reference(kind, full_run, monkeypatch)
    evaluate.main(["--checkpoint", reference, "--data", split, "--out", str(tmp_path / kind)])
    assert capsys.readouterr().out.splitlines()[1:5] == expected
    assert (tmp_path / kind / "per_class_metrics.csv").read_text() == \
        (tmp_path / "ckpt" / "per_class_metrics.csv").read_text()
    # a folder or Hub id names no split of its own, and a Hub id no folder to write into
    missing = ["--data", split] if kind == "hub" else ["--out", str(tmp_path / kind)]
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", reference, *missing])
    [line] = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2
    assert ("give --out DIR" if kind == "hub" else "does not name the split its run was evaluated on") in line


def test_a_model_folder_writes_its_tables_beside_it(full_run, tmp_path, capsys):
    folder = tmp_path / "run" / "pretrained"
    shutil.copytree(full_run / "pretrained", folder)
    split, _ = evaluate.run_eval_split(load_trained_model(full_run / "best.pt"), str(full_run / "best.pt"))
    evaluate.main(["--checkpoint", str(folder), "--data", split])
    assert f"per-class metrics: {tmp_path / 'run' / 'per_class_metrics.csv'}" in capsys.readouterr().out
    assert sorted(p.name for p in folder.iterdir()) == ["README.md", "config.json", "labels.csv", "model.safetensors"]
