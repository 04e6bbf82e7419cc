"""Run a compiled training step with no kernel executing, and record every launch it would make.

Inside `record_step()`:
- each Triton kernel Inductor generated (bench/inductor_cpu.py makes it generate them for CPU tensors) is
  recorded with its arguments and grid instead of launched (`CachingAutotuner.run` is replaced);
- each kernel of fastsca's F-sized passes is recorded the same way (bench/launches.py);
- each aten call the generated code makes (extern convolutions and matmuls, fallback ops, the aten work
  inside fastsca's ops) is recorded with its FLOPs (torch.utils.flop_counter's formulas) and bytes
  (inputs + outputs), and gets outputs of the right shape and strides computed by FakeTensorMode (the layouts torch.compile planned with), without
  computing: so a step at batch 256 and full width costs what compiling it costs, and its buffers stay
  untouched (no memory is committed for them).
The dispatch mode is entered only around the generated code's own calls (`CompiledFxGraph.__call__`), so
Dynamo, AOTAutograd and Inductor compile as usual. Values are meaningless; shapes, strides, dtypes,
launch counts and grids are those of the real step.
"""
import contextlib
from dataclasses import dataclass, field

import torch
from torch._inductor.output_code import CompiledFxGraph
from torch._inductor.runtime.triton_heuristics import CachingAutotuner
from torch._library.custom_ops import OPDEFS
from torch._subclasses.fake_tensor import FakeTensorMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves, tree_map
from torch.utils.flop_counter import flop_registry

from bench import launches as project_launches

PROJECT_OP_NAMESPACE = project_launches.PROJECT_OP_NAMESPACE
_FREE_OPS = ("empty", "new_empty", "empty_strided", "new_empty_strided", "detach", "alias", "lift_fresh",
             "_local_scalar_dense")
"""aten ops that run as they are: allocations and aliases (no data moves), and reading one scalar to the host
(no fake answer exists; the value is as meaningless as every other)."""


@dataclass
class InductorLaunch:
    """One launch of a kernel Inductor generated."""

    autotuner: CachingAutotuner
    """Inductor's launcher of the kernel: its function, configs and metadata."""
    args: tuple
    grid: tuple[int, ...]
    phase: str


@dataclass
class AtenCall:
    """One aten call the generated code (or a fastsca op's body) makes: an extern launch."""

    op: str
    phase: str
    flops: int
    read_bytes: int
    written_bytes: int
    inside_project_op: bool
    """Made by the body of a fastsca op (a launch torch.compile cannot see)."""


@dataclass
class StepRecording:
    """Everything one `record_step()` saw, in launch order per kind."""

    project_recording: project_launches.Recording = field(default_factory=lambda: project_launches.Recording(0))
    """Where fastsca's own kernel launches go (bench/launches.py)."""
    inductor: list[InductorLaunch] = field(default_factory=list)
    aten: list[AtenCall] = field(default_factory=list)
    project_ops: list[tuple[str, str]] = field(default_factory=list)
    """(op, phase) of every fastsca op the generated code called."""

    @property
    def phase(self) -> str:
        return self.project_recording.phase

    @phase.setter
    def phase(self, value: str) -> None:
        self.project_recording.phase = value

    @property
    def project(self) -> list[project_launches.Launch]:
        """fastsca's kernel launches."""
        return self.project_recording.launches


def _tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in tensors:
        key = (t.untyped_storage().data_ptr(), t.storage_offset(), tuple(t.shape), tuple(t.stride()), t.dtype)
        if key not in seen:
            seen.add(key)
            total += t.numel() * t.element_size()
    return total




class _NoCompute(TorchDispatchMode):
    """Records aten calls and answers them with uninitialised outputs of the right layout (see module doc)."""

    def __init__(self, recording: StepRecording) -> None:
        super().__init__()
        self.recording = recording
        self.depth = 0   # > 0 inside a fastsca op's body

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == PROJECT_OP_NAMESPACE:
            opdef = OPDEFS.get(func._schema.name)
            self.recording.project_ops.append((func._schema.name, self.recording.phase))
            self.depth += 1
            try:
                with self:   # step into the body: its kernels are recorded, its aten work counted
                    return opdef._init_fn(*args, **kwargs)
            finally:
                self.depth -= 1
        name = func.overloadpacket.__name__
        if func.is_view or name in _FREE_OPS or func.namespace != "aten":
            return func(*args, **kwargs)
        inputs = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        with FakeTensorMode() as fake:   # the layouts torch.compile planned with (meta kernels may differ)
            to_fake = lambda t: fake.from_tensor(t) if isinstance(t, torch.Tensor) else t  # noqa: E731
            meta_out = func(*tree_map(to_fake, args), **tree_map(to_fake, kwargs))
        if func._schema.is_mutable:   # in place or out=: the mutated argument is the result
            out = kwargs.get("out", args[0])
            written = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        else:
            out = tree_map(lambda t: torch.empty_strided(t.shape, t.stride(), dtype=t.dtype)
                           if isinstance(t, torch.Tensor) else t, meta_out)
            written = [t for t in tree_leaves(out) if isinstance(t, torch.Tensor)]
        flops = 0
        if func.overloadpacket in flop_registry:
            flops = int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=meta_out))
        self.recording.aten.append(AtenCall(str(func), self.recording.phase, flops, _tensor_bytes(inputs),
                                            _tensor_bytes(written), self.depth > 0))
        return out


@contextlib.contextmanager
def record_step():
    """Within: compiled steps run with every launch recorded and none executed (see the module docstring).
    Set `recording.phase` ('forward', 'backward', 'optimizer') before each part of the step."""
    recording = StepRecording()
    mode = _NoCompute(recording)

    def capture(self, *args, stream, **kwargs):
        launch_args, grid = self._interpret_args_grid(args, self.configs[0])
        recording.inductor.append(InductorLaunch(self, launch_args, tuple(int(g) for g in grid), recording.phase))

    def run_generated(self, inputs):
        with mode:
            return saved_call(self, inputs)

    saved_run, saved_call = CachingAutotuner.run, CompiledFxGraph.__call__
    CachingAutotuner.run, CompiledFxGraph.__call__ = capture, run_generated
    try:
        with project_launches.capture_launches(recording.project_recording):
            yield recording
    finally:
        CachingAutotuner.run, CompiledFxGraph.__call__ = saved_run, saved_call
