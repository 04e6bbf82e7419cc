"""The model side of the hardware profiles: which model a `cpu` or a `gpu` run builds.

A profile's training defaults (batch, steps, learning rate, ...) live in train/profiles.py, whose
`Profile` extends `ModelProfile` with them; what shapes the model (block widths, clip length and so input
frames) is here, so that `fastsca.describe` can show the model a run builds without importing the training
code. How the model runs on each profile (fused attention) is fastsca/run_options.py's.
"""
from dataclasses import dataclass

PROFILE_NAMES = ("auto", "cpu", "gpu")
"""What --profile takes: a profile by name, or auto (gpu where CUDA is available, else cpu)."""

BUILTIN_CLASSES = 10
"""Classes of the built-in synthetic set (train/data/synth.py's SynthConfig), which a run without --data trains."""
AUDIOSET_CLASSES = 527
"""Classes of AudioSet, the paper's data."""


@dataclass(frozen=True)
class ModelProfile:
    """The hardware-dependent defaults that shape the model."""

    name: str
    """The profile's name (cpu or gpu)."""
    channels: tuple[int, ...] | None
    """Widths of the seven blocks; None keeps the preset's (docs/design.md, "Backbone and pooling plan")."""
    clip_seconds: float
    """Clip length of the built-in set, and so the model's input_frames (40 frames per second)."""


MODEL_PROFILES: dict[str, ModelProfile] = {
    # A quarter of the preset's widths (docs/design.md) and 2 s clips: at-sca-3 takes 0.143 forward GFLOPs per
    # clip instead of 11.45 (80x fewer; 0.71 M parameters instead of 11.75 M), which fits a run to mAP >= 0.9
    # into minutes on 2 cores. With packed data the clips are the data's (10 s): 0.71 GFLOPs per clip.
    "cpu": ModelProfile(name="cpu", channels=(8, 16, 32, 64, 64, 128, 128), clip_seconds=2.0),
    # The preset as it is, on the paper's 10 s clips.
    "gpu": ModelProfile(name="gpu", channels=None, clip_seconds=10.0),
}


def resolve_profile(requested: str, cuda: bool) -> tuple[str, str]:
    """The profile's name (cpu or gpu) for --profile `requested`, and why it was chosen."""
    if requested != "auto":
        return requested, "asked for"
    return ("gpu", "auto: CUDA is available") if cuda else ("cpu", "auto: no CUDA device")


def profile_values(profiles: dict, field: str, unit: str = "", none: str = "the preset's") -> str:
    """Each profile's value of `field`, for a help text: 'cpu: 600; gpu: 3000'."""
    def show(value) -> str:
        if value is None:
            return none
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"
    return "; ".join(f"{name}: {show(getattr(profile, field))}" for name, profile in profiles.items())
