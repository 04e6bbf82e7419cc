"""Make Inductor write its GPU-style Triton kernels for CPU tensors, on a machine with no GPU.

With `torch._inductor.config.cpu_backend = "triton"`, Inductor runs the scheduler and fusion passes it
runs for CUDA and emits Triton kernels for CPU tensors; under TRITON_INTERPRET=1 Triton's interpreter can
run them. Three things ask for an active GPU driver or CUDA's libdevice and are patched for the duration:
`torch.utils._triton.triton_backend` (None) and `triton_hash_with_backend` (a constant), and the
`libdevice` that generated kernels import from Inductor's runtime helpers, pointed at `tl.math` plus
`@triton.jit` stand-ins for the few functions `tl.math` lacks. Checked with torch 2.13 + Triton 3.9.

Where Inductor lowers differently for a CPU device, the CUDA lowering is asked for meanwhile:
- a scatter-add (torch 2.13's max-pool backward decomposition) becomes Triton's atomic-add kernel, as on CUDA,
  not the CPU's extern `scatter_reduce_` (`cpp.fallback_scatter_reduce_sum` off);
- reductions are split as for an H100: the device reports its 132 SMs, 2048 threads per SM and 32-thread
  warps (DeviceProperties), not the host's cores.
Kernels are named after the torch modules and functions they fuse (`triton.descriptive_names = "torch"`), which
bench/breakdown.py reads; names change no code. `identifier_kernel_names` keeps those names Python identifiers:
torch 2.13 names a backward kernel after a custom op's overload (`block_tail_forward.default`), a syntax error in
the generated module (Inductor's default names, which training uses, are not affected).
"""
import contextlib
import os
import re
from unittest import mock

import torch
import triton
import triton.language as tl


@triton.jit
def _log1p(x):
    return tl.log(1 + x)


@triton.jit
def _expm1(x):
    return tl.exp(x) - 1


@triton.jit
def _tanh(x):
    return 2 * tl.sigmoid(2 * x) - 1


@triton.jit
def _pow(x, y):
    return tl.exp(y * tl.log(x))


@triton.jit
def _isinf(x):
    return (x == float("inf")) | (x == float("-inf"))


@triton.jit
def _isnan(x):
    return x != x


@triton.jit
def _signbit(x):
    return x < 0


class _CpuLibdevice:
    """libdevice for the interpreter: tl.math's function of the same name, else a jit stand-in above."""

    _STAND_INS = {"log1p": _log1p, "expm1": _expm1, "tanh": _tanh, "pow": _pow, "isinf": _isinf,
                  "isnan": _isnan, "signbit": _signbit}

    def __getattr__(self, name):
        if name in self._STAND_INS:
            return self._STAND_INS[name]
        if hasattr(tl.math, name):
            return getattr(tl.math, name)
        raise AttributeError(f"bench.inductor_cpu: no CPU stand-in for libdevice.{name}")


H100_SMS = 132
"""Streaming multiprocessors of an H100 SXM (and H200): what Inductor sizes its split reductions by."""
H100_THREADS_PER_SM = 2048


def _as_h100(create):
    """DeviceProperties.create with a CPU device reporting an H100's SM count, threads per SM and warp size."""
    def create_for(device):
        props = create(device)
        if props.type != "cpu":
            return props
        return props._replace(multi_processor_count=H100_SMS,
                                   max_threads_per_multi_processor=H100_THREADS_PER_SM, warp_size=32)
    return create_for


@contextlib.contextmanager
def identifier_kernel_names():
    """Inductor's descriptive Triton kernel names with every character that cannot be in an identifier made '_'."""
    from torch._inductor.codegen import triton as triton_codegen

    name_of = triton_codegen.get_fused_kernel_name
    with mock.patch.object(triton_codegen, "get_fused_kernel_name",
                           lambda *args, **kwargs: re.sub(r"\W", "_", name_of(*args, **kwargs))):
        yield


@contextlib.contextmanager
def inductor_triton_on_cpu():
    """Inductor emits (and, under TRITON_INTERPRET=1, runs) Triton kernels for CPU tensors meanwhile."""
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime import hints, triton_compat, triton_helpers

    libdevice = _CpuLibdevice()
    with contextlib.ExitStack() as stack:
        stack.enter_context(mock.patch.dict(os.environ, {"TRITON_INTERPRET": "1"}))
        stack.enter_context(mock.patch("torch.utils._triton.triton_backend", lambda: None))
        stack.enter_context(mock.patch("torch.utils._triton.triton_hash_with_backend", lambda: "CPU-TRITON-INTERPRET"))
        stack.enter_context(mock.patch.object(triton_helpers, "libdevice", libdevice))
        stack.enter_context(mock.patch.object(triton_compat, "libdevice", libdevice))
        stack.enter_context(inductor_config.patch({"cpu_backend": "triton", "cpp.fallback_scatter_reduce_sum": False,
                                                   "triton.descriptive_names": "torch"}))
        stack.enter_context(identifier_kernel_names())
        create = hints.DeviceProperties.create
        stack.enter_context(mock.patch.object(hints.DeviceProperties, "create", _as_h100(create)))
        torch._dynamo.reset()
        try:
            yield
        finally:
            torch._dynamo.reset()
