"""The per-sample callable that DALI's parallel `external_source` workers run: clip i of an epoch.

Kept apart from train/data/loader.py so the spawned workers import only numpy and h5py, not torch
(spawning a worker that imports torch took 2.5 s instead of 1 s on the 2-core dev box).

DALI pickles the callable once, when the pipeline starts its workers, and calls it with a
`SampleInfo` (DALI's epoch count, index within that epoch). What to read is decided later, in the
main process (sampler epoch, resume position), so the main process writes each DALI epoch's clip
order to `<order_prefix><epoch>.npy` before that epoch starts and the workers memory-map it.
"""
import os
import signal

import numpy as np

from train.data.frame_targets import frame_targets
from train.data.parent_death import die_with_parent
from train.data.shards import ShardIndex


def order_path(order_prefix: str, dali_epoch: int) -> str:
    """The file holding the clip order of DALI epoch `dali_epoch`."""
    return f"{order_prefix}{dali_epoch}.npy"


class ClipSource:
    """source(sample_info) -> (waveform (clip_samples,) int16, target (K,) uint8), with `frames` > 0 also the frame
    targets (frames, K) uint8 and whether the clip has strong labels (1,) uint8 (train/data/frame_targets.py);
    StopIteration past the end."""

    def __init__(self, index: ShardIndex, order_prefix: str, frames: int = 0) -> None:
        self.index = index
        self.order_prefix = order_prefix
        self.frames = frames
        self._epoch = -1
        self._order = np.zeros(0, np.int64)
        self._parent_pid = os.getpid()   # the training process, which starts DALI's workers

    def __setstate__(self, state: dict) -> None:
        """Runs in each spawned worker as DALI unpickles the source. A Ctrl-C in a terminal reaches the
        whole process group; the main process handles it (checkpoint, then closing the loader stops
        the workers), so the workers ignore it rather than each printing a KeyboardInterrupt traceback.
        A kill -9 of the training process reaches no worker, so each dies with its parent instead."""
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        self.__dict__.update(state)
        if os.getpid() != self._parent_pid:
            die_with_parent(self._parent_pid)

    def __call__(self, sample_info) -> tuple[np.ndarray, ...]:
        if sample_info.epoch_idx != self._epoch:
            self._order = np.load(order_path(self.order_prefix, sample_info.epoch_idx), mmap_mode="r")
            self._epoch = sample_info.epoch_idx
        if sample_info.idx_in_epoch >= len(self._order):
            raise StopIteration        # DALI prefetches past the end; it drops the batch this falls in
        clip = int(self._order[sample_info.idx_in_epoch])
        waveform, target = self.index.read(clip)
        if not self.frames:
            return waveform, target
        events = self.index.read_events(clip)
        strong = np.array([events is not None], np.uint8)
        clip_seconds = self.index.clip_samples / self.index.sample_rate
        frame = frame_targets(events if events is not None else np.zeros((0, 3)), self.frames, clip_seconds,
                              len(target))
        return waveform, target, frame, strong
