"""The hardware profiles of `python -m train.run`: every flag left unset takes its value from one of them.

The `cpu` profile shrinks the model (and, for the built-in set, the clips) so that the default run on a 2-core
CPU finishes in minutes; the `gpu` profile keeps the preset's widths and the paper's 10 s clips. The model's part
of each profile is fastsca/profiles.py's, the execution choices' fastsca/run_options.py's. This module imports
no training code, so `--help` can print each profile's values at once.
"""
from dataclasses import asdict, dataclass

from fastsca.profiles import MODEL_PROFILES, ModelProfile


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
