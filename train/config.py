"""Training configuration: one frozen dataclass per concern (data, optimiser, run) and the hardware profiles.

The model is `fastsca.config.ModelConfig` and the front end `fastsca.frontend.LogMelConfig`; `TrainConfig`
bundles all five, and a checkpoint stores each as a dict. A `Profile` holds the defaults that depend on
the hardware: the `cpu` profile shrinks the model (and, for the built-in set, the clips) so that the default run on a
2-core CPU finishes in minutes; the `gpu` profile keeps the preset's widths and the paper's 10 s clips.
"""
from dataclasses import asdict, dataclass, field

from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.profiles import MODEL_PROFILES, ModelProfile
from train.loader import LoaderConfig
from train.synth import SynthConfig

COMPILE_MODES: dict[str, str] = {
    "default": "Inductor's fusions, no CUDA graphs",
    "reduce-overhead": "plus CUDA graphs, which replay a step's kernels in one launch (CUDA only; more memory)",
    "max-autotune": "plus CUDA graphs and kernel variants picked by benchmarking (a much longer compile)",
    "max-autotune-no-cudagraphs": "max-autotune without the CUDA graphs",
}
"""torch.compile's `mode` values, each with what it changes (Inductor only; other backends take no mode)."""


@dataclass(frozen=True)
class DataConfig:
    """Where the clips come from and how they are batched."""

    train_path: str | None = None
    """Training split (a shard .h5 or a folder with index.json); None: the built-in set."""
    eval_path: str | None = None
    """Test split, evaluated once at the end with best.pt and reported apart; None: the built-in eval split."""
    validation_fraction: float = 0.1
    """Share of the training split held out (by the seed, every class present) for periodic evaluation,
    early stopping and best.pt; train/holdout.py."""
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

    def __post_init__(self) -> None:
        if self.fold is not None:
            if self.train_path is None or self.eval_path is not None:
                raise ValueError("--fold holds a fold of --data out as the test split: give --data without "
                                 "--eval-data")
        elif (self.train_path is None) != (self.eval_path is None):
            raise ValueError("give both --data and --eval-data, or neither (to use the built-in set)")
        if not 0 < self.validation_fraction < 1 or self.validation_max_clips < 1:
            raise ValueError(f"validation_fraction must be in (0, 1) and validation_max_clips >= 1, got "
                             f"{self.validation_fraction} and {self.validation_max_clips}")
        if self.eval_batch_size < 1:
            raise ValueError(f"eval_batch_size must be >= 1, got {self.eval_batch_size}")


@dataclass(frozen=True)
class OptimConfig:
    """AdamW with a linear warm-up and a cosine decay, and gradient clipping."""

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

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ValueError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.warmup_steps < 0 or self.weight_decay < 0 or self.grad_clip < 0 or self.backbone_lr_scale < 0:
            raise ValueError("warmup_steps, weight_decay, grad_clip and backbone_lr_scale must be >= 0")
        if self.lr * self.weight_decay >= 1:
            raise ValueError(f"--lr {self.lr:g} x --weight-decay {self.weight_decay:g} must be < 1 (AdamW multiplies "
                             f"every weight by 1 - lr x weight decay each step): lower --lr or --weight-decay")
        if not all(0 <= b < 1 for b in self.betas):
            raise ValueError(f"betas must be in [0, 1), got {self.betas}")


@dataclass(frozen=True)
class RunConfig:
    """Length, cadence, output and execution of one training run."""

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
    compile: bool = False
    """torch.compile the model for training."""
    compile_backend: str = "inductor"
    """torch.compile backend."""
    compile_mode: str = "default"
    """torch.compile mode, one of COMPILE_MODES; anything but "default" needs the inductor backend."""
    channels_last: bool = False
    """Train with the model's weights (and so its activations) in the NHWC channels_last memory format."""
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
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode != "default" and self.compile_backend != "inductor":
            raise ValueError(f"--compile-mode {self.compile_mode} is a mode of the inductor backend; --compile-backend "
                             f"{self.compile_backend} takes no mode: drop --compile-mode or use the inductor backend")


@dataclass(frozen=True)
class Profile(ModelProfile):
    """Hardware-dependent defaults; every command-line flag left unset takes its value from here (the model's
    from fastsca/profiles.py)."""

    builtin_train: int
    """Clips in the built-in training split."""
    builtin_eval: int
    """Clips in the built-in eval split."""
    batch_size: int
    """Clips per step on each process."""
    num_workers: int
    """Loader worker processes per training process."""
    steps: int
    """Optimiser steps of the default run."""
    eval_every: int
    """Steps between evaluations."""
    log_every: int
    """Steps between log lines."""
    lr: float
    """Peak learning rate."""
    warmup_steps: int
    """Linear warm-up steps."""
    mixup_alpha: float
    """Mixup Beta(alpha, alpha) parameter on the built-in set; 0: no mixup."""
    packed_mixup_alpha: float
    """Mixup Beta(alpha, alpha) parameter on packed data (--data: real recordings); 0: no mixup."""
    spec_augment: bool
    """SpecAugment time and frequency masks."""
    weight_decay: float
    """AdamW's decoupled weight decay."""
    threads: int | None
    """Intra-op CPU threads; None keeps torch's default."""


PROFILES: dict[str, Profile] = {
    # The model's defaults are fastsca/profiles.py's (a quarter of the preset's widths, 2 s clips). With packed
    # data the clips are the data's (10 s): 0.71 GFLOPs per clip, 5x the cost a step.
    # One intra-op thread: on 2 cores shared with other work, 2 threads ran at 27-174 clips/s (every op
    # waits at a barrier for whichever thread was descheduled), 1 thread at 119-139 clips/s; the other
    # core feeds the loader.
    # No mixup, no SpecAugment, weight decay 0.01: chosen on the validation split of the built-in set, where
    # at step 200 of 400 validation mAP was 0.983 without them, 0.967 with mixup 0.5 and 0.842 with SpecAugment
    # (results/tables/regularisation.md). On packed data (real recordings) mixup 0.5 is on: on UrbanSound8K clips,
    # 3 seeds each, it raised test mAP a little for both at-sca-3 (0.545 +- 0.004 against 0.531 +- 0.040) and the
    # baseline (0.498 against 0.486) and kept the training loss off zero, while SpecAugment lowered the baseline in
    # 3 of 3 seeds (results/real-audio/README.md). An evaluation every 100 steps lets best.pt land near the peak.
    "cpu": Profile(**asdict(MODEL_PROFILES["cpu"]),
                   builtin_train=2048, builtin_eval=512, batch_size=32, num_workers=1, steps=600,
                   eval_every=100, log_every=5, lr=3e-3, warmup_steps=30, mixup_alpha=0.0, packed_mixup_alpha=0.5,
                   spec_augment=False,
                   weight_decay=0.01, threads=1),
    # The preset as it is, on the paper's 10 s clips.
    "gpu": Profile(**asdict(MODEL_PROFILES["gpu"]), builtin_train=8192,
                   builtin_eval=1024, batch_size=64, num_workers=6, steps=3000, eval_every=500, log_every=20,
                   lr=1e-3, warmup_steps=200, mixup_alpha=0.0, packed_mixup_alpha=0.0, spec_augment=False,
                   weight_decay=0.01, threads=None),
    # (the gpu profile's packed-data mixup is not measured at full width: the AudioSet recipes, train/recipes.py,
    # set it from the peers' settings)
}


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

    def __post_init__(self) -> None:
        if self.log_mel.frames != self.model.input_frames or self.log_mel.n_mels != self.model.n_mels:
            raise ValueError(f"the front end makes {self.log_mel.frames}x{self.log_mel.n_mels} log-mels but the "
                             f"model takes {self.model.input_frames}x{self.model.n_mels}")
