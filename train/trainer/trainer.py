"""The Trainer: one training run of `python -m train.run`, from its config to best.pt, its test figures and the
model folder.

Its loop reads top to bottom: `step` (train/step.py's `training_step`, then the schedule and the progress),
`validate` when the evaluator says so, a checkpoint when the checkpointer says so, `finish` at the end. Each
component owns its decisions: the `Checkpointer` (train/trainer/checkpointer.py) what latest.pt holds and when it
is written, the resume, best.pt and the model folder; the `DivergenceGuard` when a run has diverged; the
`Evaluator` validation, the best model, its thresholds, early stopping and the final test; `Progress` what is
shown. Ctrl-C or SIGTERM stops after the current step with latest.pt written.
"""
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from fastsca.events import EventConfig
from fastsca.model import build_model
from fastsca.training_compile import compile_for_training
from train import checkpoint, distributed, finetune, localisation
from train.data import holdout
from train.config import TrainConfig
from train.data.frame_targets import StrongTargets
from train.data.loader import LoaderConfig, LogMelLoader
from train.metrics_log import MetricsLog
from train.optim import build_optimiser, build_scheduler
from train.data.shards import ShardIndex
from train.signals import StopRequest
from train.step import NonFiniteOutput, training_step
from train.trainer.checkpointer import Checkpointer, check_out
from train.trainer.evaluator import Evaluator
from train.trainer.guard import DivergenceGuard
from train.trainer.progress import Progress


class Trainer:
    """One run: `with Trainer(...) as trainer: summary = trainer.train()`; the loaders live inside the `with`."""

    def __init__(self, config: TrainConfig, train_path: str, eval_path: str | None, ctx: distributed.Context,
                 stop: StopRequest) -> None:
        self.config, self.train_path, self.eval_path, self.ctx, self.stop = config, train_path, eval_path, ctx, stop
        self.out = check_out(config.run, ctx.is_main)
        self.exits = ExitStack()
        self.progress: Progress | None = None

    def __enter__(self) -> "Trainer":
        try:
            self._set_up()
        except BaseException:
            self.exits.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.progress is not None:   # the compile status's thread too, where the first step failed
            self.progress.close()
        self.exits.close()

    def _set_up(self) -> None:
        run, device = self.config.run, self.ctx.device
        if run.threads is not None:
            torch.set_num_threads(run.threads)
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True   # every batch has one shape: cuDNN's algorithm search runs once
        torch.manual_seed(run.seed)
        self._open_loaders()
        self.total_steps = run.steps if run.steps is not None else run.epochs * len(self.train_loader)
        self._build_model()
        self.guard = DivergenceGuard(self.model, self.config.optim, self.total_steps, self.out / "latest.pt", device,
                                     saved_step=None)
        self.checkpointer = Checkpointer(self.out, self.config, self.ctx, self.fingerprints, self.guard, self.model,
                                         self.optimiser, self.scheduler, self.train_loader)
        self.state, events = checkpoint.TrainState(), EventConfig()
        if run.resume:
            self.state, events = self.checkpointer.resume()
            self.guard.saved(self.state.step)
        self._announce()
        self.train_model = self._wrap(self.model)
        self.log = MetricsLog(self.out, enabled=self.ctx.is_main, resume_step=self.state.step if run.resume else None)
        self.evaluator = Evaluator(self.validation_loader, self.test_loader, self._validation_reference(),
                                   self.label_names, self.config.log_mel.clip_seconds, run, self.config.options,
                                   self.ctx, self.log, events)
        self.progress = Progress(self.log, self.ctx.is_main, self.total_steps, run.log_every,
                                 self.config.data.loader.batch_size * self.ctx.world_size, len(self.train_loader),
                                 self.config.options.compile)

    def _open_loaders(self) -> None:
        """The training, validation and test loaders (this rank's part of each) and the data's fingerprints."""
        data, ctx, log_mel = self.config.data, self.ctx, self.config.log_mel
        eval_config = LoaderConfig(batch_size=data.eval_batch_size, sampler="sequential",
                                   num_workers=data.loader.num_workers, drop_last=False)
        self.parts = holdout.split_run(self.train_path, self.eval_path, data.validation_fraction,
                                       data.validation_max_clips, data.loader.seed, data.fold,
                                       validation_path=data.validation_path)
        # the frame loss's clips: those of the training part with strong labels, none where its weight is 0
        self.strong_clips = int(self.parts[0].strong_clips().sum()) if self.config.optim.strong_loss_weight else 0
        frames = (self.config.model.output_frames if self.strong_clips else 0, 0, 0)
        # what the data is, whatever path names it: a resume compares these, not the paths
        self.fingerprints = {"train": checkpoint.data_fingerprint(self.train_path),
                             "test": checkpoint.data_fingerprint(self.eval_path or self.train_path)}
        if data.validation_path is not None:
            self.fingerprints["validation"] = checkpoint.data_fingerprint(data.validation_path)
        self.train_loader, self.validation_loader, self.test_loader = (
            self.exits.enter_context(LogMelLoader(part, loader_config, log_mel, ctx.device, ctx.rank, ctx.world_size,
                                                  strong_frames))
            for part, loader_config, strong_frames in zip(self.parts, (data.loader, eval_config, eval_config), frames))
        self.label_names = tuple(self.train_loader.label_names)

    def _build_model(self) -> None:
        """The model (from --init's weights where given), frozen blocks, memory format, optimiser and schedule."""
        run = self.config.run
        self.model = build_model(self.config.model, self.config.options).to(self.ctx.device)
        self.started_from = None
        if run.init is not None and not run.resume:
            self.started_from = finetune.load_init(self.model, finetune.read_init(run.init), run.init,
                                                   self.label_names)
        finetune.freeze(self.model, run.freeze_blocks)
        if self.config.options.channels_last:   # before the optimiser, whose moments then take the weights' layout
            self.model = self.model.to(memory_format=torch.channels_last)
        self.parameters = list(self.model.parameters())
        self.optimiser = build_optimiser(self.model, self.config.optim)
        self.scheduler = build_scheduler(self.optimiser, self.config.optim, self.total_steps)

    def _wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What runs the forward: the model, compiled and DDP-wrapped as the run's options and processes say."""
        options = self.config.options
        # a backend other than inductor only ever gets mode "default" (RunOptions), which torch.compile keeps to itself
        if options.compile:
            model = compile_for_training(model, options.compile_backend, options.compile_mode,
                                         fused=options.fused_attention)
        if self.ctx.world_size > 1:
            distributed.match_grad_strides(self.model)
            device = self.ctx.device
            model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        return model

    def _validation_reference(self):
        """The validation clips' strong labels in the validation loader's order; None where none were packed."""
        strong = localisation.reference_for_split(self.config.data.validation_path or self.train_path, None)
        return None if strong is None else ([strong[0][i] for i in self.parts[1].clips], strong[1])

    def _announce(self) -> None:
        """What was chosen, the resume and the fine-tuning start, and a warm-up that outlasts the run."""
        if not self.ctx.is_main:
            return
        print(describe_run(self.config, self.total_steps, self.ctx.world_size,
                           self.train_loader.num_clips + self.validation_loader.num_clips,
                           self.validation_loader.num_clips, self.strong_clips), flush=True)
        if self.config.run.resume:
            print(f"resumed from {self.checkpointer.latest} at step {self.state.step}", flush=True)
        if self.started_from is not None:
            print(f"fine-tuning from the {self.started_from}; {finetune.describe_freeze(self.model)}", flush=True)
        if warning := warmup_warning(self.config, self.total_steps):
            tqdm.write(warning, file=sys.stderr)

    def train(self) -> dict[str, dict[str, float]] | None:
        """Run to the end (or to early stopping), or until a signal stops it; {"validation": best.pt's validation
        summary, "test": its test summary}, None when a signal stopped it."""
        if not self.config.run.resume:   # a checkpoint before the first step: a run that dies early keeps a good one
            self.checkpointer.save(self.state, self.evaluator.events)
        if self.config.options.compile and self.state.step < self.total_steps:
            self._say_compiling()
        self.progress.start(self.state.step)
        interrupted = distributed.any_rank(self.stop.requested, self.ctx.device)   # a signal during start-up
        stopping = interrupted or self.state.step >= self.total_steps
        self.model.train()
        while not stopping:
            for batch in self.train_loader:   # (log_mel, target), and the frame targets where there is a frame loss
                self.step(*batch)
                if self.evaluator.due(self.state.step, self.total_steps):
                    self.validate()
                if self.checkpointer.due(self.state.step):
                    self.checkpointer.save(self.state, self.evaluator.events)
                interrupted = distributed.any_rank(self.stop.requested, self.ctx.device)
                stopping = interrupted or self.state.step >= self.total_steps
                if stopping:
                    break
        self.progress.close()
        if interrupted and self.state.step < self.total_steps:
            return self.stopped()
        return self.finish()

    def step(self, log_mel: torch.Tensor, target: torch.Tensor, strong: StrongTargets | None = None) -> None:
        """One optimiser step, the schedule's step, and the progress (a 'train' line where one is due)."""
        optim = self.config.optim
        try:
            loss = training_step(self.train_model, self.parameters, self.optimiser, log_mel, target,
                                 optim.grad_clip, self.guard.watch, self.state.step + 1, strong=strong,
                                 strong_weight=optim.strong_loss_weight)
        except NonFiniteOutput:
            self.guard.check(self.state.step, weights=False)
            raise
        self.scheduler.step()
        self.state.step += 1
        self.progress.stepped(self.state.step)
        if self.progress.log_due(self.state.step):
            self.guard.check(self.state.step, weights=False)
            self.progress.write(self.state.step, loss.item(), self.scheduler.get_last_lr()[0])

    def validate(self) -> None:
        """Evaluate, write latest.pt (and best.pt when better), report, and stop early where patience ran out."""
        step = self.state.step
        self.guard.check(step, weights=True)   # a diverged model is neither evaluated nor saved
        started = time.perf_counter()
        result = self.evaluator.validate(self.model, self.state)
        self.checkpointer.save(self.state, self.evaluator.events)
        if result.improved:
            self.checkpointer.keep_best()
        self.evaluator.report(result, step, time.perf_counter() - started)
        self.progress.exclude(started)   # clips/s and the bar's ETA count training time only
        if self.evaluator.should_stop(self.state):
            self.total_steps = step
            self.progress.stop_at(step)

    def stopped(self) -> None:
        """A signal stopped the run: latest.pt written, the way to resume printed."""
        self.log.close()
        self.checkpointer.save(self.state, self.evaluator.events)
        if self.ctx.is_main:
            print(f"stopped by {self.stop.signal_name or 'a signal on another rank'} after step {self.state.step}; "
                  f"wrote {self.checkpointer.latest} (resume with --resume)", flush=True)
            if self.evaluator.strong is not None and self.checkpointer.best.exists():
                print(f"{self.checkpointer.best} keeps the default event settings until the run finishes (they are "
                      f"chosen on the validation split at the end); `python -m train.evaluate --checkpoint "
                      f"{self.checkpointer.best} --post-processing validation` chooses them for an evaluation now",
                      flush=True)

    def finish(self) -> dict[str, dict[str, float]]:
        """The event settings chosen on validation for best.pt and stored in it; best.pt on the test split, once;
        then the model folder."""
        best = self.checkpointer.read_best()
        events = self.evaluator.choose_events(self.model, best)
        if events is not None:   # rank 0, the one that scores localisation and writes the model folder
            self.checkpointer.store_best_events(best, events)
        data = self.config.data
        test_path = self.train_path if data.fold is not None else self.eval_path or self.train_path   # a fold: --data
        test_reference = localisation.test_reference(self.parts[2], test_path) if self.ctx.is_main else None
        test = self.evaluator.test(self.model, best, test_reference, self.state)
        self.log.close()
        if self.ctx.is_main:
            self.checkpointer.write_model_folder(ShardIndex.open(self.train_path).label_mids)
        return {"validation": self.evaluator.best_summary or {"mAP": self.state.best_map}, "test": test}

    def _say_compiling(self) -> None:
        from torch._inductor.runtime.cache_dir_utils import cache_dir   # Inductor, only for a compiled run
        self.progress.say(f"compiling the model in the first step (a minute or more); a later run of the same model "
                          f"and shapes reuses Inductor's cache in {cache_dir()}")


def warmup_warning(config: TrainConfig, total_steps: int) -> str | None:
    """A warning line where the warm-up outlasts the run, so the learning rate never reaches its peak."""
    warmup = config.optim.warmup_steps
    if warmup <= total_steps:
        return None
    return (f"warning: the warm-up ({_steps(warmup)}) is longer than the run ({_steps(total_steps)}), so the learning "
            f"rate never reaches its peak --lr {config.optim.lr:g} (it ends at "
            f"{config.optim.lr * total_steps / warmup:.3g}); give fewer --warmup-steps or more --steps")


def _frame_loss(weight: float, strong_clips: int) -> str:
    """The frame loss in words: its weight and clips, or why there is none."""
    if strong_clips:
        return f"frame loss x{weight:g} on the {strong_clips} training clips with strong labels"
    return "no frame loss (--strong-loss-weight 0)" if not weight else "no frame loss (no strong labels)"


def _steps(count: int) -> str:
    return f"{count} step{'' if count == 1 else 's'}"


def describe_run(config: TrainConfig, total_steps: int, world_size: int, clips: int, validation_clips: int,
                 strong_clips: int) -> str:
    """What was chosen, printed at the start; `strong_clips` are the training clips the frame loss sees."""
    m, d, o, r, x = config.model, config.data, config.optim, config.run, config.options
    source = (f"built-in set in {Path(d.builtin_dir).expanduser() / ('synth-' + d.builtin.cache_key())}"
              if d.train_path is None else d.train_path)
    return "\n".join([
        f"model {m.name!r}: channels {m.channels}, arrangement {m.arrangement} x{m.attention_depth}, "
        f"{m.num_classes} classes, input {m.input_frames}x{m.n_mels}, {m.pooling_plan} pooling plan "
        f"({config.log_mel.clip_seconds:g} s clips), {m.pooling} MIL pooling, fused attention {x.fused_attention}, "
        f"fused backbone {x.fused_backbone}",
        (f"data: {source} ({clips - validation_clips} training clips), validation {d.validation_path} "
         f"({validation_clips} clips), " if d.validation_path is not None else
         f"data: {source} ({clips} training clips, {validation_clips} of them held out for validation), ") +
        f"test {f'fold {d.fold} of {d.train_path}' if d.fold is not None else d.eval_path or 'built-in eval split'} "
        f"(evaluated once, at the end, with best.pt)",
        f"run: {total_steps} steps x {d.loader.batch_size} clips x {world_size} process(es), {d.loader.sampler} "
        f"sampler, AdamW lr {o.lr:g}{f' (backbone x{o.backbone_lr_scale:g})' if o.backbone_lr_scale != 1 else ''} "
        f"(warm-up {o.warmup_steps}, cosine), {_frame_loss(o.strong_loss_weight, strong_clips)}, "
        f"eval every {r.eval_every}, "
        f"compile {f'{x.compile_backend} (mode {x.compile_mode})' if x.compile else 'off'}, "
        f"{'channels_last' if x.channels_last else 'contiguous'} memory format, {torch.get_num_threads()} CPU "
        f"thread(s), out {r.out}",
    ])
