"""The model flags shared by `python -m train.run` and `python -m fastsca.describe`.

`add_model_options` gives both the same flags (--profile, --channels, --pooling-plan, --pooling) and `model_config`
turns them into the `ModelConfig` a run builds, so `describe` shows the very model a training run trains
(how it runs, e.g. fused attention, is not the model: fastsca/run_options.py). The help texts read each profile's value from fastsca/profiles.py, so they never
drift from it.
"""
import argparse

from fastsca.config import POOLING_PLANS, POOLINGS, PRESETS, ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.profiles import MODEL_PROFILES, PROFILE_NAMES, ModelProfile, profile_values

DEFAULT_PRESET = "at-sca-3"
"""The preset a training run builds when none is named (and no --init gives one)."""


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


def add_model_options(parser: argparse.ArgumentParser, profile_default: str = "auto") -> None:
    """--profile, --channels, --pooling-plan and --pooling, with the same meaning wherever they appear."""
    parser.add_argument("--profile", choices=PROFILE_NAMES, default=profile_default,
                        help=f"hardware defaults (fastsca/profiles.py, train/profiles.py): cpu (narrow blocks, short "
                             f"built-in clips), gpu (the preset as it is, 10 s clips), auto (gpu where CUDA is "
                             f"available, else cpu) (default: {profile_default})")
    parser.add_argument("--channels", type=channel_list, metavar="C1,...,C7",
                        help=f"comma-separated widths of the 7 blocks (default: the profile's: "
                             f"{profile_values(MODEL_PROFILES, 'channels')} "
                             f"({','.join(map(str, ModelConfig().channels))}))")
    parser.add_argument("--pooling-plan", choices=list(POOLING_PLANS),
                        help="max-pools after the blocks, fastsca/config.py POOLING_PLANS: "
                             + "; ".join(f"{name} {' '.join(f'{t}x{f}' for t, f in plan)}"
                                         for name, plan in POOLING_PLANS.items())
                             + f" (default: the preset's, {ModelConfig().pooling_plan})")
    parser.add_argument("--pooling", choices=POOLINGS,
                        help=f"the MIL pooling from frame to clip probabilities (fastsca/pooling.py): attention (the "
                             f"paper's eq. 2), or TALNet's linear_softmax, exp_softmax, max, average; the frame "
                             f"outputs are the same sigmoid probabilities in each (default: the preset's, "
                             f"{ModelConfig().pooling})")


def model_config(args: argparse.Namespace, preset: str, profile: ModelProfile, **fields) -> ModelConfig:
    """The preset with the model options of `args` and the defaults of the resolved `profile`; `fields`
    (num_classes, input_frames, ...) override the rest."""
    overrides = {"channels": args.channels or profile.channels or ModelConfig.from_name(preset).channels,
                 **fields}
    if args.pooling_plan is not None:
        overrides["pools"] = POOLING_PLANS[args.pooling_plan]
    if args.pooling is not None:
        overrides["pooling"] = args.pooling
    return ModelConfig.from_name(preset, **overrides)


def input_frames(clip_seconds: float) -> int:
    """Log-mel frames the default front end makes of a clip of `clip_seconds` (400 for 10 s)."""
    return LogMelConfig(clip_samples=round(clip_seconds * LogMelConfig().sample_rate)).frames
