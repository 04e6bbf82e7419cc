"""`python -m fastsca.export`: the ONNX file (onnxruntime) and the torch.export program give PyTorch's outputs
within 1e-4 on random, synthetic and real log-mels, at any batch size; both carry the reference attention path;
the front end's settings and the label names travel with them; with --input waveform the graph holds the front end
and agrees with fastsca.frontend.log_mel and the model; missing packages are one line; a target that is an input,
or a file the command did not write, is refused."""
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

from fastsca.audio import load_audio
from fastsca.export import ExportableModel, main, reference_outputs
from fastsca.export_frontend import LogMelModule
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


@pytest.mark.slow
@pytest.mark.parametrize("batch", [1, 2, 5])
def test_random_log_mels_at_any_batch(exported, batch):
    assert_all_agree(exported, torch.randn(batch, 1, 40, 64) * 20 - 40)


@pytest.mark.slow
def test_a_synthetic_clip(exported):
    t = torch.arange(16000, dtype=torch.float64) / 16000
    chirp = 0.3 * torch.sin(2 * torch.pi * (200 + 3000 * t) * t) + 0.01 * torch.randn(16000, dtype=torch.float64)
    assert_all_agree(exported, log_mel(chirp[None], exported["trained"].log_mel))


@pytest.mark.slow
def test_a_real_clip(exported):
    if not REAL_AUDIO.is_dir():
        pytest.skip(f"{REAL_AUDIO} is absent (the shared real-audio clips)")
    clips = sorted(REAL_AUDIO.glob("*.flac"))
    path = clips[np.random.default_rng(5).integers(len(clips))]
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


def refused(argv, capsys) -> str:
    """The one error line of a refused export."""
    with pytest.raises(SystemExit) as exit_info:
        main(argv)
    err = capsys.readouterr().err
    assert exit_info.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_an_output_that_is_also_the_input_is_refused(exported, capsys, tmp_path):
    best = tmp_path / "best.pt"
    shutil.copy(exported["folder"] / "best.pt", best)
    before = best.read_bytes()
    for flag in ("--torch-export", "--onnx"):
        assert f"{flag} {best}: is the model being exported" in refused([str(best), flag, str(best)], capsys)
    folder = tmp_path / "model"   # a model folder's files are its inputs too
    from fastsca.hub import save_pretrained_from_checkpoint
    save_pretrained_from_checkpoint(best, folder)
    config = (folder / "config.json").read_bytes()
    assert "is the model being exported" in refused([str(folder), "--onnx", str(folder / "config.json")], capsys)
    assert best.read_bytes() == before and (folder / "config.json").read_bytes() == config


def test_a_file_it_did_not_write_needs_overwrite(exported, capsys, tmp_path):
    notes = tmp_path / "notes.onnx"
    notes.write_text("my notes\n")
    program = tmp_path / "program.pt2"
    shutil.copy(exported["folder"] / "model.onnx", program)   # an ONNX file is not a .pt2 this command wrote
    best = str(exported["folder"] / "best.pt")
    assert f"--onnx {notes}: exists and was not written by fastsca.export; give another file name, or " \
           f"--overwrite to replace it" in refused([best, "--onnx", str(notes)], capsys)
    assert "--torch-export" in refused([best, "--torch-export", str(program)], capsys)
    assert notes.read_text() == "my notes\n"
    assert "both name" in refused([best, "--onnx", str(tmp_path / "m"), "--torch-export", str(tmp_path / "m")], capsys)
    main([best, "--torch-export", str(program), "--overwrite"])
    capsys.readouterr()
    mel = torch.randn(2, 1, 40, 64, generator=torch.Generator().manual_seed(3)) * 20 - 40
    with torch.no_grad():   # the same program as the fixture's, so the same outputs to the bit
        for got, want in zip(torch.export.load(str(program)).module()(mel), exported["program"](mel)):
            assert torch.equal(got, want)


def test_an_earlier_export_is_replaced_without_overwrite(exported, capsys, tmp_path):
    earlier = tmp_path / "model.onnx"
    shutil.copy(exported["folder"] / "model.onnx", earlier)
    main([str(exported["folder"] / "best.pt"), "--onnx", str(earlier)])
    assert capsys.readouterr().out.startswith(f"wrote {earlier}: input log_mel")


@pytest.fixture(scope="module")
def waveform_exported(exported) -> dict:
    """The fixture's checkpoint exported both ways with the front end inside the graph (--input waveform)."""
    folder = exported["folder"]
    main([str(folder / "best.pt"), "--onnx", str(folder / "audio.onnx"), "--torch-export", str(folder / "audio.pt2"),
          "--input", "waveform"])
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    return {"trained": exported["trained"], "proto": onnx.load(str(folder / "audio.onnx")),
            "onnx": onnxruntime.InferenceSession(str(folder / "audio.onnx"), options,
                                                 providers=["CPUExecutionProvider"]),
            "program": torch.export.load(str(folder / "audio.pt2")).module()}


def test_the_waveform_graph_holds_the_front_end(waveform_exported):
    proto = waveform_exported["proto"]
    assert "STFT" in {node.op_type for node in proto.graph.node}
    (graph_input,) = proto.graph.input
    dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    assert graph_input.name == "waveform" and dims[1] == 16000 and isinstance(dims[0], str)   # dynamic batch
    meta = json.loads({p.key: p.value for p in proto.metadata_props}["fastsca.config"])
    assert meta["input"].startswith("waveform: float32 (batch, 16000) mono audio in [-1, 1] at 16000 Hz")


@pytest.mark.parametrize("batch, level", [(1, 0.5), (3, 0.01), (2, 1e-4)])
def test_waveforms_give_the_front_end_and_models_outputs(waveform_exported, batch, level):
    generator = torch.Generator().manual_seed(batch)
    audio = torch.randn(batch, 16000, generator=generator) * level
    audio[-1, 4000:9000] = 0.0   # a stretch of digital silence: the dB floor (amin) inside the graph too
    want = reference_outputs(waveform_exported["trained"], audio, waveform=True)   # float64 log_mel, then the model
    got_onnx = waveform_exported["onnx"].run(["clip", "frame"], {"waveform": audio.numpy()})
    with torch.no_grad():
        got_program = waveform_exported["program"](audio)
    # 1e-4: the graph's front end is float32 against log_mel's float64 (measured 1e-6 on the outputs), and
    # onnxruntime sums convolutions in another order (the log-mel export's tolerance)
    for onnx_out, program_out, expected in zip(got_onnx, got_program, want):
        torch.testing.assert_close(torch.from_numpy(onnx_out), expected, atol=1e-4, rtol=0)
        torch.testing.assert_close(program_out, expected, atol=1e-4, rtol=0)


def test_the_graphs_front_end_is_log_mel_in_float32(exported):
    config = exported["trained"].log_mel
    generator = torch.Generator().manual_seed(11)
    audio = torch.randn(3, config.clip_samples, generator=generator, dtype=torch.float64) * 0.1
    t = torch.arange(config.clip_samples, dtype=torch.float64) / config.sample_rate
    audio[1] = 0.3 * torch.sin(2 * torch.pi * (200 + 3000 * t) * t)   # a chirp: energy moving across the bins
    want = log_mel(audio, config)
    got = LogMelModule(config)(audio.to(torch.float32))
    assert got.dtype == torch.float32 and got.shape == want.shape
    # float32 STFT sums carry an error of ~1e-7 of the frame's energy, so a bin far below the loudest is off by
    # much in dB (0.09 dB at -95 dB); within 60 dB of the clip's maximum, as tests/test_frontend.py compares
    # with librosa, the difference measured 5e-5 dB: 1e-3 dB leaves room, and no more
    loud = want >= want.amax(dim=(1, 2, 3), keepdim=True) - 60.0
    torch.testing.assert_close(got.double()[loud], want.double()[loud], atol=1e-3, rtol=0)
