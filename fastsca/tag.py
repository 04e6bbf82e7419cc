"""`python -m fastsca.tag FILE... --checkpoint C [--top-k 5] [--json] [--plot out.png]`: tag audio files.

Each file is read at the model's sample rate (any format soundfile decodes, resampled with soxr), cut
into consecutive windows of the model's clip length (the last one zero-padded; the log-mel frames at a
join see the neighbouring window's samples, so the log-mel is continuous over the file) and run through
the model: a class's clip probability is its largest over the windows (an event anywhere in the file tags
it), and the frame-level probabilities and spatial attention maps are laid end to end over the file.
A file that cannot be read is reported on one line and skipped; the exit status is then 2.
"""
import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from fastsca.attention import SpatialAttention
from fastsca.audio import AudioError, load_audio
from fastsca.frontend import context_windows, log_mel
from fastsca.inference import CheckpointError, TrainedModel, load_trained_model

# Windows per forward pass: bounds memory on long files (a 10 s window of the full model is ~40 MB of
# activations in eval mode).
WINDOWS_PER_BATCH = 16


@dataclass(frozen=True)
class FileTags:
    """What the model says about one file."""

    path: str
    """The file as given."""
    seconds: float
    """Its duration."""
    clip: np.ndarray
    """(K,) clip probabilities: the largest over the file's windows."""
    frame: np.ndarray
    """(T', K) frame-level probabilities over the whole file (the padded tail included)."""
    log_mel: np.ndarray
    """(T, n_mels) log-mel of the whole file, in dB."""
    spatial_maps: dict[str, np.ndarray]
    """Per attention block ("block 7"), its spatial attention map M_s (T_s, F_s) over the whole file."""


def _spatial_modules(model: torch.nn.Module) -> dict[str, SpatialAttention]:
    """The model's spatial attention modules by block ("blocks.6.attention.spatial" -> "block 7")."""
    return {f"block {int(name.split('.')[1]) + 1}": module for name, module in model.named_modules()
            if isinstance(module, SpatialAttention)}


@torch.no_grad()
def tag_waveform(trained: TrainedModel, waveform: np.ndarray, path: str) -> FileTags:
    """Tag a mono float waveform at the model's sample rate."""
    windows = context_windows(torch.from_numpy(np.asarray(waveform, np.float32)), trained.log_mel)
    device = next(trained.model.parameters()).device
    maps: dict[str, list[torch.Tensor]] = {name: [] for name in _spatial_modules(trained.model)}
    # SpatialAttention returns the logit of eq. 7; M_s is its sigmoid.
    hooks = [module.register_forward_hook(lambda mod, inp, out, name=name: maps[name].append(torch.sigmoid(out)))
             for name, module in _spatial_modules(trained.model).items()]
    mels, clips, frames = [], [], []
    try:
        for batch in windows.split(WINDOWS_PER_BATCH):
            mel = log_mel(batch, trained.log_mel, with_context=True).to(device)   # (W, 1, T, F)
            output = trained.model(mel)
            mels.append(mel[:, 0].cpu())
            clips.append(output.clip.cpu())
            frames.append(output.frame.cpu())
    finally:
        for hook in hooks:
            hook.remove()
    return FileTags(
        path=path,
        seconds=len(waveform) / trained.log_mel.sample_rate,
        clip=torch.cat(clips).amax(dim=0).numpy(),
        frame=torch.cat(frames).flatten(0, 1).numpy(),
        log_mel=torch.cat(mels).flatten(0, 1).numpy(),
        spatial_maps={name: torch.cat(parts)[:, 0].flatten(0, 1).cpu().numpy() for name, parts in maps.items()},
    )


def top_k(tags: FileTags, label_names: tuple[str, ...], k: int) -> list[tuple[str, float]]:
    """The k most probable labels, with their clip probabilities, most probable first."""
    order = np.argsort(-tags.clip, kind="stable")[:k]
    return [(label_names[i], float(tags.clip[i])) for i in order]


def _plot_path(plot: Path, file: str, several: bool) -> Path:
    """out.png for a single file; out-<file stem>.png beside it for each of several."""
    return plot.with_name(f"{plot.stem}-{Path(file).stem}{plot.suffix}") if several else plot


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m fastsca.tag", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3; any rate)")
    parser.add_argument("--checkpoint", required=True, help="best.pt or latest.pt written by train.run")
    parser.add_argument("--top-k", type=int, default=5, help="labels to show per file (default 5)")
    parser.add_argument("--json", action="store_true", help="print one JSON document instead of text")
    parser.add_argument("--plot", type=Path, metavar="OUT.png",
                        help="draw the log-mel, top classes over time and spatial attention maps (Fig. 3)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        trained = load_trained_model(args.checkpoint, device)
    except CheckpointError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if args.plot is not None:
        from fastsca.plot import plot_tags   # matplotlib only when a plot is asked for
    failed, results = 0, []
    for file in args.files:
        try:
            waveform = load_audio(file, trained.log_mel.sample_rate)
        except AudioError as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        tags = tag_waveform(trained, waveform, file)
        best = top_k(tags, trained.label_names, args.top_k)
        results.append({"file": file, "seconds": round(tags.seconds, 3),
                        "labels": [{"label": name, "probability": round(p, 4)} for name, p in best]})
        if not args.json:
            print(f"{file} ({tags.seconds:.1f} s)")
            for name, probability in best:
                print(f"  {probability:.3f}  {name}")
        if args.plot is not None:
            path = _plot_path(args.plot, file, len(args.files) > 1)
            plot_tags(tags, trained, args.top_k, path)
            if not args.json:
                print(f"  plot: {path}")
    if args.json:
        print(json.dumps(results, indent=2))
    if failed:
        print(f"error: {failed} of {len(args.files)} files could not be read", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
