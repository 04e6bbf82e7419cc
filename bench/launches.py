"""Record what the fused attention would launch on a GPU, and which F-sized aten work runs, on CPU tensors.

`record()` replaces Triton's `JITFunction.run` for its duration, so the project's own host launchers
(kernels/*.py), called by the module's forward and backward with CPU tensors of the real shapes,
hand over each launch (kernel, arguments, grid) instead of running it; `use_triton` is answered "yes"
in every kernels module meanwhile, so the ops take their Triton path on CPU. The launchers' outputs are
uninitialised buffers: values are meaningless, shapes, strides, dtypes and alignment are the real ones.

A TorchDispatchMode sees every aten op, inside the ops' bodies too (it runs each `fastsca::` op's
Python body under the mode), and keeps the ones that read or write a tensor of F's size: the copies
and the autograd sums of F-sized gradients that a launch count alone would miss.
"""
import contextlib
import sys
from dataclasses import dataclass, field

import torch
from torch._library.custom_ops import OPDEFS
from torch.utils._python_dispatch import TorchDispatchMode
from triton.runtime.jit import JITFunction

PROJECT_OP_NAMESPACE = "fastsca"
"""The torch.library namespace of the project's ops, whose bodies the dispatch mode steps into."""


@dataclass
class Launch:
    """One kernel launch as the host launcher issued it."""

    fn: JITFunction
    args: tuple
    kwargs: dict
    grid: tuple[int, ...]
    phase: str
    """'forward' or 'backward': which half of the module's step launched it."""
    op: str = ""
    """The fastsca op whose body launched it (e.g. 'fastsca::block_conv_forward'); '' when not known."""
    detail: dict = field(default_factory=dict)
    """For the first launch of a block convolution op: its FLOPs, c_in, c_out, kernel, role and engine."""

    @property
    def name(self) -> str:
        return self.fn.__name__

    @property
    def programs(self) -> int:
        out = 1
        for size in self.grid:
            out *= int(size)
        return out

    def variant(self) -> str:
        """The kernel's named compile-time switches and block sizes (its upper-case tl.constexpr
        parameters), e.g. 'HAS_S HAS_C BLOCK_C=32': what tells two specialisations of one kernel apart."""
        names = [p.name for p in self.fn.params]
        bound = dict(zip(names, self.args)) | self.kwargs
        switches = []
        for p in self.fn.params:
            value = bound.get(p.name, p.default)
            if p.is_constexpr and p.name.isupper() and value is not False:
                switches.append(p.name if value is True else f"{p.name}={value}")
        return " ".join(switches)

    def tensors(self) -> dict[str, torch.Tensor]:
        """The launch's tensor arguments by parameter name."""
        names = [p.name for p in self.fn.params]
        bound = dict(zip(names, self.args)) | {k: v for k, v in self.kwargs.items() if k in names}
        return {name: value for name, value in bound.items() if isinstance(value, torch.Tensor)}


@dataclass
class AtenTraffic:
    """One aten op that read or wrote an F-sized tensor."""

    op: str
    phase: str
    read_bytes: int
    written_bytes: int


@dataclass
class Recording:
    """Everything one `record()` saw, in order."""

    f_numel: int
    """Elements of F: a tensor with this many (unexpanded) elements is F-sized."""
    launches: list[Launch] = field(default_factory=list)
    aten: list[AtenTraffic] = field(default_factory=list)
    phase: str = "forward"
    op: str = ""
    """The fastsca op whose body is running (set by bench/step_recorder.py), given to each launch."""
    op_detail: dict = field(default_factory=dict)
    """What the running op computes (a convolution's FLOPs and shape), given to its first launch only."""


def is_f_sized(t: torch.Tensor, f_numel: int) -> bool:
    """A tensor holding F's number of distinct elements (an expanded S or Z is not F-sized)."""
    return t.numel() == f_numel and all(s != 0 for s, n in zip(t.stride(), t.shape) if n > 1)


def _tensors(tree) -> list[torch.Tensor]:
    return [t for t in torch.utils._pytree.tree_leaves(tree) if isinstance(t, torch.Tensor)]


def _storage(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class _FSizedAtenTraffic(TorchDispatchMode):
    """Counts bytes of F-sized tensors that aten ops read and write (views and allocations move nothing)."""

    def __init__(self, recording: Recording) -> None:
        super().__init__()
        self.recording = recording

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        opdef = OPDEFS.get(func._schema.name) if func.namespace == PROJECT_OP_NAMESPACE else None
        if opdef is not None:   # step into the op's body: its launches and aten work are recorded
            with self:
                return opdef._init_fn(*args, **kwargs)
        out = func(*args, **kwargs)
        if func.namespace == "aten":
            self._count(func, _tensors((args, kwargs)), _tensors(out))
        return out

    def _count(self, func, inputs: list[torch.Tensor], outputs: list[torch.Tensor]) -> None:
        f_numel = self.recording.f_numel
        in_storages = {_storage(t) for t in inputs}
        mutated = func._schema.is_mutable
        new_outputs = [t for t in outputs if mutated or _storage(t) not in in_storages]
        if not new_outputs or func.overloadpacket.__name__.startswith(("empty", "new_empty")):
            return   # a view, an alias or an uninitialised allocation: no bytes move
        read = sum(t.numel() * t.element_size() for t in inputs if is_f_sized(t, f_numel))
        written = sum(t.numel() * t.element_size() for t in new_outputs if is_f_sized(t, f_numel))
        if read or written:
            self.recording.aten.append(AtenTraffic(str(func), self.recording.phase, read, written))


def _kernel_modules() -> list:
    """The loaded modules of the kernels package that decide between Triton and the reference."""
    return [m for name, m in list(sys.modules.items())
            if (name == "kernels" or name.startswith("kernels.")) and callable(getattr(m, "use_triton", None))]


@contextlib.contextmanager
def capture_launches(recording: Recording):
    """Within: kernel launches are appended to `recording` (phase: its current one), not run, and the ops
    take their Triton path on CPU tensors. No dispatch mode: torch.compile may compile meanwhile."""
    modules = _kernel_modules()
    if not modules:
        raise RuntimeError("bench.launches: no kernels module defines use_triton; import kernels first")

    def capture(self, *args, grid, warmup, **kwargs):
        grid = grid(dict(zip([p.name for p in self.params], args)) | kwargs) if callable(grid) else grid
        recording.launches.append(Launch(self, args, kwargs, tuple(int(g) for g in grid), recording.phase,
                                         recording.op, recording.op_detail))
        recording.op_detail = {}

    saved_run = JITFunction.run
    saved_use = {m: m.use_triton for m in modules}
    JITFunction.run = capture
    for m in modules:
        m.use_triton = lambda *args, **kwargs: True
    try:
        yield recording
    finally:
        JITFunction.run = saved_run
        for m, use in saved_use.items():
            m.use_triton = use


@contextlib.contextmanager
def record(f_numel: int):
    """Within: kernel launches are recorded, not run, the ops take their Triton path on CPU tensors,
    and F-sized aten traffic is counted. Set `recording.phase` to 'backward' before the backward."""
    recording = Recording(f_numel)
    with capture_launches(recording), _FSizedAtenTraffic(recording):
        yield recording
