"""`python -m fastsca.describe PRESET`: the per-block anatomy of a preset, for papers and sanity checks.

Prints, per block, its output shape, where attention sits (arrangement and the T x F map it sees), parameter counts
(total and attention's share) and forward GFLOPs per clip (multiply-adds x 2 of convolutions and
matrix products, counted by torch.utils.flop_counter on the reference path; elementwise ops are not
counted, as is customary).
"""
import argparse
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode

from fastsca.config import PRESETS
from fastsca.model import build_model


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


def describe(preset: str) -> list[BlockReport]:
    """Per-block reports of one forward pass of a single clip through `preset`."""
    model = build_model(preset, fused_attention=False).eval()   # the flop counter sees through the reference
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
        name="attention pooling",
        attention="eq. 2",
        output_shape=tuple(output.clip.shape) + tuple(output.frame.shape),
        parameters=_parameter_count(model.pooling),
        attention_parameters=0,
        gflops=flops.get("ATSCA.pooling", 0) / 1e9,
    ))
    return reports


def format_table(preset: str, reports: list[BlockReport]) -> str:
    """A plain-text table with totals."""
    header = f"{'layer':<18} {'attention':<16} {'output shape':<24} {'params':>12} {'attn params':>12} {'GFLOPs':>8}"
    lines = [f"AT-SCA preset {preset!r}: input (1, 1, {PRESETS[preset].input_frames}, {PRESETS[preset].n_mels})",
             header, "-" * len(header)]
    for r in reports:
        shape = "x".join(map(str, r.output_shape[1:])) if r.name != "attention pooling" else "clip K, frame T'xK"
        lines.append(f"{r.name:<18} {r.attention:<16} {shape:<24} {r.parameters:>12,} {r.attention_parameters:>12,} "
                     f"{r.gflops:>8.3f}")
    total = sum(r.parameters for r in reports)
    attention = sum(r.attention_parameters for r in reports)
    lines.append("-" * len(header))
    lines.append(f"{'total':<18} {'':<16} {'':<24} {total:>12,} {attention:>12,} {sum(r.gflops for r in reports):>8.3f}")
    lines.append(f"attention share of parameters: {100.0 * attention / total:.2f}%")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("preset", choices=list(PRESETS), metavar="PRESET", help=f"one of: {', '.join(PRESETS)}")
    args = parser.parse_args(argv)
    print(format_table(args.preset, describe(args.preset)))


if __name__ == "__main__":
    main()
