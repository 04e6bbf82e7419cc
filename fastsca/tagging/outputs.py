"""Where `fastsca.tag` writes: the figures' names, checked folders, the locks that keep two runs from writing the
same files, the record of the files a run wrote (so a file it did not write is never replaced), and a standard
output that a closed pipe silences instead of ending the run."""
import fcntl
import json
import os
import sys
import tempfile
from pathlib import Path

from tqdm import tqdm

# Figure formats matplotlib writes without extra packages.
PLOT_FORMATS = (".png", ".pdf", ".svg")


def _figure_stem(name: str) -> str:
    """A file's figure name without extension: its path when it is relative and stays inside (a folder walk's
    "sub/a.wav" -> "sub/a", so same-named files in different folders do not collide), else its stem."""
    path = Path(name)
    return path.with_suffix("").as_posix() if not path.is_absolute() and ".." not in path.parts else path.stem


def is_folder(plot: str | Path) -> bool:
    """--plot names a folder: an existing one, or a path ending in a slash (kept: --plot is read as text, since
    pathlib drops a trailing slash)."""
    return Path(plot).is_dir() or str(plot).endswith(os.sep)


def plot_destinations(plot: str | Path, files: list[str]) -> list[Path]:
    """Where each file's figure goes: a folder -> FOLDER/<name>.png, mirroring the subfolders of relative
    names; a name without an extension gets .png; with several files, NAME-<name>.EXT (subfolders joined
    by "-"). Names that would still collide get -2, -3, ... so no figure of this run overwrites another. An
    extension matplotlib cannot write is a ValueError."""
    folder_given, plot = is_folder(plot), Path(plot)
    if folder_given:
        folder, stem, suffix, prefix = plot, "", ".png", False
    else:
        suffix = plot.suffix.lower() or ".png"
        if suffix not in PLOT_FORMATS:
            raise ValueError(f"--plot {plot}: cannot write {plot.suffix!r} figures; use {', '.join(PLOT_FORMATS)} "
                             f"or a folder")
        folder, stem, prefix = plot.parent, plot.stem if plot.suffix else plot.name, len(files) > 1
        suffix = plot.suffix or ".png"
    paths, taken = [], set()
    for file in files:
        base = (f"{stem}-{_figure_stem(file).replace('/', '-')}" if prefix else stem) if stem else _figure_stem(file)
        name, count = f"{base}{suffix}", 1
        while name in taken:
            count += 1
            name = f"{base}-{count}{suffix}"
        taken.add(name)
        paths.append(folder / name)
    return paths


def check_writable_folder(folder: Path, option: str) -> None:
    """Create `folder` if needed and check a file can be written in it; ValueError (one line) otherwise."""
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"{option} {folder}: is a file, not a folder; give a folder")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as error:
        raise ValueError(f"{option} {folder}: cannot write there ({error.strerror or error}); give a writable "
                         f"folder") from None


def take_lock(lock_path: Path, what: str, advice: str) -> int:
    """An exclusive lock on `lock_path` (created if needed), held until the returned descriptor is closed or the
    process ends, so no stale lock is ever left; ValueError (one line) when another run holds it."""
    try:
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as error:
        raise ValueError(f"{what}: cannot write beside it ({error.strerror or error}); give a writable path") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ValueError(f"{what}: another fastsca.tag run is writing it (locked: {lock_path}); wait for that run "
                         f"to finish, or {advice}") from None
    return fd


# Stored in each figure's metadata (PNG text chunk, PDF and SVG creator): a figure holding it is one fastsca.tag drew.
FIGURE_CREATOR = "fastsca.tag"


def _stamp(path: Path) -> list[int]:
    """A written file's size and modification time: what tells it from a file put there since."""
    status = path.stat()
    return [status.st_size, status.st_mtime_ns]


def _ledger(lock_fd: int) -> dict:
    """The files fastsca.tag wrote in the output folder (name -> stamp), kept in the folder's lock file."""
    os.lseek(lock_fd, 0, os.SEEK_SET)
    try:
        ledger = json.loads(os.read(lock_fd, 1 << 20) or b"{}")
    except ValueError:
        return {}
    return ledger if isinstance(ledger, dict) else {}


def check_own_files(folder: Path, names: tuple[str, ...], lock_fd: int, option: str, overwrite: bool) -> None:
    """ValueError (one line) for a file of `names` in `folder` that fastsca.tag did not write there (or that was
    changed since), unless `overwrite`: the run would replace it."""
    ledger = _ledger(lock_fd)
    for name in names:
        path = folder / name
        if path.exists() and not overwrite and ledger.get(name) != _stamp(path):
            raise ValueError(f"{option} {folder}: its {name} was not written by fastsca.tag (or was changed since); "
                             f"it was left as it is: give another --out, or add --overwrite to replace it")


def record_own_files(folder: Path, names: tuple[str, ...], lock_fd: int) -> None:
    """Record the files of `names` now in `folder` as written by this run (kept with the earlier records)."""
    ledger = _ledger(lock_fd)
    ledger.update({name: _stamp(folder / name) for name in names if (folder / name).is_file()})
    os.ftruncate(lock_fd, 0)
    os.pwrite(lock_fd, json.dumps(ledger).encode(), 0)


def check_figure(path: Path, overwrite: bool) -> None:
    """ValueError (one line) for an existing figure that fastsca.tag did not draw, unless `overwrite`."""
    if path.exists() and not overwrite and (path.is_dir() or FIGURE_CREATOR.encode() not in path.read_bytes()):
        raise ValueError(f"--plot {path}: exists and was not drawn by fastsca.tag; it was left as it is: give "
                         f"another --plot, or add --overwrite to replace it")


class Console:
    """Standard output that a closed pipe (`... | head -n 1`) silences instead of ending the run with a traceback:
    printing stops quietly, as Unix tools do, and the files asked for (--table, --events, --plot) are
    still written; with none asked for, `closed` tells the run to stop."""

    def __init__(self) -> None:
        self.closed = False

    def print(self, text: str) -> None:
        if self.closed:
            return
        encoding = sys.stdout.encoding or "utf-8"   # a file name's undecodable bytes are shown escaped
        text = text.encode(encoding, "backslashreplace").decode(encoding)
        try:
            tqdm.write(text, file=sys.stdout)   # clears the progress bars on stderr first, then redraws them
            sys.stdout.flush()
        except BrokenPipeError:
            self.closed = True
            try:   # so that the interpreter's flush at exit does not meet the closed pipe again
                os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            except (OSError, ValueError):
                sys.stdout = open(os.devnull, "w")
