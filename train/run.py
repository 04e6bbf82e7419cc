"""`python -m train.run [--compile] [--preset at-sca-3] [--data D --eval-data E] [--out DIR] [--resume] ...`

Trains an AT-SCA preset with AdamW (warm-up + cosine), bf16 autocast on CUDA, gradient clipping and
periodic evaluation (mAP, mAUC, d') on a held-out split; writes OUT/metrics.jsonl, OUT/latest.pt and
OUT/best.pt (by eval mAP). With no --data it trains on the built-in synthetic set (train/synth.py),
generated once into --builtin-dir (default ~/.cache/fastsca). `--profile auto` picks `gpu` (the preset
as it is, 10 s clips) where CUDA is available and `cpu` (narrow blocks, 2 s clips, a run of a few
minutes) otherwise; see train/config.py. Under `torchrun --nproc_per_node=N -m train.run ...` it runs
DDP, the loader sharded by rank. Ctrl-C or SIGTERM stops after the current step and writes latest.pt;
`--resume` continues from it exactly (same next batch, same losses).
"""
import argparse
import sys
import time
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fastsca.config import PRESETS, ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.inference import CheckpointError
from fastsca.model import build_model
from train import checkpoint, distributed, localisation
from train.config import PROFILE_NAMES, PROFILES, DataConfig, OptimConfig, RunConfig, TrainConfig
from train.evaluate import autocast, evaluate
from train.loader import LoaderConfig, LogMelLoader
from train.loss import clip_bce
from train.metrics_log import MetricsLog
from train.optim import build_optimizer, build_scheduler
from train.sampler import SAMPLERS
from train.shards import ShardIndex
from train.signals import StopRequest
from train.synth import SynthConfig, ensure_builtin


def _channels(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(c) for c in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    arg = parser.add_argument
    arg("--profile", choices=PROFILE_NAMES, default="auto", help="hardware defaults (auto: gpu if CUDA is available)")
    arg("--preset", default="at-sca-3", choices=list(PRESETS), metavar="PRESET", help="model preset (default at-sca-3)")
    arg("--channels", type=_channels, help="comma-separated widths of the 7 blocks (default: the profile's)")
    arg("--data", help="training split: a shard .h5 or a folder with index.json (default: the built-in set)")
    arg("--eval-data", help="held-out split for evaluation (with --data)")
    arg("--builtin-dir", default="~/.cache/fastsca", help="where the built-in set is generated and cached")
    arg("--clip-seconds", type=float, help="clip length of the built-in set (default: the profile's)")
    arg("--builtin-train", type=int, help="clips in the built-in training split")
    arg("--builtin-eval", type=int, help="clips in the built-in eval split")
    arg("--out", help="output folder (default runs/PRESET-PROFILE)")
    arg("--resume", action="store_true", help="continue from OUT/latest.pt")
    length = parser.add_mutually_exclusive_group()
    length.add_argument("--steps", type=int, help="optimiser steps (default: the profile's)")
    length.add_argument("--epochs", type=int, help="passes over the training split, instead of --steps")
    arg("--batch-size", type=int, help="clips per step on each process")
    arg("--eval-batch-size", type=int, default=64)
    arg("--sampler", choices=SAMPLERS, default="balanced")
    arg("--num-workers", type=int, help="loader worker processes per training process")
    arg("--mixup-alpha", type=float, default=0.0)
    arg("--spec-augment", action="store_true")
    arg("--lr", type=float, help="peak learning rate")
    arg("--warmup-steps", type=int)
    arg("--weight-decay", type=float, default=0.01)
    arg("--grad-clip", type=float, default=1.0, help="gradient-norm clip (0: off)")
    arg("--eval-every", type=int)
    arg("--log-every", type=int)
    arg("--seed", type=int, default=0)
    arg("--compile", action="store_true", help="torch.compile the model for training")
    arg("--compile-backend", default="inductor", help="torch.compile backend (default inductor)")
    arg("--threads", type=int, help="intra-op CPU threads per process (default: the profile's)")
    return parser.parse_args(argv)


def _pick(value, default):
    return default if value is None else value


def resolve_profile(requested: str, cuda: bool) -> tuple[str, str]:
    """The profile's name and why it was chosen."""
    if requested != "auto":
        return requested, "asked for"
    return ("gpu", "auto: CUDA is available") if cuda else ("cpu", "auto: no CUDA device")


def build_config(args: argparse.Namespace, name: str) -> tuple[TrainConfig, tuple[str, str]]:
    """The run's config from the flags and profile `name`, and the (train, eval) split paths; generates the
    built-in set if it is used."""
    profile = PROFILES[name]
    clip_seconds = _pick(args.clip_seconds, profile.clip_seconds)
    # events last 10-40 % of a clip, as in SynthConfig's 1-4 s events on 10 s clips
    builtin = SynthConfig(clip_seconds=clip_seconds, event_seconds=(0.1 * clip_seconds, 0.4 * clip_seconds),
                          n_train=_pick(args.builtin_train, profile.builtin_train),
                          n_eval=_pick(args.builtin_eval, profile.builtin_eval))
    loader = LoaderConfig(batch_size=_pick(args.batch_size, profile.batch_size), sampler=args.sampler,
                          seed=args.seed, num_workers=_pick(args.num_workers, profile.num_workers),
                          mixup_alpha=args.mixup_alpha, spec_augment=args.spec_augment)
    data = DataConfig(train_path=args.data, eval_path=args.eval_data, builtin_dir=args.builtin_dir,
                      builtin=builtin, loader=loader, eval_batch_size=args.eval_batch_size)
    paths = _data_paths(data)
    sample_rate, clip_samples, label_names = _data_header(*paths)
    log_mel = LogMelConfig(sample_rate=sample_rate, clip_samples=clip_samples)
    model = ModelConfig.from_name(args.preset, num_classes=len(label_names), input_frames=log_mel.frames,
                                  channels=args.channels or profile.channels or PRESETS[args.preset].channels,
                                  fused_attention=profile.fused_attention)
    optim = OptimConfig(lr=_pick(args.lr, profile.lr), warmup_steps=_pick(args.warmup_steps, profile.warmup_steps),
                        weight_decay=args.weight_decay, grad_clip=args.grad_clip)
    steps = None if args.epochs is not None else _pick(args.steps, profile.steps)
    run = RunConfig(out=args.out or f"runs/{args.preset}-{name}", profile=name, steps=steps, epochs=args.epochs,
                    eval_every=_pick(args.eval_every, profile.eval_every),
                    log_every=_pick(args.log_every, profile.log_every), seed=args.seed, compile=args.compile,
                    compile_backend=args.compile_backend,
                    threads=_pick(args.threads, profile.threads), resume=args.resume)
    return TrainConfig(model=model, log_mel=log_mel, data=data, optim=optim, run=run), paths


def _data_paths(data: DataConfig) -> tuple[str, str]:
    """The training and eval splits, generating the built-in set on first use (once, under a file lock)."""
    if data.train_path is not None:
        return data.train_path, data.eval_path
    train_path, eval_path = ensure_builtin(Path(data.builtin_dir).expanduser(), data.builtin)
    return str(train_path), str(eval_path)


def _data_header(train_path: str, eval_path: str) -> tuple[int, int, tuple[str, ...]]:
    """Sample rate, clip length and label names of the training split (its eval split must agree)."""
    train, held_out = ShardIndex.open(train_path), ShardIndex.open(eval_path)
    if train.label_names != held_out.label_names or train.clip_samples != held_out.clip_samples:
        raise ValueError(f"{train_path} and {eval_path} have different labels or clip lengths; "
                         f"evaluate on a split packed with the training split's label set")
    return train.sample_rate, train.clip_samples, train.label_names


def describe_run(config: TrainConfig, total_steps: int, world_size: int, clips: int) -> str:
    """What was chosen, printed at the start."""
    m, d, o, r = config.model, config.data, config.optim, config.run
    source = (f"built-in set in {Path(d.builtin_dir).expanduser() / ('synth-' + d.builtin.cache_key())}"
              if d.train_path is None else d.train_path)
    return "\n".join([
        f"model {m.name!r}: channels {m.channels}, arrangement {m.arrangement} x{m.attention_depth}, "
        f"{m.num_classes} classes, input {m.input_frames}x{m.n_mels} "
        f"({config.log_mel.clip_samples / config.log_mel.sample_rate:g} s clips), fused attention {m.fused_attention}",
        f"data: {source} ({clips} training clips), eval {d.eval_path or 'built-in eval split'}",
        f"run: {total_steps} steps x {d.loader.batch_size} clips x {world_size} process(es), {d.loader.sampler} "
        f"sampler, AdamW lr {o.lr:g} (warm-up {o.warmup_steps}, cosine), eval every {r.eval_every}, "
        f"compile {r.compile_backend if r.compile else 'off'}, {torch.get_num_threads()} CPU thread(s), out {r.out}",
    ])


def train(config: TrainConfig, train_path: str, eval_path: str, ctx: distributed.Context,
          stop: StopRequest) -> dict[str, float] | None:
    """Run training to the end, or until a signal stops it; the last eval summary, None when stopped early."""
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
    with (LogMelLoader(train_path, data.loader, config.log_mel, device, ctx.rank, ctx.world_size) as train_loader,
          LogMelLoader(eval_path, eval_loader_config, config.log_mel, device, ctx.rank, ctx.world_size) as eval_loader):
        total_steps = run.steps if run.steps is not None else run.epochs * len(train_loader)
        model = build_model(config.model).to(device)
        optimizer = build_optimizer(model, config.optim)
        scheduler = build_scheduler(optimizer, config.optim, total_steps)
        state = checkpoint.TrainState()
        if run.resume:
            payload = checkpoint.load_for_resume(latest, config)
            if len(payload["loader"]) != ctx.world_size:
                raise CheckpointError(f"{latest} was written by {len(payload['loader'])} process(es) but this run "
                                      f"has {ctx.world_size}; resume with torchrun --nproc_per_node="
                                      f"{len(payload['loader'])} (or without torchrun for 1)")
            model.load_state_dict(payload["model"])
            optimizer.load_state_dict(payload["optimizer"])
            scheduler.load_state_dict(payload["scheduler"])
            train_loader.load_state_dict(payload["loader"][ctx.rank])
            checkpoint.set_rng_state(payload["rng"][ctx.rank])
            state = checkpoint.restore_train_state(payload)
        if ctx.is_main:
            print(describe_run(config, total_steps, ctx.world_size, train_loader.num_clips), flush=True)
            if run.resume:
                print(f"resumed from {latest} at step {state.step}", flush=True)

        train_model = torch.compile(model, backend=run.compile_backend) if run.compile else model
        if ctx.world_size > 1:
            train_model = DistributedDataParallel(train_model,
                                                  device_ids=[device.index] if device.type == "cuda" else None)
        log = MetricsLog(out, enabled=ctx.is_main)
        label_names = tuple(train_loader.label_names)
        strong = localisation.reference_for_split(eval_path, None)   # None: the eval split has no strong labels

        def save_latest() -> None:
            """Every rank's loader position and RNG states go into rank 0's latest.pt."""
            loader_states = distributed.gather_objects(train_loader.state_dict())
            rng_states = distributed.gather_objects(checkpoint.rng_state())
            if ctx.is_main:
                # every epoch has len(train_loader) steps, so this is the epoch the loader is in
                epoch = state.step // len(train_loader)
                checkpoint.save(latest, checkpoint.make_payload(model, optimizer, scheduler, loader_states, rng_states,
                                                                state, epoch, config, label_names))

        def say(text: str) -> None:
            if ctx.is_main:
                tqdm.write(text)

        bar = tqdm(total=total_steps, initial=state.step, unit="step", dynamic_ncols=True, disable=not ctx.is_main)
        summary: dict[str, float] = {}
        clips_per_step = data.loader.batch_size * ctx.world_size
        start_step, mark_step, mark_time = state.step, state.step, time.perf_counter()
        stopping, interrupted = state.step >= total_steps, False
        model.train()
        while not stopping:
            for log_mel, target in train_loader:
                with autocast(device):
                    output = train_model(log_mel)
                loss = clip_bce(output.clip, target)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if config.optim.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), config.optim.grad_clip)
                optimizer.step()
                scheduler.step()
                state.step += 1
                bar.update(1)

                if state.step == start_step + 1:   # the first step of a process includes torch.compile's work
                    first_step_s = time.perf_counter() - mark_time
                    log.write("first_step", state.step, seconds=round(first_step_s, 2), compile=run.compile)
                    say(f"first step: {first_step_s:.1f} s" + (" (includes compilation)" if run.compile else ""))
                    mark_step, mark_time = state.step, time.perf_counter()
                elif state.step % run.log_every == 0 or state.step == total_steps:
                    now = time.perf_counter()
                    clips_per_s = (state.step - mark_step) * clips_per_step / (now - mark_time)
                    lr = scheduler.get_last_lr()[0]
                    log.write("train", state.step, epoch=round(state.step / len(train_loader), 3), loss=loss.item(),
                              lr=lr, clips_per_s=round(clips_per_s, 1))
                    bar.set_postfix(loss=f"{loss.item():.4f}", clips_s=f"{clips_per_s:.0f}", lr=f"{lr:.2e}")
                    mark_step, mark_time = state.step, now

                if state.step % run.eval_every == 0 or state.step == total_steps:
                    eval_start = time.perf_counter()
                    distributed.broadcast_buffers(model)
                    frames = [] if strong is not None else None
                    metrics, clips = evaluate(model, eval_loader, device, frames)
                    summary = {k: float(v) for k, v in metrics.summary().items()}
                    located = localisation.score_during_training(frames, strong if ctx.is_main else None, label_names,
                                                                 config.log_mel.clip_samples
                                                                 / config.log_mel.sample_rate, ctx.world_size)
                    improved = summary["mAP"] > state.best_map
                    state.best_map = max(state.best_map, summary["mAP"])
                    save_latest()
                    if improved and ctx.is_main:
                        checkpoint.copy(latest, out / "best.pt")
                    eval_s = time.perf_counter() - eval_start
                    log.write("eval", state.step, **summary, **located, clips=clips, seconds=round(eval_s, 2))
                    say(f"step {state.step}: eval mAP {summary['mAP']:.4f}  mAUC {summary['mAUC']:.4f}  "
                        f"d' {summary['d_prime']:.3f}{localisation.progress_text(located)}  ({eval_s:.1f} s)"
                        f"{'  best' if improved else ''}")
                    mark_time += time.perf_counter() - eval_start   # clips/s counts training time only

                interrupted = distributed.any_rank(stop.requested, device)
                stopping = interrupted or state.step >= total_steps
                if stopping:
                    break
        bar.close()
        log.close()
        if interrupted and state.step < total_steps:
            save_latest()
            if ctx.is_main:
                print(f"stopped by {stop.signal_name or 'a signal on another rank'} after step {state.step}; "
                      f"wrote {latest} (resume with --resume)", flush=True)
            return None
        return summary


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    ctx = distributed.setup()
    try:
        with StopRequest() as stop:
            start = time.perf_counter()
            profile, why = resolve_profile(args.profile, ctx.device.type == "cuda")
            if ctx.is_main:
                print(f"profile {profile} ({why}): defaults from train/config.py PROFILES[{profile!r}]", flush=True)
            config, (train_path, eval_path) = build_config(args, profile)
            summary = train(config, train_path, eval_path, ctx, stop)
    except ValueError as error:   # config errors, and CheckpointError and ShardError, which are ValueErrors
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    finally:
        distributed.teardown()
    if ctx.is_main and summary:
        print(f"done in {time.perf_counter() - start:.0f} s: eval mAP {summary['mAP']:.4f}, "
              f"mAUC {summary['mAUC']:.4f}, d' {summary['d_prime']:.3f}; checkpoints in {config.run.out}")


if __name__ == "__main__":
    main()
