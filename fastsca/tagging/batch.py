"""Many audio files tagged in a row (what `python -m fastsca.tag` runs over its expanded FILE arguments): each
file through the engine, its figure, table row and result written as asked, the events files at the end.

Every bad input is one line and the batch goes on: a file that cannot be read, a figure or a table row that
cannot be written (each written to .tmp and renamed, or cut back, so no partial file is left), a --start
beyond a file's end. Every skip, drop, repair and failure is counted in one closing line per kind and
listed in the run's report file (`Report`). A closed standard output (`| head`) stops the printing
quietly; the files asked for are still written, and with none asked for the run stops.
"""
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tqdm import tqdm

from fastsca.atomic import write_atomically
from fastsca.audio import AudioError
from fastsca.events import (EventConfig, events_as_dicts, reference_for, write_dcase_tsv, write_json,
                            write_strong_tsv)
from fastsca.inference import CheckpointError, TrainedModel
from fastsca.tagging import engine
from fastsca.tagging.engine import EVENT_REACH_SECONDS, Asked, StreamConfig
from fastsca.tagging.inputs import Input, InputReader, stamp
from fastsca.tagging.outputs import FIGURE_CREATOR, Console, check_figure, record_own_files
from fastsca.tagging.result import TagResult
from fastsca.tagging.table import ResultTable

# The events files, by name, and what writes each.
EVENTS_FILES = ("events.tsv", "events_dcase.tsv", "events.json")
# The run's report file, in the output folder.
REPORT_NAME = "tag-report.txt"
# The kinds of line a report holds, in the order its closing lines are printed.
REPORT_KINDS = {"skipped": "input(s) passed over", "repaired": "table row(s) dropped in repair",
                "unread": "file(s) could not be read", "unwritten": "figure(s) or result file(s) were not written"}


def own_files(events: bool) -> tuple[str, ...]:
    """The files a run writes in its output folder: the report, and the events files with --events."""
    return (*(EVENTS_FILES if events else ()), REPORT_NAME)


@dataclass(frozen=True)
class BatchConfig:
    """What a batch run writes and prints for each file."""

    top_k: int = 5
    """Labels kept per file."""
    events: bool = False
    """Detect events and write the events files."""
    out: Path | None = None
    """The folder for the events files and the report (None: no events files, no report file)."""
    view: tuple[float, float] = (0.0, 60.0)
    """Seconds each figure draws (where `tag_all` is given figures' paths)."""
    json: bool = False
    """Print one JSON document instead of text."""
    quiet: bool = False
    """Print a closing summary instead of each file's tags."""
    embeddings: bool = False
    """Put the clip and frame embeddings in the JSON results."""
    overwrite: bool = False
    """Replace figures that fastsca.tag did not draw (without it each is one line, and left as it is)."""


@dataclass
class Report:
    """Every skip, repair and failure of a run, by kind (REPORT_KINDS), for its closing lines and report file."""

    lines: dict[str, list[str]] = field(default_factory=lambda: {kind: [] for kind in REPORT_KINDS})

    def add(self, kind: str, line: str, show: bool = True) -> None:
        """Record a line (and print it on stderr, as `note:` for a skip or repair, `error:` otherwise)."""
        self.lines[kind].append(line)
        if show:
            tqdm.write(f"{'note' if kind in ('skipped', 'repaired') else 'error'}: {line}", file=sys.stderr)

    def counts(self) -> list[str]:
        """One line per kind that happened."""
        return [f"{len(lines)} {REPORT_KINDS[kind]}" for kind, lines in self.lines.items() if lines]

    def write(self, path: Path) -> None:
        """Write the report file: each kind's count, then its lines."""
        text = "".join(f"{len(lines)} {REPORT_KINDS[kind]}\n" + "".join(f"  {line}\n" for line in lines)
                       for kind, lines in self.lines.items())
        path.write_text(text, errors="backslashreplace")


@dataclass
class BatchRun:
    """What one batch needs and what it has done so far."""

    config: BatchConfig
    trained: TrainedModel
    events_config: EventConfig
    stream: StreamConfig
    reference: dict
    """--strong's reference events by clip id (empty without it)."""
    label_mids: dict[str, str] | None
    """Display name -> mid for events.tsv (None: display names)."""
    table: ResultTable | None
    out_lock: int | None = None
    """The output folder's lock (a descriptor closed at the end), None when the run writes no folder's files."""
    console: Console = field(default_factory=Console)
    reader: InputReader = field(default_factory=InputReader)
    report: Report = field(default_factory=Report)
    results: list[dict] = field(default_factory=list)
    """Each tagged file's result, as --json prints it."""
    silent: int = 0
    """Files found to be digital silence."""
    events: list = field(default_factory=list)
    """The events for the events files: the table's earlier rows', then this run's."""


def _result_dict(run: BatchRun, item: Input, tags: TagResult) -> dict:
    """A file's result as --json prints it and the table stores it."""
    result = {"file": item.name, "seconds": round(tags.seconds, 3), "silent": tags.silent,
              "labels": [{"label": name, "probability": round(p, 4)} for name, p in tags.top_k(run.config.top_k)]}
    if run.config.events:
        result["events"] = events_as_dicts(tags.events)
    if run.config.embeddings:
        result["embedding"] = [round(float(v), 5) for v in tags.embedding]
        result["frame_embeddings"] = [[round(float(v), 5) for v in row] for row in tags.frame_embeddings]
    return result


def _asked(run: BatchRun, plot: Path | None) -> Asked:
    """What to keep of a file: events for --events and figures, all frame probabilities for --events, the
    figure's range (and the event detector's reach beyond it) for --plot, none otherwise, so memory stays
    flat in the file's length."""
    config = run.config
    view = config.view if plot is not None else None
    until = None if config.events else view[1] + EVENT_REACH_SECONDS if view is not None else 0.0
    return Asked(events=run.events_config if config.events or plot is not None else None, view=view,
                 frames_until=until, embeddings=config.embeddings)


def _draw(run: BatchRun, item: Input, tags: TagResult, plot: Path, result: dict) -> None:
    """Write a file's figure; a range beyond its end or a failed write is one line."""
    if tags.view.end <= tags.view.start:
        run.report.add("unwritten", f"{item.name}: --start {run.config.view[0]:g} s is at or beyond its end "
                                    f"({tags.analysed_seconds:.1f} s analysed); no figure for it: give an earlier "
                                    f"--start")
        return
    from fastsca.plot import plot_tags   # matplotlib only when a plot is asked for
    truth = reference_for(item.name, run.reference) if run.reference else None
    try:
        check_figure(plot, run.config.overwrite)
        plot.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(plot, lambda tmp: plot_tags(tags, run.trained, run.config.top_k, tmp, tags.events, truth,
                                                      file_format=plot.suffix[1:], event_config=run.events_config,
                                                      creator=FIGURE_CREATOR))
        result["plot"] = str(plot)
    except ValueError as error:
        run.report.add("unwritten", f"{item.name}: {error}")
    except OSError as error:
        run.report.add("unwritten", f"{item.name}: cannot write the figure {plot} ({error.strerror or error}); "
                                    f"free some space or give another --plot")


def tag_one(run: BatchRun, item: Input, plot: Path | None) -> None:
    """Tag one file and write what was asked for it; every failure is one line, and the batch goes on."""
    file_stamp = stamp(item)   # before reading: a file changed meanwhile is tagged again next time
    try:
        with run.reader.open(item) as source:
            tags = engine.tag_file(run.trained, source, run.stream, _asked(run, plot), name=item.name)
    except (AudioError, CheckpointError) as error:
        run.report.add("unread", str(error))
        return
    result = _result_dict(run, item, tags)
    run.silent += tags.silent
    if run.config.events:
        run.events += tags.events
    if plot is not None:
        _draw(run, item, tags, plot, result)
    if run.table is not None:
        try:
            run.table.append(result, file_stamp)
        except OSError as error:
            run.report.add("unwritten", f"{item.name}: cannot add its row to --table {run.table.path} "
                                        f"({error.strerror or error}); free some space and run again to tag it")
    run.results.append(result)
    if not run.config.json and not run.config.quiet:
        run.console.print(result_text(result, tags))


def write_events(run: BatchRun) -> None:
    """The events files in the output folder, each written atomically; a failed one is one line."""
    mids = run.label_mids or {name: name for name in run.trained.label_names}
    events = sorted(run.events, key=lambda e: (e.file, e.onset, e.label))
    out = run.config.out
    writers = {out / "events.tsv": lambda tmp: write_strong_tsv(tmp, events, mids),
               out / "events_dcase.tsv": lambda tmp: write_dcase_tsv(tmp, events),
               out / "events.json": lambda tmp: write_json(tmp, events)}
    written = []
    for path, write in writers.items():
        try:
            write_atomically(path, write)
            written.append(str(path))
        except OSError as error:
            run.report.add("unwritten", f"--out {out}: cannot write {path.name} ({error.strerror or error}); free "
                                        f"some space and run again")
        except UnicodeEncodeError:
            run.report.add("unwritten", f"--out {out}: cannot write {path.name}: a file name is not valid UTF-8 "
                                        f"(the table and --json hold its events); rename the file")
    if written and (run.config.json or run.config.quiet):   # stdout holds only the JSON document or the summary
        print(f"{len(events)} events: {', '.join(written)}", file=sys.stderr)
    elif written:
        run.console.print(f"{len(events)} events: {', '.join(written)}")


def result_text(result: dict, tags: TagResult) -> str:
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


def tag_all(run: BatchRun, files: list[Input], plots: list[Path] | None, stop_when_unread: bool) -> None:
    """Tag `files` (those not already in the table), with a progress bar; with `stop_when_unread` (no file was
    asked for), stop once nobody reads standard output. Ctrl-C ends the run (exit 130) after one line saying
    how many files were done; the table keeps them."""
    done = run.table.finished() if run.table is not None else set()
    if done:
        print(f"resuming: {len(done & {item.name for item in files})} file(s) already in {run.table.path}; "
              f"tagging the other {sum(item.name not in done for item in files)}", file=sys.stderr)
    todo = [i for i, item in enumerate(files) if item.name not in done]
    try:
        with tqdm(total=len(todo), unit="file", desc="files", disable=None if len(todo) > 1 else True) as bar:
            for i in todo:
                tag_one(run, files[i], plots[i] if plots is not None else None)
                bar.update()
                if run.console.closed and stop_when_unread:
                    break   # nobody reads the output and no file was asked for: stop quietly
    except KeyboardInterrupt:
        finish(run, len(files))
        resume = "; run the same command again to tag the rest" if run.table is not None else ""
        print(f"interrupted after {len(run.results)} of {len(todo)} files{resume}", file=sys.stderr)
        sys.exit(130)


def finish(run: BatchRun, total: int) -> int:
    """Close the inputs and the table, write the report file, print the closing lines; the exit status (2 when
    a file could not be read or an output not written, else 0)."""
    run.reader.close()
    if run.table is not None:
        run.table.close()
    report_path = run.config.out / REPORT_NAME if run.config.out is not None else None
    if report_path is not None:
        try:
            write_atomically(report_path, run.report.write)
        except OSError as error:
            run.report.add("unwritten", f"--out {run.config.out}: cannot write {REPORT_NAME} "
                                        f"({error.strerror or error}); free some space")
            report_path = None
    if run.out_lock is not None:
        record_own_files(run.config.out, own_files(run.config.events), run.out_lock)
        os.close(run.out_lock)
    if run.config.quiet:
        print(f"tagged {len(run.results)} of {total} file(s) ({run.silent} silent)"
              + (f"; table: {run.table.path}" if run.table is not None else ""), file=sys.stderr)
    where = f"; listed in {report_path}" if report_path is not None else ""
    for kind in ("skipped", "repaired"):
        if run.report.lines[kind]:
            print(f"note: {len(run.report.lines[kind])} {REPORT_KINDS[kind]}{where}", file=sys.stderr)
    unread, unwritten = len(run.report.lines["unread"]), len(run.report.lines["unwritten"])
    if unread:
        print(f"error: {unread} of {total} files could not be read", file=sys.stderr)
    if unwritten:
        print(f"error: {unwritten} {REPORT_KINDS['unwritten']} (see above)", file=sys.stderr)
    return 2 if unread or unwritten else 0
