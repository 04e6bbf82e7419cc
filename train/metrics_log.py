"""Run metrics: one JSON object per line appended to OUT/metrics.jsonl, mirrored to TensorBoard if installed.

Each line is flushed as written, so a crashed or killed run keeps everything up to its last step. A
`--resume` from a checkpoint at step S first drops the records after S (the killed run's steps that
the resumed run repeats; a half-written last line too), then appends a `resume` record and goes on:
every step appears once in the file. JSON has no NaN or infinity: such a value (a diverged loss, a metric
with no class to score) is written as null, so every line parses with any JSON reader.
"""
import json
import math
import os
import time
from pathlib import Path

from train.data.out_folder import OutFolderError, describe_os_error

FILE_NAME = "metrics.jsonl"


def _finite_or_null(value):
    """`value` with every non-finite float in it (nested in dicts and lists too) replaced by None."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite_or_null(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite_or_null(item) for item in value]
    return value


def drop_after(path: Path, step: int) -> int:
    """Rewrite `path` (atomically) without the records after `step` and any unreadable line; how many went."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
            keep = record["step"] <= step
        except (ValueError, KeyError, TypeError):   # a line cut short by a kill
            keep = False
        if keep:
            kept.append(line)
        else:
            dropped += 1
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in kept))
    os.replace(tmp, path)
    return dropped


class MetricsLog:
    """Appends records {"kind": ..., "step": ..., ...}; a no-op where `enabled` is false (ranks other than 0).
    With `resume_step`, the records after that step are dropped first and a `resume` record is written."""

    def __init__(self, out: Path, enabled: bool, resume_step: int | None = None) -> None:
        self.enabled = enabled
        self.path = Path(out) / FILE_NAME
        self._file = None
        self._tensorboard = None
        if not enabled:
            return
        try:
            dropped = drop_after(self.path, resume_step) if resume_step is not None else 0
            self._file = open(self.path, "a", buffering=1)
        except OSError as error:
            raise OutFolderError(describe_os_error(error, f"write {self.path}")) from None
        if resume_step is not None:
            self.write("resume", resume_step, dropped_records=dropped)
        try:
            from torch.utils.tensorboard import SummaryWriter   # needs the optional tensorboard package
        except ImportError:
            return
        self._tensorboard = SummaryWriter(str(out / "tensorboard"))

    def write(self, kind: str, step: int, **values) -> None:
        """Append one record of `kind` (train, eval, ...) at `step`."""
        if not self.enabled:
            return
        try:
            record = _finite_or_null({"kind": kind, "step": step, "time": round(time.time(), 3), **values})
            self._file.write(json.dumps(record, allow_nan=False) + "\n")
        except OSError as error:
            raise OutFolderError(describe_os_error(error, f"append to {self.path}")) from None
        if self._tensorboard is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)) and math.isfinite(value):
                    self._tensorboard.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
