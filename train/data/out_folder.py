"""Output folders of train.pack, train.convert, train.run and train.evaluate: checked before any work, owned
by one run, never mixed with another run's results.

`ensure_writable` creates the folder and writes a probe file into it, so a read-only folder, a file
given as a folder or a missing permission is a one-line error before hours of work, not a traceback
after. `RunLock` makes one run the owner of its folder: an exclusive `flock` on OUT/.lock, which the
kernel releases when the process ends in any way (kill -9 included), so a stale lock never outlives its
run. `check_plan` keeps a resumable folder to the inputs and settings that started it (its plan file):
another plan is refused, or with `overwrite` the folder's own outputs are removed first.
`describe_os_error` turns a file-system fault met later (disk full) into one line.
"""
import errno
import fcntl
import json
import os
import tempfile
from pathlib import Path

LOCK_FILE = ".lock"
# What a resumable folder holds besides its plan: the files `check_plan(..., overwrite=True)` removes.
OUTPUT_PATTERNS = ("shard_*.h5", "shard_*.h5.tmp", "index.json", "*_report.csv")
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


def outputs(folder: Path) -> list[Path]:
    """The shards, index and report files in `folder` (what a packing or converting run writes)."""
    return sorted(p for pattern in OUTPUT_PATTERNS for p in Path(folder).glob(pattern))


def remove_outputs(folder: Path) -> None:
    """Remove `outputs(folder)`; the folder and anything else in it stay."""
    for old in outputs(folder):
        old.unlink()


def check_inputs_apart(out: Path, inputs: list[tuple[str, Path]]) -> None:
    """Refuse (OutFolderError, one line) an input, given as (option, path), that is a file this run writes into
    OUT (a shard, the index, the report or the plan): the run would overwrite what it reads."""
    folder = Path(out).resolve()
    for option, path in inputs:
        real = Path(path).resolve()
        if real.parent == folder and any(real.match(p) for p in (*OUTPUT_PATTERNS, "*_plan.json")):
            raise OutFolderError(f"{option} {path} is a file this command writes in --out {out}; move it or choose "
                                 f"another --out")


def read_plan(path: Path) -> dict | None:
    """A plan file's contents (None where it is missing or not a JSON object: damaged, or not a plan)."""
    try:
        plan = json.loads(path.read_text())
    except (OSError, ValueError):   # json's JSONDecodeError and UnicodeDecodeError are ValueErrors
        return None
    return plan if isinstance(plan, dict) else None


def check_plan(out: Path, plan_file: str, plan: dict, overwrite: bool = False) -> None:
    """Keep OUT to one plan (the inputs and settings a resumed run must share with the run that started it),
    written to OUT/plan_file on first use. A folder started with another plan, or holding shards without a
    plan, is refused (OutFolderError, one line); with `overwrite`, its shards, index and report are removed
    and the new plan written."""
    path = Path(out) / plan_file
    if path.exists() and read_plan(path) == plan:
        return
    if (path.exists() or outputs(out)) and not overwrite:
        why = "other inputs or settings" if path.exists() else f"another command (no {plan_file})"
        raise OutFolderError(f"{out} holds shards made from {why}; use a new --out folder, or --overwrite to "
                             f"replace them")
    remove_outputs(out)
    tmp = path.with_name(plan_file + ".tmp")
    tmp.write_text(json.dumps(plan, indent=1))
    os.replace(tmp, path)


class RunLock:
    """An exclusive lock on FOLDER/.lock for one run of `what` (e.g. "training run"); a context manager (a
    no-op where `enabled` is false, i.e. on DDP ranks other than 0, which share rank 0's folder)."""

    def __init__(self, folder: Path, enabled: bool = True, what: str = "training run") -> None:
        self.path = Path(folder) / LOCK_FILE
        self.enabled = enabled
        self.what = what
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
            raise OutFolderError(f"{self.path.parent} is in use by another {self.what} (PID {owner}); wait for it "
                                 f"to end, stop it, or choose another --out") from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._fd = fd
        return self

    def __exit__(self, *exc) -> None:
        if self._fd is not None:
            os.close(self._fd)   # closing releases the flock; the file stays (removing it would race a newcomer)
            self._fd = None
