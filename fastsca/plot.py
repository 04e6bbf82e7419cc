"""The paper's Fig. 3 for one tagged file: log-mel, spatial attention maps M_s, top classes over time.

Every panel shares the time axis (seconds). Each M_s (eq. 7) is drawn over the log-mel's mel-bin range,
so its coarse frequency rows (4, 2 or 1 in the deepest blocks) line up with the bands they cover.
Drawn with matplotlib's Agg backend (no display needed).
"""
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402  (after choosing the backend)
import numpy as np                # noqa: E402

from fastsca.inference import TrainedModel   # noqa: E402
from fastsca.tag import FileTags, top_k     # noqa: E402

# Log-mel colour range: the loudest 80 dB, as librosa's specshow does; quieter bins are one colour.
DB_RANGE = 80.0


def plot_tags(tags: FileTags, trained: TrainedModel, k: int, path: Path) -> None:
    """Write the figure for `tags` to `path` (PNG)."""
    config = trained.model.config
    maps = tags.spatial_maps
    rows = 2 + max(1, len(maps))
    heights = [3.0] + [1.6] * max(1, len(maps)) + [2.6]
    fig, axes = plt.subplots(rows, 1, figsize=(11, sum(heights) + 1.0), sharex=True,
                             gridspec_kw={"height_ratios": heights}, constrained_layout=True)
    fig.suptitle(f"{Path(tags.path).name}: model {config.name!r}, step {trained.step}", fontsize=12)
    windows = len(tags.log_mel) // config.input_frames
    window_seconds = trained.log_mel.clip_samples / trained.log_mel.sample_rate
    span = windows * window_seconds                      # the padded windows; the x axis stops at the file's end
    extent = (0.0, span, 0.0, config.n_mels)

    ax = axes[0]
    top = tags.log_mel.max()
    image = ax.imshow(tags.log_mel.T, origin="lower", aspect="auto", extent=extent, cmap="magma",
                      vmin=top - DB_RANGE, vmax=top, interpolation="nearest")
    ax.set_ylabel("mel bin")
    ax.set_title("(a) log-mel spectrogram", loc="left", fontsize=10)
    fig.colorbar(image, ax=ax, label="dB", pad=0.01)

    if not maps:
        ax = axes[1]
        ax.set_yticks([])
        ax.text(0.5, 0.5, f"model {config.name!r} has no spatial attention (arrangement {config.arrangement!r}): "
                          f"no M_s to show", ha="center", va="center", transform=ax.transAxes, fontsize=11)
        ax.set_title("(b) spatial attention", loc="left", fontsize=10)
    for i, (name, m_s) in enumerate(maps.items()):
        ax = axes[1 + i]
        image = ax.imshow(m_s.T, origin="lower", aspect="auto", extent=extent, cmap="viridis",
                          vmin=0.0, vmax=1.0, interpolation="nearest")
        ax.set_ylabel("mel bin")
        ax.set_title(f"({chr(ord('b') + i)}) spatial attention M_s of {name}: {m_s.shape[0] // windows} x "
                     f"{m_s.shape[1]} (time x frequency) per {window_seconds:g} s window", loc="left", fontsize=10)
        fig.colorbar(image, ax=ax, label="M_s", pad=0.01)

    ax = axes[-1]
    frame_times = (np.arange(len(tags.frame)) + 0.5) * span / len(tags.frame)
    for name, probability in top_k(tags, trained.label_names, k):
        column = trained.label_names.index(name)
        ax.plot(frame_times, tags.frame[:, column], label=f"{name} ({probability:.2f})", linewidth=1.6)
    ax.set_ylim(-0.02, 1.02)
    ax.set_ylabel("probability")
    ax.set_xlabel("time (s)")
    ax.set_xlim(0.0, tags.seconds)
    ax.grid(alpha=0.3)
    # below the axes, so the panels keep one width and their time axes line up
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.32), ncol=min(k, 5), fontsize=9, frameon=False,
              title="top classes (clip probability)", title_fontsize=9)
    ax.set_title(f"({chr(ord('b') + max(1, len(maps)))}) frame-level probabilities v_t of the top {k} classes",
                 loc="left", fontsize=10)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
