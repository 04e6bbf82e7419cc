"""Output folders of train.pack, train.run and train.evaluate: checked before any work, owned by one run.

`ensure_writable` creates the folder and writes a probe file into it, so a read-only folder, a file
given as a folder or a missing permission is a one-line error before hours of work, not a traceback
after. `RunLock` makes one training run the owner of its folder: an exclusive `flock` on OUT/.lock,
which the kernel releases when the process ends in any way (kill -9 included), so a stale lock never
outlives its run. `describe_os_error` turns a file-system fault met later (disk full) into one line.
"""
import errno
import fcntl
import os
import tempfile
from pathlib import Path

LOCK_FILE = ".lock"
# What to do about a file-system error, by errno; {where} names the option to change.
ADVICE = {
    errno.ENOSPC: "the disk is full: free space there or choose another {where}",
    errno.EDQUOT: "the disk quota is used up: free space there or choose another {where}",
    errno.EROFS: "the file system is read-only: choose another {where}",
    errno.EACCES: "no permission to write there: choose a folder you can write to",
    errno.EPERM: "no permission to write there: choose a folder you can write to",
}


class OutFolderError(ValueError):
    """An output folder that cannot be used; the message names it and what to do."""


def describe_os_error(error: OSError, action: str, where: str = "--out") -> str:
    """One line: what failed (`action`, e.g. "write OUT/latest.pt"), the system's reason and what to do
    (`where`: the option that names the folder)."""
    advice = ADVICE.get(error.errno, "check the path and the disk, or choose another {where}")
    return f"cannot {action}: {error.strerror or error}; {advice.format(where=where)}"


def ensure_writable(folder: Path, option: str = "--out") -> Path:
    """Create `folder` if needed and check a file can be written in it; OutFolderError (one line) otherwise."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise OutFolderError(f"{option} {folder} is a file, not a folder; give a folder path (created if missing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        handle, probe = tempfile.mkstemp(dir=folder, prefix=".write-probe-")
        os.close(handle)
        os.unlink(probe)
    except OSError as error:
        raise OutFolderError(f"{option} {folder}: " + describe_os_error(error, "write into the folder")) from None
    return folder


class RunLock:
    """An exclusive lock on FOLDER/.lock for one run; a context manager (a no-op where `enabled` is false,
    i.e. on DDP ranks other than 0, which share rank 0's folder)."""

    def __init__(self, folder: Path, enabled: bool = True) -> None:
        self.path = Path(folder) / LOCK_FILE
        self.enabled = enabled
        self._fd: int | None = None

    def __enter__(self) -> "RunLock":
        if not self.enabled:
            return self
        ensure_writable(self.path.parent)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)   # not inherited by child processes (PEP 446)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.read(fd, 32).decode(errors="replace").strip() or "unknown"
            os.close(fd)
            raise OutFolderError(f"{self.path.parent} is in use by another training run (PID {owner}); wait for it "
                                 f"to end, stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing releases the flock; the file stays (removing it would race a newcomer)
            self._fd = None
