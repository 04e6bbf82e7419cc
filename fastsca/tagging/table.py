"""The results table of `fastsca.tag --table OUT.csv|OUT.tsv`: one row per tagged file, written as each file is
done, so an interrupted run keeps every finished file and the next run with the same table skips them.

Columns: file (the name it is reported under: its path relative to the folder walked, or as given),
seconds, silent, label_1, score_1, ..., label_k, score_k (the top k classes, empty for a silent file),
then, with --events, `events`: a JSON list of [onset, offset, label, score]. Each row goes to disk with
one write and an fsync. A kill can leave at most a half-written last row; the next run cuts it off and
tags that file again. A row that cannot be written (a full disk) is cut off the same way at once.

Guards. A table is recognised by its header (`file,seconds,silent,label_1,score_1,...`): an existing file
that is not one is refused with one line and left as it was (`--overwrite` replaces it), so a mistyped
--table never cuts or overwrites someone's file. Two runs on one table are locked out of each other: each
holds an exclusive lock on the hidden file `.NAME.lock` beside it while it runs (released by the system
when a run dies, so no stale lock is left to clear), and the second stops with one line. A resumed table
is repaired before anything is appended: blank lines, rows of the wrong length, rows whose numbers or
events do not read, and second rows of a file already in it are dropped (the files of dropped rows are
tagged again; one kept row per file, so no events are lost or doubled), the repaired table is written
whole (atomically) and each repair is one line in the run's report. The settings its rows were made with
(the model's weights, the window overlap, the event settings) are kept in its lock file: a run with other
settings is refused (`--overwrite` replaces the table), so a table never mixes two models' results; each
row's file's size and modification time go to the hidden `.NAME.stamps` beside it, and a resume where a file
in it has changed since is refused, so no row outlives its file. File
names that are not valid UTF-8 (a folder copied from another system) are kept byte for byte (surrogate
escapes).
"""
import csv
import io
import json
import os
from pathlib import Path

from fastsca.atomic import write_atomically
from fastsca.events import Event
from fastsca.tagging.outputs import take_lock

# Table layouts by extension: the delimiter of each.
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}
# Encoding of a table: UTF-8, with a file name's undecodable bytes kept as they are (os.fsdecode's escapes).
ENCODING, ERRORS = "utf-8", "surrogateescape"


def table_columns(top_k: int, events: bool) -> list[str]:
    """The header of a table with `top_k` labels per file, and an events column when `events`."""
    labels = [name for k in range(1, top_k + 1) for name in (f"label_{k}", f"score_{k}")]
    return ["file", "seconds", "silent", *labels] + (["events"] if events else [])


def is_tag_table_header(row: list[str]) -> bool:
    """`row` is the header of a table this module writes (any --top-k, with or without events)."""
    k = (len(row) - 3 - (row[-1:] == ["events"])) // 2
    return k >= 1 and row == table_columns(k, row[-1:] == ["events"])


def _row_problem(row: list[str], columns: list[str]) -> str | None:
    """Why a row of the table cannot be kept (None when it can)."""
    if not any(field.strip() for field in row):
        return "a blank line"
    if len(row) != len(columns):
        return f"{len(row)} fields for {len(columns)} columns (a shortened or damaged row)"
    try:
        float(row[1])
        events = json.loads(row[-1] or "[]") if columns[-1] == "events" else []
        if not all(len(e) == 4 and isinstance(e[2], str) and float(e[0]) <= float(e[1]) for e in events):
            raise ValueError
    except (ValueError, TypeError):
        return "its seconds or events do not read"
    return None


class ResultTable:
    """An append-only table of results, resumed (and repaired) if it exists, locked while open."""

    def __init__(self, path: Path, columns: list[str], overwrite: bool = False, settings: dict | None = None,
                 current_form=lambda recorded: recorded) -> None:
        """Open `path`, creating it with `columns` as its header, or resume it (see the module docstring); a
        table another run holds, a file that is not a tag table (without `overwrite`), a table of other
        columns or one whose rows were made with other `settings` (a JSON-able dict) is a one-line ValueError,
        and the file is left as it was. `current_form` maps the settings a table recorded to this version's
        form (a field added since takes its default) before they are compared."""
        self.path, self.columns = path, columns
        self.settings = json.loads(json.dumps(settings))
        self.current_form = current_form
        if path.suffix.lower() not in TABLE_DELIMITERS:
            raise ValueError(f"--table {path}: name it .csv or .tsv (the layout follows the extension)")
        self.delimiter = TABLE_DELIMITERS[path.suffix.lower()]
        self.rows: list[dict[str, str]] = []
        """The rows already in the table when it was opened (a resumed run's finished files)."""
        self.repairs: list[str] = []
        """One line per row dropped when the table was resumed."""
        self._lock = take_lock(path.with_name(f".{path.name}.lock"), f"--table {path}", "give another --table")
        self._stamps_path = path.with_name(f".{path.name}.stamps")
        self.stamps: dict[str, list] = {}
        """File name -> the stamp (fastsca.tagging.inputs.stamp) of the file its row was made from."""
        try:
            self._open(overwrite)
            self._open_stamps()
        except OSError as error:
            os.close(self._lock)
            raise ValueError(f"--table {path}: cannot write it ({error.strerror or error}); give a writable "
                             f"path") from None
        except ValueError:
            os.close(self._lock)
            raise

    def _open(self, overwrite: bool) -> None:
        """Read what is there, check it is this run's kind of table, repair it, and open it for appending."""
        text = self.path.read_bytes() if self.path.exists() else b""
        whole = text[: text.rfind(b"\n") + 1]        # a kill mid-row leaves a last line with no newline
        rows = self._parse(whole) if whole.strip() and not overwrite else None
        if text.strip() and not overwrite and rows is None:
            raise ValueError(f"--table {self.path}: exists and is not a table written by fastsca.tag; it was left "
                             f"as it is: give another --table, or add --overwrite to replace it")
        if rows is not None and rows[0] != self.columns:
            raise ValueError(f"--table {self.path}: its columns ({', '.join(rows[0][:4])}, ...) are not this run's: "
                             f"it was written with another --top-k, or with/without --events; give another --table, "
                             f"or add --overwrite to replace it")
        kept = self._repaired(rows[1:]) if rows is not None else []
        self._check_settings(bool(kept) and not overwrite)
        if rows is None or self.repairs or len(whole) < len(text):
            if len(whole) < len(text) and rows is not None:
                self.repairs.append(f"--table {self.path}: a half-written last row was cut off (that file is tagged "
                                    f"again)")
            body = b"".join(self._format(row) for row in [self.columns, *kept])
            write_atomically(self.path, lambda tmp: tmp.write_bytes(body))
        self.rows = [dict(zip(self.columns, row)) for row in kept]
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND)

    def _check_settings(self, resumed: bool) -> None:
        """Refuse rows made with other settings than this run's (the lock file's record; a table without one is
        taken as it is), then record this run's."""
        os.lseek(self._lock, 0, os.SEEK_SET)
        try:
            recorded = json.loads(os.read(self._lock, 1 << 20) or b"null")
        except ValueError:
            recorded = None
        if isinstance(recorded, dict):
            recorded = json.loads(json.dumps(self.current_form(recorded)))
        if resumed and isinstance(recorded, dict) and recorded != self.settings:
            changed = ", ".join(key for key in sorted(set(recorded) | set(self.settings or {}))
                                if recorded.get(key) != (self.settings or {}).get(key))
            raise ValueError(f"--table {self.path}: its rows were made with other settings ({changed}); they would "
                             f"be mixed with this run's: give another --table, or add --overwrite to replace it")
        os.ftruncate(self._lock, 0)
        os.pwrite(self._lock, json.dumps(self.settings).encode(), 0)

    def _open_stamps(self) -> None:
        """Read the rows' stamps (the last per file; a half-written last line is passed over), or start afresh
        for a new or replaced table; then open the file for appending."""
        if self.rows and self._stamps_path.exists():
            for line in self._stamps_path.read_text(ENCODING, ERRORS).splitlines():
                try:
                    name, file_stamp = json.loads(line)
                except ValueError:
                    continue
                self.stamps[name] = file_stamp
        mode = os.O_WRONLY | os.O_CREAT | os.O_APPEND | (0 if self.rows else os.O_TRUNC)
        self._stamps_fd = os.open(self._stamps_path, mode, 0o644)

    def changed(self, files: dict[str, list | None]) -> list[str]:
        """The names among `files` (name -> its stamp now) whose row was made from a file since changed."""
        return [name for name, now in files.items() if name in self.stamps and self.stamps[name] != now]

    def _parse(self, whole: bytes) -> list[list[str]] | None:
        """The rows of a tag table, or None when `whole` is not one (no tag table header)."""
        try:
            rows = list(csv.reader(io.StringIO(whole.decode(ENCODING, ERRORS)), delimiter=self.delimiter))
        except csv.Error:
            return None
        return rows if rows and is_tag_table_header(rows[0]) else None

    def _repaired(self, rows: list[list[str]]) -> list[list[str]]:
        """The rows that can be kept, one per file (the first); a line in `repairs` for each one dropped."""
        kept, seen = [], set()
        for number, row in enumerate(rows, start=2):
            problem = _row_problem(row, self.columns)
            if problem is None and row[0] in seen:
                problem = f"a second row for {row[0]!r} (the first is kept)"
            if problem is not None:
                self.repairs.append(f"--table {self.path}: line {number} dropped: {problem}")
                continue
            seen.add(row[0])
            kept.append(row)
        return kept

    def _format(self, values: list) -> bytes:
        line = io.StringIO()
        csv.writer(line, delimiter=self.delimiter, lineterminator="\n").writerow(values)
        return line.getvalue().encode(ENCODING, ERRORS)

    def _write(self, data: bytes) -> None:
        """Append `data` and fsync; on failure the table is cut back to its size before, then OSError is raised."""
        size = os.lseek(self._fd, 0, os.SEEK_END)
        try:
            written = 0
            while written < len(data):
                written += os.write(self._fd, data[written:])
            os.fsync(self._fd)
        except OSError:
            os.ftruncate(self._fd, size)
            raise

    def append(self, result: dict, file_stamp: list | None = None) -> None:
        """Write one file's result (fastsca.tag's JSON result: file, seconds, silent, labels, events) and the
        stamp of the file it was made from."""
        labels = [value for entry in result["labels"] for value in (entry["label"], f"{entry['probability']:.4f}")]
        labels += [""] * (len(self.columns) - 3 - len(labels) - ("events" in self.columns))
        row = [result["file"], f"{result['seconds']:.3f}", int(result["silent"]), *labels]
        if "events" in self.columns:
            row.append(json.dumps([[e["onset"], e["offset"], e["label"], e["score"]] for e in result["events"]],
                                  separators=(",", ":"), ensure_ascii=False))
        self._write(self._format(row))
        try:   # the row is kept either way: a row without a stamp is resumed unchecked, as a table of before
            os.write(self._stamps_fd, (json.dumps([result["file"], file_stamp], ensure_ascii=False) + "\n").encode(
                ENCODING, ERRORS))
        except OSError:
            pass

    def finished(self) -> set[str]:
        """The files already in the table."""
        return {row["file"] for row in self.rows}

    def events(self) -> list[Event]:
        """The events of the rows already in the table (so that a resumed run's events files hold every file)."""
        return [Event(row["file"], onset, offset, label, score) for row in self.rows
                for onset, offset, label, score in json.loads(row.get("events") or "[]")]

    def close(self) -> None:
        os.close(self._fd)
        os.close(self._stamps_fd)
        os.close(self._lock)
