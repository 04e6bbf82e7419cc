"""Run a compiled training step with no kernel executing, and record every launch it would make.

Inside `record_step()`:
- each Triton kernel Inductor generated (bench/inductor_cpu.py makes it generate them for CPU tensors) is
  recorded with its arguments and grid instead of launched (`CachingAutotuner.run` is replaced);
- each kernel of fastsca's F-sized passes is recorded the same way (bench/launches.py);
- each aten call the generated code makes (extern convolutions and matmuls, fallback ops, the aten work
  inside fastsca's ops) is recorded with its FLOPs (torch.utils.flop_counter's formulas) and bytes
  (inputs + outputs), and gets outputs of the right shape and strides computed by FakeTensorMode (the layouts
  torch.compile planned with), without
  computing: so a step at batch 256 and full width costs what compiling it costs, and its buffers stay
  untouched (no memory is committed for them).
The dispatch mode is entered only around the generated code's own calls (`CompiledFxGraph.__call__`), so
Dynamo, AOTAutograd and Inductor compile as usual; with `eager=True` it is active for the whole block, so the
eager work around the compiled graphs (the loss, clipping, the optimiser) is recorded too, with the mode
declaring `ignore_compile_internals` so that Dynamo still compiles under it. Values are meaningless; shapes,
strides, dtypes, launch counts and grids are those of the real step.

Two extern calls are recorded as what CUDA launches rather than as one aten call: `convolution_backward` as
cuDNN's separate dgrad and wgrad kernels, each reading grad_out (FLOPs from the same formula, per output), and
each multi-tensor op (`_foreach_*`, fused AdamW) as multi_tensor_apply's launches (bench/multi_tensor.py).
Ops with a CompositeImplicitAutograd kernel that a dispatch mode meets as possible aliases (`to`, `contiguous`,
`reshape`, called in the fastsca ops' bodies and in eager code) are decomposed under the mode, so the copies they
make (a dtype cast, a layout change) are recorded like any other call, and their aliases stay free.
One is left out: after the compiled backward, AccumulateGrad clones a gradient when more references to it exist
than it expects, and under the recording mode they do, so it copies each gradient where a real step hands the
tensor over (torch.profiler on a real compiled CPU step shows no copy under AccumulateGrad): those eager
`copy_` calls of the backward are not recorded.
"""
import contextlib
import math
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
from bench.multi_tensor import is_multi_tensor, launches_of

PROJECT_OP_NAMESPACE = project_launches.PROJECT_OP_NAMESPACE
_FREE_OPS = ("empty", "new_empty", "empty_strided", "new_empty_strided", "detach", "alias", "lift_fresh",
             "_unsafe_view", "_local_scalar_dense")
"""aten ops that run as they are: allocations and aliases (no data moves; `_unsafe_view` is reshape's view of
the copy it made, not declared a view), and reading one scalar to the host (no fake answer exists; the value is
as meaningless as every other)."""


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
    project_op: str
    """The fastsca op whose body made it (a launch torch.compile cannot see), '' for the generated code's own."""
    in_graph: bool = True
    """Made by a compiled graph's generated code (replayed in a CUDA graph under mode reduce-overhead), not eager."""
    launches: int = 1
    """Kernels it launches on CUDA (several for a multi-tensor op)."""
    detail: dict = field(default_factory=dict)
    """For a convolution: c_in, c_out, kernel (kh, kw) and role (forward, dgrad, wgrad)."""


@dataclass
class StepRecording:
    """Everything one `record_step()` saw, in launch order per kind."""

    project_recording: project_launches.Recording = field(default_factory=lambda: project_launches.Recording(0))
    """Where fastsca's own kernel launches go (bench/launches.py)."""
    inductor: list[InductorLaunch] = field(default_factory=list)
    aten: list[AtenCall] = field(default_factory=list)
    project_ops: list[tuple[str, str]] = field(default_factory=list)
    """(op, phase) of every fastsca op the generated code called."""
    front_end_rows: list[dict] = field(default_factory=list)
    """Priced rows of the front end's work no dispatch mode sees (DALI's kernels: bench/front_end.py)."""
    graph_phase: dict[str, str] = field(default_factory=dict)
    """Phase a compiled graph's launches take when it starts in the phase of the key (e.g. the backward graph
    starts in the loss's eager backward); the phase stays so after it."""

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


def _composite(func) -> bool:
    """An op with a CompositeImplicitAutograd kernel (to, contiguous, reshape, flatten...): a dispatch mode meets
    such ops (the fastsca ops' bodies call them) with an alias annotation, so they look like views, but they copy
    when they must (another dtype, another layout). Run as they are, their copies would run below the mode,
    unrecorded; decomposed under the mode, each copy is recorded and each alias stays free."""
    return torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd")


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
        self.graphs = 0   # > 0 inside a compiled graph's generated code

    @classmethod
    def ignore_compile_internals(cls) -> bool:
        return True   # Dynamo compiles under this mode (it would run the model eagerly otherwise)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func.namespace == PROJECT_OP_NAMESPACE:
            opdef = OPDEFS.get(func._schema.name)
            self.recording.project_ops.append((func._schema.name, self.recording.phase))
            launches, outer_op = self.recording.project_recording, self.recording.project_recording.op
            launches.op, launches.op_detail = func._schema.name, block_convolution_detail(func._schema.name, args)
            try:
                with self:   # step into the body: its kernels are recorded, its aten work counted
                    return opdef._init_fn(*args, **kwargs)
            finally:
                launches.op, launches.op_detail = outer_op, {}
        name = func.overloadpacket.__name__
        if func.is_view and _composite(func):   # to, contiguous, reshape, ...: may alias, may copy
            with self:   # their decomposition's calls (a _to_copy, a clone) reach this mode and are recorded
                return func.decompose(*args, **kwargs)
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
        self._record(func, args, kwargs, inputs, written, meta_out)
        return out if func._schema.returns else None   # in-place foreach and fused ops return nothing

    def _record(self, func, args, kwargs, inputs, written, meta_out) -> None:
        phase, op, in_graph = self.recording.phase, self.recording.project_recording.op, self.graphs > 0
        name = func.overloadpacket.__name__
        if name == "copy_" and not in_graph and phase == "backward":
            return   # AccumulateGrad's clone: an artefact of the recording (see the module docstring)
        if name == "convolution_backward":
            for call in _convolution_backward_calls(str(func), args, meta_out, phase, op, in_graph):
                self.recording.aten.append(call)
            return
        if name in ("_fused_adamw_", "_fused_adam_"):   # grads are declared mutable (unscaling) but not written
            written = [t for t in tree_leaves((args[0], args[2], args[3])) if isinstance(t, torch.Tensor)]
        flops = 0
        if func.overloadpacket in flop_registry:
            flops = int(flop_registry[func.overloadpacket](*args, **kwargs, out_val=meta_out))
        launches = launches_of(name, [t.numel() for t in args[0]]) if is_multi_tensor(name) else 1
        detail = _convolution_detail(args, "forward") if name == "convolution" else {}
        if name in ("mm", "addmm", "bmm"):   # the shapes tell the head's matmuls (the class dimension) from others
            outputs = [t for t in tree_leaves(meta_out) if isinstance(t, torch.Tensor)]
            detail = {"shapes": [list(t.shape) for t in [*inputs, *outputs]]}
        self.recording.aten.append(AtenCall(str(func), phase, flops, _tensor_bytes(inputs), _tensor_bytes(written),
                                            op, in_graph, launches, detail))


BLOCK_CONVOLUTION_ROLES = {"fastsca::block_conv_forward": "forward", "fastsca::block_conv_input_grad": "dgrad",
                           "fastsca::block_conv_weight_grad": "wgrad"}
"""The fused block's convolution ops (kernels/residual_block.py) and the part of a convolution each computes."""


def block_convolution_detail(op: str, args) -> dict:
    """FLOPs, c_in, c_out, kernel, role and engine ('triton') of a block convolution op from its arguments, laid out
    as kernels/block_reference.py's passes: (map, weight, ...), (grad, weight, ...), (x, grad, weight_shape, ...).
    The op's first launch (its implicit GEMM) carries them; {} for any other op."""
    role = BLOCK_CONVOLUTION_ROLES.get(op)
    if role is None:
        return {}
    c_out, c_in, *kernel = args[2] if role == "wgrad" else args[1].shape
    batch, _, time_steps, freq_bins = args[0].shape
    flops = 2 * batch * time_steps * freq_bins * c_out * c_in * math.prod(kernel)
    return {"flops": int(flops), "c_in": int(c_in), "c_out": int(c_out), "kernel": [int(k) for k in kernel],
            "role": role, "engine": "triton"}


def _convolution_detail(args, role: str) -> dict:
    """c_in, c_out, kernel and role of a convolution from its (input, weight, ...) or backward arguments."""
    weight = args[1] if role == "forward" else args[2]
    c_out, c_in_per_group, *kernel = weight.shape
    return {"c_in": int(c_in_per_group), "c_out": int(c_out), "kernel": [int(k) for k in kernel], "role": role}


def _convolution_backward_calls(name, args, meta_out, phase, project_op, in_graph) -> list[AtenCall]:
    """cuDNN's dgrad and wgrad of one convolution_backward: each reads grad_out, dgrad the weight (writes
    grad_input), wgrad the input (writes grad_weight and any grad_bias)."""
    grad_out, x, weight = args[0], args[1], args[2]
    mask = list(args[10])
    calls = []
    for role, wanted, reads, outputs in (("dgrad", [True, False, False], [grad_out, weight], [0]),
                                         ("wgrad", [False, True, mask[2]], [grad_out, x], [1, 2])):
        if not any(mask[i] for i in outputs):
            continue
        own = [a and b for a, b in zip(mask, wanted)]
        flops = int(flop_registry[torch.ops.aten.convolution_backward](*args[:10], own, out_val=meta_out))
        written = [meta_out[i] for i in outputs if mask[i] and meta_out[i] is not None]
        calls.append(AtenCall(f"{name}:{role}", phase, flops, _tensor_bytes(reads), sum(
            t.numel() * t.element_size() for t in written), project_op, in_graph, 1, _convolution_detail(args, role)))
    return calls


@contextlib.contextmanager
def record_step(eager: bool = False):
    """Within: compiled steps run with every launch recorded and none executed (see the module docstring);
    with `eager`, the eager aten work in the block too. Set `recording.phase` before each part of the step."""
    import torch._dynamo.config as dynamo_config
    import torch._functorch.config as functorch_config

    recording = StepRecording()
    mode = _NoCompute(recording)

    def capture(self, *args, stream, **kwargs):
        launch_args, grid = self._interpret_args_grid(args, self.configs[0])
        recording.inductor.append(InductorLaunch(self, launch_args, tuple(int(g) for g in grid), recording.phase))

    def run_generated(self, inputs):
        recording.phase = recording.graph_phase.get(recording.phase, recording.phase)
        mode.graphs += 1
        try:
            if eager:   # the mode is already active
                return saved_call(self, inputs)
            with mode:
                return saved_call(self, inputs)
        finally:
            mode.graphs -= 1

    saved_run, saved_call = CachingAutotuner.run, CompiledFxGraph.__call__
    CachingAutotuner.run, CompiledFxGraph.__call__ = capture, run_generated
    try:
        # the backward compiles with the forward, not lazily inside the recorded backward
        with (project_launches.capture_launches(recording.project_recording),
              functorch_config.patch(force_non_lazy_backward_lowering=True),
              dynamo_config.patch(inline_torch_dispatch_torch_compile=False),
              mode if eager else contextlib.nullcontext()):
            yield recording
    finally:
        CachingAutotuner.run, CompiledFxGraph.__call__ = saved_run, saved_call
