"""AudioSet metadata readers: the label list, segment CSVs and strong-label TSVs.

Segment CSVs come in Google's layout (`#` comment lines, `, ` separators, the label list quoted:
`--PJHxphWEs, 30.000, 40.000, "/m/09x0r,/t/dd00088"`), with plain commas or with tabs; all parse the same,
as do a label list with extra columns (found by its header row) and any file `fastsca.text_files` reads
(BOM, UTF-16, gzip, Windows line ends). Strong labels are read by `fastsca.events.read_event_rows`, which
takes the layouts careless tools write (commas, semicolons, header variants, decimal commas), and cleaned:
a clip's overlapping or touching events of one class become one event.
A malformed row raises `MetadataError` naming the file and line, so a bad download is found at once
rather than as a wrong target half-way through packing.
"""
import csv
import io
from dataclasses import dataclass
from pathlib import Path

from fastsca.events import ReferenceReport, clean_events, read_event_rows
from fastsca.text_files import TextFileError, read_text


class MetadataError(ValueError):
    """A metadata file that does not parse; the message names the file, the line and the problem."""


@dataclass(frozen=True)
class LabelSet:
    """The class vocabulary: machine ids (`/m/09x0r`) and display names, in target-column order."""

    mids: tuple[str, ...]
    """Machine id of each class; position = target column."""
    names: tuple[str, ...]
    """Human-readable name of each class."""

    def __post_init__(self) -> None:
        if len(self.mids) != len(self.names):
            raise ValueError(f"{len(self.mids)} mids but {len(self.names)} names")
        if len(set(self.mids)) != len(self.mids):
            raise ValueError("label mids are not unique")

    def column(self) -> dict[str, int]:
        """mid -> target column."""
        return {mid: i for i, mid in enumerate(self.mids)}


@dataclass(frozen=True)
class Segment:
    """One row of a segment CSV: a 10 s excerpt of a YouTube video and its clip-level labels."""

    ytid: str
    """YouTube id; the packer reads the clip from `Y<ytid>.<ext>`."""
    start: float
    """Start of the excerpt in the video, seconds."""
    end: float
    """End of the excerpt in the video, seconds."""
    labels: tuple[str, ...]
    """Positive label mids."""

    @property
    def segment_id(self) -> str:
        """The strong-label TSVs' key: `<ytid>_<start in ms>`."""
        return f"{self.ytid}_{round(self.start * 1000)}"


def _rows(path: Path):
    """(line number, fields) of the non-comment, non-blank rows of a CSV file, comma- or tab-separated
    (whichever its first row holds)."""
    try:
        text = read_text(path)
    except TextFileError as error:
        raise MetadataError(str(error)) from None
    first = next((line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")), "")
    reader = csv.reader(io.StringIO(text, newline=""), delimiter="\t" if "\t" in first else ",",
                        skipinitialspace=True)
    try:
        for fields in reader:
            if fields and not fields[0].lstrip().startswith("#") and any(f.strip() for f in fields):
                yield reader.line_num, [f.strip() for f in fields]
    except csv.Error as error:
        raise MetadataError(f"{path}:{reader.line_num}: not valid CSV ({error})") from error


def read_labels(path: str | Path) -> LabelSet:
    """Read `class_labels_indices.csv` (header `index,mid,display_name`, index = 0, 1, 2, ...)."""
    path = Path(path)
    mids, names = [], []
    columns = None   # (index, mid, display_name) positions once a header row names them
    for line, fields in _rows(path):
        header = [f.lower().replace(" ", "_") for f in fields]
        if {"index", "mid", "display_name"} <= set(header):   # in any order, among other columns
            columns = tuple(header.index(name) for name in ("index", "mid", "display_name"))
            continue
        if columns is None and len(fields) != 3:
            raise MetadataError(f"{path}:{line}: expected index,mid,display_name, got {len(fields)} fields; a file "
                                f"with more columns needs the header row index,mid,display_name")
        if columns is not None and len(fields) <= max(columns):
            raise MetadataError(f"{path}:{line}: expected {max(columns) + 1} fields as the header names, "
                                f"got {len(fields)}")
        index, mid, name = (fields[i] for i in columns or (0, 1, 2))
        if index != str(len(mids)):
            repeated = f" (line {line} repeats class {mid!r})" if mid in mids else ""
            raise MetadataError(f"{path}:{line}: expected index {len(mids)}, got {index!r}{repeated}")
        mids.append(mid)
        names.append(name)
    if not mids:
        raise MetadataError(f"{path}: no labels found; is this class_labels_indices.csv?")
    try:
        return LabelSet(tuple(mids), tuple(names))
    except ValueError as error:
        raise MetadataError(f"{path}: {error}") from error


def read_segments(path: str | Path, labels: LabelSet | None = None) -> list[Segment]:
    """Read a segment CSV (YTID, start_seconds, end_seconds, positive_labels); with `labels`,
    every label mid must be in it."""
    path = Path(path)
    known = labels.column() if labels is not None else None
    segments = []
    for line, fields in _rows(path):
        if fields[0].lower() == "ytid":                          # a plain CSV's header row
            continue
        if len(fields) != 4:
            raise MetadataError(f"{path}:{line}: expected 4 fields (YTID, start, end, \"labels\"), "
                                f"got {len(fields)}; is the label list quoted?")
        ytid, start, end, label_list = fields
        try:
            start_s, end_s = float(start), float(end)
        except ValueError:
            raise MetadataError(f"{path}:{line}: start/end {start!r}, {end!r} are not numbers") from None
        mids = tuple(m.strip() for m in label_list.split(",") if m.strip())
        if not ytid or not mids:
            raise MetadataError(f"{path}:{line}: empty YTID or label list")
        if end_s <= start_s:
            raise MetadataError(f"{path}:{line}: end {end_s} is not after start {start_s}")
        if known is not None:
            unknown = [m for m in mids if m not in known]
            if unknown:
                raise MetadataError(f"{path}:{line}: label {unknown[0]!r} is not in the label list")
        segments.append(Segment(ytid, start_s, end_s, mids))
    return segments


def read_strong(path: str | Path, clip_seconds: float | None = None,
                report: ReferenceReport | None = None) -> dict[str, list[tuple[float, float, str]]]:
    """Read an AudioSet strong-label TSV (segment_id, start_time_seconds, end_time_seconds, label; any layout
    `fastsca.events.read_event_rows` reads) into segment_id -> [(onset, offset, mid), ...], each clip's events
    cut to [0, clip_seconds], empty ones dropped and overlapping or touching events of one label merged
    (`fastsca.events.clean_events`; `report` counts the changes)."""
    try:
        rows = read_event_rows(path)
    except ValueError as error:   # TextFileError too
        raise MetadataError(str(error)) from None
    events: dict[str, list[tuple[float, float, str]]] = {}
    for row in rows:
        events.setdefault(row.clip, []).append((row.onset, row.offset, row.label))
    cleaned = {clip: clean_events(clip_events, clip_seconds, report) for clip, clip_events in events.items()}
    return {clip: clip_events for clip, clip_events in cleaned.items() if clip_events}
