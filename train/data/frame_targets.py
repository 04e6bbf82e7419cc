"""Frame targets from strong labels: a clip's events as a (T', K) 0/1 matrix at the model's frame rate.

Frame t covers [t, t + 1) x frame_seconds, as `fastsca.events` reads the model's frame outputs. A frame is a
target of class k when its centre lies inside one of the clip's events of k; an event that holds no frame's
centre (shorter than a frame) marks the frame it starts in, so no event is lost. Numpy only: DALI's reader
workers (train/data/dali_source.py) call it and must not import torch.
"""
from typing import NamedTuple

import numpy as np


class StrongTargets(NamedTuple):
    """A batch's frame targets and which of its clips have strong labels (torch tensors on the device)."""

    frame: "torch.Tensor"    # (B, T', K) float32 in [0, 1]
    strong: "torch.Tensor"   # (B,) float32: 1 where the clip has strong labels, 0 where its frame row means nothing
    seen: "torch.Tensor | None" = None   # (B, T') float32: 0 at a frame SpecAugment hid (not scored); None: all 1


def frame_targets(events: np.ndarray, frames: int, clip_seconds: float, num_classes: int) -> np.ndarray:
    """(frames, num_classes) uint8 from `events` (n, 3): onset s, offset s, target column, per row."""
    target = np.zeros((frames, num_classes), np.uint8)
    frame_seconds = clip_seconds / frames
    for onset, offset, column in events:
        start = int(np.floor(onset / frame_seconds + 0.5))    # first frame whose centre is at or after the onset
        stop = int(np.floor(offset / frame_seconds + 0.5))    # first frame whose centre is at or after the offset
        if stop <= start:                                     # no centre inside: the frame the event starts in
            start = int(np.floor(onset / frame_seconds))
            stop = start + 1
        target[max(start, 0):min(stop, frames), int(column)] = 1
    return target
