"""`fastsca.plot`: the figure of `fastsca.tag --plot` speaks plainly (no paper symbols, frequencies in Hz at the
right mel bins), draws every attention mask on one 0-1 scale with its least, mean and largest weight (a constant
mask says so), draws each top class's onset threshold and names the classes the clip gate silences, and says
when the classes are the built-in synthetic ones."""
from dataclasses import replace

import matplotlib.pyplot as plt
import numpy as np
import pytest

from fastsca.events import EventConfig
from fastsca.frontend import mel_filterbank
from fastsca.inference import load_trained_model
from fastsca.tagging.result import PlotView, TagResult
from fastsca.plot import _figure, plot_tags
from train import checkpoint
from fastsca.builtin_classes import CLASS_NAMES

from test_checkpoint import LABELS, tiny_config, tiny_payload

SEED = 29


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    path = tmp_path_factory.mktemp("plot") / "best.pt"
    checkpoint.save(path, tiny_payload(tiny_config("at-sca-3")))
    return load_trained_model(path)


def file_tags(trained, block_7: np.ndarray | None = None) -> TagResult:
    """3.7 s of made-up tags: frames at 10 Hz, masks for blocks 6 and 7 (block 7's as given), clip probabilities
    0.9, 0.8, 0.2 for classes a, b, c (c below a 0.3 gate) and less for the others."""
    rng = np.random.default_rng(SEED)
    frames, n_mels = 37, trained.log_mel.n_mels
    block_6 = rng.uniform(0.05, 0.95, (frames, 4)).astype(np.float32)
    maps = {"block 6": block_6, "block 7": block_7 if block_7 is not None else rng.uniform(0, 1, (frames, 4))}
    view = PlotView(start=0.0, end=3.7, log_mel=rng.uniform(-80, 0, (148, n_mels)).astype(np.float32),
                    spatial_maps=maps)
    return TagResult(name="walk.wav", seconds=3.7, label_names=trained.label_names, clip=np.array([0.9, 0.8, 0.2, 0.1, 0.05]),
                    frame=rng.uniform(0, 1, (frames, len(LABELS))).astype(np.float32), frame_seconds=0.1,
                    silent=False, view=view)


def axis_titled(fig, start: str) -> plt.Axes:
    (ax,) = [ax for ax in fig.axes if ax.get_title(loc="left").startswith(start)]
    return ax


def test_plain_words_and_hz_at_the_right_mel_bins(trained):
    fig = _figure(file_tags(trained), trained, 3, [], None, EventConfig())
    texts = [fig.get_suptitle()] + [ax.get_title(loc="left") + ax.get_ylabel() for ax in fig.axes]
    assert not any(symbol in text for text in texts for symbol in ("M_s", "v_t", "mel bin"))
    ax = axis_titled(fig, "(a) the sound: log-mel spectrogram")
    assert ax.get_ylabel() == "frequency (Hz)"
    assert [t.get_text() for t in ax.get_yticklabels()] == ["500", "1k", "2k", "4k", "8k"]
    # each tick lies on the bin whose filter peaks nearest its frequency (bin i is drawn over [i, i + 1])
    filters = mel_filterbank(trained.log_mel).numpy()                              # (n_freqs, n_mels)
    peak_hz = filters.argmax(axis=0) * trained.log_mel.sample_rate / trained.log_mel.n_fft
    for position, hz in zip(ax.get_yticks(), (500, 1000, 2000, 4000, 8000)):
        nearest = int(np.abs(peak_hz - hz).argmin())
        assert nearest - 0.5 <= position <= nearest + 1.5, (hz, position, nearest)
    plt.close(fig)


def test_masks_share_one_scale_and_a_constant_one_says_so(trained):
    constant = np.full((37, 4), 0.97, np.float32)
    constant[5, 2] = 0.99
    fig = _figure(file_tags(trained, constant), trained, 3, [], None, EventConfig())
    varied, flat = axis_titled(fig, "(b) where block 6 looks"), axis_titled(fig, "(c) where block 7 looks")
    block_6 = file_tags(trained).view.spatial_maps["block 6"]
    assert varied.get_title(loc="left").endswith(f"weights {block_6.min():.2f} to {block_6.max():.2f}, mean "
                                                 f"{block_6.mean():.2f}")
    assert flat.get_title(loc="left").endswith("weights 0.97 to 0.99, mean 0.97; nearly constant: it singles out no "
                                               "region")
    for ax in (varied, flat):
        assert ax.images[0].get_clim() == (0.0, 1.0)
    plt.close(fig)


def test_thresholds_and_the_clip_gate_are_drawn(trained):
    events = EventConfig(threshold=0.4, class_thresholds=(("b", 0.7),), clip_gate=0.3)
    fig = _figure(file_tags(trained), trained, 3, [], None, events)
    ax = axis_titled(fig, "(d) probability of each top class over time")
    assert "(used for the events)" in ax.get_title(loc="left")
    levels = sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--")
    assert levels == [0.4, 0.4, 0.7]   # a, c at the default threshold, b at its own
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert legend == ["a (clip 0.90, threshold 0.40)", "b (clip 0.80, threshold 0.70)",
                      "c (clip 0.20, threshold 0.40, below the clip gate 0.30: no events)"]
    plt.close(fig)
    stored = _figure(file_tags(trained), trained, 2, [], None, None)   # the settings stored with the model: 0.5
    ax = axis_titled(stored, "(d)")
    assert "(stored with the model)" in ax.get_title(loc="left")
    assert sorted(line.get_ydata()[0] for line in ax.get_lines() if line.get_linestyle() == "--") == [0.5, 0.5]
    plt.close(stored)


def test_the_builtin_classes_are_named_synthetic(trained, tmp_path):
    assert "synthetic" not in _figure(file_tags(trained), trained, 3, [], None, None).get_suptitle()
    builtin = replace(trained, label_names=CLASS_NAMES[:len(LABELS)])
    fig = _figure(file_tags(builtin), builtin, 3, [], None, None)
    assert fig.get_suptitle().endswith("\nclasses: the built-in synthetic test signals (train/data/synth.py), not "
                                       "real-world sounds")
    plt.close("all")
    plot_tags(file_tags(builtin), builtin, 3, tmp_path / "figure.svg")
    assert "synthetic test signals" in (tmp_path / "figure.svg").read_text()
