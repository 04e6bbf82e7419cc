"""`python -m fastsca.figure3 CLIP --baseline BASE.pt --model SCA.pt --out fig3.png`: the paper's Fig. 3 for one clip.

CLIP is an audio file, or `SPLIT.h5:INDEX`, clip INDEX of a packed split (the built-in set's eval.h5 too),
whose strong labels are then drawn. Panels, all on the clip's time axis:
(a) the log-mel and the clip's events: strong labels when the clip has them, else `--events` (a CSV of
    onset,offset,label in seconds), else the attention model's own frame predictions v_t >= 0.5, marked so;
(b) the C-channel average of the baseline's feature map at each block where the attention model has attention;
(c) the same for the attention model;
(d) the two channels of the last attention block's output F'' with the highest channel weights sigma(logit_c),
    and the spatial mask each attention block applied: sigma(logit_s), or for C//S sigma(logit_s + logit_c)
    averaged over channels (the mask C//S applies differs per channel), titled with its statistics on the clip
    (fastsca/mask_stats.py: mean, std, 5-95 % range, share above 0.99, which a saturated mask fills).
A "feature map" in (b) and (c) is the block's output, after the residual sum and the ReLU. Everything is
captured with forward hooks on the unchanged models. Drawn with matplotlib's Agg backend.

`--out` is written whole or not at all (fastsca/atomic.py), never over one of the command's inputs, and over an
existing file only when this command wrote it (the figure's metadata names fastsca.figure3) or with --overwrite.
"""
import argparse
import csv
import sys
from dataclasses import dataclass
from pathlib import Path

import h5py
import matplotlib
import numpy as np
import torch

from fastsca.atomic import write_atomically
from fastsca.audio import AudioError, fit_length, load_audio
from fastsca.frontend import log_mel
from fastsca.inference import TrainedModel, load_trained_model
from fastsca.mask_stats import in_words, summarise

matplotlib.use("Agg")
import matplotlib.pyplot as plt   # noqa: E402  (after choosing the backend)

# Log-mel colour range: the loudest 80 dB, as librosa's specshow does.
DB_RANGE = 80.0
# Stored in the figure's metadata (PNG text chunk, PDF and SVG creator): a file holding it is one this command wrote.
CREATOR = "fastsca.figure3"


@dataclass(frozen=True)
class Event:
    """One sound event of the clip."""

    onset: float
    """Start, seconds."""
    offset: float
    """End, seconds."""
    label: str
    """Class name."""


@dataclass(frozen=True)
class Clip:
    """The clip to draw: waveform at the models' rate, its name and events."""

    waveform: np.ndarray
    """Float32 mono samples."""
    name: str
    """What the figure's title calls it."""
    events: tuple[Event, ...]
    """Its events, when known."""
    events_source: str
    """Where the events come from (for the panel title)."""


@dataclass
class Captured:
    """What one block gave in one forward pass, for a batch of one clip (batch dimension dropped)."""

    output: torch.Tensor                    # block output (C, T, F)
    attended: torch.Tensor | None = None    # F'' = the attention module's output (C, T, F)
    logit_s: torch.Tensor | None = None     # (T, F)
    logit_c: torch.Tensor | None = None     # (C,)


def read_clip(spec: str, sample_rate: int, clip_samples: int) -> Clip:
    """An audio file, or `SPLIT.h5:INDEX` with its strong labels."""
    path, _, index = spec.rpartition(":")
    if path.endswith(".h5") and index.isdigit():
        with h5py.File(path, "r") as shard:
            if int(shard.attrs["sample_rate"]) != sample_rate:
                raise ValueError(f"{path} holds {int(shard.attrs['sample_rate'])} Hz clips but the models take "
                                 f"{sample_rate} Hz; use a split packed at {sample_rate} Hz")
            row = int(index)
            if row >= shard["waveform"].shape[0]:
                raise ValueError(f"{spec}: {path} has {shard['waveform'].shape[0]} clips; pick INDEX below that")
            names = [str(n) for n in shard.attrs["label_names"]]
            waveform = shard["waveform"][row].astype(np.float32) / 32768
            mine = np.flatnonzero(shard["strong_clip"][:] == row)
            events = tuple(Event(float(shard["strong_onset"][i]), float(shard["strong_offset"][i]),
                                 names[int(shard["strong_label"][i])]) for i in mine)
            name = shard["audio_name"][row].decode()
        return Clip(fit_length(waveform, clip_samples), f"{name} ({Path(path).name}:{row})", events, "strong labels")
    return Clip(load_audio(spec, sample_rate, clip_samples), Path(spec).name, (), "")


def read_events(path: str) -> tuple[Event, ...]:
    """onset,offset,label rows (seconds), with or without a header line."""
    events = []
    with open(path, newline="") as handle:
        for number, row in enumerate(csv.reader(handle), 1):
            try:
                events.append(Event(float(row[0]), float(row[1]), row[2].strip()))
            except (ValueError, IndexError):
                if number > 1 or not row:
                    raise ValueError(f"{path}:{number}: expected onset,offset,label (seconds), got {row!r}") from None
    return tuple(events)


@torch.no_grad()
def capture(model: torch.nn.Module, mel: torch.Tensor, blocks: tuple[int, ...]) -> tuple[dict[int, Captured], torch.Tensor]:
    """Run `model` on `mel` (1, 1, T, F) and keep what `blocks` produced; also the frame probabilities (T', K)."""
    found: dict[int, Captured] = {}
    hooks = []

    def keep(block: int, field: str):
        def hook(module, inputs, output):
            value = output[0, 0] if field == "logit_s" else output[0]
            # the attention's hooks fire first, inside the block; the block's own hook then sets the output
            setattr(found.setdefault(block, Captured(output=value)), field, value)
        return hook

    for block in blocks:
        attention = model.blocks[block].attention
        for field, module in (("attended", attention), ("logit_s", getattr(attention, "spatial", None)),
                              ("logit_c", getattr(attention, "channel", None))):
            if module is not None and not isinstance(module, torch.nn.Identity):
                hooks.append(module.register_forward_hook(keep(block, field)))
        hooks.append(model.blocks[block].register_forward_hook(keep(block, "output")))
    try:
        output = model(mel)
    finally:
        for hook in hooks:
            hook.remove()
    return found, output.frame[0]


def applied_mask(arrangement: str, captured: Captured) -> torch.Tensor | None:
    """The spatial mask the block applied (T, F): sigma(logit_s), or for C//S sigma(logit_s + logit_c)
    averaged over channels; None without spatial attention."""
    if captured.logit_s is None:
        return None
    if arrangement == "cps":
        return torch.sigmoid(captured.logit_s[None] + captured.logit_c[:, None, None]).mean(dim=0)
    return torch.sigmoid(captured.logit_s)


def predicted_events(frame: torch.Tensor, label_names: tuple[str, ...], seconds: float) -> tuple[Event, ...]:
    """Runs of frames with v_t >= 0.5, per class."""
    step = seconds / frame.shape[0]
    events = []
    active = torch.cat([torch.zeros(1, frame.shape[1]), (frame >= 0.5).float(), torch.zeros(1, frame.shape[1])])
    for k in range(frame.shape[1]):
        edges = torch.diff(active[:, k]).nonzero()[:, 0].tolist()   # alternating starts and ends
        events += [Event(a * step, b * step, label_names[k]) for a, b in zip(edges[::2], edges[1::2])]
    return tuple(events)


def _map(ax, image: np.ndarray, seconds: float, n_mels: int, title: str, cmap: str = "viridis",
         limits: tuple[float, float] | None = None) -> None:
    """A (T, F) map drawn over the log-mel's mel-bin range, so its coarse rows line up with their bands."""
    low, high = limits or (float(image.min()), float(image.max()))
    shown = ax.imshow(image.T, origin="lower", aspect="auto", extent=(0.0, seconds, 0.0, n_mels), cmap=cmap,
                      vmin=low, vmax=high, interpolation="nearest")
    ax.set_title(title, loc="left", fontsize=9)
    ax.set_yticks([0, n_mels])
    ax.figure.colorbar(shown, ax=ax, pad=0.01, aspect=8)


def _events_panel(ax: plt.Axes, events: list, labels: list[str], source: str) -> None:
    """Panel (a)'s event bars, one row per label."""
    colours = plt.get_cmap("tab10")
    for e in events:
        row = labels.index(e.label)
        ax.broken_barh([(e.onset, e.offset - e.onset)], (row - 0.4, 0.8), color=colours(row % 10))
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.set_ylim(-0.6, max(1, len(labels)) - 0.4)
    ax.invert_yaxis()
    ax.set_title(f"(a) events: {source}" + ("" if events else " - none"), loc="left", fontsize=9)
    ax.grid(axis="x", alpha=0.3)
    ax.figure.colorbar(plt.cm.ScalarMappable(), ax=ax, pad=0.01, aspect=8).ax.set_visible(False)   # as wide as the maps


def draw(clip: Clip, baseline: TrainedModel, model: TrainedModel, out: Path) -> None:
    """Write the figure for `clip` to `out` (PNG)."""
    config, lm = model.model.config, model.log_mel
    blocks = config.attention_blocks
    seconds = lm.clip_seconds
    mel = log_mel(torch.from_numpy(clip.waveform)[None], lm)                  # (1, 1, T, F)
    base_maps, _ = capture(baseline.model, mel, blocks)
    maps, frame = capture(model.model, mel, blocks)
    events, source = clip.events, clip.events_source
    if not source:
        events, source = predicted_events(frame, model.label_names, seconds), "predicted by the attention model (v_t >= 0.5)"
    last = maps[blocks[-1]]
    masks = {block: applied_mask(config.arrangement, maps[block]) for block in blocks}
    masks = {block: mask for block, mask in masks.items() if mask is not None}
    top = torch.topk(last.logit_c, 2).indices.tolist() if last.logit_c is not None else []

    labels = sorted({e.label for e in events})
    heights = [2.2, 0.25 + 0.22 * max(1, len(labels))] + [0.85] * (2 * len(blocks) + len(top) + len(masks))
    fig, axes = plt.subplots(len(heights), 1, figsize=(10, sum(heights) + 1.2), sharex=True,
                             gridspec_kw={"height_ratios": heights}, constrained_layout=True)
    fig.suptitle(f"{clip.name}\nbaseline {baseline.model.config.name!r} (step {baseline.step}) vs "
                 f"{config.name!r} (step {model.step})", fontsize=10)
    n_mels = lm.n_mels
    db = mel[0, 0].numpy()
    _map(axes[0], db, seconds, n_mels, "(a) log-mel spectrogram (dB)", "magma", (db.max() - DB_RANGE, db.max()))
    axes[0].set_ylabel("mel bin")

    _events_panel(axes[1], events, labels, source)

    row = 2
    for letter, who, found in (("b", baseline.model.config.name, base_maps), ("c", config.name, maps)):
        for block in blocks:
            average = found[block].output.mean(dim=0).numpy()
            _map(axes[row], average, seconds, n_mels, f"({letter}) {who}: C-channel average of block {block + 1}'s "
                 f"output ({average.shape[0]} x {average.shape[1]}, time x frequency)")
            row += 1
    weights = torch.sigmoid(last.logit_c) if last.logit_c is not None else None
    for rank, channel in enumerate(top, 1):
        _map(axes[row], last.attended[channel].numpy(), seconds, n_mels,
             f"(d) {config.name}, block {blocks[-1] + 1}: channel {channel} of F'', channel weight "
             f"{weights[channel]:.3f} (top {rank} of {len(weights)})")
        row += 1
    what = "sigma(logit_s + logit_c), mean over channels" if config.arrangement == "cps" else "sigma(logit_s)"
    for block, mask in masks.items():   # each in its own colour range: deep masks can sit close to 1
        _map(axes[row], mask.numpy(), seconds, n_mels, f"(d) spatial mask applied in block {block + 1}: {what}, "
             f"from {mask.min():.3f} to {mask.max():.3f}; {in_words(summarise(mask))}")
        row += 1
    for ax in axes[2:]:
        ax.set_ylabel("mel bin", fontsize=8)
    axes[-1].set_xlabel("time (s)")
    axes[-1].set_xlim(0.0, seconds)
    out.parent.mkdir(parents=True, exist_ok=True)
    try:
        write_atomically(out, lambda tmp: fig.savefig(tmp, dpi=90, format=out.suffix[1:].lower() or "png",
                                                      metadata={"Creator": CREATOR}))
    finally:
        plt.close(fig)


def check_out(out: Path, inputs: list[str], overwrite: bool) -> None:
    """Raise ValueError (one line) for an --out that is one of the inputs, or an existing file that this command
    did not write (unless `overwrite`)."""
    for given in inputs:
        if Path(given.rsplit(":", 1)[0] if ".h5:" in given else given).resolve() == out.resolve():
            raise ValueError(f"--out {out}: is the input {given}; give another file name")
    if out.is_dir():
        raise ValueError(f"--out {out}: is a folder; give a file name")
    if out.suffix.lower() not in ("", ".png", ".pdf", ".svg"):
        raise ValueError(f"--out {out}: give a .png, .pdf or .svg file name (formats that carry the figure's "
                         f"metadata)")
    if out.exists() and not overwrite and CREATOR.encode() not in out.read_bytes():
        raise ValueError(f"--out {out}: exists and was not written by fastsca.figure3; give another file name, or "
                         f"--overwrite to replace it")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastsca.figure3", description=__doc__.splitlines()[0])
    parser.add_argument("clip", help="an audio file, or SPLIT.h5:INDEX (a clip of a packed split, with its strong labels)")
    parser.add_argument("--baseline", required=True, help="checkpoint of the model without attention (b)")
    parser.add_argument("--model", required=True, help="checkpoint of the attention model, e.g. at-sca-3 (c, d)")
    parser.add_argument("--events", help="CSV of onset,offset,label (seconds) to draw in (a) for an audio file")
    parser.add_argument("--out", default="figure3.png",
                        help="the figure to write, PNG (or .pdf, .svg) (default figure3.png)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an existing --out that fastsca.figure3 did not write (never an input)")
    args = parser.parse_args(argv)
    try:
        check_out(Path(args.out), [args.clip, args.baseline, args.model] + ([args.events] if args.events else []),
                  args.overwrite)
        baseline, model = load_trained_model(args.baseline), load_trained_model(args.model)
        if baseline.log_mel != model.log_mel:
            raise ValueError(f"{args.baseline} and {args.model} take different log-mels (clip length, rate or "
                             f"bins); draw two models trained on the same clips")
        if not model.model.config.attention_blocks:
            raise ValueError(f"{args.model} is {model.model.config.name!r}, which has no attention; pass an "
                             f"attention model (e.g. at-sca-3) as --model")
        clip = read_clip(args.clip, model.log_mel.sample_rate, model.log_mel.clip_samples)
        if args.events:
            clip = Clip(clip.waveform, clip.name, read_events(args.events), f"from {args.events}")
        draw(clip, baseline, model, Path(args.out))
    except (ValueError, AudioError, OSError) as error:   # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
