"""The results table of `fastsca.tag --table OUT.csv|OUT.tsv`: one row per tagged file, written as each file is
done, so an interrupted run keeps every finished file and the next run with the same table skips them.

Columns: file (the name it is reported under: its path relative to the folder walked, or as given),
seconds, silent, label_1, score_1, ..., label_k, score_k (the top k classes, empty for a silent file),
then, with --events, `events`: a JSON list of [onset, offset, label, score]. Each row goes to disk with
one write and an fsync. A kill can leave at most a half-written last row; the next run cuts it off and
tags that file again. A row that cannot be written (a full disk) is cut off the same way at once.
"""
import csv
import io
import json
import os
from pathlib import Path

from fastsca.events import Event

# Table layouts by extension: the delimiter of each.
TABLE_DELIMITERS = {".csv": ",", ".tsv": "\t"}


def table_columns(top_k: int, events: bool) -> list[str]:
    """The header of a table with `top_k` labels per file, and an events column when `events`."""
    labels = [name for k in range(1, top_k + 1) for name in (f"label_{k}", f"score_{k}")]
    return ["file", "seconds", "silent", *labels] + (["events"] if events else [])


class ResultTable:
    """An append-only table of results, resumed if it exists."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        """Open `path`, creating it with `columns` as its header, or resume it: a half-written last row is cut
        off, and a header other than `columns` is a one-line ValueError."""
        self.path, self.columns = path, columns
        if path.suffix.lower() not in TABLE_DELIMITERS:
            raise ValueError(f"--table {path}: name it .csv or .tsv (the layout follows the extension)")
        self.delimiter = TABLE_DELIMITERS[path.suffix.lower()]
        self.rows: list[dict[str, str]] = []
        """The rows already in the table when it was opened (a resumed run's finished files)."""
        try:
            self._fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
            self._resume()
        except OSError as error:
            raise ValueError(f"--table {path}: cannot write it ({error.strerror or error}); give a writable "
                             f"path") from None

    def _resume(self) -> None:
        """Read the rows already there, cut off a half-written last one, or write the header to an empty table."""
        text = b""
        while chunk := os.read(self._fd, 1 << 20):
            text += chunk
        whole = text[: text.rfind(b"\n") + 1]        # a kill mid-row leaves a last line with no newline
        if len(whole) < len(text):
            os.ftruncate(self._fd, len(whole))
        if not whole:
            self._write(self._format(self.columns))
            return
        try:
            rows = list(csv.reader(io.StringIO(whole.decode("utf-8")), delimiter=self.delimiter))
        except (UnicodeDecodeError, csv.Error):
            raise ValueError(f"--table {self.path}: exists and is not a table written by fastsca.tag; give "
                             f"another --table") from None
        if rows[0] != self.columns:
            raise ValueError(f"--table {self.path}: its columns ({', '.join(rows[0][:4])}, ...) are not this run's: "
                             f"it was written with another --top-k, or with/without --events; give another --table")
        self.rows = [dict(zip(self.columns, row)) for row in rows[1:]]

    def _format(self, values: list) -> bytes:
        line = io.StringIO()
        csv.writer(line, delimiter=self.delimiter, lineterminator="\n").writerow(values)
        return line.getvalue().encode("utf-8")

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

    def append(self, result: dict) -> None:
        """Write one file's result (fastsca.tag's JSON result: file, seconds, silent, labels, events)."""
        labels = [value for entry in result["labels"] for value in (entry["label"], f"{entry['probability']:.4f}")]
        labels += [""] * (len(self.columns) - 3 - len(labels) - ("events" in self.columns))
        row = [result["file"], f"{result['seconds']:.3f}", int(result["silent"]), *labels]
        if "events" in self.columns:
            row.append(json.dumps([[e["onset"], e["offset"], e["label"], e["score"]] for e in result["events"]],
                                  separators=(",", ":"), ensure_ascii=False))
        self._write(self._format(row))

    def finished(self) -> set[str]:
        """The files already in the table."""
        return {row["file"] for row in self.rows}

    def events(self) -> list[Event]:
        """The events of the rows already in the table (so that a resumed run's events files hold every file)."""
        return [Event(row["file"], onset, offset, label, score) for row in self.rows
                for onset, offset, label, score in json.loads(row.get("events") or "[]")]

    def close(self) -> None:
        os.close(self._fd)
