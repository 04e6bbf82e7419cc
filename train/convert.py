"""Convert AudioSet copies people already have into fastsca shards: `python -m train.convert SOURCE.h5
[SOURCE.h5 ...] --labels class_labels_indices.csv --out OUTDIR [--layout panns|mp3] [--shard-size 20000]
[--workers N] [--overwrite]`.

Sources are PANNs' packed waveform files or PaSST/EfficientAT's mp3-in-HDF5 files (train/data/convert_layouts.py
says what each holds); the layout is found from each file's datasets. Every row becomes a 16 kHz int16 10 s
clip (soxr HQ, cut or zero-padded, as train.pack does for audio files) named `Y<YTID>` as train.pack names
clips, with its multi-hot target in the label list's column order. Each source's rows are cut into
`--shard-size` shards, `shard_NNNNN.h5` numbered across the sources in the order given, then
OUTDIR/index.json. Shards are converted in `--workers` processes, one shard per process at a time, so a
small file spreads over more processes only with a smaller --shard-size.

Rows skipped, never fatal, each listed in its shard (so the list survives resumes) and in
OUTDIR/convert_report.csv (name, shard, reason): PANNs' placeholder rows (no name, all-zero waveform: a clip
it could not download), named rows whose samples are all zero (silent), rows with NaN or infinite samples,
rows without a name, an mp3 that does not decode or holds less than its header says, a row HDF5 cannot
read, and a name met before (the first one is kept). Rows stored with samples clipped at full scale are
counted and listed too. Converting no clip at all is an error.

Re-running the same command resumes: a shard is written under a temporary name and renamed when complete,
finished shards are skipped; other sources or settings are refused (OUTDIR/convert_plan.json), or replaced
with `--overwrite`, and OUTDIR/.lock keeps a second converter out. Ctrl-C stops the workers after their
current block of rows, removes the shards they had not finished and keeps the rest. Waveforms are read in
blocks of rows, never whole.
"""
import argparse
import csv
import os
import signal
import sys
from collections import Counter
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path
from queue import Empty

import h5py
import numpy as np
from tqdm import tqdm

from train.data.convert_layouts import LAYOUTS, RowReader, Source, SourceError, labels_sha1, open_source, scan_names
from train.data.csv_meta import LabelSet, MetadataError, read_labels
from train.data.out_folder import (OutFolderError, RunLock, check_inputs_apart, check_plan, describe_os_error,
                              ensure_writable)
from train.data.parent_death import die_with_parent
from train.data.shards import ShardError, ShardWriter, write_index

PLAN_FILE = "convert_plan.json"
REPORT_FILE = "convert_report.csv"
# How often the main process collects the workers' progress, seconds.
PROGRESS_SECONDS = 0.2


@dataclass(frozen=True)
class ConvertConfig:
    """Inputs and layout of one conversion."""

    sources: tuple[Path, ...]
    """PANNs or PaSST/EfficientAT HDF5 files, converted in this order."""
    labels: Path
    """The class_labels_indices.csv the sources were made with: names the target columns."""
    out: Path
    """Output folder: shard_NNNNN.h5, index.json, convert_report.csv."""
    layout: str | None = None
    """Force this layout (one of LAYOUTS) instead of detecting it from each file's datasets."""
    shard_size: int = 20000
    """Source rows per shard (a shard holds fewer clips when some are skipped)."""
    workers: int = os.cpu_count() or 1
    """Processes converting shards; 1 converts in this process."""
    sample_rate: int = 16000
    """Stored sample rate, Hz."""
    clip_samples: int = 160000
    """Stored samples per clip (cut or zero-padded)."""
    overwrite: bool = False
    """Replace the shards of an --out converted from other sources or settings (False: refuse, one line)."""

    def __post_init__(self) -> None:
        if not self.sources:
            raise ValueError("give at least one source file")
        if self.layout is not None and self.layout not in LAYOUTS:
            raise ValueError(f"--layout {self.layout!r}: choose one of {', '.join(LAYOUTS)}")
        if self.shard_size < 1 or self.workers < 1:
            raise ValueError(f"--shard-size and --workers must be >= 1, got {self.shard_size}, {self.workers}")
        if self.sample_rate < 1 or self.clip_samples < 1:
            raise ValueError("sample_rate and clip_samples must be >= 1")


@dataclass(frozen=True)
class ShardJob:
    """One output shard: a run of rows of one source."""

    path: Path
    """The shard file to write."""
    source: Source
    """The file its rows come from."""
    start: int
    """First source row."""
    names: tuple[str, ...]
    """Clip names of its rows (row start + i)."""
    duplicates: tuple[tuple[int, str], ...]
    """(row, reason) of rows whose name came earlier in the run: skipped."""
    labels: LabelSet
    """The target columns."""
    sample_rate: int
    """Stored sample rate, Hz."""
    clip_samples: int
    """Stored samples per clip."""


class ConversionStopped(Exception):
    """Ctrl-C reached a worker between two blocks: its shard is abandoned (the temporary file removed)."""


class NothingConvertedError(ValueError):
    """Every row was skipped: shards without clips train nothing."""


def convert_shard(job: ShardJob, progress, stopped) -> int:
    """Write `job.path` (via a temporary file); `progress(n)` after each block, `stopped()` polled between blocks.
    Returns the clips written."""
    reader = RowReader(job.source, len(job.labels.mids), job.sample_rate, job.clip_samples)
    duplicates = dict(job.duplicates)
    stop = job.start + len(job.names)
    try:
        with ShardWriter(job.path, job.labels.mids, job.labels.names, job.sample_rate, job.clip_samples) as writer:
            for first in range(job.start, stop, reader.block_rows):
                if stopped():
                    raise ConversionStopped(job.path)
                last = min(first + reader.block_rows, stop)
                names = list(job.names[first - job.start:last - job.start])
                kept = []
                for row, clip in zip(range(first, last), reader.read(first, last, names)):
                    reason = duplicates.get(row) or clip.reason
                    if reason:
                        writer.skip(clip.name, reason)
                        continue
                    kept.append(clip)
                    if clip.note:
                        writer.note(clip.name, clip.note)
                if kept:
                    writer.add(np.stack([c.waveform for c in kept]), np.stack([c.target for c in kept]),
                               [c.name for c in kept])
                progress(last - first)
            writer.commit()
            return writer.count
    finally:
        reader.close()


_worker_progress = None
_worker_stop = None


def _init_worker(parent_pid: int, progress, stop) -> None:
    """Pool initializer: die with the parent, report rows to `progress`, stop when `stop` is set."""
    global _worker_progress, _worker_stop
    die_with_parent(parent_pid)
    _worker_progress, _worker_stop = progress, stop


def _convert_in_worker(job: ShardJob) -> int:
    return convert_shard(job, _worker_progress.put, _worker_stop.is_set)


def _plan(config: ConvertConfig, sources: list[Source], labels: LabelSet) -> dict:
    """What a resumed run must share with the run that started OUTDIR."""
    return {"sources": [{"file": s.path.name, "bytes": s.path.stat().st_size, "rows": s.rows, "layout": s.layout}
                        for s in sources],
            "labels_sha1": labels_sha1(labels), "shard_size": config.shard_size,
            "sample_rate": config.sample_rate, "clip_samples": config.clip_samples}


def _jobs(config: ConvertConfig, sources: list[Source], labels: LabelSet) -> list[ShardJob]:
    """The shards of every source, with rows whose name an earlier row had marked as duplicates."""
    jobs, first_seen = [], {}
    for source in tqdm(sources, desc="reading names", unit="file", disable=len(sources) < 2):
        names = scan_names(source)
        for start in range(0, source.rows, config.shard_size):
            chunk = names[start:start + config.shard_size]
            duplicates = []
            for row, name in enumerate(chunk, start):
                if name in first_seen:
                    duplicates.append((row, f"duplicate: {first_seen[name]} has the same name "
                                            f"({source.path.name} row {row})"))
                elif name:
                    first_seen[name] = f"{source.path.name} row {row}"
            path = config.out / f"shard_{len(jobs):05d}.h5"
            jobs.append(ShardJob(path, source, start, tuple(chunk), tuple(duplicates), labels,
                                 config.sample_rate, config.clip_samples))
    return jobs


def _run_parallel(jobs: list[ShardJob], workers: int, bar: tqdm) -> None:
    """Convert `jobs` in a process pool; on Ctrl-C, stop the workers after their block and re-raise."""
    context = get_context("spawn")
    progress, stop = context.Queue(), context.Event()
    # Workers are born ignoring Ctrl-C (submit starts them): the parent stops them through `stop`, so that none
    # is cut mid-import with a traceback, and each removes the shard it had not finished.
    parent_handler = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker,
                                   initargs=(os.getpid(), progress, stop))
        pending = {pool.submit(_convert_in_worker, job) for job in jobs}
    finally:
        signal.signal(signal.SIGINT, parent_handler)
    try:
        while pending:
            done, pending = wait(pending, timeout=PROGRESS_SECONDS, return_when=FIRST_COMPLETED)
            _drain(progress, bar)
            for future in done:
                future.result()
    except BaseException:
        stop.set()
        for future in pending:
            future.cancel()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
        _drain(progress, bar)


def _drain(progress, bar: tqdm) -> None:
    while True:
        try:
            bar.update(progress.get_nowait())
        except Empty:
            return


def _write_report(out: Path, names: list[str]) -> tuple[list[tuple[str, str, str]], list[tuple[str, str, str]]]:
    """OUT/convert_report.csv: every skipped row, then every row converted with a change (clipped samples);
    returns both lists of (name, shard, reason)."""
    skipped, noted = [], []
    for name in names:
        with h5py.File(out / name, "r") as handle:
            skipped += [(n, name, r) for n, r in zip(handle["skipped_name"].asstr()[:],
                                                     handle["skipped_reason"].asstr()[:])]
            if "noted_name" in handle:   # absent from shards converted before clipping was reported
                noted += [(n, name, r) for n, r in zip(handle["noted_name"].asstr()[:],
                                                       handle["noted_reason"].asstr()[:])]
    report = out / REPORT_FILE
    tmp = report.with_name(REPORT_FILE + ".tmp")
    try:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows([("name", "shard", "reason"), *skipped, *noted])
        os.replace(tmp, report)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OutFolderError(describe_os_error(error, f"write {report}")) from None
    return skipped, noted


def convert(config: ConvertConfig) -> dict:
    """Convert (or resume converting) into `config.out`; returns counts of converted, skipped and resumed."""
    labels = read_labels(config.labels)
    resolved = [path.resolve() for path in config.sources]
    twice = next((path for path, real in zip(config.sources, resolved) if resolved.count(real) > 1), None)
    if twice is not None:
        raise ValueError(f"{twice} is given twice as a source; give each file once")
    check_inputs_apart(config.out, [("source", path) for path in config.sources] + [("--labels", config.labels)])
    sources = [open_source(path, labels, config.layout) for path in config.sources]
    for source in sources:
        print(source.describe())
    ensure_writable(config.out)
    with RunLock(config.out, what="train.convert run"):
        return _convert_into(config, sources, labels)


def _convert_into(config: ConvertConfig, sources: list[Source], labels: LabelSet) -> dict:
    """Convert the sources into config.out, which this process holds (its .lock)."""
    check_plan(config.out, PLAN_FILE, _plan(config, sources, labels), config.overwrite)
    jobs = _jobs(config, sources, labels)
    todo = [job for job in jobs if not job.path.exists()]
    total_rows = sum(s.rows for s in sources)
    with tqdm(total=total_rows, desc="converting", unit="clip") as bar:
        bar.update(total_rows - sum(len(job.names) for job in todo))
        if config.workers == 1 or len(todo) <= 1:
            for job in todo:
                convert_shard(job, bar.update, lambda: False)
        else:
            _run_parallel(todo, min(config.workers, len(todo)), bar)
    names = [job.path.name for job in jobs]
    write_index(config.out, names)
    skipped, noted = _write_report(config.out, names)
    reasons = Counter(reason.split(":")[0] for _, _, reason in skipped)
    resumed = len(jobs) - len(todo)
    summary = {"converted": total_rows - len(skipped), "shards": len(jobs), "resumed_shards": resumed,
               "skipped": len(skipped), **({"clipped": len(noted)} if noted else {}),
               **{f"skipped_{k}": v for k, v in sorted(reasons.items())}}
    print(f"converted {summary['converted']} clips into {len(jobs)} shards in {config.out} ({resumed} already done); "
          f"skipped {len(skipped)}" + (f" ({', '.join(f'{v} {k}' for k, v in sorted(reasons.items()))})" if skipped
                                       else "")
          + (f"; {len(noted)} clipped at full scale" if noted else "")
          + (f", listed in {config.out / REPORT_FILE}" if skipped or noted else ""))
    if summary["converted"] == 0:
        raise NothingConvertedError(f"no row of the {total_rows} could be converted (see {config.out / REPORT_FILE})")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.convert", description="Convert PANNs' packed HDF5 files "
                                     "or PaSST/EfficientAT's mp3-in-HDF5 files into 16 kHz int16 fastsca shards; "
                                     "re-run to resume.")
    parser.add_argument("sources", nargs="+", type=Path, metavar="SOURCE", help="HDF5 file to convert (several: "
                        "converted in this order)")
    parser.add_argument("--labels", required=True, type=Path, help="the class_labels_indices.csv the sources were "
                        "made with")
    parser.add_argument("--out", required=True, type=Path, help="output folder for shards and index.json")
    parser.add_argument("--layout", choices=LAYOUTS, help="panns (waveform/target/audio_name) or mp3 (mp3/target/"
                        "audio_name, PaSST and EfficientAT); default: found from each file's datasets")
    parser.add_argument("--shard-size", type=int, default=20000, help="source rows per shard (default 20000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="converting processes, one "
                        "shard each at a time (default: the CPU count)")
    parser.add_argument("--overwrite", action="store_true", help="replace the shards of an --out converted from "
                        "other sources, labels or settings (without it such a folder is refused)")
    args = parser.parse_args(argv)
    try:
        convert(ConvertConfig(tuple(args.sources), args.labels, args.out, args.layout, args.shard_size, args.workers,
                              overwrite=args.overwrite))
    except KeyboardInterrupt:
        print(f"\ninterrupted: the finished shards are kept in {args.out}; run the same command again to resume",
              file=sys.stderr)
        sys.exit(130)
    except BrokenProcessPool:
        print(f"error: a converting process died (out of memory? try fewer --workers); the finished shards are kept "
              f"in {args.out}: run the command again to resume", file=sys.stderr)
        sys.exit(2)
    except (MetadataError, SourceError, ShardError, ValueError) as error:   # OutFolderError and NothingConverted too
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except OSError as error:   # a disk that fills up while a shard is written (h5py's write errors are OSErrors)
        print(f"error: {describe_os_error(error, f'write into {args.out}')}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
