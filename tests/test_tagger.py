"""`fastsca.Tagger`: the README's Python API run as printed, waveforms (numpy or torch, mono or multichannel, any
rate) tagged as the same samples in a file, files in bulk with bad ones skipped, and one-line errors."""
import json
import re
import zipfile
from pathlib import Path

import numpy as np
import pytest
import soundfile
import torch

import fastsca
from fastsca.audio import AudioError
from fastsca.events import detect_events
from fastsca.hub import save_pretrained_from_checkpoint
from fastsca.frontend import log_mel
from fastsca.inference import CheckpointError, load_trained_model
from fastsca.tagging.engine import StreamConfig, tag_file
from train import checkpoint

from test_checkpoint import LABELS, tiny_config, tiny_payload

README = Path(__file__).parents[1] / "README.md"


@pytest.fixture(scope="module")
def best(tmp_path_factory) -> Path:
    """A one-step at-sca-3 checkpoint (1 s clips, 5 classes)."""
    path = tmp_path_factory.mktemp("run") / "best.pt"
    checkpoint.save(path, tiny_payload(tiny_config("at-sca-3")))
    return path


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One torch thread, as `fastsca.tag` runs by default (on the shared 2-core box 2 threads ran 3x slower)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tagger(best) -> fastsca.Tagger:
    return fastsca.Tagger.from_pretrained(best)


def noise(channels: int, samples: int, seed: int = 25) -> np.ndarray:
    """(channels, samples) float32 noise with a tone in it, drawn from `seed`."""
    rng = np.random.default_rng(seed)
    tone = 0.3 * np.sin(2 * np.pi * rng.uniform(300, 3000) * np.arange(samples) / 16000)
    return (0.1 * rng.standard_normal((channels, samples)) + tone).astype(np.float32)


def python_api_example() -> str:
    """The ```python block of the README's "## Python API" section."""
    section = README.read_text().split("\n## Python API\n", 1)[1].split("\n## ", 1)[0]
    return re.search(r"```python\n(.*?)```", section, re.DOTALL).group(1)


def test_readme_example_runs_as_printed(best, tmp_path, monkeypatch, capsys):
    (tmp_path / "runs" / "at-sca-3-cpu").mkdir(parents=True)
    (tmp_path / "runs" / "at-sca-3-cpu" / "best.pt").write_bytes(best.read_bytes())
    waveform = noise(2, 66150)                          # 1.5 s of stereo at 44.1 kHz
    soundfile.write(tmp_path / "clip.wav", waveform.T, 44100, subtype="FLOAT")
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(python_api_example(), namespace)
    result = namespace["result"]
    tags = tag_file(load_trained_model(best), "clip.wav")   # what `python -m fastsca.tag clip.wav` computes
    np.testing.assert_array_equal(result.clip, tags.clip)
    np.testing.assert_array_equal(result.frame, tags.frame)
    assert result.frame.shape == (15, len(LABELS)) and result.label_names == LABELS
    top = sorted(zip(LABELS, tags.clip.tolist()), key=lambda pair: -pair[1])
    assert result.top_k(5) == top and result.top_k(2) == top[:2]
    assert result.events == detect_events(tags.frame, 0.1, LABELS, "waveform", clip_probs=tags.clip)
    lines = "".join(f"{e.onset:.1f}-{e.offset:.1f} s  {e.label}  {e.score:.2f}\n" for e in result.events)
    assert capsys.readouterr().out == f"{top}\n{lines}"
    assert namespace["pipeline"] == [{"label": label, "score": score} for label, score in top]
    assert [r.name for r in namespace["results"]] == ["waveform[0]", "waveform[1]"]
    # 1e-6: the batch's windows run in one forward pass, whose float32 sums may differ in the last bit
    np.testing.assert_allclose(namespace["results"][1].clip, result.clip, atol=1e-6, rtol=0)
    assert result.embedding.shape == (8,) and result.frame_embeddings.shape == (15, 8)


@pytest.mark.parametrize("channels, rate", [(1, 16000), (2, 22050), (3, 8000)])
def test_a_waveform_is_tagged_as_the_same_samples_in_a_file(tagger, tmp_path, channels, rate):
    waveform = noise(channels, int(1.7 * rate))   # 27200 samples at 16 kHz: 68 log-mel frames, 17 output frames
    path = tmp_path / "same.wav"
    soundfile.write(path, waveform.T, rate, subtype="FLOAT")
    from_file = tagger(str(path))
    inputs = [waveform, torch.from_numpy(waveform)] + ([waveform[0], torch.from_numpy(waveform[0])] if channels == 1
                                                       else [])
    for audio in inputs:
        result = tagger(audio, rate)
        np.testing.assert_array_equal(result.clip, from_file.clip)
        np.testing.assert_array_equal(result.frame, from_file.frame)
        assert result.name == "waveform" and result.seconds == from_file.seconds
    assert from_file.name == str(path) and from_file.frame.shape == (17, len(LABELS))


def test_int16_samples_are_scaled_to_full_scale(tagger):
    pcm = (noise(1, 20000)[0].clip(-1, 1) * 32767).astype(np.int16)
    np.testing.assert_array_equal(tagger(pcm, 16000).clip, tagger(pcm / 32768.0, 16000.0).clip)   # a whole float rate


def test_result_helpers(tagger):
    result = tagger(noise(1, 16000), 16000)
    best_label, best_probability = result.top_k(1)[0]
    assert best_probability == result.clip.max() == result.probability(best_label)
    with pytest.raises(KeyError, match="'dog' is not a class of the model"):
        result.probability("dog")
    silent = tagger(np.zeros(16000, np.float32), 16000)
    assert silent.silent and silent.top_k(3) == [] and silent.events == [] and not silent.clip.any()


def test_a_pretrained_folder_tags_as_its_checkpoint(tagger, best, tmp_path):
    folder = save_pretrained_from_checkpoint(best, tmp_path / "pretrained")
    waveform = noise(1, 24000)
    np.testing.assert_array_equal(fastsca.Tagger.from_pretrained(folder)(waveform, 16000).frame,
                                  tagger(waveform, 16000).frame)


def test_files_in_bulk_skip_the_bad_ones(tagger, tmp_path):
    good = [tmp_path / "a.flac", tmp_path / "b.wav"]
    soundfile.write(good[0], noise(1, 40000)[0], 16000)
    soundfile.write(good[1], noise(1, 9000)[0], 16000)
    text, missing = tmp_path / "notes.wav", tmp_path / "missing.wav"
    text.write_text("not audio\n")
    results, errors = tagger.tag_files([good[0], text, missing, good[1]])
    assert [r.name for r in results] == [str(good[0]), str(good[1])]
    assert [r.frame.shape[0] for r in results] == [25, 6]
    assert list(errors) == [str(text), str(missing)]
    assert all(len(message.splitlines()) == 1 for message in errors.values())
    assert errors[str(missing)] == f"{missing}: no such file; check the path"


def test_folders_and_archives_in_bulk_are_walked_as_the_command_walks_them(tagger, tmp_path):
    folder = tmp_path / "field"
    (folder / "day2").mkdir(parents=True)
    soundfile.write(folder / "day2" / "b.wav", noise(1, 9000)[0], 16000)
    soundfile.write(folder / "a.flac", noise(1, 40000)[0], 16000)
    (folder / "notes.txt").write_text("not audio\n")
    with zipfile.ZipFile(tmp_path / "more.zip", "w") as archive:
        archive.write(folder / "a.flac", "inside/c.flac")
    results, errors = tagger.tag_files([folder, tmp_path / "more.zip"])
    assert [r.name for r in results] == [f"{folder}/a.flac", f"{folder}/day2/b.wav",
                                         f"{tmp_path}/more.zip/inside/c.flac"]
    assert [r.frame.shape[0] for r in results] == [25, 6, 25]
    np.testing.assert_array_equal(results[2].frame, results[0].frame)   # the archive's copy of a.flac
    assert list(errors) == [str(folder / "notes.txt")] and "not an audio file" in errors[str(folder / "notes.txt")]
    with pytest.raises(AudioError, match=r"field: a folder, not an audio file; tag the files in it with "
                                         r"tagger.tag_files\(\[folder\]\)"):
        tagger(folder)


@pytest.mark.parametrize("audio, rate, message", [
    (np.ones((2, 2, 16000, 1), np.float32), 16000, "must be (samples,) or (channels, samples)"),
    (np.zeros(0, np.float32), 16000, "must be (samples,) or (channels, samples) with samples in it"),
    (np.ones((16000, 2), np.float32), 16000, "has more channels than samples"),
    (np.ones((2, 16000, 1), np.float32), 16000, "has more channels than samples"),   # a batch of 2: each checked
    (np.ones(16000, np.float32), 0, "sample_rate must be a whole number of Hz from 1 to 768000, got 0"),
    (np.ones(16000, np.float32), -16000, "sample_rate must be a whole number of Hz from 1 to 768000, got -16000"),
    (np.ones(16000, np.float32), 1e12, "sample_rate must be a whole number of Hz from 1 to 768000, got 1000000000000"),
    (np.ones(16000, np.float32), 16000.5, "sample_rate must be a whole number of Hz"),
    (np.ones(16000, np.float32), True, "sample_rate must be a whole number of Hz"),
    ([np.ones(16000, np.float32)], -1, "sample_rate must be a whole number of Hz"),             # a batch too
    (np.ones(16000, np.float32), None, "give the waveform's sample_rate"),
    (np.array(["a", "b"]), 16000, "must hold float or integer samples"),
])
def test_bad_waveforms_are_one_line_errors(tagger, audio, rate, message):
    with pytest.raises(ValueError, match=re.escape(message)) as error:
        tagger(audio, rate)
    assert len(str(error.value).splitlines()) == 1


def test_a_nan_sample_is_named(tagger):
    waveform = noise(2, 16000)
    waveform[1, 8000] = np.nan
    with pytest.raises(ValueError, match=re.escape("waveform: sample 8000 (0.500 s) is NaN or infinite")):
        tagger(waveform, 16000)


def test_a_long_file_is_streamed_in_blocks(best, tagger, tmp_path):
    path = tmp_path / "long.flac"
    soundfile.write(path, noise(1, 45 * 16000)[0], 16000)
    in_blocks = fastsca.Tagger.from_pretrained(best, stream=StreamConfig(block_seconds=1.3))(path)
    whole = tagger(path)   # 30 s blocks
    assert in_blocks.frame.shape == (450, len(LABELS)) and in_blocks.seconds == 45.0
    np.testing.assert_allclose(in_blocks.frame, whole.frame, atol=1e-5, rtol=0)
    np.testing.assert_allclose(in_blocks.clip, whole.clip, atol=1e-5, rtol=0)


def test_embeddings_are_the_heads_frame_features_and_their_attention_weighted_mean(tagger, best):
    waveform = noise(1, 16000, seed=281)[0]                       # exactly one 1 s window
    result = tagger(waveform, 16000)
    model = load_trained_model(best).model
    features = {}
    model.pooling.register_forward_hook(lambda m, inputs, out: features.__setitem__("x", inputs[0]))
    with torch.no_grad():
        model(log_mel(torch.from_numpy(waveform.astype(np.float64))[None], tagger.trained.log_mel).float())
        x = features["x"][0]                                        # (T', C)
        weight = torch.softmax(model.pooling.attention(x), dim=0).mean(dim=1)   # eq. 2's weights, over classes
    assert result.frame_embeddings.shape == (10, 8) and result.embedding.shape == (8,)
    # 1e-5: the streamed log-mel and the clip's agree to float32 rounding, not bit for bit
    np.testing.assert_allclose(result.frame_embeddings, x.numpy(), atol=1e-5, rtol=1e-5)
    np.testing.assert_allclose(result.embedding, (weight[:, None] * x).sum(dim=0).numpy(), atol=1e-5, rtol=1e-5)


def test_embeddings_of_a_long_file_are_stitched_like_the_frames(tagger, best):
    result = tagger(noise(2, 47_123, seed=282), 16000)           # 2.95 s: three windows
    assert result.frame_embeddings.shape == (result.frame.shape[0], 8) == (29, 8)
    x = torch.from_numpy(result.frame_embeddings)                   # (T', C)
    with torch.no_grad():                                           # eq. 2's weights over the whole file
        weight = torch.softmax(tagger.trained.model.pooling.attention(x), dim=0).mean(dim=1)
    # 1e-6: the same float32 sums, in another order
    np.testing.assert_allclose(result.embedding, (weight[:, None] * x).sum(dim=0).numpy(), atol=1e-6, rtol=1e-6)
    without = fastsca.Tagger.from_pretrained(best, embeddings=False)(noise(2, 47_123, seed=282), 16000)
    assert without.embedding is None and without.frame_embeddings is None
    np.testing.assert_array_equal(without.frame, result.frame)


def test_a_batch_is_tagged_as_each_waveform_alone(tagger):
    batch = noise(3, 21_001, seed=283)                            # (N, samples): three mono clips
    alone = [tagger(waveform, 22050) for waveform in batch]
    for results in (tagger.batch(batch, 22050), tagger(list(batch), 22050), tagger(batch[:, None], 22050)):
        assert [r.name for r in results] == ["waveform[0]", "waveform[1]", "waveform[2]"]
        for got, want in zip(results, alone):   # 1e-6: one forward pass for all the clips' windows instead of
            # one per clip: the convolutions' float32 sums differ in the last bit (6e-8 seen)
            np.testing.assert_allclose(got.clip, want.clip, atol=1e-6, rtol=0)
            np.testing.assert_allclose(got.frame, want.frame, atol=1e-6, rtol=0)
            np.testing.assert_allclose(got.embedding, want.embedding, atol=1e-6, rtol=1e-6)


def test_pipeline_style_results(tagger):
    result = tagger(noise(1, 19_000, seed=284)[0], 16000)
    pipeline = result.as_pipeline(top_k=3)
    assert pipeline == [{"label": label, "score": score} for label, score in result.top_k(3)]
    assert [p["score"] for p in pipeline] == sorted((float(p) for p in result.clip), reverse=True)[:3]
    assert tagger(np.zeros(16000, np.float32), 16000).as_pipeline() == []   # digital silence: no label


def test_bfloat16_and_float16_tensors_are_tagged_as_their_float32_values(tagger):
    waveform = torch.from_numpy(noise(2, 17_003, seed=285))
    for dtype in (torch.bfloat16, torch.float16):
        low = waveform.to(dtype)
        np.testing.assert_array_equal(tagger(low, 16000).clip, tagger(low.float().numpy(), 16000).clip)


@pytest.mark.parametrize("field, value", [("n_mels", 32), ("clip_samples", 24000)])
def test_a_model_folder_whose_front_end_disagrees_with_its_weights_is_one_line(best, tmp_path, field, value):
    folder = save_pretrained_from_checkpoint(best, tmp_path / "edited")
    config = json.loads((folder / "config.json").read_text())
    config["log_mel"][field] = value
    (folder / "config.json").write_text(json.dumps(config))
    frames, mels = (60, 64) if field == "clip_samples" else (40, 32)
    with pytest.raises(CheckpointError) as error:
        fastsca.Tagger.from_pretrained(folder)
    assert str(error.value) == (f"{folder}: its front end makes {frames} frames x {mels} mel bins per window but its "
                                f"network takes 40 x 64; the model folder was edited or mixed from two models: write "
                                f"it again with `python -m fastsca.hub CKPT --out FOLDER`")
