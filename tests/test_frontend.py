"""The log-mel reference: the defaults of docs/design.md, the Slaney mel matrix, and agreement with librosa."""
from dataclasses import replace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from fastsca.frontend import LogMelConfig, context_windows, log_mel, mel_filterbank
from train.data.synth import SynthConfig, make_clip

librosa = pytest.importorskip("librosa")


def librosa_log_mel(waveform: np.ndarray, config: LogMelConfig) -> np.ndarray:
    """librosa's log-mel with the same settings, cut to the kept frames: (frames, n_mels)."""
    mel = librosa.feature.melspectrogram(
        y=waveform, sr=config.sample_rate, n_fft=config.n_fft, hop_length=config.hop_length,
        win_length=config.window_length, window="hann", center=True, pad_mode=config.pad_mode, power=2.0,
        n_mels=config.n_mels, fmin=config.f_min, fmax=config.f_max, htk=False, norm="slaney")
    return librosa.power_to_db(mel, ref=1.0, amin=config.amin, top_db=None).T[: config.frames]


def assert_db_close(actual: np.ndarray, expected: np.ndarray, tol_db: float = 0.05, floor_db: float = 60.0) -> None:
    """Agree within tol_db wherever the expected power is within floor_db of its maximum."""
    audible = expected > expected.max() - floor_db
    error = np.abs(actual - expected)[audible]
    assert audible.mean() > 0.3 and error.max() <= tol_db, f"max error {error.max():.4f} dB over {audible.sum()} cells"


def test_defaults_are_design_md():
    config = LogMelConfig()
    assert (config.sample_rate, config.clip_samples, config.n_fft, config.window_length, config.hop_length) == \
        (16000, 160000, 1024, 1024, 400)
    assert (config.n_mels, config.f_min, config.f_max, config.amin, config.pad_mode) == \
        (64, 50.0, 8000.0, 1e-10, "reflect")
    assert config.frames == 400
    assert config.cutoff_db == pytest.approx(-100.0)


@pytest.mark.parametrize("overrides, message", [
    ({"n_fft": 512}, "n_fft"),
    ({"f_max": 9000.0}, "f_max"),
    ({"amin": 0.0}, "amin"),
    ({"pad_mode": "edge"}, "pad_mode"),
    ({"hop_length": 0}, "hop_length"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError, match=message):
        LogMelConfig(**overrides)


@pytest.mark.parametrize("config", [LogMelConfig(), LogMelConfig(n_mels=37, f_min=0.0, f_max=7000.0, n_fft=2048)])
def test_mel_matrix_matches_librosa(config):
    expected = librosa.filters.mel(sr=config.sample_rate, n_fft=config.n_fft, n_mels=config.n_mels,
                                   fmin=config.f_min, fmax=config.f_max, htk=False, norm="slaney", dtype=np.float64)
    torch.testing.assert_close(mel_filterbank(config).T, torch.from_numpy(expected), rtol=1e-9, atol=1e-12)


@pytest.mark.slow
@pytest.mark.parametrize("pad_mode", ["reflect", "constant"])
def test_log_mel_matches_librosa_on_a_synth_clip(pad_mode):
    config = LogMelConfig(pad_mode=pad_mode)
    clips = [make_clip(SynthConfig(), 0, int(i))[0] / 32768.0 for i in np.random.default_rng(87504).integers(0, 10**6, 2)]
    out = log_mel(torch.tensor(np.stack(clips), dtype=torch.float32), config)
    assert out.shape == (2, 1, 400, 64) and out.dtype == torch.float32
    for clip, got in zip(clips, out):
        assert_db_close(got[0].numpy(), librosa_log_mel(clip.astype(np.float32), config))


def test_log_mel_of_short_clips_and_awkward_sizes():
    config = LogMelConfig(clip_samples=16000, n_mels=37, hop_length=333)
    waveform = torch.randn(3, 16000) * 0.1
    out = log_mel(waveform, config)
    assert out.shape == (3, 1, 16000 // 333, 37)
    assert_db_close(out[1, 0].numpy(), librosa_log_mel(waveform[1].numpy(), config))


def test_log_mel_floor_is_amin():
    assert log_mel(torch.zeros(1, 16000), LogMelConfig(clip_samples=16000)).unique().tolist() == [-100.0]


def test_context_windows_join_into_the_log_mel_of_the_whole_file():
    config = LogMelConfig(clip_samples=16000)                  # 40 frames a window
    waveform = torch.randn(41000) * 0.1                        # 3 windows, the last one zero-padded
    windows = context_windows(waveform, config)
    assert windows.shape == (3, 16000 + 2 * 512)
    joined = log_mel(windows, config, with_context=True).flatten(0, 2)          # (120, 64)
    whole_file = F.pad(waveform, (0, 48000 - 41000))
    whole = log_mel(whole_file[None], replace(config, clip_samples=48000))[0, 0]
    torch.testing.assert_close(joined, whole, atol=1e-4, rtol=0)
    # padding each window on its own changes exactly the frames whose 1024-sample span crosses a join
    separate = log_mel(whole_file.view(3, 16000), config).flatten(0, 2)
    changed = ((separate - whole).abs().amax(dim=1) > 1e-3).nonzero().flatten().tolist()
    assert changed == [39, 40, 41, 79, 80, 81]


def test_context_windows_of_a_short_file_is_its_padded_clip():
    config = LogMelConfig(clip_samples=16000)
    waveform = torch.randn(5000) * 0.1
    torch.testing.assert_close(log_mel(context_windows(waveform, config), config, with_context=True),
                               log_mel(F.pad(waveform, (0, 11000))[None], config), atol=1e-4, rtol=0)
    with pytest.raises(ValueError, match="mono"):
        context_windows(torch.zeros(2, 16000), config)
