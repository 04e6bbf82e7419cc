"""The benchmark grid: which cases exist, when each is skipped and why, and how each is prepared.

Suites (STYLE.md, "Benchmarks": providers x modes x real shapes):
- the fused unit's three forward passes over F (`pool`, eq. 4; `squeeze`, eq. 8; `gate`, eqs. 7-10: the
  ops `fastsca::attention_pool`, `_squeeze`, `_gate` as the SCA module calls them) and the whole SCA module
  (eq. 10), at the attention maps of at-sca-1/2/3 under both pooling plans (fastsca/config.py
  POOLING_PLANS: "time-freq", blocks 5-7 at 100x4 with 256/512/512 channels; "six-pool", 256x100x4,
  512x100x2, 512x100x1), with batch 32 and 256, in bf16 (under autocast, as training runs) and fp32
  on CUDA, fp32 on CPU; providers `eager` (kernels/reference.py, computing in the map's dtype as a
  user's model would), `compile` (torch.compile of the reference), `fused` (the pass ops or the fused
  unit, Triton on CUDA), and for the module also `fused_compile` (the fused unit inside a compiled
  module, as training runs it); modes `forward`, `backward` (of a forward done outside the timed
  region) and `full` (forward + backward) for the module, `forward` for the passes (their backward
  passes run only inside the unit's backward, which the module's modes time). On a CPU the module's
  fused providers time kernels.attention as it runs there (its F-sized passes one PyTorch expression
  each), on one map at batch 32; the passes' fused cases skip (they run the reference there);
- one residual block's training step (forward and backward, training-mode BatchNorm; fastsca/backbone.py)
  at at-sca-3's block shapes under the `gpu` profile (blocks 1, 2, 4 and 7: BLOCK_INDICES), batch 64 and
  256, bf16 autocast and channels_last on CUDA: `eager` and `compile` (the reference block),
  `compile_max_autotune` (the reference under max-autotune-no-cudagraphs, batch 256) and `compile_fused`
  (the block built fused, its attention too, compiled: as train.run runs it). A CPU times one small odd
  block (CPU_BLOCK) instead: eager, compile and compile_fused (the fused ops' CPU engine);
- the training step (forward, fp32 BCE, backward, AdamW step) of `baseline` and `at-sca-3`:
  eager, fused, compiled, compiled + fused;
- the loader: the DALI loader (train/data/loader.py) against a torch DataLoader computing the same
  log-mel with librosa, over the same HDF5 shard, with the same two worker processes.
The pytest suites (bench/test_bench_*.py) and `python -m bench.gpu_report` both iterate these cases
and call `prepare`; bench/harness.py does the timing.

Minimal bytes (docs/design.md and docs/kernels.md; |X| = bytes of tensor X, gradients have
their tensor's size; each input read once, each output written once):
  pool             |x| + |S|                      (SCA's pool: no channel weight)
  squeeze          |x| + |l| + |Z|                (SCA's squeeze: weighted by sigma(logit_s))
  gate             |x| + |ls| + |lc| + |out|
  SCA module       fwd 4|F|: three reads of F (channel_pool, spatial_squeeze, gate) and one write
                   bwd 5|F|: pass 1 reads dF'' and F (the gate's logit gradients), pass 2 reads F (the
                   squeeze's logit gradient), pass 3 reads dF'' and writes dF; the S-, Z- and
                   weight-sized terms (< 1% at C >= 256) are left out
  full = forward + backward.
The block suite states no bytes floor: its convolutions' traffic depends on the engine and tiling each one
gets (fastsca/backbone_plan.py), and the rule finds the 3x3 convolutions of blocks 3-7 compute-bound, their
floor FLOPs rather than bytes.
"""
import contextlib
import importlib.util
import os
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterator

import torch

import kernels  # noqa: F401  (registers the fastsca:: pass ops)
from bench.harness import Prepared, l2_flush
from fastsca import build_model
from fastsca.attention import build_attention
from fastsca.backbone import ResidualBlock
from fastsca.config import POOLING_PLANS, ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.model_options import input_frames
from fastsca.profiles import MODEL_PROFILES
from fastsca.run_options import RunOptions
from kernels import reference
from train.profiles import PROFILES

PASSES = {
    "pool": ("attention_pool", reference.channel_pool),
    "squeeze": ("attention_squeeze", reference.spatial_squeeze),
    "gate": ("attention_gate", reference.gate),
}
"""The fused unit's forward passes over F: suite -> (its op, torch.ops.fastsca.<op>; its reference)."""
MODES = ("forward", "backward", "full")
PASS_MODES = ("forward",)
PASS_PROVIDERS = ("eager", "compile", "fused")
SCA_PROVIDERS = ("eager", "compile", "fused", "fused_compile")
TRAIN_MODELS = ("baseline", "at-sca-3")
TRAIN_PROVIDERS = ("eager", "fused", "compile", "compile_fused", "compile_cudagraphs", "compile_fused_cudagraphs",
                   "compile_max_autotune")
"""The training step: eager and torch.compile (mode default) of the reference and of fastsca's model (fused
attention and fused backbone), both compiled with CUDA graphs (mode reduce-overhead, train.run's default on CUDA),
and the reference under mode max-autotune-no-cudagraphs (Inductor benchmarking kernel variants, a user's strongest
plain torch.compile)."""
BLOCK_PROVIDERS = ("eager", "compile", "compile_max_autotune", "compile_fused")
"""The residual block: the reference eager and under torch.compile (mode default: the fair baseline, and
max-autotune-no-cudagraphs as the training step's provider of that name), and the fused block compiled."""
LOADER_PROVIDERS = ("dali", "librosa")
FUSED_PROVIDERS = ("fused", "fused_compile", "compile_fused", "compile_fused_cudagraphs")
COMPILED_PROVIDERS = ("compile", "fused_compile", "compile_fused", "compile_cudagraphs", "compile_fused_cudagraphs",
                      "compile_max_autotune")
AUTOTUNE_PROVIDERS = ("compile_max_autotune",)
CUDAGRAPH_PROVIDERS = ("compile_cudagraphs", "compile_fused_cudagraphs")

REAL_PRESETS = ("at-sca-1", "at-sca-2", "at-sca-3")
"""The presets whose attention maps give the real shapes (at-sca-3's three include the others')."""
BATCHES = (32, 256)
TARGET_PRESET, TARGET_PLAN, TARGET_BATCH = "at-sca-3", "time-freq", 256
"""The targets are checked on at-sca-3's maps under the time-freq plan (blocks 5-7 at 100x4) at batch 256."""
CPU_MODULE_MAP = (32, 256, 100, 4)
"""(B, C, T, F) of the one module map a CPU run times (block 5 of at-sca-3 in both plans, batch 32): with
four providers, two of them compiled, each further map adds about a minute on the 2-core box."""

# Training step sizes. GPU: the preset's widths, 10 s clips, batch 256 (bench/whole_step.py's estimate is
# for the same step), channels_last as train.run on CUDA.
# CPU: the cpu profile's quarter widths and 2 s clips (80 frames), batch 8: a step took 60-70 ms on
# one thread of the 2-core box, and compiling it about a minute. Smoke: just enough to run every path.
TRAIN_SIZES = {
    "gpu": dict(channels=None, input_frames=400, batch=256, num_classes=527),
    "cpu": dict(channels=(8, 16, 32, 64, 64, 128, 128), input_frames=80, batch=8, num_classes=527),
    "smoke": dict(channels=(4, 4, 8, 8, 8, 16, 16), input_frames=16, batch=2, num_classes=10),
}
# Residual block: at-sca-3's blocks 1, 2, 4 and 7 (0-based indices), one of each kind the per-layer rule
# (fastsca/backbone_plan.py; `python -m fastsca.describe at-sca-3 --profile gpu --plan-batch 256`) makes:
# block 1 the largest map (400x64) from one input channel, block 2 Triton implicit GEMMs throughout (200x32),
# block 4 cuDNN on the main path and a Triton shortcut, block 7 that split at 512 channels with its SCA
# attention. Blocks 3, 5 and 6 repeat these kinds; all seven blocks at two batches and four providers would
# be 56 compilations (several minutes each under max-autotune) in a 9-minute device call.
BLOCK_INDICES = (0, 1, 3, 6)
BLOCK_PROFILE = "gpu"
"""The profile whose model gives the block shapes (fastsca/profiles.py; train/profiles.py its batch)."""
BLOCK_BATCHES = (PROFILES[BLOCK_PROFILE].batch_size, TRAIN_SIZES["gpu"]["batch"])
"""The gpu profile's training batch (64) and the training step suite's (256)."""
BLOCK_AUTOTUNE_BATCH = TRAIN_SIZES["gpu"]["batch"]
"""max-autotune at one batch only: it compiles for minutes per block."""
# Loader data: 10 s clips as in training. 1024 clips on the GPU machine; 256 on the 2-core box, where
# an epoch took 0.9 s with DALI and 7.6 s with librosa (shared cores); 1 s clips for the smoke run.
LOADER_CLIPS = {"gpu": 1024, "cpu": 256}
LOADER_BATCH = {"gpu": 32, "cpu": 32, "smoke": 4}
LOADER_WORKERS = 2
"""Worker processes of both loaders: equal cores (docs/design.md: the DALI figure is with 2 workers)."""
SMOKE_SHAPE = (2, 32, 16, 2)
"""(B, C, T, F) of the smoke run's one map: T = 16 gives the local FC one hidden unit at r = 16."""


@dataclass(frozen=True)
class BenchEnv:
    """Where and how the grid runs."""

    device: torch.device
    """cuda:N where a GPU is visible, else cpu."""
    smoke: bool = False
    """Tiny sizes, every case (fused ones too, through the CPU reference): exercises the code paths."""
    compile_backend: str = "inductor"
    """torch.compile backend of the compiled providers (the smoke test may pick a quicker one)."""
    data_dir: Path | None = None
    """Folder for the loader's generated HDF5 set (a temporary folder when None)."""
    cpu_all: bool = False
    """Run on CPU the cases skipped for the CPU time budget (ops, batch 256); FASTSCA_BENCH_CPU_ALL=1."""

    @classmethod
    def detect(cls, **overrides) -> "BenchEnv":
        device = torch.device("cuda", torch.cuda.current_device()) if torch.cuda.is_available() else torch.device("cpu")
        defaults = dict(device=device, cpu_all=os.environ.get("FASTSCA_BENCH_CPU_ALL", "0") == "1")
        return cls(**{**defaults, **overrides})

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def scale(self) -> str:
        """'smoke', 'gpu' or 'cpu': picks the sizes of the training and loader cases."""
        return "smoke" if self.smoke else "gpu" if self.cuda else "cpu"

    @property
    def dtypes(self) -> tuple[str, ...]:
        """Feature-map dtypes of the kernel and module cases: bf16 (training runs under bf16 autocast)
        and fp32 on CUDA and in the smoke run, fp32 alone on CPU."""
        return ("bf16", "fp32") if self.cuda or self.smoke else ("fp32",)


@dataclass(frozen=True)
class MapShape:
    """One attention map (B, C, T, F) and the presets whose attention sees it."""

    batch: int
    channels: int
    time: int
    freq: int
    presets: tuple[str, ...] = ()

    @property
    def dims(self) -> tuple[int, int, int, int]:
        return self.batch, self.channels, self.time, self.freq

    @property
    def label(self) -> str:
        return f"B{self.batch}-C{self.channels}x{self.time}x{self.freq}"


@dataclass(frozen=True)
class BlockShape:
    """One residual block (fastsca/backbone.py) at one batch."""

    name: str
    """'block<N>' (1-based) of the block suite's model, or 'odd' for the CPU's small block."""
    batch: int
    in_channels: int
    out_channels: int
    time: int
    """T of the block's input map (its convolutions' map; the pool comes after)."""
    freq: int
    pool: tuple[int, int]
    """The max-pool (time, freq) after the block."""
    attention: bool
    """The block carries at-sca-3's SCA attention on its main path."""

    @property
    def input_dims(self) -> tuple[int, int, int, int]:
        return self.batch, self.in_channels, self.time, self.freq

    @property
    def label(self) -> str:
        return f"{self.name}-B{self.batch}-C{self.in_channels}-{self.out_channels}x{self.time}x{self.freq}"


CPU_BLOCK = BlockShape("odd", batch=3, in_channels=5, out_channels=7, time=13, freq=11, pool=(1, 2), attention=True)
"""The block a CPU times (and the smoke run): odd widths and map, a pool that does not divide F = 11, and SCA
attention (its local FC and SE MLP at one hidden unit), so every part of the fused path runs; compiling it
(reference or fused, forward and backward) took about 20 s on the 2-core box."""


@dataclass(frozen=True)
class Case:
    """One cell of the grid."""

    suite: str
    """A pass (PASSES), 'sca', 'block', 'train_step' or 'loader'."""
    provider: str
    mode: str
    """forward / backward / full for kernels, the module and the block; 'step' and 'epoch' otherwise."""
    batch: int
    shape: MapShape | None = None
    model: str | None = None
    """Preset of a training step."""
    dtype: str | None = None
    """'bf16' or 'fp32': the feature map's dtype in kernel, module and block cases (bf16 under autocast)."""
    block: BlockShape | None = None
    """The residual block of a block case."""

    @property
    def id(self) -> str:
        where = self.where or f"{self.model + '-' if self.model else ''}B{self.batch}"
        return f"{self.suite}-{where}{'-' + self.dtype if self.dtype else ''}-{self.provider}-{self.mode}"

    @property
    def group(self) -> str:
        """pytest-benchmark's group: the providers of one suite, shape, dtype and mode side by side."""
        where = self.where or f"{self.model or ''} B{self.batch}".strip()
        return f"{self.suite} {where} {self.dtype or ''} {self.mode}".replace("  ", " ")

    @property
    def where(self) -> str | None:
        """The map's or the block's label; None for a model's or loader's case."""
        return self.shape.label if self.shape else self.block.label if self.block else None

    @property
    def torch_dtype(self) -> torch.dtype:
        return {"bf16": torch.bfloat16, "fp32": torch.float32}[self.dtype or "fp32"]

    def describe(self) -> dict:
        out = {"id": self.id, "suite": self.suite, "provider": self.provider, "mode": self.mode, "batch": self.batch}
        if self.dtype:
            out["dtype"] = self.dtype
        if self.shape:
            out.update(shape=list(self.shape.dims), presets=list(self.shape.presets))
        if self.model:
            out["model"] = self.model
        if self.block:
            out.update(block=self.block.label, block_shape=asdict(self.block))
        return out


# ---------------------------------------------------------------------------------------------- grid

def map_shapes(env: BenchEnv) -> list[MapShape]:
    """The distinct attention maps of at-sca-1/2/3 under both pooling plans at batch 32 and 256, read off
    the presets; each map lists the 'preset/plan' pairs whose attention sees it."""
    if env.smoke:
        return [MapShape(*SMOKE_SHAPE, presets=("smoke",))]
    seen: dict[tuple[int, int, int], list[str]] = {}
    for name in REAL_PRESETS:
        for plan, pools in POOLING_PLANS.items():
            config = ModelConfig.from_name(name, pools=pools)
            sizes = config.block_input_sizes()
            for block in config.attention_blocks:
                users = seen.setdefault((config.channels[block], *sizes[block]), [])
                if f"{name}/{plan}" not in users:
                    users.append(f"{name}/{plan}")
    return [MapShape(batch, c, t, f, tuple(presets)) for batch in BATCHES for (c, t, f), presets in seen.items()]


def pass_cases(suite: str, env: BenchEnv) -> list[Case]:
    return [Case(suite, provider, mode, shape.batch, shape, dtype=dtype)
            for shape in map_shapes(env) for dtype in env.dtypes for provider in PASS_PROVIDERS for mode in PASS_MODES]


def sca_cases(env: BenchEnv) -> list[Case]:
    return [Case("sca", provider, mode, shape.batch, shape, dtype=dtype)
            for shape in map_shapes(env) for dtype in env.dtypes for provider in SCA_PROVIDERS for mode in MODES]


def train_cases(env: BenchEnv) -> list[Case]:
    batch = TRAIN_SIZES[env.scale]["batch"]
    return [Case("train_step", provider, "step", batch, model=model)
            for model in TRAIN_MODELS for provider in TRAIN_PROVIDERS]


def block_shapes(env: BenchEnv) -> list[BlockShape]:
    """at-sca-3's blocks BLOCK_INDICES as the gpu profile builds them, at BLOCK_BATCHES (described on a CPU too,
    where they skip), and on a CPU or in the smoke run the small odd block CPU_BLOCK."""
    shapes = [CPU_BLOCK] if env.smoke or not env.cuda else []
    if env.smoke:
        return shapes
    config = block_model_config()
    sizes = config.block_input_sizes()
    for batch in BLOCK_BATCHES:
        for index in BLOCK_INDICES:
            shapes.append(BlockShape(f"block{index + 1}", batch, config.channels[index - 1] if index else 1,
                                     config.channels[index], *sizes[index], config.pools[index],
                                     index in config.attention_blocks))
    return shapes


def block_model_config() -> ModelConfig:
    """at-sca-3 as the gpu profile builds it (fastsca/model_options.py's rule: the profile's widths, else the
    preset's; input frames from the profile's clip length)."""
    profile = MODEL_PROFILES[BLOCK_PROFILE]
    preset = ModelConfig.from_name(TARGET_PRESET)
    return ModelConfig.from_name(TARGET_PRESET, channels=profile.channels or preset.channels,
                                 input_frames=input_frames(profile.clip_seconds))


def block_cases(env: BenchEnv) -> list[Case]:
    cases = []
    for shape in block_shapes(env):
        dtype = "fp32" if shape == CPU_BLOCK else "bf16"
        for provider in BLOCK_PROVIDERS:
            if provider in AUTOTUNE_PROVIDERS and shape.batch != BLOCK_AUTOTUNE_BATCH:
                continue
            cases.append(Case("block", provider, "full", shape.batch, dtype=dtype, block=shape))
    return cases


def loader_cases(env: BenchEnv) -> list[Case]:
    return [Case("loader", provider, "epoch", LOADER_BATCH[env.scale]) for provider in LOADER_PROVIDERS]


def all_cases(env: BenchEnv) -> list[Case]:
    return ([case for suite in PASSES for case in pass_cases(suite, env)] + sca_cases(env) + block_cases(env)
            + train_cases(env) + loader_cases(env))


def target_maps(env: BenchEnv) -> list[MapShape]:
    """The maps the targets are read on: at-sca-3's under the time-freq plan at batch 256 (the smoke run's one map)."""
    if env.smoke:
        return map_shapes(env)
    return [s for s in map_shapes(env) if s.batch == TARGET_BATCH and f"{TARGET_PRESET}/{TARGET_PLAN}" in s.presets]


def target_blocks(env: BenchEnv) -> list[tuple[int, int, int, int]]:
    """(B, C, T, F) of each attention block of at-sca-3 under the time-freq plan at batch 256, in order
    (blocks 6 and 7 see the same map); the smoke run's one map once."""
    if env.smoke:
        return [tuple(s.dims) for s in map_shapes(env)]
    config = ModelConfig.from_name(TARGET_PRESET, pools=POOLING_PLANS[TARGET_PLAN])
    sizes = config.block_input_sizes()
    return [(TARGET_BATCH, config.channels[b], *sizes[b]) for b in config.attention_blocks]


def is_target(case: Case, env: BenchEnv) -> bool:
    """A case the targets need: the SCA module on a target map."""
    return case.suite == "sca" and case.shape in target_maps(env)


# ----------------------------------------------------------------------------------------- skipping

def dali_available() -> bool:
    return importlib.util.find_spec("nvidia") is not None and importlib.util.find_spec("nvidia.dali") is not None


def librosa_available() -> bool:
    return importlib.util.find_spec("librosa") is not None


def skip_reason(case: Case, env: BenchEnv) -> str | None:
    """Why `case` does not run in `env`, or None. GPU-only cases say 'needs CUDA: ...'."""
    if case.suite == "loader":
        if case.provider == "dali" and not dali_available():
            return "DALI not installed: nvidia.dali is not importable here (pip install nvidia-dali-cuda130)"
        if case.provider == "librosa" and not librosa_available():
            return "librosa not installed: the DataLoader baseline computes its log-mel with librosa"
        return None
    if case.provider in AUTOTUNE_PROVIDERS and not env.cuda:
        return "needs CUDA: max-autotune benchmarks GPU kernel variants (minutes of compiling on a CPU for nothing)"
    if case.provider in CUDAGRAPH_PROVIDERS and not env.cuda:
        return "needs CUDA: CUDA graphs (torch.compile mode reduce-overhead) capture CUDA work only"
    if case.suite == "block":
        return _block_skip_reason(case, env)
    if env.cuda or env.smoke:
        return None
    if case.suite in PASSES and case.provider == "fused":
        return (f"needs CUDA: on CPU fastsca::{PASSES[case.suite][0]} runs its reference, so this would time the "
                f"eager case again (the fused attention's CPU passes are timed by the sca and train_step suites)")
    if env.cpu_all:
        return None
    if case.suite in PASSES:
        return (f"needs CUDA: {case.suite} is a GPU kernel, and its reference alone on 2 shared CPU cores says "
                f"nothing about it; left out to keep the CPU bench to a few minutes "
                f"(FASTSCA_BENCH_CPU_ALL=1 runs eager and compile anyway)")
    if case.suite == "sca" and case.shape.dims != CPU_MODULE_MAP:
        return (f"left out on CPU to keep the CPU bench to a few minutes: the module runs at "
                f"B{CPU_MODULE_MAP[0]}-C{CPU_MODULE_MAP[1]}x{CPU_MODULE_MAP[2]}x{CPU_MODULE_MAP[3]} there "
                f"(FASTSCA_BENCH_CPU_ALL=1 runs every map)")
    return None


def _block_skip_reason(case: Case, env: BenchEnv) -> str | None:
    if case.block != CPU_BLOCK and not env.cuda:
        return (f"needs CUDA: at-sca-3's {case.block.name} in bf16 autocast and channels_last is the GPU's case "
                f"(a CPU times the small block {CPU_BLOCK.label} instead)")
    return None


# ---------------------------------------------------------------------------------------- preparing

def autocast(device: torch.device, dtype: torch.dtype = torch.bfloat16):
    """bf16 autocast for a bf16 case, as training runs (train/evaluate.py's autocast; not imported from
    there because train.evaluate imports the DALI loader); none for fp32. On CPU only bf16 cases
    (the smoke run's) get it: it makes the fp32 convs and linears of the module accept a bf16 map."""
    if dtype != torch.bfloat16:
        return contextlib.nullcontext()
    return torch.autocast(device.type, torch.bfloat16)


def nbytes(*tensors: torch.Tensor | None) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


def pass_minimal_bytes(suite: str, args: list, out: torch.Tensor) -> int:
    """The module docstring's formulas, from the pass's actual arguments and output (counted in the map's
    dtype for every provider: the fused passes write S and Z in fp32, the reference in the map's dtype)."""
    if suite not in PASSES:
        raise ValueError(f"unknown pass {suite!r}; valid: {', '.join(PASSES)}")
    return nbytes(*(a for a in args if isinstance(a, torch.Tensor))) + out.numel() * args[0].element_size()


def sca_minimal_bytes(mode: str, x: torch.Tensor) -> int:
    """4|F| forward, 5|F| backward (module docstring)."""
    return {"forward": 4, "backward": 5, "full": 9}[mode] * nbytes(x)


def _pass_args(suite: str, shape: MapShape, env: BenchEnv, map_dtype: torch.dtype) -> list:
    """Random arguments of a pass at `shape` as the SCA module passes them: no channel weight (SCA, not
    CSA), the squeeze weighted by sigma(logit_s), both logits in fp32 as the unit computes them."""
    b, c, t, f = shape.dims
    x = torch.randn(b, c, t, f, device=env.device).to(map_dtype)
    if suite == "pool":
        return [x, None]
    if suite == "squeeze":
        return [x, torch.randn(b, 1, t, f, device=env.device)]
    if suite == "gate":
        return [x, torch.randn(b, 1, t, f, device=env.device), torch.randn(b, c, device=env.device), False]
    raise ValueError(f"unknown pass {suite!r}; valid: {', '.join(PASSES)}")


_COMPILED: dict[tuple, Callable] = {}
"""Compiled references and modules, shared by the three modes of one (suite, shape, provider):
one compilation instead of three."""


def _compiled_reference(suite: str, env: BenchEnv) -> Callable:
    key = (suite, env.compile_backend)
    if key not in _COMPILED:
        _COMPILED[key] = torch.compile(PASSES[suite][1], fullgraph=True, dynamic=False, backend=env.compile_backend)
    return _COMPILED[key]


def _mode_fn(forward: Callable[[], torch.Tensor], inputs: list[torch.Tensor], mode: str) -> Callable[[], object]:
    """The timed call of a mode. `backward` times autograd over a graph built once, outside the timed
    region (retain_graph keeps it for the next call); torch.autograd.grad returns fresh gradients
    rather than accumulating into .grad, so every call does the same work."""
    if mode == "forward":
        return forward
    out = forward()
    grad = torch.randn_like(out)
    if mode == "backward":
        return lambda: torch.autograd.grad(out, inputs, grad, retain_graph=True, allow_unused=True)
    if mode == "full":
        del out
        return lambda: torch.autograd.grad(forward(), inputs, grad, allow_unused=True)
    raise ValueError(f"unknown mode {mode!r}; valid: {', '.join(MODES)}")


@contextlib.contextmanager
def _prepare_pass(case: Case, env: BenchEnv) -> Iterator[Prepared]:
    args = _pass_args(case.suite, case.shape, env, case.torch_dtype)
    op, fn = PASSES[case.suite]
    if case.provider == "fused":
        fn = getattr(torch.ops.fastsca, op)
    elif case.provider == "compile":
        fn = _compiled_reference(case.suite, env)
    elif case.provider != "eager":
        raise ValueError(f"unknown pass provider {case.provider!r}; valid: {', '.join(PASS_PROVIDERS)}")
    if case.mode not in PASS_MODES:
        raise ValueError(f"unknown pass mode {case.mode!r}; valid: {', '.join(PASS_MODES)}")
    with torch.no_grad():
        out = fn(*args)
    yield Prepared(fn=lambda: fn(*args), device=env.device, minimal_bytes=pass_minimal_bytes(case.suite, args, out),
                   setup=l2_flush(env.device), info={"dtype": case.dtype})


def _attention(channels: int, time: int, freq: int, fused: bool) -> torch.nn.Module:
    """The SCA attention of at-sca-3's config on a (channels, time, freq) map."""
    config = ModelConfig.from_name(TARGET_PRESET)
    return build_attention(arrangement=config.arrangement, channels=channels, time_steps=time, freq_bins=freq,
                           use_global=config.spatial_global, use_local=config.spatial_local,
                           rd_ratio=config.rd_ratio, global_mid_channels=config.global_mid_channels,
                           global_kernel_size=config.global_kernel_size, fused=fused)


def _sca_module(case: Case, env: BenchEnv) -> tuple[torch.nn.Module, Callable]:
    """The SCA module of at-sca-3's config at the case's map, and what runs it (compiled or not)."""
    key = ("sca", case.shape.dims[1:], case.dtype, case.provider, env.compile_backend, str(env.device))
    if key not in _COMPILED:
        _, channels, time, freq = case.shape.dims
        module = _attention(channels, time, freq, case.provider in FUSED_PROVIDERS).to(env.device)
        run = module
        if case.provider in COMPILED_PROVIDERS:
            run = torch.compile(module, fullgraph=True, dynamic=False, backend=env.compile_backend)
        _COMPILED[key] = (module, run)
    return _COMPILED[key]


@contextlib.contextmanager
def _prepare_sca(case: Case, env: BenchEnv) -> Iterator[Prepared]:
    if case.provider not in SCA_PROVIDERS:
        raise ValueError(f"unknown module provider {case.provider!r}; valid: {', '.join(SCA_PROVIDERS)}")
    module, run = _sca_module(case, env)
    x = torch.randn(case.shape.dims, device=env.device).to(case.torch_dtype).requires_grad_()

    def forward():
        with autocast(env.device, case.torch_dtype):
            return run(x)

    yield Prepared(fn=_mode_fn(forward, [x, *module.parameters()], case.mode), device=env.device,
                   minimal_bytes=sca_minimal_bytes(case.mode, x), setup=l2_flush(env.device),
                   info={"dtype": case.dtype, "autocast": case.dtype == "bf16"})


def compile_mode(provider: str) -> str:
    """torch.compile's mode of a compiled provider: reduce-overhead (CUDA graphs), max-autotune-no-cudagraphs
    (Inductor benchmarks kernel variants), else default."""
    return ("reduce-overhead" if provider in CUDAGRAPH_PROVIDERS else
            "max-autotune-no-cudagraphs" if provider in AUTOTUNE_PROVIDERS else "default")


@contextlib.contextmanager
def _prepare_block(case: Case, env: BenchEnv) -> Iterator[Prepared]:
    """One training step of the block without the optimiser: forward and backward to the input and every
    parameter, BatchNorm in training mode (batch statistics, running ones updated), bf16 autocast and
    channels_last on CUDA as train.run. Seeded, so every provider times the same weights and input."""
    if case.provider not in BLOCK_PROVIDERS:
        raise ValueError(f"unknown block provider {case.provider!r}; valid: {', '.join(BLOCK_PROVIDERS)}")
    shape, fused = case.block, case.provider in FUSED_PROVIDERS
    layout = torch.channels_last if env.cuda else torch.contiguous_format   # as train.run
    with torch.random.fork_rng(devices=[env.device] if env.cuda else []):
        torch.manual_seed(0)
        attention = (_attention(shape.out_channels, shape.time, shape.freq, fused) if shape.attention
                     else torch.nn.Identity())
        block = ResidualBlock(shape.in_channels, shape.out_channels, attention, shape.pool, fused=fused)
        block = block.to(env.device, memory_format=layout).train()
        x = torch.randn(shape.input_dims, device=env.device).contiguous(memory_format=layout).requires_grad_()
        run = block
        if case.provider in COMPILED_PROVIDERS:
            run = torch.compile(block, fullgraph=True, dynamic=False, backend=env.compile_backend,
                                mode=compile_mode(case.provider))

        def forward():
            with autocast(env.device, case.torch_dtype):
                return run(x)

        step = _mode_fn(forward, [x, *block.parameters()], case.mode)   # draws the upstream gradient
    yield Prepared(fn=step, device=env.device, setup=l2_flush(env.device),
                   info={"dtype": case.dtype, "autocast": case.dtype == "bf16",
                         "channels_last": layout == torch.channels_last,
                         "params": sum(p.numel() for p in block.parameters())})


def _optimiser(model: torch.nn.Module) -> torch.optim.Optimizer:
    """Training's AdamW (train/optim.py). train.config imports the DALI loader: where DALI is missing
    (the GPU machines' image) the same two parameter groups are built here."""
    try:
        from train.config import OptimConfig
        from train.optim import build_optimiser
    except ImportError:
        params = [p for p in model.parameters() if p.requires_grad]
        return torch.optim.AdamW([{"params": [p for p in params if p.dim() >= 2], "weight_decay": 0.01},
                                  {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}], lr=1e-3)
    return build_optimiser(model, OptimConfig())


@contextlib.contextmanager
def _prepare_train_step(case: Case, env: BenchEnv) -> Iterator[Prepared]:
    from train.loss import clip_bce

    if case.provider not in TRAIN_PROVIDERS:
        raise ValueError(f"unknown training provider {case.provider!r}; valid: {', '.join(TRAIN_PROVIDERS)}")
    sizes = TRAIN_SIZES[env.scale]
    overrides = dict(input_frames=sizes["input_frames"], num_classes=sizes["num_classes"])
    if sizes["channels"] is not None:
        overrides["channels"] = sizes["channels"]
    layout = torch.channels_last if env.cuda else torch.contiguous_format   # as train.run
    fused = case.provider in FUSED_PROVIDERS
    model = build_model(case.model, RunOptions(fused_attention=fused, fused_backbone=fused), **overrides)
    model = model.to(env.device, memory_format=layout)
    optimiser = _optimiser(model)
    config = model.config
    # Log-mel-like input (dB values around -50) and sparse multi-hot targets, as AudioSet's.
    log_mel = (torch.randn(case.batch, 1, config.input_frames, config.n_mels, device=env.device) * 20 - 50
               ).contiguous(memory_format=layout)
    target = (torch.rand(case.batch, config.num_classes, device=env.device) < 0.05).float()
    run = model
    if case.provider in COMPILED_PROVIDERS:
        run = torch.compile(model, backend=env.compile_backend, mode=compile_mode(case.provider))

    def step() -> None:
        with autocast(env.device, torch.bfloat16 if env.cuda else torch.float32):
            output = run(log_mel)
        loss = clip_bce(output.clip, target)
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        optimiser.step()

    # Three warm-up steps: compile forward, compile backward, then the optimiser's first step
    # allocates its state; the timed steps after that are steady. CUDA graphs record on a later call.
    warmup = 5 if case.provider in CUDAGRAPH_PROVIDERS else 3
    yield Prepared(fn=step, device=env.device, items=case.batch, warmup_calls=warmup,
                   info={"channels": list(config.channels), "input_frames": config.input_frames,
                         "num_classes": config.num_classes, "autocast_bf16": env.cuda,
                         "channels_last": layout == torch.channels_last,
                         "params": sum(p.numel() for p in model.parameters())})


def loader_data(env: BenchEnv) -> tuple[Path, LogMelConfig]:
    """The built-in set the loader cases read (generated once per data folder) and its front end."""
    from train.data.synth import SynthConfig, ensure_builtin

    if env.smoke:
        synth = SynthConfig(n_classes=5, clip_seconds=1.0, n_train=16, n_eval=1, max_events=2, event_seconds=(0.2, 0.8))
    else:
        synth = SynthConfig(n_train=LOADER_CLIPS[env.scale], n_eval=1)
    root = env.data_dir or Path(tempfile.gettempdir()) / "fastsca-bench-data"
    train_path, _ = ensure_builtin(root, synth, workers=min(os.cpu_count() or 1, 8))
    return train_path, LogMelConfig(sample_rate=synth.sample_rate, clip_samples=synth.clip_samples)


@contextlib.contextmanager
def _prepare_loader(case: Case, env: BenchEnv) -> Iterator[Prepared]:
    path, log_mel = loader_data(env)
    batch = case.batch
    if case.provider == "dali":
        from train.data.loader import LoaderConfig, LogMelLoader

        loader = LogMelLoader(path, LoaderConfig(batch_size=batch, sampler="shuffle", seed=0,
                                                 num_workers=LOADER_WORKERS, drop_last=True),
                              log_mel=log_mel, device=env.device)
        close = loader.close
        clips = len(loader) * batch
    elif case.provider == "librosa":
        from bench.librosa_loader import librosa_loader, shutdown

        loader = librosa_loader(path, log_mel, batch, LOADER_WORKERS, env.device)
        close = lambda: shutdown(loader)  # noqa: E731
        clips = len(loader) * batch
    else:
        raise ValueError(f"unknown loader provider {case.provider!r}; valid: {', '.join(LOADER_PROVIDERS)}")

    def epoch() -> int:
        seen = 0
        for log_mel_batch, target in loader:
            log_mel_batch = log_mel_batch.to(env.device, non_blocking=True)
            target = target.to(env.device, non_blocking=True)
            seen += log_mel_batch.shape[0]
        return seen

    try:
        # The first epoch starts the workers (DALI's spawned Python workers, the DataLoader's
        # persistent ones): outside the timed region. Each timed call is one whole epoch.
        yield Prepared(fn=epoch, device=env.device, items=clips, host_timed=True, warmup_calls=1, min_reps=3,
                       info={"clips_per_epoch": clips, "workers": LOADER_WORKERS,
                             "clip_seconds": log_mel.clip_seconds})
    finally:
        close()


PREPARERS = {**{suite: _prepare_pass for suite in PASSES}, "sca": _prepare_sca, "block": _prepare_block,
             "train_step": _prepare_train_step, "loader": _prepare_loader}


def prepare(case: Case, env: BenchEnv) -> contextlib.AbstractContextManager[Prepared]:
    """A context that yields the case ready to time and releases it (loader workers) afterwards."""
    if case.suite not in PREPARERS:
        raise ValueError(f"unknown suite {case.suite!r}; valid: {', '.join(PREPARERS)}")
    return PREPARERS[case.suite](case, env)
