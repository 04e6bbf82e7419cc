"""`python -m fastsca.tag FILE... --checkpoint C [--top-k 5] [--events] [--json] [--plot OUT.png]`: tag audio files.

Each file is streamed (fastsca/stream.py): read in blocks at the model's sample rate, turned into one
continuous log-mel, and cut into model windows that overlap by half a window, the last one aligned to
the file's end, so no window holds padding and a tag depends only on the audio. A file shorter than a
window is repeated to fill it. A class's clip probability is its largest over the windows; the frame
probabilities (10 Hz) are stitched from each window's middle, so an event crossing a join is seen whole.
Digital silence (every log-mel bin below SILENT_DB) gets probability 0: a silent file is reported as
such, with no tag. Memory stays bounded whatever the file's length; only the (T', K) frame
probabilities grow with it (10 Hz x K x 4 bytes: 1.4 MB an hour for 10 classes, 76 MB for 527).
`--events` turns the frame probabilities into events (fastsca/events.py) and writes them as TSV in
AudioSet's strong-label and DCASE's layouts and as JSON. A file that cannot be read is reported on one
line and skipped; the exit status is then 2.
"""
import argparse
import csv
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from fastsca.attention import SpatialAttention
from fastsca.audio import AudioError
from fastsca.events import (EventConfig, detect_events, events_as_dicts, read_reference, reference_for,
                            write_dcase_tsv,
                            write_json, write_strong_tsv)
from fastsca.inference import CheckpointError, FileTags, PlotView, TrainedModel, load_trained_model, top_k
from fastsca.stream import LogMelStream, WindowCutter, WindowPlan, audio_frames, read_blocks

# A log-mel frame whose every bin is below this is digital silence: white noise of +-1 LSB at 16 bits
# reads about -73 dB in every bin with the default front end, the quietest background of the built-in
# set about -45 dB, and exact zeros read the amin floor (-100 dB).
SILENT_DB = -70.0
# Figure formats matplotlib writes without extra packages.
PLOT_FORMATS = (".png", ".pdf", ".svg")


@dataclass(frozen=True)
class StreamConfig:
    """How a file is streamed through the model."""

    overlap: float = 0.5
    """Fraction of a window shared with the next one; each keeps the frames nearest its middle."""
    windows_per_batch: int = 32
    """Model windows per forward pass (a 2 s window of the CPU-profile model is ~1 MB of activations)."""
    block_seconds: float = 30.0
    """Seconds of audio decoded at a time."""

    def __post_init__(self) -> None:
        if not 0 <= self.overlap < 1:
            raise ValueError(f"overlap must be in [0, 1), got {self.overlap}")
        if self.windows_per_batch < 1 or self.block_seconds <= 0:
            raise ValueError("windows_per_batch must be >= 1 and block_seconds > 0")


def _spatial_modules(model: torch.nn.Module) -> dict[str, SpatialAttention]:
    """The model's spatial attention modules by block ("blocks.6.attention.spatial" -> "block 7")."""
    return {f"block {int(name.split('.')[1]) + 1}": module for name, module in model.named_modules()
            if isinstance(module, SpatialAttention)}


def _blocks_filling_a_window(path: str, blocks, clip_samples: int) -> tuple[list[np.ndarray], int | None]:
    """The first blocks of a stream, read until they fill one window: (blocks, None), or, when the whole
    file is shorter, (that file repeated to one window, its true length)."""
    head, total = [], 0
    for block in blocks:
        head.append(block)
        total += len(block)
        if total >= clip_samples:
            return head, None
    if total == 0:
        raise AudioError(f"{path}: the file holds no samples; re-download or re-encode it")
    return [np.resize(np.concatenate(head), clip_samples)], total


def _chain(head: list[np.ndarray], rest):
    """The blocks already read, then the rest of the stream."""
    yield from head
    yield from rest


class _Tagger:
    """Runs windows through the model in batches and stitches their outputs, keeping only what is needed."""

    def __init__(self, trained: TrainedModel, plan: WindowPlan, view: tuple[float, float] | None) -> None:
        self.trained, self.plan = trained, plan
        self.model = trained.model
        self.device = next(self.model.parameters()).device
        self.frame_seconds = plan.ratio * trained.log_mel.hop_length / trained.log_mel.sample_rate
        self.view = view
        self.clip = np.zeros(len(trained.label_names), np.float32)
        self.frames: list[np.ndarray] = []        # stitched (n, K) parts, in order
        self.maps: dict[str, list[np.ndarray]] = {name: [] for name in _spatial_modules(self.model)}
        self.handed_over = 0                      # output frames stitched so far
        self.pending = None                       # (start, frame probs, maps) of the last window run

    @torch.inference_mode()
    def run(self, windows: list[tuple[int, torch.Tensor]]) -> None:
        """Run windows (start, (window, n_mels) log-mel) and stitch every window but the last, whose
        share is known only once the next window's start is."""
        if not windows:
            return
        mel = torch.stack([w for _, w in windows])[:, None].to(self.device)      # (B, 1, T, F)
        captured: dict[str, torch.Tensor] = {}
        # SpatialAttention returns the logit of eq. 7; M_s is its sigmoid.
        hooks = [module.register_forward_hook(lambda mod, inp, out, name=name: captured.__setitem__(name, out))
                 for name, module in _spatial_modules(self.model).items()] if self.view else []
        try:
            output = self.model(mel)
        finally:
            for hook in hooks:
                hook.remove()
        silent_in = (mel[:, 0].amax(dim=2) < SILENT_DB).cpu()                      # (B, T)
        clip, frame = output.clip.float().cpu(), output.frame.float().cpu()        # (B, K), (B, T', K)
        silent_out = silent_in.view(len(windows), frame.shape[1], -1).all(dim=2)   # (B, T')
        frame[silent_out] = 0.0
        clip[silent_in.all(dim=1)] = 0.0
        self.clip = np.maximum(self.clip, clip.amax(dim=0).numpy())
        maps = {name: torch.sigmoid(m[:, 0]).float().cpu().numpy() for name, m in captured.items()}
        for i, (start, _) in enumerate(windows):
            if self.pending is not None:
                self._stitch(self.plan.join(self.pending[0], start))
            self.pending = (start, frame[i].numpy(), {name: m[i] for name, m in maps.items()})

    def _stitch(self, end: int) -> None:
        """Keep the pending window's output frames up to output frame `end`."""
        start, frame, maps = self.pending
        first = start // self.plan.ratio
        begin, stop = self.handed_over - first, end - first
        self.frames.append(frame[begin:stop])
        if self.view is not None:
            lo = int(self.view[0] / self.frame_seconds)
            hi = math.ceil(self.view[1] / self.frame_seconds)
            if self.handed_over < hi and end > lo:
                for name, m in maps.items():
                    per_frame = m.shape[0] // frame.shape[0]                   # map rows per output frame
                    a, b = max(begin, lo - first), min(stop, hi - first)
                    self.maps[name].append(m[a * per_frame: b * per_frame])
        self.handed_over = end

    def finish(self, keep_frames: int | None) -> np.ndarray:
        """Stitch the last window; (T', K) frame probabilities, cut to `keep_frames` when given."""
        start, frame, _ = self.pending
        end = start // self.plan.ratio + frame.shape[0]
        self._stitch(end if keep_frames is None else min(end, keep_frames))
        return np.concatenate(self.frames)


def tag_file(trained: TrainedModel, path: str, config: StreamConfig = StreamConfig(),
             view: tuple[float, float] | None = None) -> FileTags:
    """Tag one audio file, streamed in bounded memory; with `view` (start, end seconds), also keep the
    log-mel and spatial attention maps over that range for a figure."""
    settings = trained.log_mel
    model_config = trained.model.config
    plan = WindowPlan.for_model(model_config.input_frames, model_config.output_frames, config.overlap)
    file_frames, file_rate = audio_frames(path)
    blocks = read_blocks(path, settings.sample_rate, config.block_seconds)
    head, short_length = _blocks_filling_a_window(path, blocks, settings.clip_samples)
    source = head if short_length is not None else _chain(head, blocks)
    tagger = _Tagger(trained, plan, view)
    mels, cutter = LogMelStream(settings), WindowCutter(plan)
    mel_rate = settings.sample_rate / settings.hop_length             # log-mel frames per second
    view_frames: list[torch.Tensor] = []

    def take(mel: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Keep the frames of `mel` (the stream's latest) that fall in the view; the windows they complete."""
        if view is not None:
            first = mels.frames - len(mel)
            lo, hi = int(view[0] * mel_rate) - first, math.ceil(view[1] * mel_rate) - first
            view_frames.append(mel[max(0, lo): max(0, hi)])
        return cutter.push(mel)

    def run(windows: list[tuple[int, torch.Tensor]]) -> None:
        for start in range(0, len(windows), config.windows_per_batch):
            tagger.run(windows[start: start + config.windows_per_batch])

    with tqdm(total=round(file_frames / file_rate, 1), unit="s", desc=Path(path).name, leave=False, disable=None,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]") as bar:
        for block in source:
            run(take(mels.push(block)))
            bar.update(len(block) / settings.sample_rate)
        run(take(mels.finish()) + cutter.finish())
    samples = mels.samples if short_length is None else short_length
    frame = tagger.finish(None if short_length is None else math.ceil(samples / (settings.hop_length * plan.ratio)))
    if not (np.isfinite(frame).all() and np.isfinite(tagger.clip).all()):
        raise CheckpointError(f"the model gave NaN or infinite probabilities on {path}; its checkpoint is "
                              f"damaged: use best.pt or latest.pt as written by `python -m train.run`")
    plot_view = None
    if view is not None:
        end = min(view[1], len(frame) * tagger.frame_seconds)
        log_mel = torch.cat(view_frames).numpy()[: max(0, math.ceil((end - view[0]) * mel_rate))]
        plot_view = PlotView(start=view[0], end=end, log_mel=log_mel,
                             spatial_maps={name: np.concatenate(parts) for name, parts in tagger.maps.items() if parts})
    return FileTags(path=path, seconds=samples / settings.sample_rate, clip=tagger.clip, frame=frame,
                    frame_seconds=tagger.frame_seconds, silent=not tagger.clip.any() and not frame.any(),
                    view=plot_view)


def plot_destinations(plot: Path, files: list[str]) -> list[Path]:
    """Where each file's figure goes: a folder -> FOLDER/<stem>.png; a name without an extension gets .png;
    with several files, NAME-<stem>.EXT. Names that would collide get -2, -3, ... so no figure of this
    run overwrites another. An extension matplotlib cannot write is a ValueError."""
    if plot.is_dir() or str(plot).endswith(os.sep):
        folder, stem, suffix, prefix = plot, "", ".png", False
    else:
        suffix = plot.suffix.lower() or ".png"
        if suffix not in PLOT_FORMATS:
            raise ValueError(f"--plot {plot}: cannot write {plot.suffix!r} figures; use {', '.join(PLOT_FORMATS)} "
                             f"or a folder")
        folder, stem, prefix = plot.parent, plot.stem if plot.suffix else plot.name, len(files) > 1
        suffix = plot.suffix or ".png"
    paths, taken = [], set()
    for file in files:
        base = (f"{stem}-{Path(file).stem}" if prefix else stem) if stem else Path(file).stem
        name, count = f"{base}{suffix}", 1
        while name in taken:
            count += 1
            name = f"{base}-{count}{suffix}"
        taken.add(name)
        paths.append(folder / name)
    return paths


def check_writable_folder(folder: Path, option: str) -> None:
    """Create `folder` if needed and check a file can be written in it; ValueError (one line) otherwise."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder}: is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{option} {folder}: cannot write there ({error.strerror or error}); give a writable "
                         f"folder") from None


def _write_atomically(path: Path, write) -> None:
    """`write(tmp_path)`, then rename: a file under its final name is always whole."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m fastsca.tag", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    arg("files", nargs="+", metavar="FILE", help="audio files (wav, flac, ogg, mp3; any rate, any length)")
    arg("--checkpoint", required=True, help="best.pt or latest.pt written by train.run")
    arg("--top-k", type=int, default=5, help="labels to show per file (default 5)")
    arg("--json", action="store_true", help="print one JSON document instead of text")
    arg("--events", action="store_true",
        help="detect sound events and write OUT/events.tsv (AudioSet strong layout), OUT/events_dcase.tsv and "
             "OUT/events.json")
    arg("--threshold", type=float, default=EventConfig.threshold, help="event onset threshold (default 0.5)")
    arg("--out", type=Path, default=Path("."), help="folder for the --events files (default: the current one)")
    arg("--labels", type=Path,
        help="class_labels_indices.csv: writes label mids in events.tsv and reads mids in --strong "
             "(default: display names)")
    arg("--strong", type=Path, help="reference events TSV (AudioSet strong, DCASE or name layout) to draw in --plot")
    arg("--plot", type=Path, metavar="OUT.png",
        help="draw the log-mel, spatial attention maps, frame probabilities and events (.png, .pdf, .svg, or a "
             "folder)")
    arg("--overlap", type=float, default=StreamConfig.overlap,
        help="fraction of a window shared with the next (default 0.5; 0.25 runs a third fewer windows)")
    arg("--threads", type=int, default=1,
        help="CPU threads for the model (default 1: on a shared 2-core box 1 thread ran 87 windows/s, 2 threads 28)")
    arg("--start", type=float, default=0.0, help="--plot from this second (default 0)")
    arg("--end", type=float, help="--plot up to this second (default: --start + 60 s, at most the file's end)")
    args = parser.parse_args(argv)
    if args.top_k < 1:
        parser.error("--top-k must be >= 1")
    if args.start < 0 or (args.end is not None and args.end <= args.start):
        parser.error("--plot needs 0 <= --start < --end")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:   # everything that can be wrong with the arguments is found before any audio is read
        plots = plot_destinations(args.plot, args.files) if args.plot is not None else None
        for folder in {p.parent for p in plots or []} | ({args.out} if args.events else set()):
            check_writable_folder(folder, "--out" if args.events and folder == args.out else "--plot")
        events_config = EventConfig(threshold=args.threshold)
        stream = StreamConfig(overlap=args.overlap)
        device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)
        trained = load_trained_model(args.checkpoint, device)
        label_mids = _read_label_mids(args.labels, trained.label_names) if args.labels else None
        reference = read_reference(args.strong, trained.label_names, label_mids) if args.strong else {}
        events_config.onset_thresholds(trained.label_names)
    except ValueError as error:   # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    if plots is not None:
        from fastsca.plot import plot_tags   # matplotlib only when a plot is asked for
    view = (args.start, args.end if args.end is not None else args.start + 60.0) if plots is not None else None
    failed, results, all_events = 0, [], []
    for i, file in enumerate(args.files):
        try:
            tags = tag_file(trained, file, stream, view=view)
        except (AudioError, CheckpointError) as error:
            print(f"error: {error}", file=sys.stderr)
            failed += 1
            continue
        best = [] if tags.silent else top_k(tags, trained.label_names, args.top_k)
        result = {"file": file, "seconds": round(tags.seconds, 3), "silent": tags.silent,
                  "labels": [{"label": name, "probability": round(p, 4)} for name, p in best]}
        events = detect_events(tags.frame, tags.frame_seconds, trained.label_names, file, events_config)
        if args.events:
            all_events += events
            result["events"] = events_as_dicts(events)
        if plots is not None:
            truth = reference_for(file, reference) if reference else None
            plot_tags(tags, trained, args.top_k, plots[i], events, truth)
            result["plot"] = str(plots[i])
        results.append(result)
        if not args.json:
            _print_result(result, tags)
    if args.events:
        mids = label_mids or {name: name for name in trained.label_names}
        paths = [args.out / "events.tsv", args.out / "events_dcase.tsv", args.out / "events.json"]
        _write_atomically(paths[0], lambda tmp: write_strong_tsv(tmp, all_events, mids))
        _write_atomically(paths[1], lambda tmp: write_dcase_tsv(tmp, all_events))
        _write_atomically(paths[2], lambda tmp: write_json(tmp, all_events))
        print(f"{len(all_events)} events: {', '.join(map(str, paths))}", file=sys.stderr if args.json else sys.stdout)
    if args.json:
        print(json.dumps(results, indent=2, allow_nan=False))
    if failed:
        print(f"error: {failed} of {len(args.files)} files could not be read", file=sys.stderr)
        sys.exit(2)


def _print_result(result: dict, tags: FileTags) -> None:
    """A file's tags (and events and figure, when asked for) as text."""
    print(f"{result['file']} ({tags.seconds:.1f} s{', silent: no tags' if tags.silent else ''})")
    for label in result["labels"]:
        print(f"  {label['probability']:.3f}  {label['label']}")
    if "events" in result:
        print(f"  {len(result['events'])} event(s)")
        for event in result["events"]:
            print(f"    {event['onset']:8.3f} {event['offset']:8.3f} s  {event['label']} ({event['score']:.3f})")
    if "plot" in result:
        print(f"  plot: {result['plot']}")


def _read_label_mids(path: Path, label_names: tuple[str, ...]) -> dict[str, str]:
    """display name -> mid from an AudioSet class_labels_indices.csv (index, mid, display_name)."""
    try:
        with open(path, newline="") as handle:
            rows = [row for row in csv.reader(handle) if len(row) == 3 and row[0] != "index"]
    except OSError as error:
        raise ValueError(f"--labels {path}: cannot read it ({error.strerror}); check the path") from None
    mids = {name: mid for _, mid, name in rows}
    missing = [name for name in label_names if name not in mids]
    if missing:
        raise ValueError(f"--labels {path}: has no mid for {missing[0]!r}; give the labels file the model was "
                         f"trained with")
    return mids


if __name__ == "__main__":
    main()
