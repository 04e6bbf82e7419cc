"""`python -m train.run [--compile] [--preset at-sca-3] [--data D --eval-data E] [--out DIR] [--resume] ...`

Trains an AT-SCA preset with AdamW (warm-up + cosine), bf16 autocast on CUDA, gradient clipping and
periodic evaluation (mAP, mAUC, d') on a validation split held out of the training data (train/data/holdout.py);
writes OUT/metrics.jsonl, OUT/latest.pt and OUT/best.pt (by validation mAP); the test split (--eval-data)
is evaluated once, at the end, with best.pt. With no --data it trains on the built-in synthetic set (train/data/synth.py),
generated once into --builtin-dir (default ~/.cache/fastsca). `--profile auto` picks `gpu` (the preset
as it is, 10 s clips) where CUDA is available and `cpu` (narrow blocks, 2 s built-in clips, a run of a
few minutes; packed data keeps its 10 s clips) otherwise; see train/config.py. Under
`torchrun --nproc_per_node=N -m train.run ...` it runs DDP, the loader sharded by rank. Ctrl-C or SIGTERM
stops after the current step, writes latest.pt and exits with 128 + the signal number; latest.pt is also
written every --checkpoint-minutes and before the first step; `--resume` continues from it exactly (same next
batch, same losses), recognising its data by content (train/checkpoint.py's fingerprints), not by path. A loss or
weight that turns NaN or infinite stops the run with a one-line message; latest.pt then holds the last finite state.
One run at a time owns --out (OUT/.lock). `--fold K` tests on fold K of --data and trains on its other folds
(train/data/holdout.py; `python -m train.folds` runs every fold). `--init MODEL` fine-tunes from a trained model
(best.pt, latest.pt, a model folder or a Hub id): its model and front end, a new head where the labels differ (train/finetune.py). `--recipe NAME` fills the options left
unset with a named recipe's (AudioSet balanced or full, fine-tuning: train/recipes.py, sources in docs/recipes.md);
`--clips`, `--eval-every-clips` and `--warmup-clips` give the schedule in clips seen. The run itself is
train/trainer/'s `Trainer`; its config comes from the flags once (train/trainer/flags.py), how the model runs
(fused attention, fused backbone, compile, memory format, precision) in one `RunOptions` (fastsca/run_options.py).
"""
import argparse
import sys
import time
from dataclasses import replace
from pathlib import Path

from tqdm import tqdm

from fastsca.config import PRESETS
from fastsca.model_options import DEFAULT_PRESET, add_model_options, preset_help
from fastsca.run_options import COMPILE_MODES, PROFILE_RUN_OPTIONS
from train.cli import profile_defaults
from train.recipes import help_text as recipe_help
from train.data.sampler import SAMPLERS

# Only what the parser needs is imported above, so that --help answers at once: the training code (Inductor, the
# SED scorers, the loaders) is imported by `main` when a run starts.

EXAMPLES = """examples:
  python -m train.run                                  # the built-in set, the profile's defaults
  python -m train.run --steps 30 --eval-every 10       # a short run, to see every part work
  python -m train.run --data train.h5 --eval-data eval.h5 --out runs/mine
  python -m train.run --out runs/mine --resume         # continue a stopped run exactly
  python -m train.run --data D --fold 0                # test on fold 0 of D, train on the others
  python -m train.run --recipe finetune --init runs/mine/pretrained --data small.h5 --eval-data small-eval.h5
  torchrun --nproc_per_node=8 -m train.run --recipe audioset-balanced --data bal.h5 --eval-data eval.h5
"""
"""The epilog of --help."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # the docstring's first line is a usage line; argparse writes its own, so the description starts after it
    parser = argparse.ArgumentParser(prog="python -m train.run", description=__doc__.split("\n\n", 1)[1],
                                     epilog=EXAMPLES, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_model_options(parser)
    _add_data_options(parser)
    _add_output_and_length_options(parser)
    _add_schedule_options(parser)
    _add_execution_options(parser)
    return parser.parse_args(argv)


def _add_data_options(parser: argparse.ArgumentParser) -> None:
    """The recipe, the preset, the data and fine-tuning."""
    arg = parser.add_argument
    arg("--recipe", metavar="NAME", help=recipe_help())
    arg("--preset", choices=list(PRESETS), metavar="PRESET",
        help=preset_help() + f" (default: {DEFAULT_PRESET}; with --init, the checkpoint's)")
    arg("--data", help="training split: a shard .h5 or a folder with index.json (default: the built-in set)")
    arg("--eval-data", help="test split (with --data), evaluated once at the end with best.pt")
    arg("--validation-data", help="validation split of its own for model selection and the event post-processing's "
                                  "choice (e.g. train.mix's validation split, whose recordings are not in --data's); "
                                  "default: clips held out of --data (--validation-fraction)")
    arg("--fold", type=int, help="hold fold K of --data out as the test split (instead of --eval-data); train and "
                                 "validation come from the other folds (see python -m train.folds)")
    arg("--init", metavar="MODEL", help="fine-tune: start from this trained model's weights, its model and front end "
                                        "(a new head where the data's labels differ from its): best.pt, latest.pt, a "
                                        "model folder (OUT/pretrained) or a Hugging Face Hub id")
    arg("--freeze-blocks", type=int, default=0, help="with --init: do not train the input norm and the first N of "
                                                     "the 7 blocks (default: %(default)s)")
    arg("--backbone-lr-scale", type=float, help="the backbone learns at --lr x this, the head at --lr "
                                                "(e.g. 0.1 when fine-tuning) (default: 1)")
    arg("--validation-fraction", type=float, default=0.1,
        help="share of the training split held out for model selection (best.pt, early stopping) "
             "(default: %(default)s)")
    arg("--validation-max-clips", type=int, default=5000, help="cap on the validation clips (default: %(default)s)")
    arg("--patience", type=int, default=0, help="stop after this many evaluations without a better validation mAP "
                                                "(default: 0, never)")
    arg("--builtin-dir", default="~/.cache/fastsca", help="where the built-in set is generated and cached "
        "(default: %(default)s)")
    arg("--clip-seconds", type=float, help=f"clip length of the built-in set (default: the profile's: "
        f"{profile_defaults('clip_seconds', ' s')}; packed data keeps the length it was packed with, 10 s)")
    arg("--builtin-train", type=int, help=f"clips in the built-in training split (default: the profile's: "
        f"{profile_defaults('builtin_train')})")
    arg("--builtin-eval", type=int, help=f"clips in the built-in eval split (default: the profile's: "
        f"{profile_defaults('builtin_eval')})")


def _add_output_and_length_options(parser: argparse.ArgumentParser) -> None:
    """Output, resume, length and batching."""
    arg = parser.add_argument
    arg("--out", help="output folder (default: runs/PRESET-PROFILE)")
    arg("--resume", action="store_true", help="continue from OUT/latest.pt")
    arg("--checkpoint-minutes", type=float, default=5.0,
        help="also write OUT/latest.pt every this many minutes, so a kill -9 loses at most that (default 5)")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help=f"optimiser steps (default: the profile's: "
                        f"{profile_defaults('steps')})")
    length.add_argument("--epochs", type=int, help="passes over the training split, instead of --steps")
    length.add_argument("--clips", type=int, help="clips seen in the whole run, instead of --steps: "
                        "ceil(clips / (batch size x processes)) steps")
    arg("--batch-size", type=int, help=f"clips per step on each process (default: the profile's: "
        f"{profile_defaults('batch_size')})")
    arg("--eval-batch-size", type=int, default=64, help="clips per evaluation batch on each process "
        "(default: %(default)s)")
    arg("--sampler", choices=SAMPLERS, help="order of training clips: balanced (every class "
        "equally often, PANNs-style), shuffle, or sequential (default: balanced)")
    arg("--num-workers", type=int, help=f"loader worker processes per training process (default: the profile's: "
        f"{profile_defaults('num_workers')})")


def _add_schedule_options(parser: argparse.ArgumentParser) -> None:
    """Augmentation, optimiser, schedule and cadence."""
    arg = parser.add_argument
    arg("--mixup-alpha", type=float, help="mix pairs of clips and their targets with a Beta(alpha, alpha) "
        f"weight; 0 turns mixup off (default: the profile's, on the built-in set {profile_defaults('mixup_alpha')}; "
        f"on --data {profile_defaults('packed_mixup_alpha')}, chosen on real recordings: results/real-audio)")
    arg("--spec-augment", action=argparse.BooleanOptionalAction, help="mask random time and mel-bin bands of "
        f"each training log-mel (SpecAugment) (default: the profile's: {profile_defaults('spec_augment')})")
    arg("--lr", type=float, help=f"peak learning rate (default: the profile's: {profile_defaults('lr')})")
    warmup = parser.add_mutually_exclusive_group()
    warmup.add_argument("--warmup-steps", type=int, help=f"steps of linear learning-rate warm-up (default: the "
                        f"profile's: {profile_defaults('warmup_steps')})")
    warmup.add_argument("--warmup-clips", type=int, help="clips seen during the warm-up, instead of --warmup-steps: "
                        "ceil(clips / (batch size x processes)) steps")
    arg("--weight-decay", type=float, help="AdamW weight decay of weight matrices and conv kernels "
        f"(default: the profile's: {profile_defaults('weight_decay')})")
    arg("--grad-clip", type=float, default=1.0, help="gradient-norm clip, 0: off (default: %(default)s)")
    arg("--strong-loss-weight", type=float,
        help="weight of the frame-level BCE on the training clips with strong labels (packed with train.pack "
             "--strong; every clip of the built-in set), added to the clip BCE on all clips; 0 turns it off "
             "(default: 1, as DCASE task 4's baselines add their strong and weak BCE: train/config.py)")
    cadence = parser.add_mutually_exclusive_group()
    cadence.add_argument("--eval-every", type=int, help=f"steps between evaluations and checkpoints (default: the "
                         f"profile's: {profile_defaults('eval_every')})")
    cadence.add_argument("--eval-every-clips", type=int, help="clips seen between evaluations and checkpoints "
                         "(latest.pt), instead of --eval-every: ceil(clips / (batch size x processes)) steps")
    arg("--log-every", type=int, help=f"steps between metrics.jsonl lines and progress-bar updates "
        f"(default: the profile's: {profile_defaults('log_every')})")
    arg("--seed", type=int, default=0, help="seed of the initialisation, sampling and augmentation "
        "(default: %(default)s)")


def _add_execution_options(parser: argparse.ArgumentParser) -> None:
    """How the model runs (fastsca/run_options.py) and the CPU threads."""
    arg = parser.add_argument
    arg("--fused-attention", action=argparse.BooleanOptionalAction,
        help="run each attention module as the fused ops of kernels/ (Triton on CUDA, the same passes in PyTorch on "
             "CPU) instead of step by step; the weights are the same either way, so a checkpoint resumes and loads "
             "with or without it (default: the profile's: "
             + "; ".join(f"{name}: {'on' if options['fused_attention'] else 'off'}"
                         for name, options in PROFILE_RUN_OPTIONS.items()) + ")")
    arg("--fused-backbone", action=argparse.BooleanOptionalAction,
        help="train each residual block as the fused passes of kernels/residual_block.py (convolutions that sum "
             "their BatchNorm statistics and apply BN-ReLU as they read their input, one pass for BatchNorm, sum, "
             "ReLU and max-pool) instead of module by module; evaluation runs the reference either way, and the "
             "weights are the same, so a checkpoint resumes and loads with or without it (default: the profile's: "
             + "; ".join(f"{name}: {'on' if options['fused_backbone'] else 'off'}"
                         for name, options in PROFILE_RUN_OPTIONS.items()) + ")")
    arg("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model for training (the "
        "first step compiles: a minute or more; later runs reuse Inductor's cache) (default: off)")
    arg("--compile-backend", default="inductor", help="torch.compile backend (default: %(default)s)")
    arg("--compile-mode", choices=list(COMPILE_MODES),
        help="torch.compile mode of the inductor backend: " + "; ".join(f"{mode}: {meaning}"
                                                                         for mode, meaning in COMPILE_MODES.items())
             + " (default: reduce-overhead on CUDA with the inductor backend, else default)")
    arg("--threads", type=int, help=f"intra-op CPU threads per process (default: the profile's: "
        f"{profile_defaults('threads', none='torch decides')})")


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    from train import distributed   # the training code, imported once a run starts (see the imports above)
    from train.data.out_folder import describe_os_error
    from train.signals import StopRequest
    ctx = distributed.setup()
    try:
        with StopRequest() as stop:
            start = time.perf_counter()
            config, paths = configure(args, ctx)
            summary = run(config, paths, ctx, stop)
    except ValueError as error:   # config errors, and CheckpointError, ShardError and OutFolderError (ValueErrors)
        tqdm.write(f"error: {error}", file=sys.stderr)   # on a line of its own, not after a progress bar
        sys.exit(2)
    except OSError as error:   # a file-system fault outside --out (e.g. an unwritable --builtin-dir)
        tqdm.write(f"error: {describe_os_error(error, f'write {error.filename}', 'folder')}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:   # a second Ctrl-C (train/signals.py), e.g. while latest.pt was being written
        tqdm.write("stopped at once by a second Ctrl-C; the last latest.pt written is whole (checkpoints are "
                   "renamed into place): resume with --resume", file=sys.stderr)
        sys.exit(128 + 2)
    finally:
        distributed.teardown()
    if summary is None and stop.requested:
        sys.exit(stop.exit_code)
    if ctx.is_main and summary:
        print(done_text(summary, config.run.out, time.perf_counter() - start))


def configure(args: argparse.Namespace, ctx) -> tuple:
    """The profile (resolved once, here), the recipe and the flags as the run's config and (train, eval) paths,
    with the start-up lines that say where the defaults came from."""
    from fastsca.profiles import resolve_profile
    from train.profiles import PROFILES
    from train.recipes import apply as apply_recipe, schedule_text
    from train.trainer.flags import build_config
    cuda = ctx.device.type == "cuda"
    name, why = resolve_profile(args.profile, cuda)
    if ctx.is_main:
        print(f"profile {name} ({why}): defaults from train/profiles.py PROFILES[{name!r}]", flush=True)
    args, recipe_line = apply_recipe(args)
    config, paths = build_config(args, PROFILES[name], cuda, ctx.world_size)
    schedule_line = schedule_text(args, config.run.steps, config.run.eval_every, config.optim.warmup_steps,
                                  config.data.loader.batch_size * ctx.world_size)
    if ctx.is_main:
        for line in (recipe_line, schedule_line):
            if line is not None:
                print(line, flush=True)
    return config, paths


def run(config, paths: tuple[str, str | None], ctx, stop) -> dict | None:
    """The Trainer's run, holding --out's lock; {"validation": ..., "test": ...}, None when a signal stopped it."""
    from train import distributed
    from train.data.out_folder import RunLock
    from train.trainer.trainer import Trainer
    out = Path(config.run.out)
    with RunLock(out, enabled=ctx.is_main):
        # a worker of this torchrun job died and torchrun restarted them all: continue from latest.pt
        if distributed.resumes_after_restart(out, config.run.resume, ctx.is_main) and not config.run.resume:
            config = replace(config, run=replace(config.run, resume=True))
            if ctx.is_main:
                print(f"torchrun restarted this job's workers: continuing its run from {out / 'latest.pt'}",
                      flush=True)
        with Trainer(config, *paths, ctx, stop) as trainer:
            return trainer.train()


def done_text(summary: dict, out: str, seconds: float) -> str:
    """The last line: best.pt's test figures and where the run's files are."""
    from train.evaluate import summary_text
    from train.trainer.checkpointer import PRETRAINED_FOLDER
    validation_map = summary["validation"].get("mAP")
    chosen = (f"validation mAP {validation_map:.4f}" if validation_map is not None and validation_map >= 0
              else "the latest evaluation: no validation class could be scored")
    return (f"done in {seconds:.0f} s: best.pt ({chosen}) on the test split: {summary_text(summary['test'])}; "
            f"checkpoints in {out}; model folder {Path(out) / PRETRAINED_FOLDER}")


if __name__ == "__main__":
    main()
