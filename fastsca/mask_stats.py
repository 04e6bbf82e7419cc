"""The attention masks' statistics: for each attention block of a model, over a set of clips, the spatial mask
M_s = sigma(logit_s) (eq. 7), the channel mask M_c = sigma(logit_c) (eq. 9) and the gate the block applies to
its features (eq. 10: M_s * M_c, or sigma(logit_s + logit_c) for C//S; the one mask where there is one).

Each is summarised by its mean, standard deviation, 5th and 95th percentiles, and the shares of its values above
SATURATED and below SHUT: a mask whose values all sit above SATURATED passes its block's features through
unweighted, and so locates nothing. Statistics are exact: every value is kept (clips x C x T x F floats for the
gate), so the clip count bounds the memory. The logits are captured with forward hooks on the reference path
(fused=False), which calls the spatial and channel sub-networks as modules.

`python -m fastsca.mask_stats CHECKPOINT --data SPLIT [--clips N]` (a shard .h5 or a packed folder) prints the table for the first N clips of a
packed split (the built-in set's eval.h5 too).
"""
import argparse
import sys
from pathlib import Path
from dataclasses import dataclass

import h5py
import numpy as np
import torch
from tqdm import tqdm

from fastsca.frontend import LogMelConfig, log_mel
from fastsca.inference import load_trained_model

# A mask value above this passes its feature unweighted, within 1 % (logit above 4.6).
SATURATED = 0.99
# A mask value below this removes its feature, within 1 % (logit below -4.6).
SHUT = 0.01


@dataclass(frozen=True)
class Summary:
    """The spread of one mask's values over every clip and position."""

    mean: float
    """Mean value."""
    std: float
    """Standard deviation (population, over all values)."""
    p05: float
    """5th percentile (linear interpolation, numpy's default)."""
    p95: float
    """95th percentile."""
    saturated: float
    """Share of values above SATURATED."""
    shut: float
    """Share of values below SHUT."""
    count: int
    """How many values were summarised."""


@dataclass(frozen=True)
class BlockMasks:
    """The masks of one attention block."""

    block: int
    """The block's number, counted from 1 (block 7 is the last)."""
    spatial: Summary | None
    """M_s over (clips, T, F); None without spatial attention."""
    channel: Summary | None
    """M_c over (clips, C); None without channel attention."""
    gate: Summary
    """The gate applied to the features, over (clips, C, T, F)."""


def summarise(values: torch.Tensor) -> Summary:
    """The Summary of every value of `values` (any shape), computed in float64."""
    flat = values.detach().reshape(-1).to(torch.float64).cpu().numpy()
    if flat.size == 0:
        raise ValueError("summarise: no values to summarise; give at least one clip")
    p05, p95 = np.percentile(flat, [5.0, 95.0])
    return Summary(mean=float(flat.mean()), std=float(flat.std()), p05=float(p05), p95=float(p95),
                   saturated=float((flat > SATURATED).mean()), shut=float((flat < SHUT).mean()), count=int(flat.size))


def in_words(summary: Summary) -> str:
    """The summary in a figure title's words: 'mean 0.52, std 0.13, 5-95 % 0.29-0.70, 0.0 % above 0.99'."""
    return (f"mean {summary.mean:.2f}, std {summary.std:.2f}, 5-95 % {summary.p05:.2f}-{summary.p95:.2f}, "
            f"{100 * summary.saturated:.1f} % above {SATURATED:g}")


def gate_of(logit_s: torch.Tensor | None, logit_c: torch.Tensor | None, additive: bool) -> torch.Tensor:
    """The gate of eq. 10 from logit_s (B, T, F) and logit_c (B, C): (B, C, T, F), or the one mask there is
    ((B, 1, T, F) or (B, C, 1, 1))."""
    s = logit_s[:, None] if logit_s is not None else None       # (B, 1, T, F)
    c = logit_c[:, :, None, None] if logit_c is not None else None  # (B, C, 1, 1)
    if s is None or c is None:
        return torch.sigmoid(s if c is None else c)
    if additive:
        return torch.sigmoid(s + c)
    return torch.sigmoid(s) * torch.sigmoid(c)


@torch.no_grad()
def capture_logits(model: torch.nn.Module, mel: torch.Tensor) -> dict[int, dict[str, torch.Tensor]]:
    """Run `model` (reference path) on `mel` (B, 1, T, F) and return, per attention block (0-based), its
    "logit_s" (B, T, F) and "logit_c" (B, C) where it has them."""
    found: dict[int, dict[str, torch.Tensor]] = {}
    hooks = []
    for block in model.config.attention_blocks:
        attention = model.blocks[block].attention
        if attention.fused:
            raise ValueError("mask statistics need the reference attention path; build the model with "
                             "fused_attention=False")
        found[block] = {}
        for field, module in (("logit_s", attention.spatial), ("logit_c", attention.channel)):
            if module is not None:
                hooks.append(module.register_forward_hook(
                    lambda mod, inputs, output, b=block, f=field: found[b].__setitem__(
                        f, output[:, 0] if f == "logit_s" else output)))
    try:
        model(mel)
    finally:
        for hook in hooks:
            hook.remove()
    return found


def mask_statistics(model: torch.nn.Module, mels) -> list[BlockMasks]:
    """The masks' statistics of each attention block of `model` over the log-mel batches `mels` ((B, 1, T, F)
    each), in block order."""
    config = model.config
    if not config.attention_blocks:
        raise ValueError(f"model {config.name!r} has no attention; pass an attention model (e.g. at-sca-3)")
    kept: dict[int, dict[str, list[torch.Tensor]]] = {b: {"s": [], "c": [], "gate": []}
                                                      for b in config.attention_blocks}
    was_training = model.training
    model.eval()
    try:
        for mel in mels:
            for block, logits in capture_logits(model, mel).items():
                logit_s, logit_c = logits.get("logit_s"), logits.get("logit_c")
                if logit_s is not None:
                    kept[block]["s"].append(torch.sigmoid(logit_s))
                if logit_c is not None:
                    kept[block]["c"].append(torch.sigmoid(logit_c))
                additive = model.blocks[block].attention.arrangement.additive   # C//S: sigma(logit_s + logit_c)
                kept[block]["gate"].append(gate_of(logit_s, logit_c, additive).reshape(-1))
    finally:
        model.train(was_training)
    return [BlockMasks(block=block + 1,
                       spatial=summarise(torch.cat(parts["s"])) if parts["s"] else None,
                       channel=summarise(torch.cat(parts["c"])) if parts["c"] else None,
                       gate=summarise(torch.cat(parts["gate"])))
            for block, parts in kept.items()]


def format_table(blocks: list[BlockMasks]) -> str:
    """A plain-text table: one row per block and mask."""
    header = (f"{'block':<6} {'mask':<8} {'mean':>7} {'std':>7} {'p5':>7} {'p95':>7} "
              f"{f'>{SATURATED:g}':>7} {f'<{SHUT:g}':>7} {'values':>10}")
    lines = [header, "-" * len(header)]
    for b in blocks:
        for name, summary in (("M_s", b.spatial), ("M_c", b.channel), ("gate", b.gate)):
            if summary is not None:
                lines.append(f"{b.block:<6} {name:<8} {summary.mean:>7.4f} {summary.std:>7.4f} {summary.p05:>7.4f} "
                             f"{summary.p95:>7.4f} {summary.saturated:>7.1%} {summary.shut:>7.1%} "
                             f"{summary.count:>10,}")
    return "\n".join(lines)


def shard_path(path: str) -> str:
    """The shard file of --data: the path itself, or a packed folder's first shard (shard_*.h5, in name order)."""
    if Path(path).is_dir():
        shards = sorted(Path(path).glob("shard_*.h5"))
        if not shards:
            raise ValueError(f"--data {path}: a folder with no shard_*.h5; give a split packed by train.pack or its "
                             f"shard file")
        return str(shards[0])
    if not Path(path).is_file():
        raise ValueError(f"--data {path}: no such file or folder; give a split packed by train.pack")
    if not h5py.is_hdf5(path):
        raise ValueError(f"--data {path}: not an HDF5 shard; give a split packed by train.pack (a shard .h5 or its "
                         f"folder)")
    return path


def read_log_mels(path: str, front_end: LogMelConfig, clips: int, batch_size: int):
    """Log-mel batches (B, 1, T, F) of the first `clips` clips of a packed split."""
    with h5py.File(path, "r") as shard:
        if "waveform" not in shard:
            raise ValueError(f"--data {path}: no waveform dataset; give a split packed by train.pack (or the "
                             f"built-in set's eval.h5)")
        if int(shard.attrs["sample_rate"]) != front_end.sample_rate:
            raise ValueError(f"--data {path}: holds {int(shard.attrs['sample_rate'])} Hz clips but the model takes "
                             f"{front_end.sample_rate} Hz; use a split packed at {front_end.sample_rate} Hz")
        if shard["waveform"].shape[1] != front_end.clip_samples:
            raise ValueError(f"--data {path}: holds clips of {shard['waveform'].shape[1]} samples but the model takes "
                             f"{front_end.clip_samples}; use a split packed for this model")
        total = min(clips, shard["waveform"].shape[0])
        for start in tqdm(range(0, total, batch_size), desc="clips", unit="batch", leave=False):
            rows = shard["waveform"][start:min(start + batch_size, total)].astype(np.float32) / 32768
            yield log_mel(torch.from_numpy(rows), front_end).float()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastsca.mask_stats", description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoint", help="a training checkpoint of an attention model (best.pt, latest.pt)")
    parser.add_argument("--data", required=True, help="a packed split of clips the model takes: a shard .h5 (e.g. "
                        "the built-in set's eval.h5) or a packed folder (its first shard)")
    parser.add_argument("--clips", type=int, default=256, help="the first CLIPS clips of --data (default 256; the "
                        "statistics keep every value, so memory grows with it)")
    parser.add_argument("--batch-size", type=int, default=32, help="clips per forward pass (default 32)")
    args = parser.parse_args(argv)
    if args.clips < 1 or args.batch_size < 1:
        parser.error("--clips and --batch-size must be at least 1")
    try:
        trained = load_trained_model(args.checkpoint)
        args.data = shard_path(args.data)
        with h5py.File(args.data, "r") as shard:
            clips = min(args.clips, shard["waveform"].shape[0]) if "waveform" in shard else args.clips
        blocks = mask_statistics(trained.model, read_log_mels(args.data, trained.log_mel, clips, args.batch_size))
    except (ValueError, OSError) as error:   # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    print(f"attention masks of {trained.model.config.name!r} (step {trained.step}, arrangement "
          f"{trained.model.config.arrangement}) over {clips} clip(s) of {args.data}")
    print(format_table(blocks))


if __name__ == "__main__":
    main()
