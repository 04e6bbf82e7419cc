"""Run metrics: one JSON object per line appended to OUT/metrics.jsonl, mirrored to TensorBoard if installed.

Each line is flushed as written, so a crashed or killed run keeps everything up to its last step and
`--resume` appends to the same file.
"""
import json
import time
from pathlib import Path


class MetricsLog:
    """Appends records {"kind": ..., "step": ..., ...}; a no-op where `enabled` is false (ranks other than 0)."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.enabled = enabled
        self._file = None
        self._tensorboard = None
        if not enabled:
            return
        self._file = open(out / "metrics.jsonl", "a", buffering=1)
        try:
            from torch.utils.tensorboard import SummaryWriter   # needs the optional tensorboard package
        except ImportError:
            return
        self._tensorboard = SummaryWriter(str(out / "tensorboard"))

    def write(self, kind: str, step: int, **values) -> None:
        """Append one record of `kind` (train, eval, ...) at `step`."""
        if not self.enabled:
            return
        self._file.write(json.dumps({"kind": kind, "step": step, "time": round(time.time(), 3), **values}) + "\n")
        if self._tensorboard is not None:
            for name, value in values.items():
                if isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(f"{kind}/{name}", value, step)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
        if self._tensorboard is not None:
            self._tensorboard.close()
