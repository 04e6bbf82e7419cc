"""How a model runs, apart from what it is: the execution choices of one run, resolved once.

`ModelConfig` (fastsca/config.py) says what the network is, so a checkpoint, a fine-tuning run, an export and
`fastsca.describe` read it whole; `RunOptions` says how it runs here (fused attention ops, the fused backbone,
torch.compile, memory format, autocast precision), which never changes the weights. `resolve_run_options` picks
each field from, in this order, a value given (a command-line flag, a recipe's already filled in), the profile's
default (`PROFILE_RUN_OPTIONS`) and the device's (`DEVICE_RUN_OPTIONS`): a new execution choice is one more
field here, with its default in those tables, and the model reads it from the object it is built with.
"""
from contextlib import nullcontext
from dataclasses import dataclass, fields
from functools import lru_cache

import torch

COMPILE_MODES: dict[str, str] = {
    "default": "Inductor's fusions, no CUDA graphs",
    "reduce-overhead": "plus CUDA graphs, which replay a step's kernels in one launch (CUDA only; more memory)",
    "max-autotune": "plus CUDA graphs and kernel variants picked by benchmarking (a much longer compile)",
    "max-autotune-no-cudagraphs": "max-autotune without the CUDA graphs",
}
"""torch.compile's `mode` values, each with what it changes (Inductor only; other backends take no mode)."""

PRECISIONS: dict[str, torch.dtype | None] = {"fp32": None, "bf16": torch.bfloat16}
"""Autocast precision by name; None: no autocast, everything in fp32."""


@dataclass(frozen=True)
class RunOptions:
    """The execution choices of a run; the same weights train, resume and tag under any of them."""

    fused_attention: bool = True
    """Run each attention module as the fused ops of kernels/ (Triton on CUDA, the same passes in PyTorch on
    CPU) instead of step by step (the reference)."""
    fused_backbone: bool = False
    """Run each residual block in training as the fused passes of kernels/residual_block.py (convolutions that
    sum their BatchNorm statistics and apply BN-ReLU as they read, one tail pass for BatchNorm, sum, ReLU and
    max-pool) instead of module by module; eval keeps the reference either way (fastsca/backbone.py). Off unless
    asked for, so that a model built with no options (the fair baseline of bench/whole_step.py) is the reference."""
    compile: bool = False
    """torch.compile the model for training."""
    compile_backend: str = "inductor"
    """torch.compile backend."""
    compile_mode: str = "default"
    """torch.compile mode, one of COMPILE_MODES; anything but "default" needs the inductor backend."""
    channels_last: bool = False
    """Train with the weights (and so the activations) in the NHWC channels_last memory format."""
    precision: str = "fp32"
    """Autocast precision of forward passes, a key of PRECISIONS (the BCE is fp32 whatever this is)."""

    def __post_init__(self) -> None:
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile_mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")
        if self.compile_mode != "default" and self.compile_backend != "inductor":
            raise ValueError(f"--compile-mode {self.compile_mode} is a mode of the inductor backend; --compile-backend "
                             f"{self.compile_backend} takes no mode: drop --compile-mode or use the inductor backend")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {self.precision!r}")

    def autocast(self, device: torch.device):
        """The autocast context of a forward pass on `device` at this precision."""
        dtype = PRECISIONS[self.precision]
        return nullcontext() if dtype is None else torch.autocast(device.type, dtype)


PROFILE_RUN_OPTIONS: dict[str, dict] = {
    # The fused attention ops and the fused backbone only pay off on CUDA: on CPU they run the same passes as plain
    # PyTorch (the backbone's in fp32 convolutions: slower than the reference's).
    "cpu": {"fused_attention": False, "fused_backbone": False},
    "gpu": {"fused_attention": True, "fused_backbone": True},
}
"""Each hardware profile's execution defaults (fastsca/profiles.py names the profiles)."""

DEVICE_RUN_OPTIONS: dict[str, dict] = {
    # bf16 convolutions run faster in NHWC; CPU runs keep NCHW and fp32, where the tests check resumes bit for bit
    "cuda": {"channels_last": True, "precision": "bf16"},
    "cpu": {},
}
"""Execution defaults of the device a run is on, below the profile's."""


def resolve_compile_mode(requested: str | None, backend: str, cuda: bool) -> str:
    """--compile-mode, or when not given: reduce-overhead for Inductor on CUDA, where CUDA graphs replay the
    hundreds of small kernels of a step at batch 64-256 in one launch (the launch overhead they save is an
    estimate on paper, not yet measured here); default elsewhere: CUDA graphs need CUDA, other backends no mode."""
    if requested is not None:
        return requested
    return "reduce-overhead" if cuda and backend == "inductor" else "default"


def resolve_run_options(given: dict, profile: str, cuda: bool) -> RunOptions:
    """The run's options: each field from `given` (flag values by field name, None where not given), else from
    `profile`'s defaults, else from the device's, else RunOptions' own."""
    names = {f.name for f in fields(RunOptions)}
    chosen = {**DEVICE_RUN_OPTIONS["cuda" if cuda else "cpu"], **PROFILE_RUN_OPTIONS[profile],
              **{name: value for name, value in given.items() if name in names and value is not None}}
    chosen["compile_mode"] = resolve_compile_mode(chosen.get("compile_mode"),
                                                  chosen.get("compile_backend", RunOptions.compile_backend), cuda)
    return RunOptions(**chosen)


@lru_cache(maxsize=None)   # asked at every training step (train/evaluate.py's `autocast`)
def options_for_device(device: torch.device) -> RunOptions:
    """The options a run on `device` gets from --profile auto and no flag: what inference runs a model with."""
    cuda = device.type == "cuda"
    return resolve_run_options({}, "gpu" if cuda else "cpu", cuda)
