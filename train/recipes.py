"""Named training recipes for `python -m train.run --recipe NAME`, and the clips-seen schedule arithmetic.

A recipe fills the flags the command line left unset; a flag given on the command line wins over the recipe,
and the recipe wins over the profile's defaults (train/profiles.py PROFILES), so a run without --recipe is
unchanged. Where each value comes from (PANNs, PaSST, EfficientAT, TALNet, or reasoning) is docs/recipes.md.
Schedules and cadences are in clips seen, which `steps_for_clips` turns into optimiser steps once the batch per
process and the number of processes are known.
"""
import argparse
from dataclasses import dataclass


@dataclass(frozen=True)
class Recipe:
    """What a recipe sets; each field names the train.run option it stands in for."""

    summary: str
    """One line for --help: what the recipe is for."""
    sampler: str
    """--sampler: order of training clips."""
    mixup_alpha: float
    """--mixup-alpha: Beta(alpha, alpha) mixup of clips and targets; 0: off."""
    spec_augment: bool
    """--spec-augment: SpecAugment time and mel-bin masks."""
    clips: int | None
    """--clips: the run's length in clips seen; None: `epochs`."""
    epochs: int | None
    """--epochs: the run's length in passes over the training split, when clips is None."""
    eval_every_clips: int
    """--eval-every-clips: clips seen between evaluations (each also writes latest.pt)."""
    warmup_clips: int
    """--warmup-clips: clips seen during the learning-rate warm-up."""
    batch_size: int
    """--batch-size: clips per step on each process (per GPU)."""
    lr: float
    """--lr: peak learning rate."""
    backbone_lr_scale: float
    """--backbone-lr-scale: the backbone learns at lr x this."""
    compile: bool
    """--compile: torch.compile the model (mode: --compile-mode's default, reduce-overhead on CUDA)."""
    needs_init: bool
    """The recipe fine-tunes a checkpoint, so --init is required."""

    def __post_init__(self) -> None:
        if (self.clips is None) == (self.epochs is None):
            raise ValueError("a recipe's length is clips or epochs, not both")


RECIPES: dict[str, Recipe] = {
    "audioset-balanced": Recipe(
        summary="AudioSet's balanced training subset (about 20k clips) from scratch",
        sampler="balanced", mixup_alpha=1.0, spec_augment=True, clips=1_000_000, epochs=None,
        eval_every_clips=20_000, warmup_clips=10_000, batch_size=32, lr=1e-3, backbone_lr_scale=1.0, compile=True,
        needs_init=False),
    "audioset-full": Recipe(
        summary="all of AudioSet (balanced + unbalanced, about 2M clips) from scratch, class-balanced sampling",
        sampler="balanced", mixup_alpha=0.3, spec_augment=True, clips=20_000_000, epochs=None,
        eval_every_clips=100_000, warmup_clips=800_000, batch_size=128, lr=1e-3, backbone_lr_scale=1.0,
        compile=True, needs_init=False),
    "finetune": Recipe(
        summary="fine-tune a checkpoint (--init) on a small labelled set",
        sampler="balanced", mixup_alpha=0.3, spec_augment=False, clips=None, epochs=80, eval_every_clips=2_000,
        warmup_clips=2_000, batch_size=32, lr=1e-3, backbone_lr_scale=0.1, compile=False, needs_init=True),
}
"""The recipes by name; docs/recipes.md gives each value's source."""

# The options a recipe sets (argparse dests), in groups: any option of a group given on the command line replaces
# the recipe's value for the whole group (e.g. --steps replaces the recipe's clips or epochs).
_LENGTH_FLAGS = ("steps", "epochs", "clips")
_EVAL_FLAGS = ("eval_every", "eval_every_clips")
_WARMUP_FLAGS = ("warmup_steps", "warmup_clips")
_SINGLE_FLAGS = ("sampler", "mixup_alpha", "spec_augment", "batch_size", "lr", "backbone_lr_scale", "compile")


def steps_for_clips(clips: int, clips_per_step: int) -> int:
    """Optimiser steps that see at least `clips` clips at `clips_per_step` (batch per process x processes):
    ceil(clips / clips_per_step)."""
    return -(-clips // clips_per_step)


def _show(value) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int):
        return f"{value:,}"
    return f"{value:g}"


def _steps(count: int) -> str:
    return f"{count:,} step{'' if count == 1 else 's'}"


def describe(recipe: Recipe) -> str:
    """What a recipe sets, as a comma-separated list of option values."""
    length = f"{_show(recipe.clips)} clips" if recipe.clips is not None else f"{recipe.epochs} epochs"
    return (f"{recipe.sampler} sampler, mixup {_show(recipe.mixup_alpha)}, SpecAugment {_show(recipe.spec_augment)}, "
            f"{length}, eval every {_show(recipe.eval_every_clips)} clips, warm-up {_show(recipe.warmup_clips)} "
            f"clips, batch {recipe.batch_size} per process, lr {_show(recipe.lr)}"
            f"{f' (backbone x{_show(recipe.backbone_lr_scale)})' if recipe.backbone_lr_scale != 1 else ''}, "
            f"compile {_show(recipe.compile)}{', needs --init' if recipe.needs_init else ''}")


def help_text() -> str:
    """The --recipe option's help: each recipe, what it is for and what it sets."""
    return ("named settings for a kind of run; flags given on the command line win over the recipe, the recipe "
            "over the profile's defaults (sources: docs/recipes.md): "
            + "; ".join(f"{name}: {recipe.summary} ({describe(recipe)})" for name, recipe in RECIPES.items()))


def apply(args: argparse.Namespace) -> tuple[argparse.Namespace, str | None]:
    """`args` with the options the command line left unset (None) taken from args.recipe, and the start-up line
    saying what the recipe set and which of its options the command line replaced; (args, None) without
    --recipe. An unknown recipe, or a recipe that needs --init without it, is a one-line ValueError."""
    if args.recipe is None:
        return args, None
    recipe = RECIPES.get(args.recipe)
    if recipe is None:
        raise ValueError(f"--recipe {args.recipe}: no such recipe; the recipes are {', '.join(RECIPES)}")
    if recipe.needs_init and args.init is None:
        raise ValueError(f"--recipe {args.recipe} fine-tunes a checkpoint: give --init CKPT (a best.pt or latest.pt "
                         f"of an earlier run)")
    values = vars(args).copy()
    command_line = []   # the recipe's options the command line set, as flags
    for group in (_LENGTH_FLAGS, _EVAL_FLAGS, _WARMUP_FLAGS, *((name,) for name in _SINGLE_FLAGS)):
        given = [name for name in group if values.get(name) is not None]
        if given:
            command_line += [f"--{'no-' if values[name] is False else ''}{name.replace('_', '-')}" for name in given]
            continue
        for name in group:
            if getattr(recipe, name, None) is not None:   # e.g. the recipe's clips, not its (absent) steps
                values[name] = getattr(recipe, name)
    line = f"recipe {args.recipe}: {describe(recipe)}"
    if command_line:
        line += f" (command line: {', '.join(command_line)})"
    return argparse.Namespace(**values), line


def schedule_text(args: argparse.Namespace, steps: int | None, eval_every: int, warmup_steps: int,
                  clips_per_step: int) -> str | None:
    """The start-up line that turns the clips-seen options into steps; None when none was given."""
    parts = []
    if getattr(args, "clips", None) is not None:
        parts.append(f"{_show(args.clips)} clips = {_steps(steps)} ({_show(steps * clips_per_step)} clips)")
    if getattr(args, "eval_every_clips", None) is not None:
        parts.append(f"evaluation and latest.pt every {_show(args.eval_every_clips)} clips = {_steps(eval_every)}")
    if getattr(args, "warmup_clips", None) is not None:
        parts.append(f"warm-up {_show(args.warmup_clips)} clips = {_steps(warmup_steps)}")
    return f"schedule at {clips_per_step} clips per step: " + "; ".join(parts) if parts else None

