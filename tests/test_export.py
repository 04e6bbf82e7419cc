"""`python -m fastsca.export`: the ONNX file (onnxruntime) and the torch.export program give PyTorch's outputs
within 1e-4 on random, synthetic and real log-mels, at any batch size; both carry the reference attention path;
the front end's settings and the label names travel with them; missing packages are one line."""
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fastsca.audio import load_audio
from fastsca.export import ExportableModel, main
from fastsca.frontend import log_mel
from fastsca.inference import load_trained_model
from fastsca.profiles import MODEL_PROFILES
from fastsca.run_options import RunOptions
from train import checkpoint

from test_checkpoint import LABELS, tiny_config, tiny_payload

onnx = pytest.importorskip("onnx", reason="the export extra (onnx, onnxscript, onnxruntime) is not installed")
onnxruntime = pytest.importorskip("onnxruntime", reason="the export extra is not installed")
REAL_AUDIO = Path(__file__).parents[2] / "shared" / "real-audio" / "clips"


@pytest.fixture(scope="module")
def exported(tmp_path_factory) -> dict:
    """The cpu profile's at-sca-3 (quarter width) on 1 s clips after one step, exported both ways by the command."""
    folder = tmp_path_factory.mktemp("export")
    config = tiny_config("at-sca-3")
    config = replace(config, model=replace(config.model, channels=MODEL_PROFILES["cpu"].channels))
    checkpoint.save(folder / "best.pt", tiny_payload(config))
    main([str(folder / "best.pt"), "--onnx", str(folder / "model.onnx"), "--torch-export", str(folder / "model.pt2")])
    trained = load_trained_model(folder / "best.pt")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1   # the shared 2-core box: more threads wait on each other
    extra = {"fastsca.json": ""}
    program = torch.export.load(str(folder / "model.pt2"), extra_files=extra).module()
    return {"folder": folder, "trained": trained, "reference": ExportableModel(trained),
            "onnx": onnxruntime.InferenceSession(str(folder / "model.onnx"), options,
                                                 providers=["CPUExecutionProvider"]),
            "program": program, "program_metadata": json.loads(extra["fastsca.json"])}


def assert_all_agree(exported, mel: torch.Tensor) -> None:
    """ONNX and torch.export outputs against PyTorch's reference path for one log-mel batch (B, 1, 40, 64)."""
    with torch.no_grad():
        want = exported["reference"](mel)
        program = exported["program"](mel)
    onnx_out = exported["onnx"].run(["clip", "frame"], {"log_mel": mel.numpy()})
    for got_onnx, got_program, expected in zip(onnx_out, program, want):
        torch.testing.assert_close(torch.from_numpy(got_onnx), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(got_program, expected, atol=1e-5, rtol=0)
    assert want[0].shape == (len(mel), len(LABELS)) and want[1].shape == (len(mel), 10, len(LABELS))


@pytest.mark.parametrize("batch", [1, 2, 5])
def test_random_log_mels_at_any_batch(exported, batch):
    assert_all_agree(exported, torch.randn(batch, 1, 40, 64) * 20 - 40)


def test_a_synthetic_clip(exported):
    t = torch.arange(16000, dtype=torch.float64) / 16000
    chirp = 0.3 * torch.sin(2 * torch.pi * (200 + 3000 * t) * t) + 0.01 * torch.randn(16000, dtype=torch.float64)
    assert_all_agree(exported, log_mel(chirp[None], exported["trained"].log_mel))


def test_a_real_clip(exported):
    if not REAL_AUDIO.is_dir():
        pytest.skip(f"{REAL_AUDIO} is absent (the shared real-audio clips)")
    clips = sorted(REAL_AUDIO.glob("*.flac"))
    path = clips[np.random.default_rng().integers(len(clips))]
    waveform = load_audio(path, 16000, 16000)                     # its first second, 16 kHz mono
    assert_all_agree(exported, log_mel(torch.from_numpy(waveform)[None], exported["trained"].log_mel))


def test_the_time_axis_is_fixed(exported):
    with pytest.raises(Exception, match="log_mel"):   # onnxruntime names the input whose shape is wrong
        exported["onnx"].run(None, {"log_mel": np.zeros((1, 1, 41, 64), np.float32)})


def test_metadata_travels_with_both_files(exported):
    trained = exported["trained"]
    props = {p.key: p.value for p in onnx.load(str(exported["folder"] / "model.onnx")).metadata_props}
    meta = json.loads(props["fastsca.config"])
    assert meta["label_names"] == list(LABELS) and meta["log_mel"]["clip_samples"] == trained.log_mel.clip_samples
    assert meta["attention_path"] == "reference (fused_attention=False)"
    assert exported["program_metadata"] == meta
    assert sorted(p.name for p in exported["folder"].iterdir()) == ["best.pt", "model.onnx", "model.pt2"]


def test_a_fused_checkpoint_exports_the_reference_path_with_its_weights(exported):
    trained = exported["trained"]
    fused = replace(trained, model=type(trained.model)(trained.model.config, RunOptions(fused_attention=True)).eval())
    fused.model.load_state_dict(trained.model.state_dict())
    exportable = ExportableModel(fused)
    assert not exportable.model.options.fused_attention
    mel = torch.randn(3, 1, 40, 64) * 20 - 40
    with torch.no_grad():
        for got, want in zip(exportable(mel), fused.model(mel)):
            torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)
    domains = {node.domain for node in onnx.load(str(exported["folder"] / "model.onnx")).graph.node}
    assert not any("fastsca" in domain for domain in domains)


def test_missing_export_packages_are_one_line(exported, monkeypatch, capsys, tmp_path):
    monkeypatch.setitem(sys.modules, "onnxscript", None)   # as if not installed
    with pytest.raises(SystemExit) as exit_info:
        main([str(exported["folder"] / "best.pt"), "--onnx", str(tmp_path / "m.onnx")])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == ('error: --onnx needs the onnxscript package: pip install "fastsca[export]" '
                                       '(from a checkout: pip install -e ".[export]")\n')
    assert not (tmp_path / "m.onnx").exists()


def test_bad_arguments(exported, capsys, tmp_path):
    with pytest.raises(SystemExit) as exit_info:
        main([str(exported["folder"] / "best.pt")])
    assert exit_info.value.code == 2 and "give --onnx model.onnx, --torch-export model.pt2, or both" in \
        capsys.readouterr().err
    audio = tmp_path / "clip.wav"
    soundfile.write(audio, np.zeros(1600, np.float32), 16000)
    for argv, message in [([str(audio), "--onnx", str(tmp_path / "m.onnx")], "not a checkpoint but a WAV"),
                          ([str(exported["folder"] / "best.pt"), "--onnx", str(tmp_path / "no" / "m.onnx")],
                           "its folder does not exist")]:
        with pytest.raises(SystemExit) as exit_info:
            main(argv)
        err = capsys.readouterr().err
        assert exit_info.value.code == 2 and message in err and len(err.splitlines()) == 1
