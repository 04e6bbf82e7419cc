"""`fastsca.tag`: windows over long files, top-k text and JSON, the Fig. 3 plot, and one-line errors per bad file."""
import json
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import soundfile
import torch

from fastsca import tag
from fastsca.frontend import log_mel
from fastsca.inference import load_trained_model
from train import checkpoint

from test_checkpoint import LABELS, tiny_config, tiny_payload


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, str]:
    """Untrained 1 s-clip checkpoints of an SCA-3 model and of the baseline (no attention)."""
    folder = tmp_path_factory.mktemp("checkpoints")
    paths = {}
    for preset in ("at-sca-3", "baseline"):
        paths[preset] = str(folder / f"{preset}.pt")
        checkpoint.save(folder / f"{preset}.pt", tiny_payload(tiny_config(preset)))
    return paths


@pytest.fixture
def audio(tmp_path) -> dict[str, str]:
    """A 2.5 s stereo flac at 44.1 kHz, a 0.3 s mono wav at 22.05 kHz, a text file named .wav, a missing path."""
    rng = np.random.default_rng()
    paths = {"flac": tmp_path / "long.flac", "wav": tmp_path / "short.wav", "text": tmp_path / "notes.wav",
             "missing": tmp_path / "missing.wav"}
    soundfile.write(paths["flac"], 0.1 * rng.standard_normal((110250, 2)), 44100)
    soundfile.write(paths["wav"], 0.1 * rng.standard_normal(6615), 22050)
    paths["text"].write_text("not audio\n")
    return {name: str(path) for name, path in paths.items()}


def test_long_file_is_tagged_window_by_window(checkpoints, audio):
    trained = load_trained_model(checkpoints["at-sca-3"])
    waveform = np.random.default_rng().standard_normal(40000).astype(np.float32) * 0.1   # 2.5 s: 3 windows
    tags = tag.tag_waveform(trained, waveform, "x")
    assert tags.seconds == 2.5 and tags.log_mel.shape == (120, 64) and tags.frame.shape == (30, len(LABELS))
    assert list(tags.spatial_maps) == ["block 5", "block 6", "block 7"]
    assert [m.shape for m in tags.spatial_maps.values()] == [(30, 4), (30, 2), (30, 1)]
    assert all(((m > 0) & (m < 1)).all() for m in tags.spatial_maps.values())
    # the log-mel is the whole file's, continuous over the joins of the windows
    whole = log_mel(torch.from_numpy(np.pad(waveform, (0, 8000)))[None], replace(trained.log_mel, clip_samples=48000))
    np.testing.assert_allclose(tags.log_mel, whole[0, 0].numpy(), atol=1e-4, rtol=0)
    # the clip probability is the largest over the windows
    with torch.no_grad():
        windows = trained.model(whole.view(3, 40, 64)[:, None]).clip
    np.testing.assert_allclose(tags.clip, windows.amax(dim=0).numpy(), rtol=1e-5)


def test_top_k_text_and_json(checkpoints, audio, capsys):
    tag.main([audio["flac"], audio["wav"], "--checkpoint", checkpoints["at-sca-3"], "--top-k", "3"])
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"{audio['flac']} (2.5 s)" and lines[4] == f"{audio['wav']} (0.3 s)"
    assert all(line.split()[1] in LABELS and 0 < float(line.split()[0]) < 1 for line in lines[1:4] + lines[5:8])

    tag.main([audio["flac"], "--checkpoint", checkpoints["at-sca-3"], "--json"])
    result = json.loads(capsys.readouterr().out)
    assert result[0]["file"] == audio["flac"] and result[0]["seconds"] == 2.5
    probabilities = [entry["probability"] for entry in result[0]["labels"]]
    assert len(probabilities) == 5 and probabilities == sorted(probabilities, reverse=True)


@pytest.mark.parametrize("preset", [pytest.param("at-sca-3", marks=pytest.mark.slow), "baseline"])
def test_plot_writes_a_png_per_file(checkpoints, audio, tmp_path, preset, capsys):
    out = tmp_path / "fig.png"
    tag.main([audio["flac"], "--checkpoint", checkpoints[preset], "--plot", str(out)])
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and out.stat().st_size > 20000
    tag.main([audio["flac"], audio["wav"], "--checkpoint", checkpoints[preset], "--plot", str(out)])
    assert (tmp_path / "fig-long.png").is_file() and (tmp_path / "fig-short.png").is_file()


def test_unreadable_files_are_reported_and_skipped(checkpoints, audio):
    # a subprocess, to see exactly what a user sees: one line per bad file, no traceback
    result = subprocess.run([sys.executable, "-m", "fastsca.tag", audio["missing"], audio["wav"], audio["text"],
                             "--checkpoint", checkpoints["at-sca-3"], "--top-k", "1"],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    errors = result.stderr.strip().splitlines()
    assert len(errors) == 3 and "Traceback" not in result.stderr
    assert errors[0].startswith(f"error: {audio['missing']}: no such file")
    assert errors[1].startswith(f"error: {audio['text']}: cannot decode audio")
    assert errors[2] == "error: 2 of 3 files could not be read"
    assert result.stdout.startswith(f"{audio['wav']} (0.3 s)\n")   # the readable file is still tagged


def test_missing_checkpoint_is_one_line_exit_2(audio, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_info:
        tag.main([audio["wav"], "--checkpoint", str(tmp_path / "none.pt")])
    lines = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(lines) == 1
    assert lines[0].startswith(f"error: {tmp_path / 'none.pt'}: no such checkpoint")
