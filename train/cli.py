"""Command-line pieces shared by `python -m train.run` and `python -m fastsca.describe`.

`add_model_options` gives both the same model flags (--profile, --channels, --pooling-plan,
--fused-attention), so `describe` can show the very model a training run builds; `profile_defaults`
writes each profile's value of a field into a help text ("cpu: 600; gpu: 3000"), read from the
`Profile` dataclasses so the help never drifts from train/config.py.
"""
import argparse

from fastsca.config import POOLING_PLANS, PRESETS, ModelConfig
from fastsca.frontend import LogMelConfig
from train.config import PROFILE_NAMES, PROFILES


def profile_defaults(field: str, unit: str = "", none: str = "the preset's") -> str:
    """Each profile's value of `field`, for a help text: 'cpu: 600; gpu: 3000'."""
    def show(value) -> str:
        if value is None:
            return none
        if isinstance(value, tuple):
            return ",".join(map(str, value))
        return f"{value:g}{unit}" if isinstance(value, float) else f"{value}{unit}"
    return "; ".join(f"{name}: {show(getattr(profile, field))}" for name, profile in PROFILES.items())


def preset_help() -> str:
    """The presets, shortly: the rows of the paper's tables and what a depth suffix means."""
    rows = [name for name in PRESETS if not name[-1].isdigit()]
    return (f"model preset, a row of the paper's Tables 1-2: {', '.join(rows)}; an attention row with -1, -2 or -3 "
            f"carries attention in that many of the last blocks")


def channel_list(text: str) -> tuple[int, ...]:
    """argparse type of --channels: '8,16,32' -> (8, 16, 32)."""
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def _plan_name(pools: tuple[tuple[int, int], ...]) -> str:
    """The POOLING_PLANS name of `pools`, or 'custom'."""
    return next((name for name, plan in POOLING_PLANS.items() if plan == pools), "custom")


def add_model_options(parser: argparse.ArgumentParser, profile_default: str = "auto") -> None:
    """--profile, --channels, --pooling-plan and --fused-attention, with the same meaning wherever they appear."""
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=profile_default,
                        help=f"hardware defaults from train/config.py PROFILES: cpu (narrow blocks, short built-in "
                             f"clips), gpu (the preset as it is, 10 s clips), auto (gpu where CUDA is available, "
                             f"else cpu) (default: {profile_default})")
    parser.add_argument("--channels", type=channel_list, metavar="C1,...,C7",
                        help=f"comma-separated widths of the 7 blocks (default: the profile's: "
                             f"{profile_defaults('channels')} ({','.join(map(str, ModelConfig().channels))}))")
    parser.add_argument("--pooling-plan", choices=list(POOLING_PLANS),
                        help="max-pools after the blocks, fastsca/config.py POOLING_PLANS: "
                             + "; ".join(f"{name} {' '.join(f'{t}x{f}' for t, f in plan)}"
                                         for name, plan in POOLING_PLANS.items())
                             + f" (default: the preset's, {_plan_name(ModelConfig().pools)})")
    parser.add_argument("--fused-attention", action=argparse.BooleanOptionalAction,
                        help="run each attention module as the fused ops of kernels/ (Triton on CUDA, the same passes "
                             "in PyTorch on CPU) instead of step by step; the weights are the same either way, so a "
                             f"checkpoint resumes and loads with or without it (default: the profile's: "
                             f"{profile_defaults('fused_attention')})")


def resolve_profile(requested: str, cuda: bool) -> tuple[str, str]:
    """The profile's name (cpu or gpu) for --profile `requested`, and why it was chosen."""
    if requested != "auto":
        return requested, "asked for"
    return ("gpu", "auto: CUDA is available") if cuda else ("cpu", "auto: no CUDA device")


def model_config(args: argparse.Namespace, preset: str, profile: str, **fields) -> ModelConfig:
    """The preset with the model options of `args` and the defaults of resolved `profile` (cpu or gpu);
    `fields` (num_classes, input_frames, ...) override the rest."""
    overrides = {"channels": args.channels or PROFILES[profile].channels or ModelConfig.from_name(preset).channels,
                 "fused_attention": (PROFILES[profile].fused_attention if args.fused_attention is None
                                     else args.fused_attention), **fields}
    if args.pooling_plan is not None:
        overrides["pools"] = POOLING_PLANS[args.pooling_plan]
    return ModelConfig.from_name(preset, **overrides)


def input_frames(clip_seconds: float) -> int:
    """Log-mel frames the default front end makes of a clip of `clip_seconds` (400 for 10 s)."""
    return LogMelConfig(clip_samples=round(clip_seconds * LogMelConfig().sample_rate)).frames
