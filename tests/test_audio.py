"""Reading audio files: every format, any rate, stereo to mono, anti-aliased resampling, pad/cut, errors."""
import numpy as np
import pytest
import soundfile

from fastsca.audio import AudioError, fit_length, load_audio


def tone(freq: float, rate: int, seconds: float, channels: int = 1) -> np.ndarray:
    t = np.arange(int(rate * seconds)) / rate
    wave = 0.5 * np.sin(2 * np.pi * freq * t)
    return np.stack([wave * (c + 1) / channels for c in range(channels)], axis=1) if channels > 1 else wave


def dominant_hz(waveform: np.ndarray, rate: int) -> float:
    spectrum = np.abs(np.fft.rfft(waveform))
    return np.fft.rfftfreq(len(waveform), 1 / rate)[spectrum.argmax()]


@pytest.mark.parametrize("ext, subtype, tol", [
    ("wav", "PCM_16", 1e-4), ("flac", "PCM_16", 1e-4), ("ogg", "VORBIS", None), ("mp3", "MPEG_LAYER_III", None),
])
def test_every_format_reads_back(tmp_path, ext, subtype, tol):
    wave = tone(440 + 100 * np.random.rand(), 16000, 2.0)
    path = tmp_path / f"clip.{ext}"
    soundfile.write(path, wave, 16000, subtype=subtype)
    out = load_audio(path)
    assert out.dtype == np.float32 and out.ndim == 1
    assert dominant_hz(out, 16000) == pytest.approx(dominant_hz(wave, 16000), abs=1.0)
    if tol is not None:                          # lossless: sample for sample
        np.testing.assert_allclose(out, wave, atol=tol)
    else:                                        # lossy codecs may add priming samples
        assert abs(len(out) - len(wave)) < 4096 and np.sqrt(np.mean(out**2)) == pytest.approx(0.5 / np.sqrt(2), rel=0.1)


def test_stereo_44k_is_averaged_and_resampled(tmp_path):
    stereo = tone(1000, 44100, 1.0, channels=2)                  # right channel twice the left
    path = tmp_path / "stereo.wav"
    soundfile.write(path, stereo, 44100, subtype="FLOAT")
    out = load_audio(path, sample_rate=16000)
    assert len(out) == 16000
    assert dominant_hz(out, 16000) == pytest.approx(1000, abs=1.0)
    assert np.sqrt(np.mean(out[1000:-1000] ** 2)) == pytest.approx(0.375 / np.sqrt(2), rel=0.01)


def test_resampling_is_anti_aliased(tmp_path):
    path = tmp_path / "high.wav"
    soundfile.write(path, tone(12000, 44100, 1.0), 44100, subtype="FLOAT")   # above the 8 kHz Nyquist
    out = load_audio(path, sample_rate=16000)
    assert np.sqrt(np.mean(out**2)) < 1e-3                        # would alias to 4 kHz at full level


def test_pad_and_cut(tmp_path):
    path = tmp_path / "short.wav"
    soundfile.write(path, tone(300, 16000, 3.0), 16000, subtype="FLOAT")
    padded = load_audio(path, clip_samples=160000)
    assert padded.shape == (160000,) and np.all(padded[48000:] == 0) and np.abs(padded[:48000]).max() > 0.4
    assert load_audio(path, clip_samples=1000).shape == (1000,)
    np.testing.assert_array_equal(fit_length(np.arange(5.0), 3), [0, 1, 2])


def test_missing_file_is_a_clear_error(tmp_path):
    with pytest.raises(AudioError, match=r"nothere\.wav: no such file"):
        load_audio(tmp_path / "nothere.wav")


@pytest.mark.parametrize("content", [b"", b"RIFF\x24\x00\x00\x00WAVEfmt ", b"<html>404 not found</html>\n" * 200])
def test_corrupt_file_is_a_clear_error(tmp_path, content):
    path = tmp_path / "bad.mp3"
    path.write_bytes(content)
    with pytest.raises(AudioError, match=r"bad\.mp3: .*re-download or re-encode"):
        load_audio(path)


@pytest.mark.parametrize("rate", [16000, 44100])
def test_a_part_of_a_long_file_is_read_alone(tmp_path, rate):
    """Only the frames asked for are decoded (a 3-hour file cost 1 GB before): memory stays flat with the
    file's length, and the part matches the same seconds cut from the whole file."""
    import tracemalloc
    seconds, start = 120, round(np.random.uniform(30, 100), 2)     # on both rates' sample grids
    wave = tone(300 + 100 * np.random.rand(), rate, seconds)
    path = tmp_path / "long.flac"
    soundfile.write(path, wave, rate)
    tracemalloc.start()
    part = load_audio(path, 16000, clip_samples=16000, start=start)
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert part.shape == (16000,) and peak < 2_000_000          # the whole file decoded is 120 s x rate x 4 bytes
    whole = load_audio(path, 16000)
    first = round(start * 16000)
    np.testing.assert_allclose(part, whole[first:first + 16000], atol=1e-4 if rate == 16000 else 2e-3)


def test_antiphase_channels_keep_the_loudest_not_silence(tmp_path):
    wave = tone(440 + 100 * np.random.rand(), 16000, 1.0)
    soundfile.write(tmp_path / "anti.wav", np.stack([wave, -wave, 0.5 * wave, -0.5 * wave], axis=1), 16000,
                    subtype="FLOAT")
    np.testing.assert_allclose(load_audio(tmp_path / "anti.wav"), wave, atol=1e-7)
