"""Training configuration: one frozen dataclass per concern (data, optimiser, run) and the hardware profiles.

The model is `fastsca.config.ModelConfig`, the front end `fastsca.frontend.LogMelConfig` and how the model runs
(fused attention, fused backbone, compile, memory format, precision) `fastsca.run_options.RunOptions`;
`TrainConfig` bundles all six, and a checkpoint stores each as a dict. The hardware profiles whose defaults fill
the flags left unset are train/profiles.py's.
"""
from dataclasses import dataclass, field

from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.run_options import RunOptions
from train.data.loader import LoaderConfig
from train.data.synth import SynthConfig

@dataclass(frozen=True)
class DataConfig:
    """Where the clips come from and how they are batched."""

    train_path: str | None = None
    """Training split (a shard .h5 or a folder with index.json); None: the built-in set."""
    eval_path: str | None = None
    """Test split, evaluated once at the end with best.pt and reported apart; None: the built-in eval split."""
    validation_fraction: float = 0.1
    """Share of the training split held out (by the seed, every class present) for periodic evaluation,
    early stopping and best.pt; train/data/holdout.py."""
    validation_max_clips: int = 5000
    """At most this many validation clips (10 % of AudioSet's 2 M training clips would take too long)."""
    builtin_dir: str = "~/.cache/fastsca"
    """Folder the built-in set is generated into once and cached (one sub-folder per SynthConfig)."""
    builtin: SynthConfig = field(default_factory=SynthConfig)
    """What the built-in set holds, used when train_path is None."""
    loader: LoaderConfig = field(default_factory=LoaderConfig)
    """Training batches: batch size per process, sampler, seed, workers, augmentation."""
    eval_batch_size: int = 64
    """Clips per evaluation batch on each process."""
    fold: int | None = None
    """Cross-validation fold of train_path held out as the test split (train and validation come from the
    other folds); None: the test split is eval_path."""
    validation_path: str | None = None
    """Validation split of its own (model selection, early stopping, the event post-processing's choice), for
    data whose clips share recordings, so that none is held out of train_path (train.mix's validation split);
    None: held out of train_path (validation_fraction)."""

    def __post_init__(self) -> None:
        if self.fold is not None:
            if self.train_path is None or self.eval_path is not None:
                raise ValueError("--fold holds a fold of --data out as the test split: give --data without "
                                 "--eval-data")
        elif (self.train_path is None) != (self.eval_path is None):
            raise ValueError("give both --data and --eval-data, or neither (to use the built-in set)")
        if self.validation_path is not None and (self.train_path is None or self.fold is not None):
            raise ValueError("--validation-data replaces the validation clips held out of --data: give it with --data "
                             "and --eval-data, not with the built-in set or --fold")
        if not 0 < self.validation_fraction < 1 or self.validation_max_clips < 1:
            raise ValueError(f"validation_fraction must be in (0, 1) and validation_max_clips >= 1, got "
                             f"{self.validation_fraction} and {self.validation_max_clips}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")


@dataclass(frozen=True)
class OptimConfig:
    """The objective's weights, AdamW with a linear warm-up and a cosine decay, and gradient clipping."""

    lr: float = 1e-3
    """Peak learning rate, reached at the end of the warm-up."""
    min_lr_ratio: float = 0.01
    """The cosine decays to lr x this at the last step."""
    warmup_steps: int = 100
    """Steps of linear warm-up from 0 to lr."""
    weight_decay: float = 0.01
    """AdamW's decoupled weight decay, applied to weight matrices and conv kernels only."""
    betas: tuple[float, float] = (0.9, 0.999)
    """AdamW's moment decay rates."""
    grad_clip: float = 1.0
    """Global gradient-norm clip; 0 turns it off."""
    backbone_lr_scale: float = 1.0
    """The backbone's (everything but the pooling head's) learning rate is lr x this; below 1 when fine-tuning."""
    strong_loss_weight: float = 1.0
    """Weight of the frame BCE on the training clips with strong labels, added to the clip BCE on all clips
    (train/loss.py); 0: the clip BCE alone. 1 as DCASE task 4's baselines (2021 on) add their strong and weak BCE
    unweighted (`loss_strong + loss_weak` in DESED_task's sed_trainer.py). It applies only where the training
    split has strong labels."""

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if min(self.warmup_steps, self.weight_decay, self.grad_clip, self.backbone_lr_scale,
               self.strong_loss_weight) < 0:
            raise ValueError("warmup_steps, weight_decay, grad_clip, backbone_lr_scale and strong_loss_weight must be "
                             ">= 0")
        if self.lr * self.weight_decay >= 1:
            raise ValueError(f"--lr {self.lr:g} x --weight-decay {self.weight_decay:g} must be < 1 (AdamW multiplies "
                             f"every weight by 1 - lr x weight decay each step): lower --lr or --weight-decay")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class RunConfig:
    """Length, cadence and output of one training run."""

    out: str = "runs/default"
    """Output folder: metrics.jsonl, latest.pt, best.pt."""
    profile: str = "cpu"
    """The hardware profile the defaults came from (cpu or gpu), after resolving auto."""
    steps: int | None = 1000
    """Optimiser steps in the whole run (the schedule's length); None: `epochs` passes over the data."""
    epochs: int | None = None
    """Passes over the training split, when steps is None."""
    eval_every: int = 200
    """Evaluate on the validation split (and write latest.pt) every this many steps, and at the end."""
    patience: int = 0
    """Stop early after this many evaluations without a better validation mAP; 0: never."""
    log_every: int = 10
    """Append the training loss to metrics.jsonl and refresh the progress bar every this many steps."""
    seed: int = 0
    """Seed of the model's initialisation (the loader's sampling and augmentation take it too)."""
    threads: int | None = None
    """Intra-op CPU threads of each process (torch.set_num_threads); None keeps torch's default."""
    resume: bool = False
    """Continue from out/latest.pt: same next batch, same subsequent losses."""
    checkpoint_minutes: float = 5.0
    """Also write latest.pt when this many minutes passed since the last one, so a kill -9 loses at most that."""
    init: str | None = None
    """Fine-tuning: the checkpoint whose weights the run starts from (its head too where the label sets agree)."""
    freeze_blocks: int = 0
    """Fine-tuning: the first this many residual blocks (and the input norm) are not trained."""

    def __post_init__(self) -> None:
        if self.profile not in ("cpu", "gpu"):
            raise ValueError(f"profile must be cpu or gpu once resolved, got {self.profile!r}")
        if (self.steps is None) == (self.epochs is None):
            raise ValueError("give the run's length as steps or as epochs, not both")
        if self.patience < 0:
            raise ValueError(f"patience must be >= 0, got {self.patience}")
        counts = {"steps": self.steps, "epochs": self.epochs, "eval_every": self.eval_every,
                  "log_every": self.log_every, "threads": self.threads}
        for name, value in counts.items():
            if value is not None and value < 1:
                raise ValueError(f"{name} must be >= 1, got {value}")
        if not 0 <= self.freeze_blocks <= 7:
            raise ValueError(f"freeze_blocks must be in 0..7 (the backbone has 7 blocks), got {self.freeze_blocks}")
        if not self.checkpoint_minutes > 0:
            raise ValueError(f"checkpoint_minutes must be > 0, got {self.checkpoint_minutes}")


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run is built from; a checkpoint stores each part as a dict."""

    model: ModelConfig
    """The network."""
    log_mel: LogMelConfig
    """The front end; its frames must equal model.input_frames."""
    data: DataConfig
    """Data and batching."""
    optim: OptimConfig
    """Optimiser and schedule."""
    run: RunConfig
    """Length, cadence and output."""
    options: RunOptions = RunOptions()
    """How the model runs: fused attention and backbone, compile, memory format, precision (never the weights)."""

    def __post_init__(self) -> None:
        if self.log_mel.frames != self.model.input_frames or self.log_mel.n_mels != self.model.n_mels:
            raise ValueError(f"the front end makes {self.log_mel.frames}x{self.log_mel.n_mels} log-mels but the "
                             f"model takes {self.model.input_frames}x{self.model.n_mels}")
