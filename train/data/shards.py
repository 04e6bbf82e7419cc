"""The HDF5 shard layout shared by the packer, the built-in data generator and the loader.

One shard file holds up to a few tens of thousands of clips:

- `waveform` (N, clip_samples) int16, 16 kHz mono, one HDF5 chunk per clip (a clip is one read);
- `target` (N, K) uint8 multi-hot clip labels; `audio_name` (N,) utf-8 strings;
- strong labels as flat arrays of events: `strong_clip` (M,) int32 row in this shard,
  `strong_onset` / `strong_offset` (M,) float32 seconds, `strong_label` (M,) int32 target column
  (present, possibly empty, in every shard; attribute `has_strong` says whether they were given);
- `skipped_name` / `skipped_reason` (S,) strings: clips the packer could not read for this shard;
  `noted_name` / `noted_reason`: clips stored with a change worth reporting (samples clipped at full scale);
- `fold` (N,) int16, the clip's cross-validation fold (-1: none given), and `group` (N,) strings, the
  recording the clip was cut from ("": unknown), so folds and validation splits can hold out whole
  recordings (absent from shards written before they existed: read as -1 and "");
- attributes `format`, `sample_rate`, `clip_samples`, `label_mids`, `label_names`, `has_strong`.

A split is one `.h5` file or a folder of shards with an `index.json` (`write_index`) listing the
files and their clip counts, so opening a split never scans the waveforms. A shard is written under
`<name>.tmp` and renamed when complete: a file with the final name is always whole. A reader checks
before each clip that the file still has the size it had when opened (HDF5 would read the missing
part of a file truncated meanwhile as zeros).
"""
import json
import os
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np

FORMAT = "fastsca-shard/1"
INDEX_FILE = "index.json"
# Rows of `target` read at a time when building per-class clip lists: 64k x 527 bytes = 34 MB.
TARGET_READ_ROWS = 65536


def to_stored(waveform: np.ndarray) -> tuple[np.ndarray, int]:
    """Float samples (full scale +-1) -> the stored int16 samples and how many lay beyond full scale (clipped)."""
    clipped = int(np.count_nonzero(np.abs(waveform) > 1.0))
    return np.round(np.clip(waveform, -1.0, 1.0) * 32767).astype(np.int16), clipped


def clipped_note(clipped: int) -> str:
    """The report's words for `clipped` samples stored at full scale ("" for none)."""
    return f"clipped: {clipped} sample(s) beyond full scale stored at full scale" if clipped else ""


class ShardError(ValueError):
    """A shard or index that cannot be read; the message names the file and what to do."""


def _string_array(values) -> np.ndarray:
    return np.array(list(values), dtype=h5py.string_dtype())


class ShardWriter:
    """Writes one shard under a temporary name; `commit()` completes it atomically.

    Use as a context manager: leaving the block without `commit()` (an exception) deletes the
    temporary file, so no partial shard is ever seen under the final name.
    """

    def __init__(self,
                 path: Path,
                 label_mids: tuple[str, ...],
                 label_names: tuple[str, ...],
                 sample_rate: int,
                 clip_samples: int,
                 has_strong: bool = False) -> None:
        self.path = Path(path)
        self.tmp_path = self.path.with_name(self.path.name + ".tmp")
        self.num_classes = len(label_mids)
        self.clip_samples = clip_samples
        self.count = 0
        self._strong: list[np.ndarray] = []
        self._skipped: list[tuple[str, str]] = []
        self._noted: list[tuple[str, str]] = []
        self._folds: list[np.ndarray] = []
        self._groups: list[str] = []
        self._file = None
        try:   # a Ctrl-C or a full disk while the file is set up (before `with` owns it) leaves no .tmp behind
            self._file = h5py.File(self.tmp_path, "w")
            attrs = self._file.attrs
            attrs["format"] = FORMAT
            attrs["sample_rate"] = sample_rate
            attrs["clip_samples"] = clip_samples
            attrs["label_mids"] = _string_array(label_mids)
            attrs["label_names"] = _string_array(label_names)
            attrs["has_strong"] = has_strong
            self._waveform = self._file.create_dataset("waveform", (0, clip_samples), np.int16,
                                                       maxshape=(None, clip_samples), chunks=(1, clip_samples))
            self._target = self._file.create_dataset("target", (0, self.num_classes), np.uint8,
                                                     maxshape=(None, self.num_classes), chunks=(256, self.num_classes))
            self._name = self._file.create_dataset("audio_name", (0,), h5py.string_dtype(), maxshape=(None,),
                                                   chunks=(1024,))
        except BaseException:
            if self._file is not None and self._file.id.valid:
                self._file.close()
            self.tmp_path.unlink(missing_ok=True)
            raise

    def add(self,
            waveforms: np.ndarray,
            targets: np.ndarray,
            names: list[str],
            events: list[tuple[int, float, float, int]] = (),
            folds: list[int] | None = None,
            groups: list[str] | None = None) -> None:
        """Append clips: waveforms (n, clip_samples) int16, targets (n, K) multi-hot, names (n,),
        events as (row within these n, onset s, offset s, target column), each clip's fold (-1: none)
        and group (the recording it comes from, "": unknown)."""
        n = len(names)
        folds = [-1] * n if folds is None else list(folds)
        groups = [""] * n if groups is None else list(groups)
        if len(folds) != n or len(groups) != n:
            raise ValueError(f"folds and groups must have {n} entries, got {len(folds)} and {len(groups)}")
        if waveforms.shape != (n, self.clip_samples) or waveforms.dtype != np.int16:
            raise ValueError(f"waveforms must be int16 ({n}, {self.clip_samples}), got "
                             f"{waveforms.dtype} {waveforms.shape}")
        if targets.shape != (n, self.num_classes):
            raise ValueError(f"targets must be ({n}, {self.num_classes}), got {targets.shape}")
        start = self.count
        for dataset in (self._waveform, self._target, self._name):
            dataset.resize(start + n, axis=0)
        self._waveform[start:] = waveforms
        self._target[start:] = targets.astype(np.uint8)
        self._name[start:] = _string_array(names)
        self._folds.append(np.asarray(folds, dtype=np.int16))
        self._groups.extend(groups)
        if len(events):
            rows = np.array(events, dtype=np.float64).reshape(-1, 4)
            rows[:, 0] += start
            self._strong.append(rows)
        self.count += n

    def skip(self, name: str, reason: str) -> None:
        """Record a clip that belonged to this shard but could not be read."""
        self._skipped.append((name, reason))

    def note(self, name: str, reason: str) -> None:
        """Record a clip stored with a change worth reporting (e.g. samples clipped at full scale)."""
        self._noted.append((name, reason))

    def commit(self) -> Path:
        """Write the strong labels and skip list, close, and rename to the final name."""
        strong = np.concatenate(self._strong) if self._strong else np.zeros((0, 4))
        self._file.create_dataset("strong_clip", data=strong[:, 0].astype(np.int32))
        self._file.create_dataset("strong_onset", data=strong[:, 1].astype(np.float32))
        self._file.create_dataset("strong_offset", data=strong[:, 2].astype(np.float32))
        self._file.create_dataset("strong_label", data=strong[:, 3].astype(np.int32))
        self._file.create_dataset("skipped_name", data=_string_array(n for n, _ in self._skipped))
        self._file.create_dataset("skipped_reason", data=_string_array(r for _, r in self._skipped))
        self._file.create_dataset("noted_name", data=_string_array(n for n, _ in self._noted))
        self._file.create_dataset("noted_reason", data=_string_array(r for _, r in self._noted))
        folds = np.concatenate(self._folds) if self._folds else np.zeros(0, np.int16)
        self._file.create_dataset("fold", data=folds)
        self._file.create_dataset("group", data=_string_array(self._groups))
        self._file.flush()   # a full disk fails here, with every object still open (see __exit__)
        self._file.close()
        os.replace(self.tmp_path, self.path)
        return self.path

    def __enter__(self) -> "ShardWriter":
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            if self._file.id.valid:
                self._file.close()
            return
        # After a failed write (a full disk) HDF5 still holds data to flush, and each object's close tries
        # again and fails; the last try, at interpreter exit, crashed (exit 139) and left the .tmp filling
        # the disk. The shard is discarded, so its writes are pointed at /dev/null: every close succeeds.
        if self._file.id.valid:
            sink = os.open(os.devnull, os.O_RDWR)
            os.dup2(sink, self._file.id.get_vfd_handle())
            os.close(sink)
            self._waveform = self._target = self._name = None
            try:
                self._file.close()
            except (OSError, RuntimeError):
                pass   # HDF5's bookkeeping after the failed flush; the error that brought us here is reported
        self.tmp_path.unlink(missing_ok=True)


def _open_h5(path: Path) -> h5py.File:
    """Open a shard read-only, turning HDF5's errors into one line that says what to do."""
    try:
        handle = h5py.File(path, "r")
    except (OSError, ValueError) as error:
        raise ShardError(f"{path}: not a readable HDF5 shard ({str(error).splitlines()[0]}); it may be truncated "
                         f"or corrupt: copy it again or re-run `python -m train.pack` to rebuild it") from None
    if handle.attrs.get("format") != FORMAT or "waveform" not in handle or "target" not in handle:
        handle.close()
        raise ShardError(f"{path}: not a fastsca shard (no {FORMAT} format attribute or datasets); "
                         f"pack it with `python -m train.pack`")
    return handle


def write_index(folder: Path, shard_files: list[str]) -> Path:
    """Write `folder/index.json` listing `shard_files` (names inside folder) and their clip counts."""
    folder = Path(folder)
    shards, header = [], None
    for name in shard_files:
        with _open_h5(folder / name) as handle:
            attrs = handle.attrs
            meta = {"sample_rate": int(attrs["sample_rate"]), "clip_samples": int(attrs["clip_samples"]),
                    "label_mids": [str(m) for m in attrs["label_mids"]],
                    "label_names": [str(n) for n in attrs["label_names"]]}
            if header is None:
                header = meta
            elif meta != header:
                raise ShardError(f"{folder / name}: sample rate, clip length or labels differ from {shard_files[0]}")
            shards.append({"file": name, "clips": int(handle["waveform"].shape[0])})
    if header is None:
        raise ShardError(f"{folder}: no shards to index")
    index = {"format": FORMAT, **header, "num_clips": sum(s["clips"] for s in shards), "shards": shards}
    path = folder / INDEX_FILE
    tmp = path.with_name(INDEX_FILE + ".tmp")
    tmp.write_text(json.dumps(index, indent=1))
    os.replace(tmp, path)
    return path


@dataclass
class ShardIndex:
    """A split's shards and metadata, with lazily opened read handles (safe to pickle to workers)."""

    paths: tuple[Path, ...]
    """Shard files, in clip order."""
    counts: tuple[int, ...]
    """Clips in each shard."""
    sample_rate: int
    """Sample rate of the stored waveforms, Hz."""
    clip_samples: int
    """Samples per stored clip."""
    label_mids: tuple[str, ...]
    """Machine id of each target column."""
    label_names: tuple[str, ...]
    """Display name of each target column."""
    file_sizes: tuple[int, ...] = ()
    """Bytes of each shard file when opened; a read checks them, so a file truncated later is an error, not zeros."""
    offsets: np.ndarray = field(init=False, repr=False, compare=False)
    """(num_shards + 1,) index of each shard's first clip, then num_clips."""
    _handles: dict = field(default_factory=dict, repr=False, compare=False)
    _strong_cache: dict = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).astype(np.int64)

    @classmethod
    def open(cls, path: str | Path) -> "ShardIndex":
        """Open one `.h5` shard or a folder holding `index.json`; checks every shard opens."""
        path = Path(path)
        if path.is_dir():
            index_path = path / INDEX_FILE
            try:
                index = json.loads(index_path.read_text())
                shards = [(path / s["file"], int(s["clips"])) for s in index["shards"]]
                header = (int(index["sample_rate"]), int(index["clip_samples"]),
                          tuple(index["label_mids"]), tuple(index["label_names"]))
            except FileNotFoundError:
                raise ShardError(f"{path}: no {INDEX_FILE}; pass a shard .h5 file or a folder packed "
                                 f"by `python -m train.pack`") from None
            except (ValueError, KeyError, TypeError) as error:
                raise ShardError(f"{index_path}: malformed index ({error!r}); re-run `python -m train.pack` "
                                 f"to rewrite it") from None
        elif path.is_file():
            shards, header = [(path, None)], None
        else:
            raise ShardError(f"{path}: no such shard file or folder")
        counts = []
        for shard_path, count in shards:
            with _open_h5(shard_path) as handle:
                attrs = handle.attrs
                found = (int(attrs["sample_rate"]), int(attrs["clip_samples"]),
                         tuple(str(m) for m in attrs["label_mids"]), tuple(str(n) for n in attrs["label_names"]))
                clips = handle["waveform"].shape[0]
            header = header or found
            if found != header or (count is not None and clips != count):
                raise ShardError(f"{shard_path}: its clips, sample rate or labels disagree with "
                                 f"{path / INDEX_FILE}; re-run `python -m train.pack`")
            counts.append(clips)
        paths = tuple(p for p, _ in shards)
        return cls(paths, tuple(counts), *header, file_sizes=tuple(os.path.getsize(p) for p in paths))

    @property
    def num_clips(self) -> int:
        return sum(self.counts)

    @property
    def num_classes(self) -> int:
        return len(self.label_mids)

    def _open_handle(self, shard: int) -> h5py.File:
        """A shard's open file, opened on first use in this process."""
        if shard not in self._handles:
            handle = _open_h5(self.paths[shard])
            self._handles[shard] = (handle, handle["waveform"], handle["target"])
        return self._handles[shard][0]

    def _datasets(self, shard: int) -> tuple[h5py.Dataset, h5py.Dataset]:
        """(waveform, target) datasets of a shard, opened on first use in this process."""
        self._open_handle(shard)
        return self._handles[shard][1:]

    def check_unchanged(self, shard: int | None = None) -> None:
        """Raise ShardError if a shard file (`shard`, or every one) no longer has the size it had when opened:
        HDF5 reads the missing part of a truncated file as zeros, which would train on silence."""
        for i in range(len(self.paths)) if shard is None else (shard,):
            try:
                size = os.path.getsize(self.paths[i])
            except OSError as error:
                size = f"unreadable: {error.strerror}"
            if self.file_sizes and size != self.file_sizes[i]:
                raise ShardError(f"{self.paths[i]}: the file changed while in use ({self.file_sizes[i]} bytes when "
                                 f"opened, {size} now); it was truncated or overwritten: copy or pack it again, "
                                 f"then continue with --resume")

    def read(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """Clip `index` of the split: waveform (clip_samples,) int16 and target (K,) uint8."""
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        self.check_unchanged(shard)   # one stat per clip: 9.5 us beside 107 us for a 2 s clip's read (2-core box)
        waveform, target = self._datasets(shard)
        row = index - int(self.offsets[shard])
        return waveform[row], target[row]

    def _strong(self, shard: int) -> tuple[np.ndarray, np.ndarray] | None:
        """A shard's strong labels, read on first use in this process: (each event's row, sorted; events (M, 3) of
        onset s, offset s, target column), None where it was packed without them."""
        if shard not in self._strong_cache:
            handle = self._open_handle(shard)
            strong = None
            if handle.attrs.get("has_strong", False):
                rows = handle["strong_clip"][:]
                order = np.argsort(rows, kind="stable")
                events = np.stack([handle["strong_onset"][:], handle["strong_offset"][:],
                                   handle["strong_label"][:]], axis=1).astype(np.float64)
                strong = rows[order], events[order]
            self._strong_cache[shard] = strong
        return self._strong_cache[shard]

    def read_events(self, index: int) -> np.ndarray | None:
        """Clip `index`'s strong events, (n, 3) of onset s, offset s, target column; None where it has no strong
        labels (its shard was packed without them, or they hold no event of it: nobody annotated the clip)."""
        shard = int(np.searchsorted(self.offsets, index, side="right")) - 1
        strong = self._strong(shard)
        if strong is None:
            return None
        rows, events = strong
        row = index - int(self.offsets[shard])
        first, last = np.searchsorted(rows, row, side="left"), np.searchsorted(rows, row, side="right")
        return events[first:last] if last > first else None

    def strong_clips(self) -> np.ndarray:
        """(num_clips,) bool: which clips have strong labels (at least one event)."""
        labelled = np.zeros(self.num_clips, bool)
        for shard, first in enumerate(self.offsets[:-1]):
            strong = self._strong(shard)
            if strong is not None:
                labelled[first + np.unique(strong[0])] = True
        return labelled

    def class_members(self) -> list[np.ndarray]:
        """For each class, the sorted clip indices that carry it (read in chunks, never all targets at once)."""
        members: list[list[np.ndarray]] = [[] for _ in self.label_mids]
        for shard, first in enumerate(self.offsets[:-1]):
            target = self._datasets(shard)[1]
            for start in range(0, target.shape[0], TARGET_READ_ROWS):
                rows, cols = np.nonzero(target[start:start + TARGET_READ_ROWS])
                order = np.argsort(cols, kind="stable")
                bounds = np.searchsorted(cols[order], np.arange(len(members) + 1))
                for k in np.flatnonzero(np.diff(bounds)):
                    members[k].append(rows[order[bounds[k]:bounds[k + 1]]] + first + start)
        return [np.concatenate(m).astype(np.int64) if m else np.zeros(0, np.int64) for m in members]

    def folds(self) -> np.ndarray:
        """(num_clips,) int: each clip's cross-validation fold, -1 where none was given."""
        parts = []
        for shard, count in enumerate(self.counts):
            handle = self._open_handle(shard)
            parts.append(handle["fold"][:].astype(np.int64) if "fold" in handle else np.full(count, -1, np.int64))
        return np.concatenate(parts) if parts else np.zeros(0, np.int64)

    def groups(self) -> list[str]:
        """Each clip's group (the recording it was cut from), "" where unknown."""
        groups: list[str] = []
        for shard, count in enumerate(self.counts):
            handle = self._open_handle(shard)
            stored = handle["group"].asstr()[:] if "group" in handle else [""] * count
            groups.extend(str(g) for g in stored)
        return groups

    def close(self) -> None:
        for handle, _, _ in self._handles.values():
            handle.close()
        self._handles.clear()
        self._strong_cache.clear()

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_handles": {}, "_strong_cache": {}}
