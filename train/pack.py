"""Pack AudioSet clips into HDF5 shards: `python -m train.pack --csv SEGMENTS.csv --labels LABELS.csv
--audio-dir DIR --out OUTDIR [--csv more.csv] [--shard-size 20000] [--workers N] [--strong STRONG.tsv]`.

Clips are files named `Y<YTID>.<ext>` (wav, flac, ogg or mp3, any sample rate, mono or stereo)
anywhere under --audio-dir; names with a time suffix (`Y<YTID>_<start>_<end>.wav`) are not matched.
Each is decoded, averaged to mono, resampled to 16 kHz with soxr's anti-aliasing filter, cut or
zero-padded to 10 s and stored as int16 with its multi-hot target (train/shards.py), in CSV order,
`--shard-size` clips of the CSVs per shard. Decoding runs in `--workers` processes.

Re-running with the same inputs resumes: a shard is written under a temporary name and renamed when
complete, finished shards are skipped, an interrupted one is redone. A missing, undecodable or
truncated clip (fastsca/audio.py) is skipped, never fatal: it is recorded in its shard (so the list
survives resumes) and all of them are listed in OUTDIR/pack_report.csv (ytid, shard, reason) with a
summary line at the end. Packing no clip at all is an error (exit 1), after writing that report.
The decoding workers die with the packer (train/parent_death.py).
"""
import argparse
import csv
import hashlib
import json
import os
import re
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from fastsca.audio import AudioError, TruncatedAudioError, load_audio
from train.csv_meta import LabelSet, MetadataError, Segment, read_labels, read_segments, read_strong
from train.out_folder import OutFolderError, describe_os_error, ensure_writable
from train.parent_death import die_with_parent
from train.shards import ShardError, ShardWriter, write_index

EXTENSIONS = ("wav", "flac", "ogg", "mp3")          # preference order when a clip exists in several
CLIP_NAME = re.compile(r"^Y(.+)\.(" + "|".join(EXTENSIONS) + r")$", re.IGNORECASE)
PLAN_FILE = "pack_plan.json"
REPORT_FILE = "pack_report.csv"
# Clips sent to a worker per task: amortises the inter-process round trip, keeps the order cheap.
CLIPS_PER_TASK = 8
# Tasks in flight per worker: keeps every worker busy while bounding decoded clips held in memory
# (workers x 4 x 8 clips x 320 kB: 10 MB a worker), whatever the shard size.
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class PackConfig:
    """Inputs and layout of one packing run."""

    csvs: tuple[Path, ...]
    """Segment CSVs (YTID, start, end, labels), packed in order."""
    labels: Path
    """class_labels_indices.csv: the target columns."""
    audio_dir: Path
    """Folder searched (recursively) for Y<YTID>.<ext> clips."""
    out: Path
    """Output folder: shard_NNNNN.h5, index.json, pack_report.csv."""
    shard_size: int = 20000
    """CSV rows per shard (a shard holds fewer clips when some are skipped)."""
    workers: int = os.cpu_count() or 1
    """Decoding processes."""
    strong: tuple[Path, ...] = ()
    """AudioSet strong-label TSVs; events whose label is not in `labels` are dropped."""
    sample_rate: int = 16000
    """Stored sample rate, Hz."""
    clip_samples: int = 160000
    """Stored samples per clip (cut or zero-padded)."""

    def __post_init__(self) -> None:
        if not self.csvs:
            raise ValueError("give at least one segment CSV (--csv)")
        if self.shard_size < 1 or self.workers < 1:
            raise ValueError(f"shard_size and workers must be >= 1, got {self.shard_size}, {self.workers}")
        if self.sample_rate < 1 or self.clip_samples < 1:
            raise ValueError("sample_rate and clip_samples must be >= 1")


class NothingPackedError(ValueError):
    """Every clip was skipped: shards without clips train nothing."""


def find_clips(audio_dir: Path) -> dict[str, Path]:
    """YTID -> clip file under `audio_dir`, preferring wav, then flac, ogg, mp3."""
    found: dict[str, tuple[int, Path]] = {}
    for folder, _, files in os.walk(audio_dir):
        for name in files:
            match = CLIP_NAME.match(name)
            if match:
                rank = EXTENSIONS.index(match.group(2).lower())
                if match.group(1) not in found or rank < found[match.group(1)][0]:
                    found[match.group(1)] = (rank, Path(folder) / name)
    return {ytid: path for ytid, (_, path) in found.items()}


def _decode(tasks: list[tuple[str, str | None]], sample_rate: int, clip_samples: int) -> list:
    """[(int16 waveform or None, reason)] for [(ytid, path or None)]; runs in a worker."""
    results = []
    for ytid, path in tasks:
        if path is None:
            results.append((None, "missing: no Y<YTID>.wav/.flac/.ogg/.mp3 under --audio-dir"))
            continue
        try:
            waveform = load_audio(path, sample_rate, clip_samples)
        except AudioError as error:
            kind = "truncated" if isinstance(error, TruncatedAudioError) else "undecodable"
            results.append((None, f"{kind}: {error}"))
            continue
        results.append((np.round(np.clip(waveform, -1.0, 1.0) * 32767).astype(np.int16), ""))
    return results


def _ordered_map(pool: ProcessPoolExecutor, chunks: list, config: PackConfig, window: int):
    """Results of `_decode` over `chunks`, in order, with at most `window` tasks in flight."""
    pending = deque()
    for chunk in chunks:
        pending.append(pool.submit(_decode, chunk, config.sample_rate, config.clip_samples))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _plan_key(config: PackConfig, segments: list[Segment], labels: LabelSet) -> dict:
    """What a resumed run must share with the run that started OUTDIR."""
    digest = hashlib.sha1()
    for seg in segments:
        digest.update(f"{seg.ytid},{seg.start},{','.join(seg.labels)}\n".encode())
    digest.update("\n".join(labels.mids).encode())
    return {"shard_size": config.shard_size, "sample_rate": config.sample_rate, "clip_samples": config.clip_samples,
            "segments": len(segments), "segments_sha1": digest.hexdigest(),
            "strong_sha1": [hashlib.sha1(path.read_bytes()).hexdigest() for path in config.strong]}


def _check_plan(out: Path, plan: dict) -> None:
    path = out / PLAN_FILE
    if path.exists():
        if json.loads(path.read_text()) != plan:
            raise ValueError(f"{out} was packed from different CSVs, labels or settings ({path}); "
                             f"use a new --out folder or delete this one")
    else:
        path.write_text(json.dumps(plan, indent=1))


def _write_shard(path: Path, segments: list[Segment], config: PackConfig, labels: LabelSet, clips: dict[str, Path],
                 strong: dict, pool: ProcessPoolExecutor, bar: tqdm) -> None:
    column = labels.column()
    tasks = [(seg.ytid, str(clips[seg.ytid]) if seg.ytid in clips else None) for seg in segments]
    chunks = [tasks[i:i + CLIPS_PER_TASK] for i in range(0, len(tasks), CLIPS_PER_TASK)]
    results = _ordered_map(pool, chunks, config, TASKS_PER_WORKER * config.workers)
    with ShardWriter(path, labels.mids, labels.names, config.sample_rate, config.clip_samples,
                     has_strong=bool(config.strong)) as writer:
        decoded = (item for chunk in results for item in chunk)
        for seg, (waveform, reason) in zip(segments, decoded):
            if waveform is None:
                writer.skip(seg.ytid, reason)
            else:
                target = np.zeros((1, len(column)), np.uint8)
                target[0, [column[m] for m in seg.labels]] = 1
                events = [(0, on, off, column[mid]) for on, off, mid in strong.get(seg.segment_id, ())
                          if mid in column]
                writer.add(waveform[None], target, [f"Y{seg.ytid}"], events)
            bar.update(1)
        writer.commit()


def pack(config: PackConfig) -> dict:
    """Pack (or resume packing) `config.out`; returns counts of packed, skipped and resumed."""
    labels = read_labels(config.labels)
    rows = [seg for path in config.csvs for seg in read_segments(path, labels)]
    seen, segments, duplicates = set(), [], []
    for seg in rows:
        (duplicates if seg.ytid in seen else segments).append(seg)
        seen.add(seg.ytid)
    strong: dict = {}
    for path in config.strong:
        strong.update(read_strong(path))
    if not config.audio_dir.is_dir():
        raise ValueError(f"--audio-dir {config.audio_dir}: no such folder; give the folder holding the "
                         f"Y<YTID>.<ext> clips")
    ensure_writable(config.out)
    _check_plan(config.out, _plan_key(config, segments, labels))
    clips = find_clips(config.audio_dir)
    shards = [segments[i:i + config.shard_size] for i in range(0, len(segments), config.shard_size)]
    names = [f"shard_{i:05d}.h5" for i in range(len(shards))]
    resumed = 0
    with ProcessPoolExecutor(config.workers, mp_context=get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool, \
            tqdm(total=len(segments), desc="packing", unit="clip") as bar:
        for name, shard in zip(names, shards):
            if (config.out / name).exists():
                resumed += 1
                bar.update(len(shard))
                continue
            _write_shard(config.out / name, shard, config, labels, clips, strong, pool, bar)
    write_index(config.out, names)
    skipped = [(seg.ytid, "", "duplicate: an earlier CSV row has this YTID") for seg in duplicates]
    for name in names:
        with h5py.File(config.out / name, "r") as handle:
            skipped += [(y.decode(), name, r.decode()) for y, r in zip(handle["skipped_name"][:],
                                                                        handle["skipped_reason"][:])]
    report = config.out / REPORT_FILE
    tmp = report.with_name(REPORT_FILE + ".tmp")
    try:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows([("ytid", "shard", "reason"), *skipped])
        os.replace(tmp, report)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OutFolderError(describe_os_error(error, f"write {report}")) from None
    reasons = Counter(reason.split(":")[0] for _, _, reason in skipped)
    summary = {"packed": len(rows) - len(skipped), "shards": len(names), "resumed_shards": resumed,
               "skipped": len(skipped), **{f"skipped_{k}": v for k, v in sorted(reasons.items())}}
    print(f"packed {summary['packed']} clips into {len(names)} shards in {config.out} ({resumed} already done); "
          f"skipped {len(skipped)}" + (f" ({', '.join(f'{v} {k}' for k, v in sorted(reasons.items()))}), "
                                       f"listed in {report}" if skipped else ""))
    if summary["packed"] == 0:
        raise NothingPackedError(f"no clip of the {len(rows)} CSV rows could be packed (see {report}); check that "
                                 f"--audio-dir {config.audio_dir} holds files named Y<YTID>.wav/.flac/.ogg/.mp3")
    return summary


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m train.pack", description="Pack AudioSet clips named "
                                     "Y<YTID>.<ext> into 16 kHz int16 HDF5 shards; re-run to resume.")
    parser.add_argument("--csv", action="append", required=True, type=Path, help="segment CSV (repeatable)")
    parser.add_argument("--labels", required=True, type=Path, help="class_labels_indices.csv")
    parser.add_argument("--audio-dir", required=True, type=Path, help="folder holding Y<YTID>.<ext> clips")
    parser.add_argument("--out", required=True, type=Path, help="output folder for shards and index.json")
    parser.add_argument("--shard-size", type=int, default=20000, help="CSV rows per shard (default 20000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--strong", action="append", default=[], type=Path, help="strong-label TSV (repeatable)")
    args = parser.parse_args(argv)
    try:
        pack(PackConfig(tuple(args.csv), args.labels, args.audio_dir, args.out, args.shard_size, args.workers,
                        tuple(args.strong)))
    except (MetadataError, ShardError, ValueError) as error:   # OutFolderError and NothingPackedError too
        sys.exit(f"error: {error}")
    except OSError as error:   # a disk that fills up while a shard is written (h5py's write errors are OSErrors)
        sys.exit(f"error: {describe_os_error(error, f'write into {args.out}')}")


if __name__ == "__main__":
    main()
