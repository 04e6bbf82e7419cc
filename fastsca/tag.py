"""`python -m fastsca.tag FILE|FOLDER|ARCHIVE... --checkpoint C [--top-k 5] [--events] [--json] [--plot OUT.png]
[--table OUT.csv]`: tag audio files.

Each file is streamed (fastsca/stream.py): read in blocks at the model's sample rate, turned into one
continuous log-mel, and cut into model windows that overlap by half a window, the last one aligned to
the file's end, so no window holds padding and a tag depends only on the audio. A file shorter than a
window is repeated to fill it. A class's clip probability is its largest over the windows; the frame
probabilities (10 Hz) are stitched from each window's middle, so an event crossing a join is seen whole.
Digital silence (every log-mel bin below SILENT_DB) gets probability 0: a silent file is reported as
such, with no tag. Memory stays bounded whatever the file's length; only the (T', K) frame
probabilities grow with it (10 Hz x K x 4 bytes: 1.4 MB an hour for 10 classes, 76 MB for 527); --plot
keeps only its range's log-mel and attention maps.
`--events` turns the frame probabilities into events (fastsca/events.py) and writes them as TSV in
AudioSet's strong-label and DCASE's layouts and as JSON.

Folders and archives are expanded by fastsca/tag_inputs.py (files named by their path inside them);
`--table` appends one row per file as it is done and resumes (fastsca/tag_table.py). Every bad input
is one line and the batch goes on: a file that cannot be read, a figure or a table row that cannot be
written (each written to .tmp and renamed, or cut back, so no partial file is left), a --start beyond
a file's end; the exit status is then 2. A closed standard output (`| head`) stops the printing
quietly; the files asked for are still written, and with none asked for the run stops (exit 0).
Ctrl-C stops after a line saying how many files were done (exit 130); --table keeps them.
"""
import argparse
import csv
import json
import math
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
import torch
from tqdm import tqdm

from fastsca.attention import SpatialAttention
from fastsca.audio import AudioError
from fastsca.events import (EventConfig, detect_events, events_as_dicts, read_reference, reference_for,
                            stored_event_config, write_dcase_tsv, write_json, write_strong_tsv)
from fastsca.inference import CheckpointError, FileTags, PlotView, TrainedModel, load_trained_model, top_k
from fastsca.stream import LogMelStream, WindowCutter, WindowPlan, audio_frames, read_blocks, source_name
from fastsca.tag_inputs import Input, InputReader, expand_inputs
from fastsca.atomic import write_atomically
from fastsca.tag_outputs import Console, check_writable_folder, is_folder, plot_destinations
from fastsca.tag_table import ResultTable, table_columns

# A log-mel frame whose every bin is below this is digital silence: white noise of +-1 LSB at 16 bits
# reads about -73 dB in every bin with the default front end, the quietest background of the built-in
# set about -45 dB, and exact zeros read the amin floor (-100 dB).
SILENT_DB = -70.0
# How far past a figure's end the frame probabilities are kept for its events: more than the median filter's
# half-width and the gap joined (EventConfig: 0.15 s, 0.2 s), so the events drawn are those of the whole file.
EVENT_REACH_SECONDS = 1.0


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

    def __init__(self, trained: TrainedModel, plan: WindowPlan, view: tuple[float, float] | None,
                 expected_frames: int, frame_limit: int | None) -> None:
        self.trained, self.plan = trained, plan
        self.model = trained.model
        self.device = next(self.model.parameters()).device
        self.frame_seconds = plan.ratio * trained.log_mel.hop_length / trained.log_mel.sample_rate
        self.view = view
        self.clip = np.zeros(len(trained.label_names), np.float32)
        # the stitched (T', K) frame probabilities, filled in place: sized from the file's header (grown if that
        # under-counts), so no batch's output is kept alive and no final concatenation doubles the peak
        self.frames = np.zeros((expected_frames, len(trained.label_names)), np.float32)
        self.frame_limit = frame_limit            # output frames kept at most (None: all)
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
        limit = end if self.frame_limit is None else self.frame_limit
        kept_from, kept_to = min(self.handed_over, limit), min(end, limit)   # output frames to store
        if kept_to > len(self.frames):
            grown = np.zeros((max(kept_to, 2 * len(self.frames)), self.frames.shape[1]), np.float32)
            grown[:kept_from] = self.frames[:kept_from]
            self.frames = grown
        self.frames[kept_from:kept_to] = frame[kept_from - first: kept_to - first]
        if self.view is not None:
            lo = int(self.view[0] / self.frame_seconds)
            hi = math.ceil(self.view[1] / self.frame_seconds)
            if self.handed_over < hi and end > lo:
                for name, m in maps.items():
                    per_frame = m.shape[0] // frame.shape[0]                   # map rows per output frame
                    a, b = max(begin, lo - first), min(stop, hi - first)
                    # a copy: a slice would keep the whole batch's maps alive (with the frame probabilities kept as
                    # slices too, a one-hour file with --plot held 1.1 GB at the end against 0.46 GB for 10 min)
                    self.maps[name].append(m[a * per_frame: b * per_frame].copy())
        self.handed_over = end

    def finish(self, keep_frames: int | None) -> np.ndarray:
        """Stitch the last window; (T', K) frame probabilities, cut to `keep_frames` when given."""
        start, frame, _ = self.pending
        end = start // self.plan.ratio + frame.shape[0]
        self._stitch(end if keep_frames is None else min(end, keep_frames))
        return self.frames[: self.handed_over if self.frame_limit is None else min(self.handed_over, self.frame_limit)]


def tag_file(trained: TrainedModel, path: "str | Path | BinaryIO", config: StreamConfig = StreamConfig(),
             view: tuple[float, float] | None = None, frames_until: float | None = None) -> FileTags:
    """Tag one audio file (a path, or an open binary file such as an archive member), streamed in bounded
    memory; with `view` (start, end seconds), also keep the log-mel and spatial attention maps over that
    range for a figure. With `frames_until` (seconds), keep the frame probabilities only up to there
    (FileTags.frame is then that long at most; the clip probabilities still cover the whole file), so
    that memory stays flat in the file's length when no events are asked for."""
    name = source_name(path)
    settings = trained.log_mel
    model_config = trained.model.config
    plan = WindowPlan.for_model(model_config.input_frames, model_config.output_frames, config.overlap)
    file_frames, file_rate = audio_frames(path)
    blocks = read_blocks(path, settings.sample_rate, config.block_seconds)
    head, short_length = _blocks_filling_a_window(name, blocks, settings.clip_samples)
    source = head if short_length is not None else _chain(head, blocks)
    expected = math.ceil(file_frames * settings.sample_rate / file_rate / (settings.hop_length * plan.ratio))
    frame_seconds = plan.ratio * settings.hop_length / settings.sample_rate
    limit = None if frames_until is None else math.ceil(frames_until / frame_seconds)
    capacity = max(expected, model_config.output_frames)
    tagger = _Tagger(trained, plan, view, capacity if limit is None else min(capacity, limit), limit)
    mels, cutter = LogMelStream(settings), WindowCutter(plan)
    mel_rate = settings.sample_rate / settings.hop_length             # log-mel frames per second
    view_frames: list[torch.Tensor] = []

    def take(mel: torch.Tensor) -> list[tuple[int, torch.Tensor]]:
        """Keep the frames of `mel` (the stream's latest) that fall in the view; the windows they complete."""
        if view is not None:
            first = mels.frames - len(mel)
            lo, hi = int(view[0] * mel_rate) - first, math.ceil(view[1] * mel_rate) - first
            if hi > 0 and lo < len(mel):   # a clone: a slice would keep the whole block's log-mel alive
                view_frames.append(mel[max(0, lo): hi].clone())
        return cutter.push(mel)

    def run(windows: list[tuple[int, torch.Tensor]]) -> None:
        for start in range(0, len(windows), config.windows_per_batch):
            tagger.run(windows[start: start + config.windows_per_batch])

    with tqdm(total=round(file_frames / file_rate, 1), unit="s", desc=Path(name).name, leave=False, disable=None,
              bar_format="{desc}: {percentage:3.0f}%|{bar}| {n:.0f}/{total:.0f} s [{elapsed}<{remaining}]") as bar:
        for block in source:
            run(take(mels.push(block)))
            bar.update(len(block) / settings.sample_rate)
        run(take(mels.finish()) + cutter.finish())
    samples = mels.samples if short_length is None else short_length
    frame = tagger.finish(None if short_length is None else math.ceil(samples / (settings.hop_length * plan.ratio)))
    if not (np.isfinite(frame).all() and np.isfinite(tagger.clip).all()):
        raise CheckpointError(f"the model gave NaN or infinite probabilities on {name}; its checkpoint is "
                              f"damaged: use best.pt or latest.pt as written by `python -m train.run`")
    plot_view = None
    if view is not None:
        end = max(view[0], min(view[1], len(frame) * tagger.frame_seconds))   # end == start: beyond the file
        log_mel = torch.cat(view_frames).numpy() if view_frames else np.zeros((0, settings.n_mels), np.float32)
        log_mel = log_mel[: math.ceil((end - view[0]) * mel_rate)]
        maps = {block: np.concatenate(parts) for block, parts in tagger.maps.items() if parts}
        plot_view = PlotView(start=view[0], end=end, log_mel=log_mel, spatial_maps=maps)
    return FileTags(path=name, seconds=samples / settings.sample_rate, clip=tagger.clip, frame=frame,
                    frame_seconds=tagger.frame_seconds, silent=not tagger.clip.any() and not frame.any(),
                    view=plot_view)


class _OneLineParser(argparse.ArgumentParser):
    """An argument parser whose errors are one line (no usage block), exit status 2."""

    def error(self, message: str):
        print(f"error: {message}; see `{self.prog} --help`", file=sys.stderr)
        sys.exit(2)


def _check_numbers(args: argparse.Namespace, parser: _OneLineParser) -> None:
    """Each numeric option in its range (NaN and infinity are out of every range): one line otherwise."""
    limits = os.cpu_count() or 1
    checks = [
        ("--top-k", args.top_k, args.top_k >= 1, "give a count >= 1"),
        ("--threshold", args.threshold, args.threshold is None or (math.isfinite(args.threshold)
                                                                    and 0 < args.threshold < 1),
         "give a probability between 0 and 1, exclusive"),
        ("--overlap", args.overlap, math.isfinite(args.overlap) and 0 <= args.overlap < 1,
         "give a fraction in [0, 1)"),
        ("--threads", args.threads, 1 <= args.threads <= limits, f"give 1 to {limits} (the CPUs of this machine)"),
        ("--start", args.start, math.isfinite(args.start) and args.start >= 0, "give seconds >= 0"),
        ("--end", args.end, args.end is None or (math.isfinite(args.end) and args.end > args.start),
         "give seconds after --start"),
    ]
    for option, value, ok, advice in checks:
        if not ok:
            parser.error(f"{option} {value:g}: out of range; {advice}")


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = _OneLineParser(prog="python -m fastsca.tag", description=__doc__.split("\n\n")[1],
                            formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    arg("files", nargs="+", metavar="FILE",
        help="audio files (wav, flac, ogg, mp3; any rate, any length), folders (walked recursively) or .zip/.tar "
             "(.gz, .bz2, .xz) archives (read member by member)")
    arg("--checkpoint", required=True, help="best.pt or latest.pt written by train.run")
    arg("--top-k", type=int, default=5, help="labels to show per file (default 5)")
    arg("--json", action="store_true", help="print one JSON document instead of text")
    arg("--table", type=Path, metavar="OUT.csv",
        help="also write one row per file (name, seconds, top labels and scores, events with --events) to this "
             ".csv or .tsv as each file is done; run again with the same table to resume: files already in it "
             "are skipped")
    arg("--events", action="store_true",
        help="detect sound events and write OUT/events.tsv (AudioSet strong layout), OUT/events_dcase.tsv and "
             "OUT/events.json")
    arg("--threshold", type=float, help="event onset threshold for every class (default: the checkpoint's "
                                         "per-class thresholds chosen on validation, 0.5 for the others)")
    arg("--out", type=Path, default=Path("."), help="folder for the --events files (default: the current one)")
    arg("--labels", type=Path,
        help="class_labels_indices.csv: writes label mids in events.tsv and reads mids in --strong "
             "(default: display names)")
    arg("--strong", type=Path, help="reference events TSV (AudioSet strong, DCASE or name layout) to draw in --plot")
    arg("--plot", metavar="OUT.png",
        help="draw the log-mel, spatial attention maps, frame probabilities and events (.png, .pdf, .svg, or a "
             "folder)")
    arg("--overlap", type=float, default=StreamConfig.overlap,
        help="fraction of a window shared with the next (default 0.5; 0.25 runs a third fewer windows)")
    arg("--threads", type=int, default=1,
        help="CPU threads for the model (default 1: on a shared 2-core box 1 thread ran 87 windows/s, 2 threads 28)")
    arg("--start", type=float, default=0.0, help="--plot from this second (default 0)")
    arg("--end", type=float, help="--plot up to this second (default: --start + 60 s, at most the file's end)")
    args = parser.parse_args(argv)
    _check_numbers(args, parser)
    return args


@dataclass
class _Run:
    """What one run of the command needs and what it has done so far."""

    args: argparse.Namespace
    trained: TrainedModel
    events_config: EventConfig
    stream: StreamConfig
    reference: dict
    """--strong's reference events by clip id (empty without it)."""
    label_mids: dict[str, str] | None
    """--labels' display name -> mid (None without it)."""
    console: Console
    reader: InputReader
    table: ResultTable | None
    results: list[dict]
    """Each tagged file's result, as --json prints it."""
    events: list
    """The events for the events files: the table's earlier rows', then this run's."""
    unread: int = 0
    """Files that could not be read."""
    unwritten: int = 0
    """Figures, table rows and events files that were not written."""

    def error(self, line: str) -> None:
        tqdm.write(f"error: {line}", file=sys.stderr)


def _tag_one(run: _Run, item: Input, plot: Path | None) -> None:
    """Tag one file and write what was asked for it; every failure is one line, and the batch goes on."""
    args, trained = run.args, run.trained
    view = (args.start, args.end if args.end is not None else args.start + 60.0) if plot is not None else None
    # frame probabilities only where they are used: all of them for --events, the figure's range (and the
    # event detector's reach beyond it) for --plot, none otherwise; memory then stays flat in the file's length
    frames_until = None if args.events else view[1] + EVENT_REACH_SECONDS if view is not None else 0.0
    try:
        with run.reader.open(item) as source:
            tags = tag_file(trained, source, run.stream, view=view, frames_until=frames_until)
    except (AudioError, CheckpointError) as error:
        run.error(str(error))
        run.unread += 1
        return
    best = [] if tags.silent else top_k(tags, trained.label_names, args.top_k)
    result = {"file": item.name, "seconds": round(tags.seconds, 3), "silent": tags.silent,
              "labels": [{"label": name, "probability": round(p, 4)} for name, p in best]}
    events = (detect_events(tags.frame, tags.frame_seconds, trained.label_names, item.name, run.events_config,
                            clip_probs=tags.clip)
              if args.events or plot is not None else [])
    if args.events:
        run.events += events
        result["events"] = events_as_dicts(events)
    if plot is not None:
        if tags.view.end <= tags.view.start:
            run.error(f"{item.name}: --start {args.start:g} s is at or beyond its end ({tags.analysed_seconds:.1f} s "
                      f"analysed); no figure for it: give an earlier --start")
            run.unwritten += 1
        else:
            from fastsca.plot import plot_tags   # matplotlib only when a plot is asked for
            truth = reference_for(item.name, run.reference) if run.reference else None
            try:
                plot.parent.mkdir(parents=True, exist_ok=True)
                write_atomically(plot, lambda tmp: plot_tags(tags, trained, args.top_k, tmp, events, truth,
                                                              file_format=plot.suffix[1:]))
                result["plot"] = str(plot)
            except OSError as error:
                run.error(f"{item.name}: cannot write the figure {plot} ({error.strerror or error}); free some "
                          f"space or give another --plot")
                run.unwritten += 1
    if run.table is not None:
        try:
            run.table.append(result)
        except OSError as error:
            run.error(f"{item.name}: cannot add its row to --table {run.table.path} ({error.strerror or error}); "
                      f"free some space and run again to tag it")
            run.unwritten += 1
    run.results.append(result)
    if not args.json:
        run.console.print(_result_text(result, tags))


def _write_events(run: _Run) -> None:
    """The events files, each written atomically; a failed one is one line."""
    mids = run.label_mids or {name: name for name in run.trained.label_names}
    events = sorted(run.events, key=lambda e: (e.file, e.onset, e.label))
    out = run.args.out
    writers = {out / "events.tsv": lambda tmp: write_strong_tsv(tmp, events, mids),
               out / "events_dcase.tsv": lambda tmp: write_dcase_tsv(tmp, events),
               out / "events.json": lambda tmp: write_json(tmp, events)}
    written = []
    for path, write in writers.items():
        try:
            write_atomically(path, write)
            written.append(str(path))
        except OSError as error:
            run.error(f"--out {out}: cannot write {path.name} ({error.strerror or error}); free some space and "
                      f"run again")
            run.unwritten += 1
    if written and run.args.json:   # stdout holds only the JSON document
        print(f"{len(events)} events: {', '.join(written)}", file=sys.stderr)
    elif written:
        run.console.print(f"{len(events)} events: {', '.join(written)}")


def _prepare(args: argparse.Namespace) -> _Run:
    """Check the destinations, load the model, labels and reference events, open the table: everything that can
    be wrong with the arguments is found before any audio is read (ValueError, one line)."""
    table = None
    if args.plot is not None:
        plot_destinations(args.plot, [])   # an unwritable extension
    for folder in ({Path(args.plot) if is_folder(args.plot) else Path(args.plot).parent}
                   if args.plot is not None else set()) | ({args.out} if args.events else set()):
        check_writable_folder(folder, "--out" if args.events and folder == args.out else "--plot")
    stream = StreamConfig(overlap=args.overlap)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    trained = load_trained_model(args.checkpoint, device)
    # --threshold for every class, else the checkpoint's per-class thresholds (0.5 where it has none)
    events_config = (EventConfig(threshold=args.threshold) if args.threshold is not None
                     else stored_event_config(trained.configs))
    label_mids = _read_label_mids(args.labels, trained.label_names) if args.labels else None
    reference = read_reference(args.strong, trained.label_names, label_mids) if args.strong else {}
    events_config.onset_thresholds(trained.label_names)
    if args.table is not None:
        check_writable_folder(args.table.parent, "--table")
        table = ResultTable(args.table, table_columns(args.top_k, args.events))
    return _Run(args, trained, events_config, stream, reference, label_mids, Console(), InputReader(), table,
                results=[], events=table.events() if table is not None else [])


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run = _prepare(args)
    except ValueError as error:   # CheckpointError is a ValueError
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    table = run.table
    own_outputs = ([args.table] if args.table is not None else []) + (
        [args.out / name for name in ("events.tsv", "events_dcase.tsv", "events.json")] if args.events else []) + (
        [Path(args.plot)] if args.plot is not None and is_folder(args.plot) else [])
    inputs = expand_inputs(args.files, ignore=tuple(own_outputs))
    for line in inputs.skipped:
        print(f"note: {line}", file=sys.stderr)
    plots = plot_destinations(args.plot, [item.name for item in inputs.files]) if args.plot is not None else None
    done = table.finished() if table is not None else set()
    if done:
        print(f"resuming: {len(done & {item.name for item in inputs.files})} file(s) already in {args.table}; "
              f"tagging the other {sum(item.name not in done for item in inputs.files)}", file=sys.stderr)
    asked_for_files = args.events or args.plot is not None or args.table is not None
    todo = [i for i, item in enumerate(inputs.files) if item.name not in done]
    try:
        with tqdm(total=len(todo), unit="file", desc="files", disable=None if len(todo) > 1 else True) as bar:
            for i in todo:
                _tag_one(run, inputs.files[i], plots[i] if plots is not None else None)
                bar.update()
                if run.console.closed and not asked_for_files:
                    break   # nobody reads the output and no file was asked for: stop quietly
    except KeyboardInterrupt:
        resume = "; run the same command again to tag the rest" if table is not None else ""
        print(f"interrupted after {len(run.results)} of {len(todo)} files{resume}", file=sys.stderr)
        sys.exit(130)
    run.reader.close()
    if table is not None:
        table.close()
    if args.events:
        _write_events(run)
    if args.json:
        run.console.print(json.dumps(run.results, indent=2, allow_nan=False))
    if run.unread:
        print(f"error: {run.unread} of {len(inputs.files)} files could not be read", file=sys.stderr)
    if run.unwritten:
        print(f"error: {run.unwritten} figure(s) or result file(s) were not written (see above)", file=sys.stderr)
    if run.unread or run.unwritten:
        sys.exit(2)


def _result_text(result: dict, tags: FileTags) -> str:
    """A file's tags (and events and figure, when asked for) as text."""
    lines = [f"{result['file']} ({tags.seconds:.1f} s{', silent: no tags' if tags.silent else ''})"]
    lines += [f"  {label['probability']:.3f}  {label['label']}" for label in result["labels"]]
    if "events" in result:
        lines.append(f"  {len(result['events'])} event(s)")
        lines += [f"    {event['onset']:8.3f} {event['offset']:8.3f} s  {event['label']} ({event['score']:.3f})"
                  for event in result["events"]]
    if "plot" in result:
        lines.append(f"  plot: {result['plot']}")
    return "\n".join(lines)


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
