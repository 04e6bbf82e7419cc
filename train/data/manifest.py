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
  recording, source, src_file) and start/end (seconds in the file, honoured as segments: train/data/segments.py).

A row's file is looked up as a path under the audio folder, then by its name anywhere below it, then
(with no extension given) by its stem; a name or stem met in two folders is ambiguous (the row is
skipped, never taken from one folder). Rows of one file however spelt are merged (`merge_duplicates`); a
split must be a plain folder name. Class folders leave out hidden and system folders and files, and
linked folders that lead back to the root or into another class. Files are read with fastsca.text_files
(any encoding with a BOM, gzip/bzip2/xz). A malformed row is a one-line MetadataError naming the file and
line.
"""
import csv
import os
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from fastsca.text_files import TextFileError, open_text
from train.data.csv_meta import LabelSet, MetadataError, read_labels

AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg", ".mp3", ".aif", ".aiff")   # preference order for a bare stem
FILE_COLUMNS = ("file", "filename", "path", "fname")
LABEL_COLUMNS = ("labels", "label", "class", "category")
GROUP_COLUMNS = ("group", "recording", "source", "src_file")
# A split is a folder of --out: one plain name, so no value (`../x`, `/x`, `a/b`) writes outside it.
SPLIT_NAME = re.compile(r"\w[\w.-]*")


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
    where: str = field(default="", compare=False)
    """The manifest row it comes from (`FILE:LINE`), for messages; "" for class folders."""


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
    """The audio files under a folder, found by relative path, by name or by stem: a name or stem met in two
    folders is ambiguous, never taken from one of them."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.by_name: dict[str, list[Path]] = {}
        self.by_stem: dict[str, list[Path]] = {}
        for path in sorted(walk_files(root)):
            if path.suffix.lower() in AUDIO_EXTENSIONS:
                self.by_name.setdefault(path.name, []).append(path)
                self.by_stem.setdefault(path.stem, []).append(path)

    def locate(self, name: str) -> tuple[Path | None, str]:
        """(the file a manifest's `name` means, "") or (None, why not: missing or ambiguous)."""
        direct = self.root / name
        if direct.is_file():
            return direct, ""
        base = Path(name).name
        found = self.by_name.get(base) or self.by_stem.get(base) or []
        if len({path.parent for path in found}) > 1:
            places = ", ".join(str(path.relative_to(self.root)) for path in found[:3])
            return None, (f"ambiguous: {name!r} is found in {len(found)} places under --audio-dir ({places}); "
                          f"give its path relative to --audio-dir")
        if not found:
            return None, f"missing: no file {name!r} under --audio-dir"
        return min(found, key=lambda path: AUDIO_EXTENSIONS.index(path.suffix.lower())), ""


def is_hidden(name: str) -> bool:
    """A hidden or system folder or file (`.x`, macOS's `__MACOSX` and `._x` copies): never data."""
    return name.startswith(".") or name == "__MACOSX"


def walk_files(root: Path, skip_real: frozenset[str] = frozenset(), skipped: list[Path] | None = None):
    """Every file under `root`, following symlinked folders: each real folder once (so a link loop ends),
    none whose real path is in `skip_real` (those met are appended to `skipped`)."""
    seen = set()
    for folder, dirs, files in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen or real in skip_real:
            if real in skip_real and skipped is not None:
                skipped.append(Path(folder))
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
        split = layout.fixed_split or (field[layout.split] if layout.split else "")
        if split and not SPLIT_NAME.fullmatch(split):
            raise MetadataError(f"{path}:{line}: split {split!r} is not a folder name (letters, digits, '-', '_', "
                                f"'.'; not starting with '.'): rows are packed into --out/<split>; rename it")
        found, problem = files.locate(field[layout.file])
        items.append(PackItem(
            name=os.path.normpath(field[layout.file]), path=str(found) if found else None, labels=tuple(keys),
            fold=fold, group=field[layout.group] if layout.group else "", split=split, start=start, end=end,
            problem=problem, where=f"{path}:{line}"))
    return items, names, layout.name


def merge_duplicates(items: list[PackItem]) -> tuple[list[PackItem], list[tuple[str, str]]]:
    """One item per file and segment, however the rows spell the file (`x`, `x.wav`, `./x.wav`, a link), and
    the report rows of the others: a row with the same labels is a duplicate, one with other labels is merged
    into the first (a clip with all their labels). Rows of one file in other folds, splits or groups are a
    MetadataError naming both: the clip would be on both sides of a test split."""
    first: dict[tuple, int] = {}
    kept, report = [], []
    for item in items:
        key = (os.path.realpath(item.path) if item.path else item.name, item.start, item.end)
        if key not in first:
            first[key] = len(kept)
            kept.append(item)
            continue
        earlier = kept[first[key]]
        here, there = item.where or item.name, earlier.where or earlier.name
        if (earlier.fold, earlier.split, earlier.group) != (item.fold, item.split, item.group):
            raise MetadataError(f"{here}: {item.name!r} is the file of {there} again, in another fold, split or "
                                f"group; list each file once")
        added = tuple(k for k in item.labels if k not in earlier.labels)
        if added:
            kept[first[key]] = replace(earlier, labels=earlier.labels + added)
            report.append((item.name, f"merged: labels {', '.join(added)} of {here} added to {there} (the same file)"))
        else:
            report.append((item.name, f"duplicate: {here} names the same file as {there}"))
    return kept, report


def read_folder(root: Path) -> tuple[list[PackItem], list[tuple[str, str]]]:
    """One item per audio file of each class subfolder (any depth below it) of `root`, and what was left out
    as (path under root, pack_report.csv reason): hidden folders and files (`.x`, `__MACOSX`), and linked folders
    that lead back to `root` or into another class's folder (whose files would be packed under the wrong class)."""
    folders = sorted(p for p in root.iterdir() if p.is_dir())
    classes = [folder for folder in folders if not is_hidden(folder.name)]
    left_out = [(folder.name, "hidden: a hidden or system folder, not a class")
                for folder in folders if is_hidden(folder.name)]
    if not classes:
        raise MetadataError(f"--audio-dir {root}: no class subfolders; put each class's files in a folder named "
                            f"after it, or give a --manifest CSV")
    reals = {folder: os.path.realpath(folder) for folder in classes}
    items = []
    for folder in classes:
        others = frozenset(real for other, real in reals.items() if other != folder) | {os.path.realpath(root)}
        links: list[Path] = []
        for path in sorted(walk_files(folder, others, links)):
            relative = path.relative_to(root)
            if any(is_hidden(part) for part in relative.parts[1:]):
                left_out.append((str(relative), "hidden: a hidden or system file (or in such a folder)"))
            elif path.suffix.lower() in AUDIO_EXTENSIONS:
                items.append(PackItem(str(relative), str(path), (folder.name,)))
        left_out += [(str(link.relative_to(root)), "linked: a linked folder that leads to another class's folder or "
                                                   "back to --audio-dir; its files are left out") for link in links]
    return items, left_out


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
