"""The figure of one tagged file (`fastsca.tag --plot`), for readers who have not read the paper: the log-mel
spectrogram, where each attention block looks, the top classes' probability over time with the thresholds that
turn it into events, and the detected events (beside the reference events when given).

Every panel shares one time axis over the figure's range (`PlotView`: --start to --end, at most the analysed
audio). The frequency axes are in Hz (ticks at the mel bins of 500 Hz, 1 kHz, ... 8 kHz), and each attention
mask (the paper's M_s, eq. 7) is drawn over the log-mel's frequency range, so its coarse frequency rows (4, 2
or 1 in the deepest blocks) line up with the bands they cover. Every mask shares one colour scale, 0 to 1, and
its title gives its least, mean and largest weight, so a block whose mask is the same everywhere (it weights
every cell alike, and so locates nothing) reads as such. The probability panel draws each class's onset
threshold (an event needs a frame above it) and says which classes the clip gate keeps from having events.
A model trained on the built-in set says so in the title: its classes are synthetic test signals. Drawn with
matplotlib's Agg backend (no display needed).
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402  (after choosing the backend)
import numpy as np                # noqa: E402
import torch                      # noqa: E402

from fastsca.builtin_classes import is_builtin_label_set                # noqa: E402
from fastsca.events import Event, EventConfig, stored_event_config   # noqa: E402
from fastsca.frontend import LogMelConfig, _hz_to_mel                 # noqa: E402
from fastsca.inference import TrainedModel                            # noqa: E402
from fastsca.tagging.result import TagResult                          # noqa: E402

# Log-mel colour range: the loudest 80 dB, as librosa's specshow does; quieter bins are one colour.
DB_RANGE = 80.0
# Rows in the events panel at most: the top classes first, then others with events in the range.
MAX_EVENT_ROWS = 10
# Frequencies marked on the frequency axes, those inside the front end's range.
HZ_TICKS = (500, 1000, 2000, 4000, 8000)   # lower ones crowd together on the mel scale
# A mask whose weights all lie within this of each other is called nearly constant in its title: it scales
# every cell of its block's features by about the same factor (within 10 %), so it singles out no region.
CONSTANT_SPREAD = 0.1


def _event_rows(tags: TagResult, trained: TrainedModel, k: int, events: list[Event],
                reference: list[tuple[float, float, str]] | None) -> list[str]:
    """Classes to draw event bars for: the top k, then any other class with an event in the range."""
    view = tags.view
    rows = [name for name, _ in tags.top_k(k)]
    inside = [e.label for e in events if e.offset > view.start and e.onset < view.end]
    inside += [label for onset, offset, label in reference or () if offset > view.start and onset < view.end]
    for label in inside:
        if label not in rows:
            rows.append(label)
    return rows[:MAX_EVENT_ROWS]


def plot_tags(tags: TagResult, trained: TrainedModel, k: int, path: Path, events: list[Event] = (),
              reference: list[tuple[float, float, str]] | None = None, file_format: str | None = None,
              event_config: EventConfig | None = None, creator: str | None = None) -> None:
    """Write the figure for `tags` (which must carry a view) to `path`; the format is `file_format` ("png",
    "pdf", "svg"), or follows the extension. `event_config` is what made `events` (its thresholds and gate are
    drawn); left out, the settings stored with the model are drawn, and the figure says so. `creator` goes into
    the figure's metadata (PNG text chunk, PDF and SVG creator)."""
    view = tags.view
    # only what the range shows: a long file's events elsewhere would each be a drawn (clipped) bar
    events = [e for e in events if e.offset > view.start and e.onset < view.end]
    reference = None if reference is None else [r for r in reference if r[1] > view.start and r[0] < view.end]
    fig = _figure(tags, trained, k, events, reference, event_config)
    try:
        fig.savefig(path, dpi=110, format=file_format, metadata={"Creator": creator} if creator else None)
    finally:
        plt.close(fig)   # also on a failed write: a batch would otherwise keep every figure open


def _figure(tags: TagResult, trained: TrainedModel, k: int, events: list[Event],
            reference: list[tuple[float, float, str]] | None, event_config: EventConfig | None) -> plt.Figure:
    """The figure's panels (see the module docstring)."""
    config, view = trained.model.config, tags.view
    rows = _event_rows(tags, trained, k, events, reference)
    heights = [3.0] + [1.4] * max(1, len(view.spatial_maps)) + [2.6, 0.45 * len(rows) + 0.9]
    fig, axes = plt.subplots(len(heights), 1, figsize=(12, sum(heights) + 1.4), sharex=True,
                             gridspec_kw={"height_ratios": heights}, constrained_layout=True)
    synthetic = ("\nclasses: the built-in synthetic test signals (train/data/synth.py), not real-world sounds"
                 if is_builtin_label_set(trained.label_names) else "")
    fig.suptitle(f"{Path(tags.name).name} ({tags.seconds:.1f} s{', digital silence' if tags.silent else ''}): "
                 f"model {config.name!r}, step {trained.step}; {view.start:g}-{view.end:g} s{synthetic}", fontsize=12)
    letters = iter("abcdefghij")
    _log_mel_panel(fig, axes[0], view, trained.log_mel, next(letters))
    _attention_panels(fig, axes[1:-2], view, trained, letters)
    colours = {name: f"C{i}" for i, name in enumerate(rows)}
    stored = event_config is None
    _probability_panel(axes[-2], tags, trained, rows[:k], colours, event_config or stored_event_config(trained.configs),
                       stored, next(letters))
    _events_panel(axes[-1], rows, colours, events, reference, next(letters))
    axes[-1].set_xlim(view.start, view.end)
    return fig


def _hz_axis(ax: plt.Axes, front_end: LogMelConfig) -> None:
    """Frequency ticks in Hz on an axis spanning the mel bins 0..n_mels (bin i drawn over [i, i + 1], centred on
    its filter's peak)."""
    low, high = _hz_to_mel(torch.tensor([front_end.f_min, front_end.f_max], dtype=torch.float64)).tolist()
    peaks = np.linspace(low, high, front_end.n_mels + 2)[1:-1]        # each filter's peak, in mel
    marks = [hz for hz in HZ_TICKS if front_end.f_min <= hz <= front_end.f_max]
    mels = _hz_to_mel(torch.tensor(marks, dtype=torch.float64)).numpy()
    ax.set_yticks(np.interp(mels, peaks, np.arange(front_end.n_mels) + 0.5),
                  [f"{hz // 1000}k" if hz >= 1000 else str(hz) for hz in marks], fontsize=8)
    ax.set_ylabel("frequency (Hz)")


def _log_mel_panel(fig: plt.Figure, ax: plt.Axes, view, front_end: LogMelConfig, letter: str) -> None:
    """The log-mel spectrogram, the loudest 80 dB."""
    if view.log_mel.size:
        top = view.log_mel.max()
        image = ax.imshow(view.log_mel.T, origin="lower", aspect="auto", cmap="magma", vmin=top - DB_RANGE, vmax=top,
                          extent=(view.start, view.end, 0.0, front_end.n_mels), interpolation="nearest")
        fig.colorbar(image, ax=ax, label="level (dB)", pad=0.01)
    _hz_axis(ax, front_end)
    ax.set_title(f"({letter}) the sound: log-mel spectrogram ({front_end.n_mels} mel bands)", loc="left", fontsize=10)


def _attention_panels(fig: plt.Figure, axes, view, trained: TrainedModel, letters) -> None:
    """Each attention block's spatial mask on one 0-1 scale, its least, mean and largest weight in its title."""
    config = trained.model.config
    extent = (view.start, view.end, 0.0, trained.log_mel.n_mels)
    if not view.spatial_maps:
        axes[0].set_yticks([])
        axes[0].text(0.5, 0.5, f"model {config.name!r} has no spatial attention (arrangement {config.arrangement!r}): "
                               f"no mask to show", ha="center", va="center", transform=axes[0].transAxes, fontsize=11)
        axes[0].set_title(f"({next(letters)}) where the model looks", loc="left", fontsize=10)
    for ax, (name, mask) in zip(axes, view.spatial_maps.items()):
        image = ax.imshow(mask.T, origin="lower", aspect="auto", extent=extent, cmap="viridis", vmin=0.0, vmax=1.0,
                          interpolation="nearest")
        _hz_axis(ax, trained.log_mel)
        weights = (f"weights {mask.min():.2f} to {mask.max():.2f}, mean {mask.mean():.2f}"
                   + ("; nearly constant: it singles out no region" if mask.max() - mask.min() <= CONSTANT_SPREAD
                      else "")) if mask.size else "no frame in the range"
        ax.set_title(f"({next(letters)}) where {name} looks (its spatial attention mask, {mask.shape[1]} frequency "
                     f"band(s), {mask.shape[0] / max(view.end - view.start, 1e-9):.0f}/s): {weights}", loc="left",
                     fontsize=10)
        fig.colorbar(image, ax=ax, label="weight (0-1)", pad=0.01)


def _probability_panel(ax: plt.Axes, tags: TagResult, trained: TrainedModel, names: list[str], colours: dict,
                       events: EventConfig, stored: bool, letter: str) -> None:
    """The top classes' frame probabilities, each with its onset threshold; the legend marks gated classes."""
    view = tags.view
    first = int(view.start / tags.frame_seconds)
    last = min(len(tags.frame), int(np.ceil(view.end / tags.frame_seconds)))
    times = np.arange(first, last + 1) * tags.frame_seconds     # frame t holds over [t, t + 1) x frame_seconds
    thresholds, gates = events.onset_thresholds(trained.label_names), events.gates(trained.label_names)
    for name in names:
        column = trained.label_names.index(name)
        gated = tags.clip[column] < gates[column]
        note = f", below the clip gate {gates[column]:.2f}: no events" if gated else ""
        ax.stairs(tags.frame[first:last, column], times, color=colours[name], linewidth=1.6, alpha=0.45 if gated else 1,
                  label=f"{name} (clip {tags.clip[column]:.2f}, threshold {thresholds[column]:.2f}{note})")
        ax.axhline(thresholds[column], color=colours[name], linestyle="--", linewidth=0.9, alpha=0.45 if gated else 1)
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    # inside the panel: a legend beside it would narrow every panel's time axis to make room
    ax.legend(loc="upper right", fontsize=7.5, framealpha=0.85, ncol=min(len(names), 3), title_fontsize=8,
              title="top classes (probability for the whole clip, onset threshold)")
    ax.set_ylim(-0.02, 1.45)   # headroom for the legend above the curves
    source = "stored with the model" if stored else "used for the events"
    ax.set_title(f"({letter}) probability of each top class over time ({1 / tags.frame_seconds:g} per second); "
                 f"dashed: its onset threshold ({source}); an event is a stretch where the smoothed curve reaches it "
                 f"and stays above its hysteresis share of it ({events.hysteresis:g} unless chosen per class), in a class "
                 f"whose whole-clip probability reaches the "
                 f"clip gate", loc="left", fontsize=9, wrap=True)


def _events_panel(ax: plt.Axes, rows: list[str], colours: dict, events: list[Event],
                  reference: list[tuple[float, float, str]] | None, letter: str) -> None:
    """Detected events as bars, one row per class; the reference events hatched beneath them when given."""
    for row, name in enumerate(rows):
        mine = [(e.onset, e.offset - e.onset) for e in events if e.label == name]
        ax.broken_barh(mine, (row - 0.38, 0.36 if reference is not None else 0.76), color=colours[name])
        if reference is not None:
            truth = [(on, off - on) for on, off, label in reference if label == name]
            ax.broken_barh(truth, (row + 0.02, 0.36), facecolor="none", edgecolor="black", hatch="///",
                           linewidth=0.8)
    ax.set_yticks(range(len(rows)), rows, fontsize=8)
    ax.set_ylim(len(rows) - 0.5, -0.5)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("time (s)")
    what = "detected events (filled, upper half) and reference events (hatched, lower half)" \
        if reference is not None else "detected events"
    ax.set_title(f"({letter}) {what}", loc="left", fontsize=10)
