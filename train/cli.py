"""Command-line checks and help texts of the training entry points (`train.run`, `train.evaluate`).

`check_numbers` refuses a numeric option outside its `Limit` (or NaN, or infinite) with one line naming it;
`profile_defaults` writes each profile's value of a field into a help text ("cpu: 600; gpu: 3000"), read
from the `Profile` dataclasses so the help never drifts from train/profiles.py.
"""
import argparse
import math
from dataclasses import dataclass

from fastsca.profiles import profile_values
from train.profiles import PROFILES


def profile_defaults(field: str, unit: str = "", none: str = "the preset's") -> str:
    """Each profile's value of `field`, for a help text: 'cpu: 600; gpu: 3000'."""
    return profile_values(PROFILES, field, unit, none)


# The largest integer option: one more would overflow the int64 counters of torch and numpy (seeds, steps).
INT64_MAX = 2**63 - 1


def _show(number: float) -> str:
    return str(number) if isinstance(number, int) else f"{number:g}"


@dataclass(frozen=True)
class Limit:
    """The values a numeric command-line option accepts."""

    low: float
    """Smallest value accepted."""
    high: float | None = None
    """Largest value accepted; None: any finite float, any int up to INT64_MAX."""
    low_open: bool = False
    """`low` itself is refused (the option must be > low)."""
    high_open: bool = False
    """`high` itself is refused (the option must be < high)."""
    why: str = ""
    """Why the bound, for the error line (e.g. "each is a process")."""

    def describe(self, high: float) -> str:
        low = f"> {_show(self.low)}" if self.low_open else f">= {_show(self.low)}"
        return low if high == math.inf else f"{low} and {'<' if self.high_open else '<='} {_show(high)}"


def check_numbers(args: argparse.Namespace, limits: dict[str, Limit]) -> None:
    """Raise ValueError (one line naming the option) for an option of `args` that is NaN, infinite or outside its
    `limits` entry (keys are argparse dests; options left unset, None, are skipped)."""
    for dest, limit in limits.items():
        value = getattr(args, dest, None)
        if value is None:
            continue
        option = "--" + dest.replace("_", "-")
        high = limit.high if limit.high is not None else INT64_MAX if isinstance(value, int) else math.inf
        if isinstance(value, float) and not math.isfinite(value):
            raise ValueError(f"{option} must be a finite number {limit.describe(high)}, got {value}")
        too_low = value <= limit.low if limit.low_open else value < limit.low
        too_high = value >= high if limit.high_open else value > high
        if too_low or too_high:
            raise ValueError(f"{option} must be {limit.describe(high)}{f' ({limit.why})' if limit.why else ''}, "
                             f"got {_show(value)}")
