"""A training run's config from `python -m train.run`'s flags: flag > recipe > profile, resolved once.

`build_config` turns the parsed flags (with a recipe's already filled in: train/recipes.py's `apply`) and the
resolved hardware `Profile` into a `TrainConfig`, its `RunOptions` included, checking every number first
(`NUMBER_LIMITS`), so a bad flag fails before the built-in set is generated.
"""
import argparse
from dataclasses import replace
from pathlib import Path

from fastsca.config import POOLING_PLANS, ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.model_options import DEFAULT_PRESET, model_config
from fastsca.run_options import resolve_run_options
from train import finetune
from train.cli import Limit, check_numbers
from train.config import DataConfig, OptimConfig, RunConfig, TrainConfig
from train.data.loader import LoaderConfig
from train.profiles import Profile
from train.recipes import steps_for_clips
from train.data.shards import ShardIndex
from train.data.synth import SynthConfig, ensure_builtin

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
    "strong_loss_weight": Limit(0, 1000, why="beyond it the clip BCE has no say in the gradient (DCASE's baselines "
                                            "weigh the two equally)"),
    "backbone_lr_scale": Limit(0), "clips": Limit(1), "eval_every_clips": Limit(1), "warmup_clips": Limit(0),
}


def _pick(value, default):
    return default if value is None else value


def build_config(args: argparse.Namespace, profile: Profile, cuda: bool,
                 world_size: int = 1) -> tuple[TrainConfig, tuple[str, str]]:
    """The run's config from the flags, the resolved `profile`, whether it trains on CUDA and the number of
    processes (which turns the clips-seen options into steps), and the (train, eval) split paths; generates the
    built-in set if it is used."""
    check_numbers(args, NUMBER_LIMITS)
    # read before the data: its front end sets the built-in set's clip length
    init = finetune.read_init(args.init) if args.init is not None else None
    if init is None and args.freeze_blocks:
        raise ValueError("--freeze-blocks freezes blocks of the model --init starts from: give --init CKPT too")
    preset = args.preset or (init.model.name if init is not None else DEFAULT_PRESET)
    clip_seconds = _pick(args.clip_seconds, profile.clip_seconds)
    if init is not None:
        clip_seconds = init.log_mel.clip_seconds
        if args.clip_seconds is not None and args.clip_seconds != clip_seconds:
            raise ValueError(f"--clip-seconds {args.clip_seconds:g}: --init {args.init} was trained on "
                             f"{clip_seconds:g} s clips, which a fine-tuning run keeps: drop --clip-seconds")
    # made before the data, so that a bad run flag fails before the built-in set is generated
    run = run_config(args, preset, profile, world_size)
    options = resolve_run_options(vars(args), profile.name, cuda)
    data = data_config(args, profile, clip_seconds)
    optim = OptimConfig(lr=_pick(args.lr, profile.lr), warmup_steps=clip_schedule(args, profile, world_size)[2],
                        weight_decay=_pick(args.weight_decay, profile.weight_decay), grad_clip=args.grad_clip,
                        strong_loss_weight=_pick(args.strong_loss_weight, OptimConfig().strong_loss_weight),
                        backbone_lr_scale=_pick(args.backbone_lr_scale, 1.0))
    paths = _data_paths(data)
    sample_rate, clip_samples, label_names = _data_header(*paths, data.validation_path)
    log_mel = LogMelConfig(sample_rate=sample_rate, clip_samples=clip_samples)
    if init is None:
        model = model_config(args, preset, profile, num_classes=len(label_names), input_frames=log_mel.frames)
    else:
        model, log_mel = _finetune_model(args, init, log_mel, paths[0], len(label_names))
    return TrainConfig(model=model, log_mel=log_mel, data=data, optim=optim, run=run, options=options), paths


def run_config(args: argparse.Namespace, preset: str, profile: Profile, world_size: int) -> RunConfig:
    """Length, cadence and output of the run."""
    steps, eval_every, _ = clip_schedule(args, profile, world_size)
    return RunConfig(out=args.out or f"runs/{preset}-{profile.name}", profile=profile.name, steps=steps,
                     epochs=args.epochs, eval_every=eval_every, log_every=_pick(args.log_every, profile.log_every),
                     patience=args.patience, seed=args.seed, threads=_pick(args.threads, profile.threads),
                     resume=args.resume, checkpoint_minutes=args.checkpoint_minutes, init=args.init,
                     freeze_blocks=args.freeze_blocks)


def data_config(args: argparse.Namespace, profile: Profile, clip_seconds: float) -> DataConfig:
    """The data and its batching: the built-in set's size and clip length, the loader, the validation split."""
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
    return DataConfig(train_path=args.data, eval_path=args.eval_data, builtin_dir=args.builtin_dir,
                      builtin=builtin, loader=loader, eval_batch_size=args.eval_batch_size,
                      validation_fraction=args.validation_fraction, validation_max_clips=args.validation_max_clips,
                      fold=args.fold, validation_path=args.validation_data)


def clip_schedule(args: argparse.Namespace, profile: Profile, world_size: int) -> tuple[int | None, int, int]:
    """The run's length in steps (None: --epochs), steps between evaluations and warm-up steps, from the step
    flags or the clips-seen ones (ceil(clips / (batch size x processes))), else the profile's."""
    clips_per_step = _pick(args.batch_size, profile.batch_size) * world_size

    def in_steps(clips: int | None, steps: int | None, default: int) -> int:
        return steps_for_clips(clips, clips_per_step) if clips is not None else _pick(steps, default)

    steps = None if args.epochs is not None else in_steps(args.clips, args.steps, profile.steps)
    return (steps, in_steps(args.eval_every_clips, args.eval_every, profile.eval_every),
            in_steps(args.warmup_clips, args.warmup_steps, profile.warmup_steps))


def _finetune_model(args: argparse.Namespace, init: finetune.InitModel, log_mel: LogMelConfig, train_path: str,
                    num_classes: int) -> tuple[ModelConfig, LogMelConfig]:
    """The model and front end of a run with --init: the reference's, with the data's label count; a model
    flag asking for another model, or data of another clip length, is a one-line ValueError."""
    saved, saved_log_mel = init.model, init.log_mel
    if (log_mel.sample_rate, log_mel.clip_samples) != (saved_log_mel.sample_rate, saved_log_mel.clip_samples):
        raise ValueError(f"{train_path} holds {log_mel.clip_seconds:g} s clips at {log_mel.sample_rate} Hz but "
                         f"--init {args.init} was trained on {saved_log_mel.clip_seconds:g} s clips at "
                         f"{saved_log_mel.sample_rate} Hz; pack the data again at the checkpoint's clip length "
                         f"(`python -m train.pack ... --clip-seconds {saved_log_mel.clip_seconds:g}`: shorter clips "
                         f"are padded)")
    finetune.check_model_flags(args.init, saved, {
        "--preset": ModelConfig.from_name(args.preset) if args.preset else None,
        "--channels": replace(saved, channels=args.channels) if args.channels else None,
        "--pooling-plan": replace(saved, pools=POOLING_PLANS[args.pooling_plan]) if args.pooling_plan else None,
        "--pooling": replace(saved, pooling=args.pooling) if args.pooling else None})
    return finetune.finetune_model_config(saved, num_classes), saved_log_mel


def _data_paths(data: DataConfig) -> tuple[str, str | None]:
    """The training and eval splits (None: a fold of the training split), generating the built-in set on first
    use (once, under a file lock)."""
    if data.train_path is not None:
        return data.train_path, data.eval_path
    train_path, eval_path = ensure_builtin(Path(data.builtin_dir).expanduser(), data.builtin)
    return str(train_path), str(eval_path)


def _data_header(train_path: str, *held_out_paths: str | None) -> tuple[int, int, tuple[str, ...]]:
    """Sample rate, clip length and label names of the training split (its test and validation splits must
    agree)."""
    train = ShardIndex.open(train_path)
    for path in held_out_paths:
        held_out = train if path is None else ShardIndex.open(path)
        if train.label_names != held_out.label_names or train.clip_samples != held_out.clip_samples:
            raise ValueError(f"{train_path} and {path} have different labels or clip lengths; "
                             f"evaluate on a split packed with the training split's label set")
    return train.sample_rate, train.clip_samples, train.label_names
