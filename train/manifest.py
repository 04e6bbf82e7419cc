"""Own data without AudioSet ids: a folder of class subfolders, or a CSV manifest, as items for the packer.

Manifest layouts are recognised from the header row (docs/data.md has the details):

- ESC-50 `meta/esc50.csv` (filename,fold,target,category,esc10,src_file,take): label = category,
  fold = fold, group = src_file;
- UrbanSound8K `metadata/UrbanSound8K.csv` (slice_file_name,fsID,start,end,salience,fold,classID,class):
  label = class, fold = fold, group = fsID; start/end are ignored: they locate the slice in the freesound
  recording, and the slice files are already cut from it;
- FSD50K `dev.csv` (fname,labels,mids,split) and `eval.csv` (fname,labels,mids): labels = the mids (so a
  `--labels class_labels_indices.csv` maps them onto AudioSet's columns), their names from `labels`;
  split = split (train/val), "eval" for eval.csv; fname is matched with any audio extension;
- generic: a file column (file, filename, path or fname) and a label column (label, labels, class or
  category; several labels comma-separated in one quoted field), optional fold, split, group (or
  recording, source, src_file) and start/end (seconds in the file, honoured as segments: train/segments.py).

A row's file is looked up as a path under the audio folder, then by its name anywhere below it, then
(with no extension given) by its stem. Files are read with fastsca.text_files (any encoding with a BOM,
gzip/bzip2/xz). A malformed row is a one-line MetadataError naming the file and line.
"""
import csv
import os
from dataclasses import dataclass
from pathlib import Path

from fastsca.text_files import TextFileError, open_text
from train.csv_meta import LabelSet, MetadataError, read_labels

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")   # preference order for a bare stem
FILE_COLUMNS = ("file", "filename", "path", "fname")
LABEL_COLUMNS = ("labels", "label", "class", "category")
GROUP_COLUMNS = ("group", "recording", "source", "src_file")


@dataclass(frozen=True)
class PackItem:
    """One row to pack: its file, labels and where it belongs."""

    name: str
    """Stored as the clip's audio_name (a window adds #k) and listed in pack_report.csv."""
    path: str | None
    """The audio file; None when it was not found."""
    labels: tuple[str, ...]
    """Label keys: AudioSet mids, or the manifest's class names."""
    fold: int = -1
    """Cross-validation fold (-1: none)."""
    group: str = ""
    """The recording it comes from ("": unknown)."""
    split: str = ""
    """Split it is packed into (OUT/<split>/; "": OUT itself)."""
    start: float | None = None
    """Segment start in the file, seconds (None: the whole file)."""
    end: float | None = None
    """Segment end in the file, seconds."""
    segment_id: str = ""
    """Key of its strong labels (AudioSet's <YTID>_<start ms>)."""
    problem: str = ""
    """Why it cannot be packed (reported as its skip reason), "" when it can."""


@dataclass(frozen=True)
class Layout:
    """How one manifest layout's columns map onto PackItem fields."""

    name: str
    file: str
    labels: str
    label_names: str = ""
    fold: str = ""
    group: str = ""
    split: str = ""
    start: str = ""
    end: str = ""
    fixed_split: str = ""


KNOWN_LAYOUTS = (
    ({"filename", "fold", "target", "category", "esc10", "src_file", "take"},
     Layout("ESC-50", "filename", "category", fold="fold", group="src_file")),
    ({"slice_file_name", "fsid", "start", "end", "salience", "fold", "classid", "class"},
     Layout("UrbanSound8K", "slice_file_name", "class", fold="fold", group="fsid")),
    ({"fname", "labels", "mids", "split"}, Layout("FSD50K dev", "fname", "mids", "labels", split="split")),
    ({"fname", "labels", "mids"}, Layout("FSD50K eval", "fname", "mids", "labels", fixed_split="eval")),
)


def detect_layout(header: list[str], path: Path) -> Layout:
    """The layout of a manifest with this header row (lower-cased names)."""
    for columns, layout in KNOWN_LAYOUTS:
        if columns <= set(header):
            return layout
    file = next((c for c in FILE_COLUMNS if c in header), "")
    labels = next((c for c in LABEL_COLUMNS if c in header), "")
    if not file or not labels:
        audioset = header[0].startswith("#") or header[0] == "ytid" or len(header) == 4 and header[1][:1].isdigit()
        raise MetadataError(f"{path}:1: header {','.join(header)!r} names no file column ({'/'.join(FILE_COLUMNS)}) "
                            f"or no label column ({'/'.join(LABEL_COLUMNS)}); "
                            + ("an AudioSet segment CSV goes to --csv" if audioset else
                               "see docs/data.md for the layouts read"))
    return Layout("generic", file, labels, fold="fold" if "fold" in header else "",
                  group=next((c for c in GROUP_COLUMNS if c in header), ""), split="split" if "split" in header else "",
                  start="start" if "start" in header else "", end="end" if "end" in header else "")


class AudioFiles:
    """The audio files under a folder, found by relative path, by name or by stem."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_name: dict[str, Path] = {}
        self.by_stem: dict[str, Path] = {}
        for path in sorted(walk_files(root)):
            suffix = path.suffix.lower()
            if suffix in AUDIO_EXTENSIONS:
                self.by_name.setdefault(path.name, path)
                known = self.by_stem.get(path.stem)
                if known is None or AUDIO_EXTENSIONS.index(suffix) < AUDIO_EXTENSIONS.index(known.suffix.lower()):
                    self.by_stem[path.stem] = path

    def find(self, name: str) -> Path | None:
        direct = self.root / name
        if direct.is_file():
            return direct
        return self.by_name.get(Path(name).name) or self.by_stem.get(Path(name).name)


def walk_files(root: Path):
    """Every file under `root`, following symlinked folders (each real folder once, so a link loop ends)."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            dirs[:] = []
            continue
        seen.add(real)
        for name in files:
            yield Path(folder) / name


def _number(value: str, path: Path, line: int, column: str, kind=float):
    try:
        number = kind(value)
    except ValueError:
        raise MetadataError(f"{path}:{line}: {column} {value!r} is not a{'n integer' if kind is int else ' number'}") \
            from None
    if kind is float and not (number == number and abs(number) != float("inf")):
        raise MetadataError(f"{path}:{line}: {column} {value!r} is not a finite number")
    return number


def read_manifest(path: Path, files: AudioFiles) -> tuple[list[PackItem], dict[str, str], str]:
    """Items of a manifest CSV, label key -> display name, and the layout's name."""
    try:
        handle = open_text(path, "--manifest")
    except TextFileError as error:
        raise MetadataError(str(error)) from None
    reader = csv.reader(handle)
    try:
        rows = [(reader.line_num, row) for row in reader]
    except csv.Error as error:
        raise MetadataError(f"{path}:{reader.line_num}: not valid CSV ({error})") from None
    rows = [(line, [f.strip() for f in row]) for line, row in rows if any(f.strip() for f in row)]
    if not rows:
        raise MetadataError(f"{path}: empty; a manifest needs a header row and one row per file (docs/data.md)")
    header = [name.lower() for name in rows[0][1]]
    layout = detect_layout(header, path)
    column = {name: i for i, name in enumerate(header)}
    items, names = [], {}
    for line, row in rows[1:]:
        if len(row) != len(header):
            raise MetadataError(f"{path}:{line}: {len(row)} fields, the header has {len(header)}; "
                                f"is a field with commas unquoted?")
        field = {name: row[i] for name, i in column.items()}
        keys = [k.strip() for k in field[layout.labels].split(",") if k.strip()]
        shown = [k.strip() for k in field[layout.label_names].split(",")] if layout.label_names else keys
        if not field[layout.file] or not keys:
            raise MetadataError(f"{path}:{line}: empty file name or label")
        if len(shown) != len(keys):
            raise MetadataError(f"{path}:{line}: {len(keys)} {layout.labels} but {len(shown)} {layout.label_names}")
        names.update(zip(keys, shown))
        start = _number(field[layout.start], path, line, "start") if layout.start and field[layout.start] else None
        end = _number(field[layout.end], path, line, "end") if layout.end and field[layout.end] else None
        if (start is None) != (end is None) or (start is not None and not 0 <= start < end):
            raise MetadataError(f"{path}:{line}: start/end {start}, {end}: give both, 0 <= start < end, or neither")
        fold = _number(field[layout.fold], path, line, "fold", int) if layout.fold and field[layout.fold] else -1
        if not -1 <= fold <= 32767:
            raise MetadataError(f"{path}:{line}: fold {fold} is outside 0..32767")
        found = files.find(field[layout.file])
        items.append(PackItem(
            name=field[layout.file], path=str(found) if found else None, labels=tuple(keys), fold=fold,
            group=field[layout.group] if layout.group else "",
            split=layout.fixed_split or (field[layout.split] if layout.split else ""), start=start, end=end,
            problem="" if found else f"missing: no file {field[layout.file]!r} under --audio-dir"))
    return items, names, layout.name


def read_folder(root: Path, files: AudioFiles) -> list[PackItem]:
    """One item per audio file of each class subfolder (any depth below it) of `root`."""
    classes = sorted(p for p in root.iterdir() if p.is_dir())
    if not classes:
        raise MetadataError(f"--audio-dir {root}: no class subfolders; put each class's files in a folder named "
                            f"after it, or give a --manifest CSV")
    items = []
    for folder in classes:
        for path in sorted(walk_files(folder)):
            if path.suffix.lower() in AUDIO_EXTENSIONS:
                items.append(PackItem(str(path.relative_to(root)), str(path), (folder.name,)))
    return items


def read_class_list(path: Path) -> LabelSet:
    """A class list for own data: AudioSet's class_labels_indices.csv (keys = mids) or one class name a line."""
    try:
        lines = [line.strip() for line in open_text(path, "--labels").read().splitlines()]
    except TextFileError as error:
        raise MetadataError(str(error)) from None
    lines = [line for line in lines if line and not line.startswith("#")]
    if lines and lines[0].replace(" ", "") == "index,mid,display_name":
        return read_labels(path)
    if not lines or len(set(lines)) != len(lines):
        raise MetadataError(f"--labels {path}: expected one distinct class name a line (or class_labels_indices.csv)")
    return LabelSet(tuple(lines), tuple(lines))
