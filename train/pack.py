"""Pack audio into HDF5 shards (train/data/shards.py): AudioSet downloads, a manifest CSV, or class subfolders.

    python -m train.pack --csv SEGMENTS.csv --labels class_labels_indices.csv --audio-dir DIR --out OUT
    python -m train.pack --manifest FILE.csv --audio-dir DIR --out OUT        (ESC-50, UrbanSound8K, FSD50K, generic)
    python -m train.pack --audio-dir DIR --out OUT                            (DIR/<class>/**/*.wav)

AudioSet clips are files named `Y<YTID>.<ext>` (wav, flac, ogg or mp3) anywhere under --audio-dir; names
with a time suffix (`Y<YTID>_<start>_<end>.wav`) are not matched. Own data is read by train/data/manifest.py
(its layouts, label lists, folds, groups and splits: docs/data.md). Each row's part of its file (the
whole file or the CSV's segment, by train/data/segments.py's rule) is decoded alone (fastsca/audio.py seeks),
mixed to mono, resampled to 16 kHz with soxr's anti-aliasing filter, cut (--fit cut) or windowed (--fit
window) to --clip-seconds, zero-padded, and stored as int16 with its multi-hot target, fold and group, in
CSV order, `--shard-size` rows per shard. Rows that name splits go to OUT/<split>/. Decoding runs in
`--workers` processes, which die with the packer (train/data/parent_death.py).

Re-running with the same inputs resumes: a shard is written under a temporary name and renamed when
complete, finished shards are skipped, an interrupted one is redone (Ctrl-C and a full disk included:
the partial shard is removed, exit 130 or one error line). OUT/pack_plan.json holds what a resume must
share (settings, rows, and each audio file's path under --audio-dir, size and time): other inputs, or
shards no plan accounts for, are refused, or replaced with `--overwrite`; OUT/.lock keeps a second
packer out. Rows naming one file however spelt are packed once (other labels merged), and names found in
two folders are never guessed (train/data/manifest.py). A missing, undecodable, truncated, silent or
out-of-file row is skipped, never fatal; samples beyond full scale are clipped and counted. Every row's
outcome is recorded in its shard (so it survives resumes) and OUT/pack_report.csv lists them all (clip,
shard, reason, cut: what part of the file was stored), with a summary line at the end. Packing no clip at
all is an error, after that report. Errors are one line on stderr (exit 2); Ctrl-C exits 130. A clip
length train.run could not train on is refused first (train/data/segments.py).
"""
import argparse
import csv
import hashlib
import math
import os
import re
import signal
import sys
from collections import Counter, deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, replace
from multiprocessing import get_context
from pathlib import Path

import h5py
import numpy as np
from tqdm import tqdm

from fastsca.audio import AudioError, TruncatedAudioError, audio_seconds, fit_length, load_audio
from fastsca.events import ReferenceReport, clean_events
from train.data.csv_meta import LabelSet, MetadataError, Segment, read_labels, read_segments, read_strong
from train.data.manifest import (AudioFiles, PackItem, merge_duplicates, read_class_list, read_folder, read_manifest,
                            walk_files)
from train.data.out_folder import (OutFolderError, RunLock, check_inputs_apart, check_plan, describe_os_error, read_plan,
                              ensure_writable, remove_outputs)
from train.data.parent_death import die_with_parent
from train.data.segments import FITS, OutsideFileError, check_clip_length, plan_parts
from train.data.shards import ShardError, ShardWriter, clipped_note, to_stored, write_index

EXTENSIONS = ("wav", "flac", "ogg", "mp3")          # preference order when a clip exists in several
CLIP_NAME = re.compile(r"^Y(.+)\.(" + "|".join(EXTENSIONS) + r")$", re.IGNORECASE)
PLAN_FILE = "pack_plan.json"
REPORT_FILE = "pack_report.csv"
REPORT_DATASET = "pack_report"   # in each shard: (clip, reason, cut) per row, for pack_report.csv
UNSPLIT = "unsplit"              # OUT/<this>: rows without a split when other rows name one
# A clip is one HDF5 chunk and one read: 10 minutes (19 MB int16) is far beyond any tagging model's window.
MAX_CLIP_SECONDS = 600.0
# Decoding processes beyond this many per CPU only queue for the CPUs (and each holds ~400 MB of imports).
MAX_WORKERS_PER_CPU = 4
# Clips sent to a worker per task: amortises the inter-process round trip, keeps the order cheap.
CLIPS_PER_TASK = 8
# Tasks in flight per worker: keeps every worker busy while bounding decoded clips held in memory
# (workers x 4 x 8 clips x 320 kB: 10 MB a worker), whatever the shard size.
TASKS_PER_WORKER = 4


@dataclass(frozen=True)
class PackConfig:
    """Inputs and layout of one packing run."""

    csvs: tuple[Path, ...]
    """AudioSet segment CSVs (YTID, start, end, labels), packed in order; () for own data."""
    labels: Path | None
    """class_labels_indices.csv: the target columns (required with csvs); for own data optional: that file
    or one class name a line (None: the sorted class names found)."""
    audio_dir: Path
    """Folder searched (recursively) for Y<YTID>.<ext> clips, a manifest's files or class subfolders."""
    out: Path
    """Output folder: shard_NNNNN.h5, index.json, pack_report.csv."""
    shard_size: int = 20000
    """CSV rows per shard (a shard holds fewer clips when some are skipped)."""
    workers: int = os.cpu_count() or 1
    """Decoding processes."""
    strong: tuple[Path, ...] = ()
    """AudioSet strong-label TSVs; events whose label is not in `labels` are dropped, overlapping or touching
    events of one class in a clip merged (all reported)."""
    sample_rate: int = 16000
    """Stored sample rate, Hz."""
    clip_samples: int = 160000
    """Stored samples per clip (cut or zero-padded)."""
    manifests: tuple[Path, ...] = ()
    """Own-data manifest CSVs (train/data/manifest.py); with neither these nor csvs, audio_dir's class subfolders."""
    fit: str = "cut"
    """A file (or segment) longer than the clip: keep its first clip ("cut") or all of it as clips ("window")."""
    overwrite: bool = False
    """Replace the shards of an --out packed from other inputs or settings (False: refuse, one line)."""

    def __post_init__(self) -> None:
        if self.csvs and self.manifests:
            raise ValueError("give AudioSet segment CSVs (--csv) or own-data manifests (--manifest), not both")
        if self.csvs and self.labels is None:
            raise ValueError("--csv needs --labels class_labels_indices.csv")
        if self.strong and not self.csvs:
            raise ValueError("--strong needs AudioSet segment CSVs (--csv)")
        if self.shard_size < 1:
            raise ValueError(f"--shard-size {self.shard_size}: give 1 or more rows per shard")
        max_workers = MAX_WORKERS_PER_CPU * (os.cpu_count() or 1)
        if not 1 <= self.workers <= max_workers:
            raise ValueError(f"--workers {self.workers}: give 1 to {max_workers} ({MAX_WORKERS_PER_CPU} per CPU)")
        if self.sample_rate < 1 or not 1 <= self.clip_samples <= MAX_CLIP_SECONDS * self.sample_rate:
            raise ValueError(f"clip of {self.clip_samples} samples at {self.sample_rate} Hz: give 1 sample to "
                             f"{MAX_CLIP_SECONDS:g} s")
        if self.fit not in FITS:
            raise ValueError(f"fit {self.fit!r}: choose one of {', '.join(FITS)}")
        check_clip_length(self.clip_samples, self.sample_rate)


class NothingPackedError(ValueError):
    """Every clip was skipped: shards without clips train nothing."""


def find_clips(audio_dir: Path) -> tuple[dict[str, Path], dict[str, str]]:
    """YTID -> clip file under `audio_dir` (symlinked folders followed), preferring wav, then flac, ogg, mp3;
    and YTID -> skip reason for the ids whose preferred file is in two folders (never taken from one)."""
    found: dict[str, tuple[int, list[Path]]] = {}
    for path in sorted(walk_files(audio_dir)):
        match = CLIP_NAME.match(path.name)
        if match:
            rank = EXTENSIONS.index(match.group(2).lower())
            if match.group(1) not in found or rank < found[match.group(1)][0]:
                found[match.group(1)] = (rank, [path])
            elif rank == found[match.group(1)][0]:
                found[match.group(1)][1].append(path)
    ambiguous = {ytid: f"ambiguous: {paths[0].name} is in {len(paths)} folders under --audio-dir "
                       f"({', '.join(str(p.parent.relative_to(audio_dir)) for p in paths[:3])}); keep one copy"
                 for ytid, (_, paths) in found.items() if len(paths) > 1}
    return {ytid: paths[0] for ytid, (_, paths) in found.items() if ytid not in ambiguous}, ambiguous


class _Skip(Exception):
    """A row that is reported and not packed; the message is its reason."""


def _decode(tasks: list[tuple], sample_rate: int, clip_samples: int, fit: str) -> list[list[tuple]]:
    """For each (name, path, start, end, problem): its clips [(name, int16 waveform, cut)], or
    [(name, None, skip reason)]; runs in a worker."""
    results = []
    for name, path, start, end, problem in tasks:
        try:
            if problem:
                raise _Skip(problem)
            parts = plan_parts(audio_seconds(path), clip_samples / sample_rate, fit, start, end)
            clips = []
            for k, part in enumerate(parts):
                waveform = load_audio(path, sample_rate, start=part.offset, seconds=part.seconds)
                stored, clipped = to_stored(fit_length(waveform, clip_samples))
                if not stored.any():
                    raise _Skip(f"silent: {path} holds no sample above int16's resolution (peak "
                                f"{np.abs(waveform).max(initial=0.0):.2g}) in the part packed; check the recording")
                cut = part.cut + (", padded" if len(waveform) < clip_samples else "") + (
                    f", {clipped_note(clipped)}" if clipped else "")
                clips.append((f"{name}#{k}" if len(parts) > 1 else name, stored, cut))
        except _Skip as skip:
            clips = [(name, None, str(skip))]
        except OutsideFileError as error:
            clips = [(name, None, f"outside: {path}: {error}")]
        except AudioError as error:
            kind = "truncated" if isinstance(error, TruncatedAudioError) else "undecodable"
            clips = [(name, None, f"{kind}: {error}")]
        results.append(clips)
    return results


def _start_worker(parent_pid: int) -> None:
    """Decoding workers die with the packer and leave Ctrl-C to it (it keeps finished shards, then stops them)."""
    die_with_parent(parent_pid)
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _ordered_map(pool: ProcessPoolExecutor, chunks: list, config: PackConfig, window: int):
    """Results of `_decode` over `chunks`, in order, with at most `window` tasks in flight."""
    pending = deque()
    for chunk in chunks:
        pending.append(pool.submit(_decode, chunk, config.sample_rate, config.clip_samples, config.fit))
        if len(pending) >= window:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


def _plan_key(config: PackConfig, items: list[PackItem], labels: LabelSet) -> dict:
    """What a resumed run must share with the run that started OUTDIR: the settings, the rows and the audio
    files they are read from (path under --audio-dir, size and modification time), so another --audio-dir
    or a changed file is another plan, while the same tree moved (with its times: cp -p, rsync -a) resumes."""
    digest = hashlib.sha1()
    for item in items:
        stat = os.stat(item.path) if item.path else None
        file = f"{os.path.relpath(item.path, config.audio_dir)},{stat.st_size},{stat.st_mtime_ns}" if stat else ""
        digest.update(f"{item.name},{item.start},{item.end},{','.join(item.labels)},{item.fold},{item.group},"
                      f"{file}\n".encode())
    digest.update("\n".join(labels.mids).encode())
    return {"shard_size": config.shard_size, "sample_rate": config.sample_rate, "clip_samples": config.clip_samples,
            "fit": config.fit, "segments": len(items), "segments_sha1": digest.hexdigest(),
            "strong_sha1": [hashlib.sha1(path.read_bytes()).hexdigest() for path in config.strong]}


class _ReportingShardWriter(ShardWriter):
    """A ShardWriter that also stores what pack_report.csv says of each row (so the report survives resumes)."""

    def __init__(self, *args, **kwargs) -> None:
        self.report: list[tuple[str, str, str]] = []   # first: once the .tmp exists, only ShardWriter's clean-up runs
        super().__init__(*args, **kwargs)

    def commit(self) -> Path:
        self._file.create_dataset(REPORT_DATASET, data=np.array(self.report, dtype=h5py.string_dtype()).reshape(-1, 3))
        return super().commit()


def _write_shard(path: Path, items: list[PackItem], config: PackConfig, labels: LabelSet, strong: dict,
                 pool: ProcessPoolExecutor, bar: tqdm) -> None:
    column = labels.column()
    tasks = [(item.name, item.path, item.start, item.end, item.problem) for item in items]
    chunks = [tasks[i:i + CLIPS_PER_TASK] for i in range(0, len(tasks), CLIPS_PER_TASK)]
    results = _ordered_map(pool, chunks, config, TASKS_PER_WORKER * config.workers)
    with _ReportingShardWriter(path, labels.mids, labels.names, config.sample_rate, config.clip_samples,
                               has_strong=bool(config.strong)) as writer:
        decoded = (clips for chunk in results for clips in chunk)
        for item, clips in zip(items, decoded):
            for name, waveform, how in clips:
                if waveform is None:
                    writer.skip(item.name, how)
                    writer.report.append((item.name, how, ""))
                    continue
                target = np.zeros((1, len(column)), np.uint8)
                target[0, [column[m] for m in item.labels]] = 1
                events = [(0, on, off, column[mid]) for on, off, mid in strong.get(item.segment_id, ())
                          if mid in column] if len(clips) == 1 else []
                group = item.group or (item.name if len(clips) > 1 else "")   # windows of a file stay together
                writer.add(waveform[None], target, [name], events, folds=[item.fold], groups=[group])
                writer.report.append((name, "", how))
            bar.update(1)
        writer.commit()


def read_strong_labels(config: PackConfig, labels: LabelSet, segments: list[Segment]) -> dict:
    """segment_id -> [(onset, offset, mid)] of the `--strong` TSVs: cut to the clip, a clip's overlapping or
    touching events of one class merged, labels outside `labels` dropped. Prints one line per TSV saying what
    was changed or left out, and the ids that match no segment (with a hint); none matching is an error."""
    column, ids = labels.column(), {seg.segment_id for seg in segments}
    strong: dict = {}
    for path in config.strong:
        report = ReferenceReport()
        events = read_strong(path, config.clip_samples / config.sample_rate, report)
        if not events:
            raise MetadataError(f"--strong {path}: no event is left inside the clips ({report.describe()}); event "
                                f"times are seconds from the segment's start")
        for clip, clip_events in events.items():
            unknown = [mid for _, _, mid in clip_events if mid not in column]
            report.unknown += len(unknown)
            report.unknown_example = report.unknown_example or (unknown[0] if unknown else "")
            if clip not in ids:
                report.unmatched += 1
                report.unmatched_example = report.unmatched_example or clip
            elif len(unknown) < len(clip_events):
                strong.setdefault(clip, []).extend(e for e in clip_events if e[2] in column)
        hint = _strong_id_hint(report.unmatched_example, segments) if report.unmatched else ""
        if report.unmatched == len(events):
            raise MetadataError(f"--strong {path}: none of its {len(events)} clip ids matches a segment of the CSVs "
                                f"(e.g. {report.unmatched_example!r}); {hint}")
        print(f"strong labels {path}: {len(events) - report.unmatched} clips matched"
              + (f"; {report.describe()}" if report.describe() else "") + (f" ({hint})" if hint else ""),
              file=sys.stderr)
    return {clip: clean_events(clip_events) for clip, clip_events in strong.items()}


def _strong_id_hint(clip: str, segments: list[Segment]) -> str:
    """What to change about a strong-label id that matches no segment id (<YTID>_<start ms>)."""
    ids, ytids = {seg.segment_id for seg in segments}, {seg.ytid: seg for seg in segments}
    if clip.startswith("Y") and clip[1:] in ids:
        return f"strip the 'Y' prefix: ids are <YTID>_<start ms>, e.g. {clip[1:]!r}"
    seg = ytids.get(clip) or ytids.get(re.sub(r"_\d+$", "", clip))
    if seg is not None:
        return f"ids are <YTID>_<start in ms>: the CSV row {seg.ytid}, {seg.start:g} is {seg.segment_id!r}"
    return f"ids are <YTID>_<start ms> of the CSV rows, e.g. {segments[0].segment_id!r}" if segments else ""


def _audioset_items(config: PackConfig) -> tuple[LabelSet, list[PackItem], list[tuple], dict]:
    """AudioSet's segment CSVs as items (clips Y<YTID>.<ext>), the label set, duplicate rows and strong labels."""
    labels = read_labels(config.labels)
    rows = [seg for path in config.csvs for seg in read_segments(path, labels)]
    segments, duplicates = _merge_segments(rows)
    strong = read_strong_labels(config, labels, segments)
    _check_audio_dir(config)
    clips, ambiguous = find_clips(config.audio_dir)
    missing = "missing: no Y<YTID>.wav/.flac/.ogg/.mp3 under --audio-dir"
    items = [PackItem(f"Y{seg.ytid}", str(clips[seg.ytid]) if seg.ytid in clips else None, seg.labels,
                      start=seg.start, end=seg.end, segment_id=seg.segment_id,
                      problem="" if seg.ytid in clips else ambiguous.get(seg.ytid, missing))
             for seg in segments]
    return labels, items, [(f"Y{ytid}", "", reason, "") for ytid, reason in duplicates], strong


def _merge_segments(rows: list[Segment]) -> tuple[list[Segment], list[tuple[str, str]]]:
    """One segment per YTID (its file Y<YTID>.<ext> is one clip) and (YTID, report reason) of the other rows: a
    row of the same segment is a duplicate, or merged into the first when it has other labels; a row of other
    times is a MetadataError (which one the file holds is unknown)."""
    first: dict[str, int] = {}
    segments, report = [], []
    for seg in rows:
        if seg.ytid not in first:
            first[seg.ytid] = len(segments)
            segments.append(seg)
            continue
        earlier = segments[first[seg.ytid]]
        if (earlier.start, earlier.end) != (seg.start, seg.end):
            raise MetadataError(f"YTID {seg.ytid} is listed twice with other times ({earlier.start:g}-{earlier.end:g} "
                                f"s and {seg.start:g}-{seg.end:g} s); its one file Y{seg.ytid}.<ext> is one clip: "
                                f"keep one row")
        added = tuple(mid for mid in seg.labels if mid not in earlier.labels)
        if added:
            segments[first[seg.ytid]] = replace(earlier, labels=earlier.labels + added)
            report.append((seg.ytid, f"merged: an earlier CSV row has this YTID; its labels gained {','.join(added)}"))
        else:
            report.append((seg.ytid, "duplicate: an earlier CSV row has this YTID and these labels"))
    return segments, report


def _own_items(config: PackConfig) -> tuple[LabelSet, list[PackItem], list[tuple]]:
    """A manifest's or a class-folder tree's items, the label set (sorted classes or --labels) and the report
    rows of what is not packed: labels not in --labels, duplicate rows, left-out folders and files."""
    _check_audio_dir(config)
    items, names, left_out = [], {}, []
    if config.manifests:
        files = AudioFiles(config.audio_dir)
        for path in config.manifests:
            found, shown, layout = read_manifest(path, files)
            print(f"{path}: {layout} layout, {len(found)} rows", file=sys.stderr)
            items += found
            names.update(shown)
    else:
        items, left_out = read_folder(config.audio_dir)
    items, merged = merge_duplicates(items)
    if config.labels is not None:
        labels = read_class_list(config.labels)
    else:
        keys = sorted({key for item in items for key in item.labels})
        labels = LabelSet(tuple(keys), tuple(names.get(key, key) for key in keys))
    column = labels.column()
    unknown = [(item.name, "", f"label: {next(k for k in item.labels if k not in column)!r} is not in --labels "
                               f"{config.labels}", "") for item in items if not set(item.labels) <= set(column)]
    items = [item for item in items if set(item.labels) <= set(column)]
    return labels, items, unknown + [(name, "", reason, "") for name, reason in left_out + merged]


def _check_audio_dir(config: PackConfig) -> None:
    if not config.audio_dir.is_dir():
        what = "Y<YTID>.<ext> clips" if config.csvs else "audio files"
        raise ValueError(f"--audio-dir {config.audio_dir}: no such folder; give the folder holding the {what}")


def _pack_split(out: Path, items: list[PackItem], labels: LabelSet, config: PackConfig, strong: dict,
                pool: ProcessPoolExecutor, extra_report: list[tuple]) -> dict:
    """Pack (or resume) one output folder: shards, index.json and pack_report.csv; returns its counts."""
    ensure_writable(out)
    check_plan(out, PLAN_FILE, _plan_key(config, items, labels), config.overwrite)
    shards = [items[i:i + config.shard_size] for i in range(0, len(items), config.shard_size)]
    names = [f"shard_{i:05d}.h5" for i in range(len(shards))]
    resumed = 0
    with tqdm(total=len(items), desc=f"packing {out.name}" if out != config.out else "packing", unit="row",
              disable=not items) as bar:
        for name, shard in zip(names, shards):
            if (out / name).exists():
                resumed += 1
                bar.update(len(shard))
                continue
            (out / (name + ".tmp")).unlink(missing_ok=True)   # an interrupted run's: frees its space first
            _write_shard(out / name, shard, config, labels, strong, pool, bar)
    if names:
        write_index(out, names)
    rows = list(extra_report)
    for name in names:
        with h5py.File(out / name, "r") as handle:
            if REPORT_DATASET in handle:
                stored = handle[REPORT_DATASET].asstr()[:]
                if stored.ndim == 1:   # shards packed when the report was "clip<TAB>reason<TAB>cut" lines
                    stored = [line.split("\t") for line in stored]
                rows += [(clip, name, reason, cut) for clip, reason, cut in stored]
            else:   # shards packed before the report listed every clip
                rows += [(y.decode(), name, r.decode(), "") for y, r in zip(handle["skipped_name"][:],
                                                                            handle["skipped_reason"][:])]
    report = out / REPORT_FILE
    tmp = report.with_name(REPORT_FILE + ".tmp")
    try:
        with open(tmp, "w", newline="") as handle:
            csv.writer(handle).writerows([("clip", "shard", "reason", "cut"), *rows])
        os.replace(tmp, report)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise OutFolderError(describe_os_error(error, f"write {report}")) from None
    skipped = [row for row in rows if row[2]]
    reasons = Counter(row[2].split(":")[0] for row in skipped)
    clipped = sum("clipped:" in row[3] for row in rows)
    packed = len(rows) - len(skipped)
    print(f"packed {packed} clips into {len(names)} shards in {out} ({resumed} already done); "
          f"skipped {len(skipped)}" + (f" ({', '.join(f'{v} {k}' for k, v in sorted(reasons.items()))})" if skipped
                                       else "")
          + (f"; {clipped} clipped at full scale" if clipped else "")
          + (f", listed in {report}" if skipped or clipped else ""))
    return {"packed": packed, "shards": len(names), "resumed_shards": resumed, "skipped": len(skipped),
            **({"clipped": clipped} if clipped else {}),
            **{f"skipped_{k}": v for k, v in sorted(reasons.items())}}


def pack(config: PackConfig) -> dict:
    """Pack (or resume packing) `config.out`; returns counts of packed, skipped and resumed (per split,
    under the split's name, when the rows name splits)."""
    strong: dict = {}
    if config.csvs:
        labels, items, extra, strong = _audioset_items(config)
    else:
        labels, items, extra = _own_items(config)
    splits = sorted({item.split for item in items}) or [""]
    check_inputs_apart(config.out, [("--csv", p) for p in config.csvs] + [("--manifest", p) for p in config.manifests]
                       + [("--strong", p) for p in config.strong] + [("--labels", config.labels)] * bool(config.labels))
    ensure_writable(config.out)
    with RunLock(config.out, what="train.pack run"):
        _claim_split_folders(config, splits, labels)
        summaries = _pack_splits(config, splits, items, labels, strong, extra)
    total = {key: sum(s.get(key, 0) for s in summaries.values()) for s in summaries.values() for key in s}
    if total["packed"] == 0:
        rows = f"{len(items) + len(extra)} {'files' if not (config.csvs or config.manifests) else 'CSV rows'}"
        wanted = "files named Y<YTID>.wav/.flac/.ogg/.mp3" if config.csvs else "the audio files"
        raise NothingPackedError(f"no clip of the {rows} could be packed (see {REPORT_FILE} in {config.out}); "
                                 f"check that --audio-dir {config.audio_dir} holds {wanted}")
    return summaries[""] if splits == [""] else {**total, "splits": summaries}


def _claim_split_folders(config: PackConfig, splits: list[str], labels: LabelSet) -> None:
    """OUT's own plan when rows name splits: which split folders it holds and the settings, so a run with other
    splits (or an unsplit one before it) is refused; with --overwrite, the folders of splits the new run does
    not name are emptied of their shards too (each split folder keeps a plan of its own, see `_pack_split`)."""
    folders = [split or UNSPLIT for split in splits] if splits != [""] else []
    path = config.out / PLAN_FILE
    before = (read_plan(path) or {}).get("splits", [])
    if folders:
        check_plan(config.out, PLAN_FILE, {"splits": folders, "labels": list(labels.mids)}, config.overwrite)
    if config.overwrite:
        for gone in sorted(set(before) - set(folders)):
            if (config.out / gone).is_dir():
                remove_outputs(config.out / gone)
                (config.out / gone / PLAN_FILE).unlink(missing_ok=True)


def _pack_splits(config: PackConfig, splits: list[str], items: list[PackItem], labels: LabelSet, strong: dict,
                 extra: list[tuple]) -> dict:
    """Each split's folder packed (or resumed) with one pool of decoders; its counts by split name."""
    summaries = {}
    with ProcessPoolExecutor(config.workers, mp_context=get_context("spawn"), initializer=_start_worker,
                             initargs=(os.getpid(),)) as pool:
        try:
            for split in splits:
                out = config.out / (split or UNSPLIT) if splits != [""] else config.out
                summaries[split] = _pack_split(out, [item for item in items if item.split == split], labels, config,
                                               strong, pool, extra if split == splits[0] else [])
        except BaseException:   # Ctrl-C or an error: stop the decoders now rather than after their queued work
            pool.shutdown(wait=False, cancel_futures=True)
            raise
    return summaries


class _OneLineParser(argparse.ArgumentParser):
    """argparse that reports a bad option in one line (no usage block), exit 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see python -m train.pack --help\n")


def _user_path(text: str) -> Path:
    """A path as typed: `~` expanded (also when quoted), trailing slashes and spaces kept meaningful."""
    return Path(os.path.expanduser(text))


def main(argv: list[str] | None = None) -> None:
    parser = _OneLineParser(prog="python -m train.pack", description="Pack audio into 16 kHz int16 HDF5 shards: "
                            "AudioSet clips named Y<YTID>.<ext> (--csv), a manifest CSV (--manifest: ESC-50, "
                            "UrbanSound8K, FSD50K or generic), or class subfolders (neither); re-run to resume. "
                            "See docs/data.md.")
    parser.add_argument("--csv", action="append", default=[], type=_user_path,
                        help="AudioSet segment CSV (repeatable)")
    parser.add_argument("--manifest", action="append", default=[], type=_user_path,
                        help="own-data CSV: file, label(s), optional fold/split/group/start/end (repeatable)")
    parser.add_argument("--labels", type=_user_path, help="class_labels_indices.csv (required with --csv); for own "
                        "data optional: that file or one class name a line (default: the sorted class names)")
    parser.add_argument("--audio-dir", required=True, type=_user_path, help="folder holding the audio files")
    parser.add_argument("--out", required=True, type=_user_path, help="output folder for shards and index.json")
    parser.add_argument("--shard-size", type=int, default=20000, help="rows per shard (default 20000)")
    parser.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="decoding processes")
    parser.add_argument("--clip-seconds", type=float, default=10.0, help="stored clip length (default 10)")
    parser.add_argument("--fit", choices=FITS, default="cut", help="a file longer than the clip: keep its first "
                        "clip (cut, default) or cut it into consecutive clips (window)")
    parser.add_argument("--strong", action="append", default=[], type=_user_path,
                        help="strong-label TSV (repeatable): segment_id (<YTID>_<start ms>), start, end, label mid; "
                             "a clip's overlapping or touching events of one class are merged, events cut to the "
                             "clip, and what was changed is printed (docs/labels.md)")
    parser.add_argument("--overwrite", action="store_true", help="replace the shards of an --out packed from other "
                        "inputs, another --audio-dir or other settings (without it such a folder is refused)")
    args = parser.parse_args(argv)
    try:
        if not math.isfinite(args.clip_seconds) or not 0 < args.clip_seconds <= MAX_CLIP_SECONDS:
            raise ValueError(f"--clip-seconds {args.clip_seconds}: give seconds in (0, {MAX_CLIP_SECONDS}]")
        config = PackConfig(tuple(args.csv), args.labels, args.audio_dir, args.out, args.shard_size, args.workers,
                            tuple(args.strong), clip_samples=round(args.clip_seconds * 16000),
                            manifests=tuple(args.manifest), fit=args.fit, overwrite=args.overwrite)
        pack(config)
    except (MetadataError, ShardError, ValueError) as error:   # OutFolderError and NothingPackedError too
        _fail(str(error))
    except (OSError, RuntimeError) as error:   # a disk that fills up while a shard is written
        _fail(describe_os_error(_as_os_error(error), f'write into {args.out}'))
    except KeyboardInterrupt:
        tqdm.write(f"interrupted: finished shards in {args.out} are kept; run the same command again to resume",
                   file=sys.stderr)   # on a line of its own, not after a progress bar
        sys.exit(130)


def _fail(message: str) -> None:
    """One `error:` line on stderr (on a line of its own, not after a progress bar), then exit 2, as every
    fastsca command does for input it cannot use."""
    tqdm.write(f"error: {message}", file=sys.stderr)
    sys.exit(2)


def _as_os_error(error: Exception) -> OSError:
    """HDF5's write errors carry the system's errno inside a long message (and some are RuntimeErrors):
    the OSError it stands for, so the user reads "No space left on device" and what to do."""
    number = getattr(error, "errno", None)
    if number is None and (found := re.search(r"errno = (\d+)", str(error))):
        number = int(found.group(1))
    if number is None:
        return OSError(None, str(error).splitlines()[0] if str(error) else type(error).__name__)
    return OSError(number, os.strerror(number))


if __name__ == "__main__":
    main()
