"""`python -m fastsca.tag FILE|FOLDER|ARCHIVE... --checkpoint MODEL [--top-k 5] [--events] [--json] [--quiet]
[--plot OUT.png] [--table OUT.csv] [--out FOLDER]`: tag audio files.

Each file is streamed through the model in bounded memory (windows over a continuous log-mel, the
frame probabilities stitched from each window's middle; silence reported as such); folders and
archives are walked; `--table` gets a row per file as it is done and resumes; `--events` writes the
events files. MODEL is best.pt, latest.pt, a model folder (train.run's OUT/pretrained) or a Hub id.

The engine is fastsca/tagging/engine.py, the batch fastsca/tagging/batch.py, the inputs, outputs and
table fastsca/tagging/{inputs,outputs,table}.py; this module parses the command line, checks every
argument before any audio is read (one `error:` line, exit 2), runs the batch and exits with its status
(2 when a file could not be read or an output not written, or nothing was found to tag; 130 on Ctrl-C).
Every file the run writes goes into a named place: --out, else beside --table, else beside --plot;
with none of them, the events are printed and no events file is written.
"""
import argparse
import csv
import hashlib
import json
import math
import os
import sys
from dataclasses import asdict
from pathlib import Path

import torch

from fastsca.builtin_classes import is_builtin_label_set
from fastsca.events import EventConfig, read_reference, stored_event_config
from fastsca.hub import load_pretrained
from fastsca.tagging.batch import (EVENTS_FILES, REPORT_NAME, BatchConfig, BatchRun, finish, own_files, tag_all,
                                   write_events)
from fastsca.tagging.engine import StreamConfig, check_front_end
from fastsca.tagging.inputs import expand_inputs, stamp
from fastsca.tagging.outputs import check_own_files, check_writable_folder, is_folder, plot_destinations, take_lock
from fastsca.tagging.table import ResultTable, table_columns

# The output folder's lock: hidden, so a folder walk passes over it.
OUT_LOCK_NAME = ".fastsca-tag.lock"


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
    arg("--checkpoint", required=True, metavar="MODEL",
        help="best.pt or latest.pt written by train.run, a model folder (train.run's OUT/pretrained, or "
             "`python -m fastsca.hub`'s) or a Hugging Face Hub id (owner/name)")
    arg("--top-k", type=int, default=5, help="labels to show per file (default 5)")
    arg("--json", action="store_true", help="print one JSON document instead of text")
    arg("--quiet", action="store_true", help="print a closing summary instead of each file's tags")
    arg("--embeddings", action="store_true",
        help="put each file's clip embedding and frame embeddings (10 Hz) in the --json results")
    arg("--table", type=Path, metavar="OUT.csv",
        help="also write one row per file (name, seconds, top labels and scores, events with --events) to this "
             ".csv or .tsv as each file is done; run again with the same table to resume: files already in it "
             "are skipped. An existing file that is not a tag table is refused (see --overwrite)")
    arg("--overwrite", action="store_true",
        help="replace an existing --table that is not a tag table, or one written with other columns, and "
             "events files, a report or figures that fastsca.tag did not write (refused without it)")
    arg("--events", action="store_true",
        help="detect sound events and write OUT/events.tsv (AudioSet strong layout), OUT/events_dcase.tsv and "
             "OUT/events.json")
    arg("--threshold", type=float, help="event onset threshold for every class (default: the model's "
                                         "per-class thresholds chosen on validation, 0.5 for the others)")
    arg("--out", type=Path, help="folder for the events files and the run's report (default: beside --table, "
                                 "else beside --plot; never the current folder unless named)")
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


def output_folder(args: argparse.Namespace) -> Path | None:
    """Where the events files and the report go: --out, else beside --table, else beside --plot (None: no
    place was named)."""
    if args.out is not None:
        return args.out
    if args.table is not None:
        return args.table.parent
    if args.plot is not None:
        return Path(args.plot) if is_folder(args.plot) else Path(args.plot).parent
    return None


def _batch_config(args: argparse.Namespace) -> BatchConfig:
    return BatchConfig(top_k=args.top_k, events=args.events, out=output_folder(args),
                       view=(args.start, args.end if args.end is not None else args.start + 60.0), json=args.json,
                       quiet=args.quiet, embeddings=args.embeddings, overwrite=args.overwrite)


def _prepare(args: argparse.Namespace) -> BatchRun:
    """Check the destinations, load the model, labels and reference events, open the table: everything that can
    be wrong with the arguments is found before any audio is read (ValueError, one line)."""
    config = _batch_config(args)
    if args.plot is not None:
        plot_destinations(args.plot, [])   # an unwritable extension
        check_writable_folder(Path(args.plot) if is_folder(args.plot) else Path(args.plot).parent, "--plot")
    if config.out is not None:   # named after the option it comes from
        check_writable_folder(config.out, "--out" if args.out is not None else "--table" if args.table else "--plot")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    torch.set_num_threads(args.threads)
    pretrained = load_pretrained(args.checkpoint, device)
    check_front_end(pretrained.trained, args.checkpoint)
    label_names = pretrained.trained.label_names
    if is_builtin_label_set(label_names) and not args.quiet:
        print("note: this model was trained on the built-in set: its classes are synthetic test signals "
              "(train/data/synth.py), not real-world sounds", file=sys.stderr)
    # --threshold for every class, else the model's per-class thresholds (0.5 where it has none)
    events_config = EventConfig(threshold=args.threshold) if args.threshold is not None else pretrained.events
    events_config.onset_thresholds(label_names)
    label_mids = _read_label_mids(args.labels, label_names) if args.labels else None
    reference = read_reference(args.strong, label_names, label_mids) if args.strong else {}
    out_lock = _lock_output_folder(args, config.out)
    try:
        if out_lock is not None:
            _check_output_folder(args, config.out, out_lock)
        table = None
        if args.table is not None:
            check_writable_folder(args.table.parent, "--table")
            table = ResultTable(args.table, table_columns(args.top_k, args.events), overwrite=args.overwrite,
                                settings=_table_settings(args, pretrained.trained, events_config),
                                current_form=_table_settings_now)
    except ValueError:
        if out_lock is not None:
            os.close(out_lock)
        raise
    run = BatchRun(config, pretrained.trained, events_config, StreamConfig(overlap=args.overlap), reference,
                   label_mids, table, out_lock=out_lock, events=table.events() if table is not None else [])
    for line in table.repairs if table is not None else []:
        run.report.add("repaired", line)
    return run


def _table_settings(args: argparse.Namespace, trained, events_config: EventConfig) -> dict:
    """What a table's rows depend on besides its columns: the model (a digest of its weights, classes and front
    end, the same however it is named), the window overlap and, with --events, the event settings."""
    digest = hashlib.sha256(json.dumps([trained.label_names, asdict(trained.log_mel)]).encode())
    for name, tensor in trained.model.state_dict().items():
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return {"model": digest.hexdigest(), "overlap": args.overlap,
            "events": asdict(events_config) if args.events else None}


def _table_settings_now(recorded: dict) -> dict:
    """A table's recorded settings in this version's form: event settings recorded before a per-class field existed
    take its default (the settings a run with them would have made), so such a table resumes."""
    if not isinstance(recorded.get("events"), dict):
        return recorded
    return {**recorded, "events": asdict(stored_event_config({"events": recorded["events"]}))}


def _lock_output_folder(args: argparse.Namespace, out: Path | None) -> int | None:
    """A lock on the output folder, whose events files and report two runs would otherwise both write (None: the
    run writes none)."""
    if out is None:
        return None
    option = "--out" if args.out is not None else "--table's folder" if args.table is not None else "--plot's folder"
    return take_lock(out / OUT_LOCK_NAME, f"{option} {out}", "give another --out")


def _check_output_folder(args: argparse.Namespace, out: Path, out_lock: int) -> None:
    """ValueError (one line) for an input or --table that is a file this run writes in the output folder, or a
    file there that fastsca.tag did not write (unless --overwrite)."""
    names = own_files(args.events)
    option = "--out" if args.out is not None else "--table's folder" if args.table is not None else "--plot's folder"
    written = {(out / name).resolve(): name for name in names}
    for flag, given in (("--table", args.table), ("--strong", args.strong), ("--labels", args.labels)):
        if given is not None and Path(given).resolve() in written:
            raise ValueError(f"{flag} {given}: is the {written[Path(given).resolve()]} this run writes in {option} "
                             f"{out}; give another {flag if flag == '--table' else '--out'}")
    check_own_files(out, names, out_lock, option, args.overwrite)


def _refuse_changed_files(run: BatchRun, files: list) -> None:
    """Exit 2 (one line, the table and locks released) when a file of the resumed table changed since its row
    was made: the row would stand for other audio."""
    changed = run.table.changed({item.name: stamp(item) for item in files}) if run.table is not None else []
    if not changed:
        return
    run.reader.close()
    run.table.close()
    if run.out_lock is not None:
        os.close(run.out_lock)
    print(f"error: --table {run.table.path}: {len(changed)} file(s) in it changed since their rows were made "
          f"({', '.join(changed[:3])}{', ...' if len(changed) > 3 else ''}); their rows are not these files' "
          f"results: give another --table, or add --overwrite to tag every file again", file=sys.stderr)
    sys.exit(2)


def _own_outputs(args: argparse.Namespace, out: Path | None) -> list[Path]:
    """The run's own files and folders, which a folder walk passes over."""
    return (([args.table] if args.table is not None else [])
            + ([out / name for name in (*EVENTS_FILES, REPORT_NAME)] if out is not None else [])
            + ([Path(args.plot)] if args.plot is not None and is_folder(args.plot) else []))


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    try:
        run = _prepare(args)
    except ValueError as error:   # CheckpointError and PretrainedError are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    inputs = expand_inputs(args.files, ignore=tuple(_own_outputs(args, run.config.out)))
    _refuse_changed_files(run, inputs.files)
    for line in inputs.skipped:
        run.report.add("skipped", line)
    if args.events and run.config.out is None:
        print("note: no events files written (the events are in the results): give --out FOLDER to write them",
              file=sys.stderr)
    files = inputs.files
    plots = plot_destinations(args.plot, [item.name for item in files]) if args.plot is not None else None
    tag_all(run, files, plots, stop_when_unread=not (args.events or args.plot or args.table))
    if args.events and run.config.out is not None:
        write_events(run)
    if args.json:
        run.console.print(json.dumps(run.results, indent=2, allow_nan=False))
    status = finish(run, len(files))
    if not files:
        print(f"error: nothing to tag in {', '.join(args.files)} (see the notes above)", file=sys.stderr)
        status = 2
    if status:
        sys.exit(status)


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
