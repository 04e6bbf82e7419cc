"""Ctrl-C and SIGTERM ask the training loop to stop after its current step, which then writes a checkpoint.

The process then exits with 128 + the signal's number (130 for SIGINT, 143 for SIGTERM), as a shell
reports a process killed by that signal, so a scheduler can tell a stopped run from a finished one.
A second Ctrl-C while the checkpoint is written interrupts at once (the previous latest.pt stays whole,
as checkpoints are renamed into place).
"""
import signal


class StopRequest:
    """A flag set by SIGINT/SIGTERM; a context manager that installs the handlers and restores the old ones."""

    def __init__(self) -> None:
        self.requested = False
        self.signal_name: str | None = None
        self.signum: int | None = None
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, frame) -> None:
        if self.requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.requested = True
        self.signum = signum
        self.signal_name = signal.Signals(signum).name

    @property
    def exit_code(self) -> int:
        """128 + the signal's number; SIGTERM's where the signal came to another DDP rank (torchrun sends it)."""
        return 128 + (self.signum or signal.SIGTERM)

    def __enter__(self) -> "StopRequest":
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
