"""`python -m fastsca.describe PRESET [--profile cpu] [--channels ...] [--pooling-plan ...]`: a model's anatomy.

Takes the same model options as `python -m train.run` (fastsca/model_options.py), so it shows the model a run
builds: `--profile cpu` the narrow one the default CPU run trains (the built-in set's 10 classes, 2 s clips),
`--profile gpu` (the default here) the preset as it is, on 10 s clips, with AudioSet's 527 classes. Prints, per
block, its output shape, where attention sits (arrangement and the T x F map it sees), parameter counts (total
and attention's share) and forward GFLOPs per clip (multiply-adds x 2 of convolutions and matrix products,
counted by torch.utils.flop_counter on the reference path; elementwise ops are not counted, as is customary).
Then the fused backbone's per-layer rule (fastsca/backbone_plan.py): per convolution, Triton implicit GEMM or cuDNN
plus separate passes, priced from the roofline at `--plan-batch` clips.
"""
import argparse
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastsca.backbone_plan import backbone_plan, format_plan
from fastsca.config import PRESETS, ModelConfig
from fastsca.model import build_model
from fastsca.model_options import add_model_options, input_frames, model_config, preset_help
from fastsca.profiles import AUDIOSET_CLASSES, BUILTIN_CLASSES, MODEL_PROFILES, profile_values, resolve_profile
from fastsca.run_options import RunOptions

PLAN_BATCH = 256
"""Batch the per-layer rule is priced at by default: the batch of the issue's targets (a GPU run's)."""
DEFAULT_CLASSES = {"cpu": BUILTIN_CLASSES, "gpu": AUDIOSET_CLASSES}
"""Classes K shown when --num-classes is not given: what the default CPU run trains (the built-in set), and the
paper's model (AudioSet) for the gpu profile."""

POOLING_ROW = "MIL pooling"
"""The name of the table's last row, the pooling head."""
POOLING_NAMES = {"attention": "eq. 2", "linear_softmax": "linear softmax", "exp_softmax": "exp softmax",
                 "max": "max", "average": "average"}
"""What the attention column shows for each ModelConfig.pooling (fastsca/pooling.py)."""


@dataclass(frozen=True)
class BlockReport:
    """One row of the table: a residual block or the pooling head."""

    name: str
    attention: str
    output_shape: tuple[int, ...]
    parameters: int
    attention_parameters: int
    gflops: float


def _parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def describe(preset: str | ModelConfig) -> list[BlockReport]:
    """Per-block reports of one forward pass of a single clip through a preset (by name) or a config."""
    config = ModelConfig.from_name(preset) if isinstance(preset, str) else preset
    model = build_model(config, RunOptions(fused_attention=False)).eval()   # the flop counter sees the reference
    config = model.config
    shapes: dict[str, tuple[int, ...]] = {}
    hooks = [block.register_forward_hook(lambda mod, inp, out, i=i: shapes.__setitem__(f"block{i + 1}", tuple(out.shape)))
             for i, block in enumerate(model.blocks)]
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        output = model(torch.randn(1, 1, config.input_frames, config.n_mels))
    for hook in hooks:
        hook.remove()
    flops = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}

    reports = []
    for i, (block, (t, f)) in enumerate(zip(model.blocks, config.block_input_sizes())):
        has_attention = i in config.attention_blocks
        reports.append(BlockReport(
            name=f"block{i + 1}",
            attention=f"{config.arrangement} on {t}x{f}" if has_attention else "-",
            output_shape=shapes[f"block{i + 1}"],
            parameters=_parameter_count(block) + (_parameter_count(model.input_norm) if i == 0 else 0),
            attention_parameters=_parameter_count(block.attention),
            gflops=flops.get(f"ATSCA.blocks.{i}", 0) / 1e9,
        ))
    reports.append(BlockReport(
        name=POOLING_ROW,
        attention=POOLING_NAMES[config.pooling],
        output_shape=tuple(output.clip.shape) + tuple(output.frame.shape),
        parameters=_parameter_count(model.pooling),
        attention_parameters=0,
        gflops=flops.get("ATSCA.pooling", 0) / 1e9,
    ))
    return reports


def format_table(config: ModelConfig, reports: list[BlockReport]) -> str:
    """A plain-text table with totals."""
    header = f"{'layer':<18} {'attention':<16} {'output shape':<24} {'params':>12} {'attn params':>12} {'GFLOPs':>8}"
    lines = [f"AT-SCA preset {config.name!r}: input (1, 1, {config.input_frames}, {config.n_mels}), "
             f"channels {','.join(map(str, config.channels))}, {config.num_classes} classes, {config.pooling} pooling",
             header, "-" * len(header)]
    for r in reports:
        shape = "x".join(map(str, r.output_shape[1:])) if r.name != POOLING_ROW else "clip K, frame T'xK"
        lines.append(f"{r.name:<18} {r.attention:<16} {shape:<24} {r.parameters:>12,} {r.attention_parameters:>12,} "
                     f"{r.gflops:>8.3f}")
    total = sum(r.parameters for r in reports)
    attention = sum(r.attention_parameters for r in reports)
    lines.append("-" * len(header))
    lines.append(f"{'total':<18} {'':<16} {'':<24} {total:>12,} {attention:>12,} {sum(r.gflops for r in reports):>8.3f}")
    lines.append(f"attention share of parameters: {100.0 * attention / total:.2f}%")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m fastsca.describe", description=__doc__.split("\n\n")[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("preset", choices=list(PRESETS), metavar="PRESET", help=preset_help())
    add_model_options(parser, profile_default="gpu")
    parser.add_argument("--clip-seconds", type=float, help=f"clip length, which sets the input frames (default: "
                        f"the profile's: {profile_values(MODEL_PROFILES, 'clip_seconds', ' s')}; a run on packed data: 10 s)")
    parser.add_argument("--num-classes", type=int, help="classes K, which train.run takes from its data's labels "
                        f"(default: the profile's: cpu: {BUILTIN_CLASSES}, the built-in set's, which the default run "
                        f"trains; gpu: {AUDIOSET_CLASSES}, AudioSet's)")
    parser.add_argument("--plan-batch", type=int, default=PLAN_BATCH, help="batch the fused backbone's per-layer "
                        "rule is priced at (default: %(default)s)")
    return parser


def model_from_args(args: argparse.Namespace) -> ModelConfig:
    """The model the parsed options describe, built as train.run builds it (fastsca/model_options.py)."""
    profile = MODEL_PROFILES[resolve_profile(args.profile, torch.cuda.is_available())[0]]
    clip_seconds = args.clip_seconds if args.clip_seconds is not None else profile.clip_seconds
    num_classes = args.num_classes if args.num_classes is not None else DEFAULT_CLASSES[profile.name]
    return model_config(args, args.preset, profile, num_classes=num_classes, input_frames=input_frames(clip_seconds))


def main(argv: list[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        config = model_from_args(args)
    except ValueError as error:
        parser.error(str(error))
    if args.plan_batch < 1:
        parser.error(f"--plan-batch must be at least 1, got {args.plan_batch}")
    print(format_table(config, describe(config)))
    print()
    print(format_plan(backbone_plan(config, args.plan_batch), args.plan_batch))


if __name__ == "__main__":
    main()
