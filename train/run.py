"""`python -m train.run [--compile] [--preset at-sca-3] [--data D --eval-data E] [--out DIR] [--resume] ...`

Trains an AT-SCA preset with AdamW (warm-up + cosine), bf16 autocast on CUDA, gradient clipping and
periodic evaluation (mAP, mAUC, d') on a validation split held out of the training data (train/holdout.py);
writes OUT/metrics.jsonl, OUT/latest.pt and OUT/best.pt (by validation mAP); the test split (--eval-data)
is evaluated once, at the end, with best.pt. With no --data it trains on the built-in synthetic set (train/synth.py),
generated once into --builtin-dir (default ~/.cache/fastsca). `--profile auto` picks `gpu` (the preset
as it is, 10 s clips) where CUDA is available and `cpu` (narrow blocks, 2 s built-in clips, a run of a
few minutes; packed data keeps its 10 s clips) otherwise; see train/config.py. Under
`torchrun --nproc_per_node=N -m train.run ...` it runs DDP, the loader sharded by rank. Ctrl-C or SIGTERM
stops after the current step, writes latest.pt and exits with 128 + the signal number; latest.pt is also
written every --checkpoint-minutes and before the first step; `--resume` continues from it exactly (same next
batch, same losses), recognising its data by content (train/checkpoint.py's fingerprints), not by path. A loss or
weight that turns NaN or infinite stops the run with a one-line message; latest.pt then holds the last finite state.
One run at a time owns --out (OUT/.lock). `--fold K` tests on fold K of --data and trains on its other folds
(train/holdout.py; `python -m train.folds` runs every fold). `--init CKPT` fine-tunes from a checkpoint: its
model and front end, a new head where the labels differ (train/finetune.py). `--recipe NAME` fills the options left
unset with a named recipe's (AudioSet balanced or full, fine-tuning: train/recipes.py, sources in docs/recipes.md);
`--clips`, `--eval-every-clips` and `--warmup-clips` give the schedule in clips seen.
"""
import argparse
import sys
import time
from dataclasses import asdict, replace
from pathlib import Path

import torch
from torch._inductor.runtime.cache_dir_utils import cache_dir as inductor_cache_dir
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fastsca.config import POOLING_PLANS, PRESETS, ModelConfig
from fastsca.events import EventConfig, stored_event_config
from fastsca.frontend import LogMelConfig
from fastsca.hub import save_pretrained_from_checkpoint
from fastsca.inference import CheckpointError
from fastsca.model import build_model
from fastsca.training_compile import compile_for_training
from train import checkpoint, distributed, finetune, holdout, localisation
from train.cli import (Limit, add_model_options, check_numbers, model_config, preset_help, profile_defaults,
                       resolve_profile)
from train.config import COMPILE_MODES, PROFILES, DataConfig, OptimConfig, RunConfig, TrainConfig
from train.evaluate import evaluate, summary_text
from train.loader import LoaderConfig, LogMelLoader
from train.metrics_log import MetricsLog
from train.optim import build_optimizer, build_scheduler, lr_factor
from train.out_folder import RunLock, describe_os_error
from train.recipes import apply as apply_recipe, help_text as recipe_help, schedule_text, steps_for_clips
from train.sampler import SAMPLERS
from train.shards import ShardIndex
from train.signals import StopRequest
from train.step import NonFiniteOutput, NonFiniteWatch, training_step

PRETRAINED_FOLDER = "pretrained"
"""OUT/pretrained: the trained model as a folder in the Hugging Face layout, written beside best.pt at the end."""
from train.synth import SynthConfig, ensure_builtin


class Diverged(ValueError):
    """The loss or the weights became NaN or infinite; the message names the step and the likely cause."""


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    # the docstring's first line is a usage line; argparse writes its own, so the description starts after it
    parser = argparse.ArgumentParser(prog="python -m train.run", description=__doc__.split("\n\n", 1)[1],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    arg = parser.add_argument
    add_model_options(parser)
    arg("--recipe", metavar="NAME", help=recipe_help())
    arg("--preset", choices=list(PRESETS), metavar="PRESET",
        help=preset_help() + f" (default: {DEFAULT_PRESET}; with --init, the checkpoint's)")
    arg("--data", help="training split: a shard .h5 or a folder with index.json (default: the built-in set)")
    arg("--eval-data", help="test split (with --data), evaluated once at the end with best.pt")
    arg("--fold", type=int, help="hold fold K of --data out as the test split (instead of --eval-data); train and "
                                 "validation come from the other folds (see python -m train.folds)")
    arg("--init", metavar="CKPT", help="fine-tune: start from this checkpoint's weights, its model and front end "
                                       "(a new head where the data's labels differ from its)")
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
    cadence = parser.add_mutually_exclusive_group()
    cadence.add_argument("--eval-every", type=int, help=f"steps between evaluations and checkpoints (default: the "
                         f"profile's: {profile_defaults('eval_every')})")
    cadence.add_argument("--eval-every-clips", type=int, help="clips seen between evaluations and checkpoints "
                         "(latest.pt), instead of --eval-every: ceil(clips / (batch size x processes)) steps")
    arg("--log-every", type=int, help=f"steps between metrics.jsonl lines and progress-bar updates "
        f"(default: the profile's: {profile_defaults('log_every')})")
    arg("--seed", type=int, default=0, help="seed of the initialisation, sampling and augmentation "
        "(default: %(default)s)")
    arg("--compile", action=argparse.BooleanOptionalAction, help="torch.compile the model for training (the "
        "first step compiles: a minute or more; later runs reuse Inductor's cache) (default: off)")
    arg("--compile-backend", default="inductor", help="torch.compile backend (default: %(default)s)")
    arg("--compile-mode", choices=list(COMPILE_MODES),
        help="torch.compile mode of the inductor backend: " + "; ".join(f"{mode}: {meaning}"
                                                                         for mode, meaning in COMPILE_MODES.items())
             + " (default: reduce-overhead on CUDA with the inductor backend, else default)")
    arg("--threads", type=int, help=f"intra-op CPU threads per process (default: the profile's: "
        f"{profile_defaults('threads', none='torch decides')})")
    return parser.parse_args(argv)


DEFAULT_PRESET = "at-sca-3"
# What each numeric option accepts (NaN and infinity never); checked before any work.
NUMBER_LIMITS: dict[str, Limit] = {
    "validation_fraction": Limit(0, 1, low_open=True, high_open=True),
    "validation_max_clips": Limit(1),
    "patience": Limit(0),
    "clip_seconds": Limit(0.1, 600, why="the built-in set's clips: shorter ones give fewer frames than the model "
                                        "pools"),
    "builtin_train": Limit(1, 1_000_000, why="the built-in set is generated on this machine"),
    "builtin_eval": Limit(1, 1_000_000, why="the built-in set is generated on this machine"),
    "checkpoint_minutes": Limit(0, low_open=True),
    "steps": Limit(1), "epochs": Limit(1), "batch_size": Limit(1),
    "eval_batch_size": Limit(1, 4096, why="a batch is allocated whole, ahead of the data"),
    "num_workers": Limit(0, 64, why="each is a process"),
    "mixup_alpha": Limit(0), "lr": Limit(0, low_open=True), "warmup_steps": Limit(0), "weight_decay": Limit(0),
    "grad_clip": Limit(0), "eval_every": Limit(1), "log_every": Limit(1),
    "seed": Limit(0, 2**32 - 1, why="numpy's seeds"),
    "threads": Limit(1, 1024), "fold": Limit(0), "freeze_blocks": Limit(0, 7, why="the backbone has 7 blocks"),
    "backbone_lr_scale": Limit(0), "clips": Limit(1), "eval_every_clips": Limit(1), "warmup_clips": Limit(0),
}


def _pick(value, default):
    return default if value is None else value


def resolve_compile_mode(requested: str | None, backend: str, cuda: bool) -> str:
    """--compile-mode, or when not given: reduce-overhead for Inductor on CUDA, where CUDA graphs replay the
    hundreds of small kernels of a step at batch 64-256 in one launch (the launch overhead they save is an
    estimate on paper, not yet measured here); default elsewhere: CUDA graphs need CUDA, other backends no mode."""
    if requested is not None:
        return requested
    return "reduce-overhead" if cuda and backend == "inductor" else "default"


def build_config(args: argparse.Namespace, name: str, cuda: bool,
                 world_size: int = 1) -> tuple[TrainConfig, tuple[str, str]]:
    """The run's config from the flags (with a recipe's already filled in: train/recipes.py's `apply`), profile
    `name`, whether it trains on CUDA and the number of processes (which turns the clips-seen options into steps),
    and the (train, eval) split paths; generates the built-in set if it is used."""
    check_numbers(args, NUMBER_LIMITS)
    profile = PROFILES[name]
    # read before the data: its front end sets the built-in set's clip length
    init = finetune.read_init(args.init) if args.init is not None else None
    if init is None and args.freeze_blocks:
        raise ValueError("--freeze-blocks freezes blocks of the model --init starts from: give --init CKPT too")
    preset = args.preset or (init[1].name if init is not None else DEFAULT_PRESET)
    clip_seconds = _pick(args.clip_seconds, profile.clip_seconds)
    if init is not None:
        clip_seconds = init[2].clip_samples / init[2].sample_rate
        if args.clip_seconds is not None and args.clip_seconds != clip_seconds:
            raise ValueError(f"--clip-seconds {args.clip_seconds:g}: --init {args.init} was trained on "
                             f"{clip_seconds:g} s clips, which a fine-tuning run keeps: drop --clip-seconds")
    steps, eval_every, warmup_steps = clip_schedule(args, name, world_size)
    # made before the data, so that a bad run flag fails before the built-in set is generated
    run = RunConfig(out=args.out or f"runs/{preset}-{name}", profile=name, steps=steps, epochs=args.epochs,
                    eval_every=eval_every,
                    log_every=_pick(args.log_every, profile.log_every), patience=args.patience, seed=args.seed,
                    compile=_pick(args.compile, False), compile_backend=args.compile_backend,
                    compile_mode=resolve_compile_mode(args.compile_mode, args.compile_backend, cuda),
                    channels_last=cuda,   # bf16 convolutions run faster in NHWC; CPU runs keep NCHW, as tested
                    threads=_pick(args.threads, profile.threads), resume=args.resume,
                    checkpoint_minutes=args.checkpoint_minutes, init=args.init, freeze_blocks=args.freeze_blocks)
    # events last 10-40 % of a clip, as in SynthConfig's 1-4 s events on 10 s clips
    builtin = SynthConfig(clip_seconds=clip_seconds, event_seconds=(0.1 * clip_seconds, 0.4 * clip_seconds),
                          n_train=_pick(args.builtin_train, profile.builtin_train),
                          n_eval=_pick(args.builtin_eval, profile.builtin_eval))
    loader = LoaderConfig(batch_size=_pick(args.batch_size, profile.batch_size),
                          sampler=_pick(args.sampler, "balanced"), seed=args.seed,
                          num_workers=_pick(args.num_workers, profile.num_workers),
                          mixup_alpha=_pick(args.mixup_alpha, profile.mixup_alpha if args.data is None
                                            else profile.packed_mixup_alpha),
                          spec_augment=_pick(args.spec_augment, profile.spec_augment))
    data = DataConfig(train_path=args.data, eval_path=args.eval_data, builtin_dir=args.builtin_dir,
                      builtin=builtin, loader=loader, eval_batch_size=args.eval_batch_size,
                      validation_fraction=args.validation_fraction, validation_max_clips=args.validation_max_clips,
                      fold=args.fold)
    optim = OptimConfig(lr=_pick(args.lr, profile.lr), warmup_steps=warmup_steps,
                        weight_decay=_pick(args.weight_decay, profile.weight_decay), grad_clip=args.grad_clip,
                        backbone_lr_scale=_pick(args.backbone_lr_scale, 1.0))
    paths = _data_paths(data)
    sample_rate, clip_samples, label_names = _data_header(*paths)
    log_mel = LogMelConfig(sample_rate=sample_rate, clip_samples=clip_samples)
    if init is None:
        model = model_config(args, preset, name, num_classes=len(label_names), input_frames=log_mel.frames)
    else:
        model, log_mel = _finetune_model(args, name, init, log_mel, paths[0], len(label_names))
    return TrainConfig(model=model, log_mel=log_mel, data=data, optim=optim, run=run), paths


def clip_schedule(args: argparse.Namespace, profile: str, world_size: int) -> tuple[int | None, int, int]:
    """The run's length in steps (None: --epochs), steps between evaluations and warm-up steps, from the step
    flags or the clips-seen ones (ceil(clips / (batch size x processes))), else the profile's."""
    defaults = PROFILES[profile]
    clips_per_step = _pick(args.batch_size, defaults.batch_size) * world_size

    def in_steps(clips: int | None, steps: int | None, default: int) -> int:
        return steps_for_clips(clips, clips_per_step) if clips is not None else _pick(steps, default)

    steps = None if args.epochs is not None else in_steps(args.clips, args.steps, defaults.steps)
    return (steps, in_steps(args.eval_every_clips, args.eval_every, defaults.eval_every),
            in_steps(args.warmup_clips, args.warmup_steps, defaults.warmup_steps))


def _finetune_model(args: argparse.Namespace, profile: str, init: tuple, log_mel: LogMelConfig, train_path: str,
                    num_classes: int) -> tuple[ModelConfig, LogMelConfig]:
    """The model and front end of a run with --init: the checkpoint's, with the data's label count; a model
    flag asking for another model, or data of another clip length, is a one-line ValueError."""
    _, saved, saved_log_mel = init
    if (log_mel.sample_rate, log_mel.clip_samples) != (saved_log_mel.sample_rate, saved_log_mel.clip_samples):
        raise ValueError(f"{train_path} holds {log_mel.clip_samples / log_mel.sample_rate:g} s clips at "
                         f"{log_mel.sample_rate} Hz but --init {args.init} was trained on "
                         f"{saved_log_mel.clip_samples / saved_log_mel.sample_rate:g} s clips at "
                         f"{saved_log_mel.sample_rate} Hz; pack the data again at the checkpoint's clip length "
                         f"(`python -m train.pack ... --clip-seconds "
                         f"{saved_log_mel.clip_samples / saved_log_mel.sample_rate:g}`: shorter clips are padded)")
    finetune.check_model_flags(args.init, saved, {
        "--preset": ModelConfig.from_name(args.preset) if args.preset else None,
        "--channels": replace(saved, channels=args.channels) if args.channels else None,
        "--pooling-plan": replace(saved, pools=POOLING_PLANS[args.pooling_plan]) if args.pooling_plan else None})
    fused = PROFILES[profile].fused_attention if args.fused_attention is None else args.fused_attention
    return finetune.finetune_model_config(saved, num_classes, fused), saved_log_mel


def _data_paths(data: DataConfig) -> tuple[str, str | None]:
    """The training and eval splits (None: a fold of the training split), generating the built-in set on first
    use (once, under a file lock)."""
    if data.train_path is not None:
        return data.train_path, data.eval_path
    train_path, eval_path = ensure_builtin(Path(data.builtin_dir).expanduser(), data.builtin)
    return str(train_path), str(eval_path)


def _data_header(train_path: str, eval_path: str | None) -> tuple[int, int, tuple[str, ...]]:
    """Sample rate, clip length and label names of the training split (its eval split must agree)."""
    train = ShardIndex.open(train_path)
    held_out = train if eval_path is None else ShardIndex.open(eval_path)
    if train.label_names != held_out.label_names or train.clip_samples != held_out.clip_samples:
        raise ValueError(f"{train_path} and {eval_path} have different labels or clip lengths; "
                         f"evaluate on a split packed with the training split's label set")
    return train.sample_rate, train.clip_samples, train.label_names


def describe_run(config: TrainConfig, total_steps: int, world_size: int, clips: int, validation_clips: int) -> str:
    """What was chosen, printed at the start."""
    m, d, o, r = config.model, config.data, config.optim, config.run
    source = (f"built-in set in {Path(d.builtin_dir).expanduser() / ('synth-' + d.builtin.cache_key())}"
              if d.train_path is None else d.train_path)
    return "\n".join([
        f"model {m.name!r}: channels {m.channels}, arrangement {m.arrangement} x{m.attention_depth}, "
        f"{m.num_classes} classes, input {m.input_frames}x{m.n_mels}, {m.pooling_plan} pooling plan "
        f"({config.log_mel.clip_samples / config.log_mel.sample_rate:g} s clips), fused attention {m.fused_attention}",
        f"data: {source} ({clips} training clips, {validation_clips} of them held out for validation), "
        f"test {f'fold {d.fold} of {d.train_path}' if d.fold is not None else d.eval_path or 'built-in eval split'} "
        f"(evaluated once, at the end, with best.pt)",
        f"run: {total_steps} steps x {d.loader.batch_size} clips x {world_size} process(es), {d.loader.sampler} "
        f"sampler, AdamW lr {o.lr:g}{f' (backbone x{o.backbone_lr_scale:g})' if o.backbone_lr_scale != 1 else ''} "
        f"(warm-up {o.warmup_steps}, cosine), eval every {r.eval_every}, "
        f"compile {f'{r.compile_backend} (mode {r.compile_mode})' if r.compile else 'off'}, "
        f"{'channels_last' if r.channels_last else 'contiguous'} memory format, {torch.get_num_threads()} CPU "
        f"thread(s), out {r.out}",
    ])


def train(config: TrainConfig, train_path: str, eval_path: str, ctx: distributed.Context,
          stop: StopRequest) -> dict[str, dict[str, float]] | None:
    """Run training to the end (or to early stopping), or until a signal stops it; {"validation": best.pt's
    validation summary, "test": its test summary}, None when a signal stopped it."""
    run, data, device = config.run, config.data, ctx.device
    out = Path(run.out)
    latest = out / "latest.pt"
    if latest.exists() and not run.resume:
        raise ValueError(f"{latest} exists; pass --resume to continue that run, or another --out to start a new one")
    if run.resume and not latest.exists():
        raise ValueError(f"--resume: no checkpoint at {latest}; drop --resume to start a new run there")
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)
    if run.threads is not None:
        torch.set_num_threads(run.threads)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True   # every batch has one shape: cuDNN's algorithm search runs once
    torch.manual_seed(run.seed)

    eval_loader_config = LoaderConfig(batch_size=data.eval_batch_size, sampler="sequential",
                                      num_workers=data.loader.num_workers, drop_last=False)
    train_part, validation_part, test_part = holdout.split_run(train_path, eval_path, data.validation_fraction,
                                                               data.validation_max_clips, data.loader.seed, data.fold)
    # what the data is, whatever path names it: a resume compares these, not the paths
    fingerprints = {"train": checkpoint.data_fingerprint(train_path),
                    "test": checkpoint.data_fingerprint(eval_path or train_path)}
    with (LogMelLoader(train_part, data.loader, config.log_mel, device, ctx.rank, ctx.world_size) as train_loader,
          LogMelLoader(validation_part, eval_loader_config, config.log_mel, device, ctx.rank,
                       ctx.world_size) as validation_loader,
          LogMelLoader(test_part, eval_loader_config, config.log_mel, device, ctx.rank, ctx.world_size) as eval_loader):
        total_steps = run.steps if run.steps is not None else run.epochs * len(train_loader)
        model = build_model(config.model).to(device)
        started_from = None
        if run.init is not None and not run.resume:
            started_from = finetune.load_init(model, finetune.read_init(run.init)[0], run.init,
                                              tuple(train_loader.label_names))
        finetune.freeze(model, run.freeze_blocks)
        if run.channels_last:   # before the optimiser, whose moments then take the weights' layout
            model = model.to(memory_format=torch.channels_last)
        optimizer = build_optimizer(model, config.optim)
        scheduler = build_scheduler(optimizer, config.optim, total_steps)
        state = checkpoint.TrainState()
        event_config = EventConfig()   # per-class thresholds chosen on validation at the best evaluation so far
        if run.resume:
            payload = checkpoint.load_for_resume(latest, config, fingerprints)
            if len(payload["loader"]) != ctx.world_size:
                raise CheckpointError(f"{latest} was written by {len(payload['loader'])} process(es) but this run "
                                      f"has {ctx.world_size}; resume with torchrun --nproc_per_node="
                                      f"{len(payload['loader'])} (or without torchrun for 1)")
            checkpoint.load_state(model, payload["model"], latest, "model")
            checkpoint.load_state(optimizer, payload["optimizer"], latest, "optimizer")
            checkpoint.load_state(scheduler, payload["scheduler"], latest, "scheduler")
            train_loader.load_state_dict(payload["loader"][ctx.rank])
            checkpoint.set_rng_state(payload["rng"][ctx.rank])
            state = checkpoint.restore_train_state(payload)
            event_config = stored_event_config(payload["config"])
        if ctx.is_main:
            print(describe_run(config, total_steps, ctx.world_size, train_loader.num_clips + validation_loader.num_clips,
                               validation_loader.num_clips), flush=True)
            if run.resume:
                print(f"resumed from {latest} at step {state.step}", flush=True)
            if started_from is not None:
                print(f"fine-tuning from the {started_from}; {finetune.describe_freeze(model)}", flush=True)

        # a backend other than inductor only ever gets mode "default" (RunConfig), which torch.compile keeps to itself
        train_model = (compile_for_training(model, run.compile_backend, run.compile_mode, config.model.fused_attention)
                       if run.compile else model)
        if ctx.world_size > 1:
            distributed.match_grad_strides(model)
            train_model = DistributedDataParallel(train_model,
                                                  device_ids=[device.index] if device.type == "cuda" else None)
        log = MetricsLog(out, enabled=ctx.is_main, resume_step=state.step if run.resume else None)
        cadence = checkpoint.Cadence(run.checkpoint_minutes)
        label_names = tuple(train_loader.label_names)
        strong = localisation.reference_for_split(train_path, None)   # None: no strong labels were packed
        if strong is not None:   # the validation clips' names, in the validation loader's order
            strong = ([strong[0][i] for i in validation_part.clips], strong[1])

        watch = NonFiniteWatch.on(device)
        parameters = list(model.parameters())
        saved_step = state.step if run.resume else None

        def check_diverged(weights: bool) -> None:
            """Stop the run (one line) if a loss so far was not finite or, with `weights`, a weight is not: before
            a log line, an evaluation or a checkpoint, so latest.pt only ever holds finite weights."""
            bad_loss = watch.first_bad()
            bad_weights = weights and not all(bool(torch.isfinite(p).all()) for p in model.parameters())
            if not distributed.any_rank(bool(bad_loss) or bad_weights, device):
                return
            lr = config.optim.lr * lr_factor(bad_loss or state.step, config.optim, total_steps)
            what = f"the loss at step {bad_loss} was not finite" if bad_loss else \
                f"the weights after step {state.step} are not finite"
            kept = (f"{latest} holds the last good state (step {saved_step})" if saved_step is not None
                    else "no checkpoint was written")
            raise Diverged(f"training diverged: {what}; the likely cause is a learning rate too high (lr {lr:.3g} "
                           f"there, --lr {config.optim.lr:g}{'' if config.optim.grad_clip else ', no --grad-clip'}): "
                           f"{kept}; start a new run with a lower --lr (e.g. {config.optim.lr / 10:g}) and another "
                           f"--out, or --init {latest}")

        def save_latest() -> None:
            """Every rank's loader position and RNG states go into rank 0's latest.pt (never non-finite weights)."""
            nonlocal saved_step
            check_diverged(weights=True)
            loader_states = distributed.gather_objects(train_loader.state_dict())
            rng_states = distributed.gather_objects(checkpoint.rng_state())
            if ctx.is_main:
                # every epoch has len(train_loader) steps, so this is the epoch the loader is in
                epoch = state.step // len(train_loader)
                checkpoint.save(latest, checkpoint.make_payload(model, optimizer, scheduler, loader_states, rng_states,
                                                                state, epoch, config, label_names, fingerprints,
                                                                asdict(event_config)))
            saved_step = state.step

        def say(text: str) -> None:
            if ctx.is_main:
                tqdm.write(text)

        if not run.resume:   # a checkpoint before the first step: a run that diverges or dies early keeps a good one
            save_latest()
        if run.compile and state.step < total_steps:
            say(f"compiling the model in the first step (a minute or more); a later run of the same model and "
                f"shapes reuses Inductor's cache in {inductor_cache_dir()}")
        bar = None   # made after the first step, so its rate and ETA leave out compilation and warm-up
        summary: dict[str, float] = {}
        best_summary: dict[str, float] = {}
        reported: set[str] = set()   # notes already printed (no scorable class, a localisation fault)
        clips_per_step = data.loader.batch_size * ctx.world_size
        start_step, mark_step, mark_time = state.step, state.step, time.perf_counter()
        interrupted = distributed.any_rank(stop.requested, device)   # a signal during start-up: stop at once
        stopping = interrupted or state.step >= total_steps
        model.train()
        while not stopping:
            for log_mel, target in train_loader:
                try:
                    loss = training_step(train_model, parameters, optimizer, log_mel, target, config.optim.grad_clip,
                                         watch, state.step + 1)
                except NonFiniteOutput:
                    check_diverged(weights=False)
                    raise
                scheduler.step()
                state.step += 1

                if state.step == start_step + 1:   # the first step of a process includes torch.compile's work
                    first_step_s = time.perf_counter() - mark_time
                    log.write("first_step", state.step, seconds=round(first_step_s, 2), compile=run.compile)
                    say(f"first step: {first_step_s:.1f} s" + (" (includes compilation)" if run.compile else ""))
                    bar = tqdm(total=total_steps, initial=state.step, unit="step", dynamic_ncols=True,
                               disable=not ctx.is_main)
                    mark_step, mark_time = state.step, time.perf_counter()
                else:
                    bar.update(1)
                if state.step > start_step + 1 and (state.step % run.log_every == 0 or state.step == total_steps):
                    check_diverged(weights=False)
                    now = time.perf_counter()
                    clips_per_s = (state.step - mark_step) * clips_per_step / (now - mark_time)
                    lr = scheduler.get_last_lr()[0]
                    log.write("train", state.step, epoch=round(state.step / len(train_loader), 3), loss=loss.item(),
                              lr=lr, clips_per_s=round(clips_per_s, 1))
                    bar.set_postfix(loss=f"{loss.item():.4f}", clips_s=f"{clips_per_s:.0f}", lr=f"{lr:.2e}")
                    mark_step, mark_time = state.step, now

                if state.step % run.eval_every == 0 or state.step == total_steps:
                    check_diverged(weights=True)   # a diverged model is neither evaluated nor saved
                    eval_start = time.perf_counter()
                    distributed.broadcast_buffers(model)
                    frames = [] if strong is not None else None
                    metrics, clips = evaluate(model, validation_loader, device, frames)
                    summary = metrics.summary()   # JSON-ready: None where no class could be scored
                    clip_seconds = config.log_mel.clip_samples / config.log_mel.sample_rate
                    located = localisation.score_during_training(frames, strong if ctx.is_main else None, label_names,
                                                                 clip_seconds, ctx.world_size)
                    # with no class scorable (the split is fixed, so at every evaluation) best.pt follows the latest
                    scorable = summary["mAP"] is not None
                    improved = summary["mAP"] > state.best_map if scorable else True
                    if improved:
                        state.best_step, best_summary = state.step, summary
                        state.best_map = summary["mAP"] if scorable else state.best_map
                        if strong is not None and ctx.is_main:   # stored with best.pt
                            event_config = localisation.thresholds_during_training(
                                frames, strong, label_names, clip_seconds, ctx.world_size)
                    notes = [] if scorable else [f"note: no validation class has both a positive and a negative "
                                                 f"clip ({summary['excluded_classes']} class(es)), so mAP is "
                                                 f"undefined; best.pt is the latest evaluation's model"]
                    if "localisation_error" in located:
                        notes.append(f"warning: {located['localisation_error']}; training goes on")
                    for note in notes:
                        if note not in reported and ctx.is_main:   # once each, not at every evaluation
                            reported.add(note)
                            tqdm.write(note, file=sys.stderr)
                    save_latest()
                    cadence.reset()
                    if improved and ctx.is_main:
                        checkpoint.copy(latest, out / "best.pt")
                    eval_s = time.perf_counter() - eval_start
                    log.write("val", state.step, **summary, **located, clips=clips, seconds=round(eval_s, 2))
                    say(f"step {state.step}: validation {summary_text(summary)}"
                        f"{localisation.progress_text(located, clips)}  ({eval_s:.1f} s)"
                        f"{'  best' if improved and scorable else ''}")
                    mark_time += time.perf_counter() - eval_start   # clips/s counts training time only
                    bar.unpause()                                   # and so does the bar's ETA

                    if run.patience and (state.step - state.best_step) // run.eval_every >= run.patience:
                        say(f"early stop: no better validation mAP in {run.patience} evaluations since step "
                            f"{state.best_step}")
                        total_steps = state.step

                if state.step % run.log_every == 0 and distributed.any_rank(cadence.due(), device):
                    save_latest()
                    cadence.reset()
                interrupted = distributed.any_rank(stop.requested, device)
                stopping = interrupted or state.step >= total_steps
                if stopping:
                    break
        if bar is not None:
            bar.close()
        if interrupted and state.step < total_steps:
            log.close()
            save_latest()
            if ctx.is_main:
                print(f"stopped by {stop.signal_name or 'a signal on another rank'} after step {state.step}; "
                      f"wrote {latest} (resume with --resume)", flush=True)
            return None
        distributed.gather_objects(None)   # a barrier: rank 0 has written best.pt
        best = checkpoint.read_checkpoint(out / "best.pt")
        model.load_state_dict(best["model"])
        distributed.broadcast_buffers(model)
        test_path = train_path if data.fold is not None else eval_path or train_path   # a fold is part of --data
        test_strong = localisation.test_reference(test_part, test_path) if ctx.is_main else None
        test_strong = distributed.gather_objects(test_strong)[0]   # every rank gathers frames, or none does
        frames = [] if test_strong is not None else None
        metrics, clips = evaluate(model, eval_loader, device, frames)
        # with best.pt's thresholds, chosen on validation; all five figures (a test is scored once)
        located = localisation.score_during_training(frames, test_strong if ctx.is_main else None, label_names,
                                                     config.log_mel.clip_samples / config.log_mel.sample_rate,
                                                     ctx.world_size, stored_event_config(best["config"]), quick=False)
        if "localisation_error" in located and ctx.is_main:
            tqdm.write(f"warning: test split: {located['localisation_error']}", file=sys.stderr)
        test = {**metrics.summary(), **{k: v for k, v in located.items() if k != "localisation_error"}}
        log.write("test", state.step, **test, clips=clips, best_step=state.best_step,
                  validation_mAP=state.best_map if state.best_map >= 0 else None)
        log.close()
        if ctx.is_main:
            write_model_folder(out, ShardIndex.open(train_path).label_mids)
        return {"validation": best_summary or {"mAP": state.best_map}, "test": test}


def write_model_folder(out: Path, label_mids: tuple[str, ...]) -> None:
    """OUT/pretrained: best.pt in the Hugging Face layout (fastsca/hub.py), what `fastsca.Tagger.from_pretrained`
    and the Hub take. best.pt is already whole, so a failure here (a full disk) is one warning line, not an error."""
    try:
        save_pretrained_from_checkpoint(out / "best.pt", out / PRETRAINED_FOLDER, label_mids=label_mids)
    except (OSError, ValueError) as error:
        reason = describe_os_error(error, f"write {out / PRETRAINED_FOLDER}") if isinstance(error, OSError) else error
        tqdm.write(f"warning: {reason}; best.pt is whole: write the folder later with `python -m fastsca.hub "
                   f"{out / 'best.pt'} --out {out / PRETRAINED_FOLDER}`", file=sys.stderr)


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = distributed.setup()
    try:
        with StopRequest() as stop:
            start = time.perf_counter()
            profile, why = resolve_profile(args.profile, ctx.device.type == "cuda")
            if ctx.is_main:
                print(f"profile {profile} ({why}): defaults from train/config.py PROFILES[{profile!r}]", flush=True)
            args, recipe_line = apply_recipe(args)
            config, (train_path, eval_path) = build_config(args, profile, ctx.device.type == "cuda", ctx.world_size)
            schedule_line = schedule_text(args, config.run.steps, config.run.eval_every, config.optim.warmup_steps,
                                          config.data.loader.batch_size * ctx.world_size)
            if ctx.is_main:
                for line in (recipe_line, schedule_line):
                    if line is not None:
                        print(line, flush=True)
            with RunLock(Path(config.run.out), enabled=ctx.is_main):
                # a worker of this torchrun job died and torchrun restarted them all: continue from latest.pt
                if distributed.resumes_after_restart(Path(config.run.out), config.run.resume, ctx.is_main) \
                        and not config.run.resume:
                    config = replace(config, run=replace(config.run, resume=True))
                    if ctx.is_main:
                        print(f"torchrun restarted this job's workers: continuing its run from "
                              f"{Path(config.run.out) / 'latest.pt'}", flush=True)
                summary = train(config, train_path, eval_path, ctx, stop)
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
        test = summary["test"]
        validation_map = summary["validation"].get("mAP")
        chosen = (f"validation mAP {validation_map:.4f}" if validation_map is not None and validation_map >= 0
                  else "the latest evaluation: no validation class could be scored")
        print(f"done in {time.perf_counter() - start:.0f} s: best.pt ({chosen}) on the test split: "
              f"{summary_text(test)}; checkpoints in {config.run.out}; model folder {Path(config.run.out) / PRETRAINED_FOLDER}")


if __name__ == "__main__":
    main()
