"""The paper's Fig. 3 for one tagged file, with its events: log-mel, spatial attention maps M_s, the top
classes' frame probabilities, and the detected events as bars (beside the reference events when given).

Every panel shares one time axis over the figure's range (`PlotView`: --start to --end, at most the
analysed audio). Each M_s (eq. 7) is drawn over the log-mel's mel-bin range, so its coarse frequency
rows (4, 2 or 1 in the deepest blocks) line up with the bands they cover. Drawn with matplotlib's Agg
backend (no display needed).
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402  (after choosing the backend)
import numpy as np                # noqa: E402

from fastsca.events import Event                                   # noqa: E402
from fastsca.inference import FileTags, TrainedModel, top_k        # noqa: E402

# Log-mel colour range: the loudest 80 dB, as librosa's specshow does; quieter bins are one colour.
DB_RANGE = 80.0
# Rows in the events panel at most: the top classes first, then others with events in the range.
MAX_EVENT_ROWS = 10


def _event_rows(tags: FileTags, trained: TrainedModel, k: int, events: list[Event],
                reference: list[tuple[float, float, str]] | None) -> list[str]:
    """Classes to draw event bars for: the top k, then any other class with an event in the range."""
    view = tags.view
    rows = [name for name, _ in top_k(tags, trained.label_names, k)]
    inside = [e.label for e in events if e.offset > view.start and e.onset < view.end]
    inside += [label for onset, offset, label in reference or () if offset > view.start and onset < view.end]
    for label in inside:
        if label not in rows:
            rows.append(label)
    return rows[:MAX_EVENT_ROWS]


def plot_tags(tags: FileTags, trained: TrainedModel, k: int, path: Path, events: list[Event] = (),
              reference: list[tuple[float, float, str]] | None = None, file_format: str | None = None) -> None:
    """Write the figure for `tags` (which must carry a view) to `path`; the format is `file_format` ("png",
    "pdf", "svg"), or follows the extension."""
    view = tags.view
    # only what the range shows: a long file's events elsewhere would each be a drawn (clipped) bar
    events = [e for e in events if e.offset > view.start and e.onset < view.end]
    reference = None if reference is None else [r for r in reference if r[1] > view.start and r[0] < view.end]
    fig = _figure(tags, trained, k, events, reference)
    try:
        fig.savefig(path, dpi=110, format=file_format)
    finally:
        plt.close(fig)   # also on a failed write: a batch would otherwise keep every figure open


def _figure(tags: FileTags, trained: TrainedModel, k: int, events: list[Event],
            reference: list[tuple[float, float, str]] | None) -> plt.Figure:
    """The figure's panels (see the module docstring)."""
    config, view = trained.model.config, tags.view
    maps = view.spatial_maps
    rows = _event_rows(tags, trained, k, events, reference)
    heights = [3.0] + [1.4] * max(1, len(maps)) + [2.4, 0.45 * len(rows) + 0.9]
    fig, axes = plt.subplots(len(heights), 1, figsize=(12, sum(heights) + 1.2), sharex=True,
                             gridspec_kw={"height_ratios": heights}, constrained_layout=True)
    fig.suptitle(f"{Path(tags.path).name} ({tags.seconds:.1f} s{', digital silence' if tags.silent else ''}): "
                 f"model {config.name!r}, step {trained.step}; {view.start:g}-{view.end:g} s", fontsize=12)
    extent = (view.start, view.end, 0.0, config.n_mels)
    letters = iter("abcdefghij")

    ax = axes[0]
    if view.log_mel.size:
        top = view.log_mel.max()
        image = ax.imshow(view.log_mel.T, origin="lower", aspect="auto", extent=extent, cmap="magma",
                          vmin=top - DB_RANGE, vmax=top, interpolation="nearest")
        fig.colorbar(image, ax=ax, label="dB", pad=0.01)
    ax.set_ylabel("mel bin")
    ax.set_title(f"({next(letters)}) log-mel spectrogram", loc="left", fontsize=10)

    if not maps:
        ax = axes[1]
        ax.set_yticks([])
        ax.text(0.5, 0.5, f"model {config.name!r} has no spatial attention (arrangement {config.arrangement!r}): "
                          f"no M_s to show", ha="center", va="center", transform=ax.transAxes, fontsize=11)
        ax.set_title(f"({next(letters)}) spatial attention", loc="left", fontsize=10)
    for i, (name, m_s) in enumerate(maps.items()):
        ax = axes[1 + i]
        image = ax.imshow(m_s.T, origin="lower", aspect="auto", extent=extent, cmap="viridis",
                          vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_ylabel("mel bin")
        ax.set_title(f"({next(letters)}) spatial attention M_s of {name}: {m_s.shape[1]} frequency row(s), "
                     f"{m_s.shape[0] / max(view.end - view.start, 1e-9):.0f} frames/s", loc="left", fontsize=10)
        fig.colorbar(image, ax=ax, label="M_s", pad=0.01)

    ax = axes[-2]
    first = int(view.start / tags.frame_seconds)
    last = min(len(tags.frame), int(np.ceil(view.end / tags.frame_seconds)))
    times = np.arange(first, last + 1) * tags.frame_seconds     # frame t holds over [t, t + 1) x frame_seconds
    colours = {name: f"C{i}" for i, name in enumerate(rows)}
    for name in rows[:k]:
        column = trained.label_names.index(name)
        values = tags.frame[first:last, column]
        ax.stairs(values, times, label=f"{name} ({tags.clip[column]:.2f})", color=colours[name], linewidth=1.6)
    ax.set_yticks([0.0, 0.25, 0.5, 0.75, 1.0])
    ax.set_ylabel("probability")
    ax.grid(alpha=0.3)
    # inside the panel: a legend beside it would narrow every panel's time axis to make room
    ax.legend(loc="upper right", fontsize=8, framealpha=0.85, ncol=min(k, 5), title="top classes (clip probability)",
              title_fontsize=8)
    ax.set_ylim(-0.02, 1.3)   # headroom for the legend above the curves
    ax.set_title(f"({next(letters)}) frame-level probabilities v_t of the top {k} classes "
                 f"({1 / tags.frame_seconds:g} Hz)", loc="left", fontsize=10)

    ax = axes[-1]
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
    ax.set_title(f"({next(letters)}) {what}", loc="left", fontsize=10)
    ax.set_xlim(view.start, view.end)
    return fig
