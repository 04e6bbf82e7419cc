"""What a training run shows while it runs: the compile status, the first step's time, the progress bar and
the training lines of metrics.jsonl with their throughput.

The bar appears after the first step, so its rate and ETA leave out compilation; clips/s and the ETA leave out
the evaluations too (`exclude`). While torch.compile works through the first step, a status line counts the
seconds, so minutes of compilation are never minutes of silence.
"""
import threading
import time

from tqdm import tqdm

from train.metrics_log import MetricsLog

COMPILE_STATUS_SECONDS = 1.0
"""How often the compile status line is redrawn: often enough to show it moving, rarely enough to cost nothing."""


class CompileStatus:
    """A status line on stderr, 'compiling the model (first step): 42 s', redrawn from a thread until `close`."""

    def __init__(self, enabled: bool) -> None:
        self.bar = tqdm(desc="compiling the model (first step)", bar_format="{desc}: {elapsed}", disable=not enabled)
        self.stopped = threading.Event()
        self.thread = threading.Thread(target=self._redraw, daemon=True)
        self.thread.start()

    def _redraw(self) -> None:
        while not self.stopped.wait(COMPILE_STATUS_SECONDS):
            self.bar.refresh()

    def close(self) -> None:
        self.stopped.set()
        self.thread.join()
        self.bar.close()


class Progress:
    """The first-step line, the bar and the 'train' lines of one run, on rank 0."""

    def __init__(self, log: MetricsLog, is_main: bool, total_steps: int, log_every: int, clips_per_step: int,
                 steps_per_epoch: int, compiled: bool) -> None:
        self.log, self.is_main, self.total_steps, self.log_every = log, is_main, total_steps, log_every
        self.clips_per_step, self.steps_per_epoch, self.compiled = clips_per_step, steps_per_epoch, compiled
        self.bar = None   # made after the first step
        self.compile_status = None
        self.start_step = self.mark_step = 0
        self.mark_time = time.perf_counter()

    def say(self, text: str) -> None:
        """A line above the bar, on rank 0."""
        if self.is_main:
            tqdm.write(text)

    def start(self, step: int) -> None:
        """The loop begins at `step`: the status line runs while the first step compiles."""
        self.start_step = self.mark_step = step
        if self.compiled and step < self.total_steps:
            self.compile_status = CompileStatus(self.is_main)
        self.mark_time = time.perf_counter()

    def stepped(self, step: int) -> None:
        """After optimiser step `step`: the first-step line and the bar, or one more step on the bar."""
        if step != self.start_step + 1:
            self.bar.update(1)
            return
        first_step_s = time.perf_counter() - self.mark_time   # the first step of a process includes compilation
        if self.compile_status is not None:
            self.compile_status.close()
            self.compile_status = None
        self.log.write("first_step", step, seconds=round(first_step_s, 2), compile=self.compiled)
        self.say(f"first step: {first_step_s:.1f} s" + (" (includes compilation)" if self.compiled else ""))
        self.bar = tqdm(total=self.total_steps, initial=step, unit="step", dynamic_ncols=True,
                        disable=not self.is_main)
        self.mark_step, self.mark_time = step, time.perf_counter()

    def log_due(self, step: int) -> bool:
        """Whether `step` writes a 'train' line (every log_every steps and the last, never the first)."""
        return step > self.start_step + 1 and (step % self.log_every == 0 or step == self.total_steps)

    def write(self, step: int, loss: float, lr: float) -> None:
        """The 'train' line of metrics.jsonl and the bar's loss, clips/s and lr since the last one."""
        now = time.perf_counter()
        clips_per_s = (step - self.mark_step) * self.clips_per_step / (now - self.mark_time)
        self.log.write("train", step, epoch=round(step / self.steps_per_epoch, 3), loss=loss, lr=lr,
                       clips_per_s=round(clips_per_s, 1))
        self.bar.set_postfix(loss=f"{loss:.4f}", clips_s=f"{clips_per_s:.0f}", lr=f"{lr:.2e}")
        self.mark_step, self.mark_time = step, now

    def exclude(self, since: float) -> None:
        """Leave the time from `since` (an evaluation) out of clips/s and the bar's ETA."""
        self.mark_time += time.perf_counter() - since
        self.bar.unpause()

    def stop_at(self, step: int) -> None:
        """The run ends early, at `step` (early stopping)."""
        self.total_steps = step

    def close(self) -> None:
        """Stop the status line and close the bar (again: nothing)."""
        if self.compile_status is not None:
            self.compile_status.close()
        if self.bar is not None:
            self.bar.close()
        self.compile_status = self.bar = None
