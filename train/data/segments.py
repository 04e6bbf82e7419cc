"""Which part of an audio file becomes each packed clip: a CSV row's segment, the whole file, or windows over it.

A row with start/end times (AudioSet's segment CSVs, a manifest's start/end columns) names a part of a
recording, and downloads come both ways: the whole recording, or only that part. So:

- a file no longer than the segment (within TOLERANCE_SECONDS) is the segment: it is used whole ("whole file");
- a file that reaches the segment's end and is longer is the recording: the segment is cut out ("segment");
- a file longer than the segment that ends before the segment does is neither: the row is skipped.

The part chosen is then fitted to the clip length by the `fit` rule: "cut" keeps its first clip length
("cut to clip" where the part was longer), "window" cuts it into consecutive clips ("window k/n"), all of
the row's group. A clip shorter than the clip length is zero-padded at the end (", padded" is added to its
description by the packer, which sees the decoded length).

`check_clip_length` refuses a clip length train.run could not train on, by the checks train.run's own
config makes (the front end's frames, divided by the model's pooling plans), so the packer refuses it
before hours of decoding rather than train.run after.
"""
import math
from dataclasses import dataclass

FITS = ("cut", "window")
# Downloads of a 10 s segment run 9.98-10.05 s; a file half a second longer than the segment is the whole recording.
TOLERANCE_SECONDS = 0.5


class OutsideFileError(ValueError):
    """A row's segment lies (partly) beyond the end of a file that is longer than the segment."""


@dataclass(frozen=True)
class ClipPart:
    """One clip's source: seconds `offset` to `offset + seconds` of the file."""

    offset: float
    """Start in the file, seconds."""
    seconds: float
    """Length read, seconds (at most the clip length; shorter parts are zero-padded)."""
    cut: str
    """What pack_report.csv says was done: "segment", "whole file", "cut to clip", "window k/n"."""


def plan_parts(duration: float,
               clip_seconds: float,
               fit: str,
               start: float | None = None,
               end: float | None = None) -> list[ClipPart]:
    """The clips to take from a file of `duration` seconds for a row with optional segment `start`-`end`."""
    if start is None or end is None or duration <= end - start + TOLERANCE_SECONDS:
        first, length, how = 0.0, duration, "whole file"
    elif duration >= end - TOLERANCE_SECONDS:
        first, length, how = start, min(end, duration) - start, "segment"
    else:
        raise OutsideFileError(f"segment {start:g}-{end:g} s lies beyond the file's end ({duration:.2f} s), and the "
                               f"file is longer than the segment: is it the right recording? re-download it")
    if fit == "window" and length > clip_seconds:
        count = math.ceil(length / clip_seconds - 1e-9)
        return [ClipPart(first + k * clip_seconds, min(clip_seconds, length - k * clip_seconds),
                         f"window {k + 1}/{count}") for k in range(count)]
    if length > clip_seconds and how == "whole file":
        how = "cut to clip"
    return [ClipPart(first, min(length, clip_seconds), how)]


def check_clip_length(clip_samples: int, sample_rate: int) -> None:
    """ValueError (one line, with the nearest lengths that work) unless train.run can train on clips of
    `clip_samples` at `sample_rate`: the front end must make frames that every pooling plan divides."""
    # imported here, not at the top: the packer's decoding workers import this module and must not pay for torch
    from fastsca.config import POOLING_PLANS, ModelConfig
    from fastsca.frontend import LogMelConfig
    seconds = clip_samples / sample_rate
    try:
        frames = LogMelConfig(sample_rate=sample_rate, clip_samples=clip_samples).frames
        for pools in POOLING_PLANS.values():
            ModelConfig(input_frames=frames, pools=pools)
    except ValueError as error:
        hop = LogMelConfig().hop_length
        step = math.lcm(*(math.prod(t for t, _ in pools) for pools in POOLING_PLANS.values())) * hop / sample_rate
        nearest = sorted({max(1, math.floor(seconds / step)) * step, max(1, math.ceil(seconds / step)) * step})
        raise ValueError(f"--clip-seconds {seconds:g}: train.run could not train on these clips ({error}); give a "
                         f"multiple of {step:g} s, e.g. {' or '.join(f'{s:g}' for s in nearest)}") from None
