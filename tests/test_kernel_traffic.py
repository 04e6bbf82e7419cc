"""The F-sized bytes each attention arrangement moves, measured by running its kernels, against the floors.

Under TRITON_INTERPRET=1 every program of every launch runs, so counting the elements each load and
store touches (its mask) per tensor argument counts what the GPU would move from DRAM with no cache:
a program that re-reads part of F counts again, whatever the grid. The static report
(bench/static_report.py) counts the same traffic from the compiled code (size x passes per pointer);
both must equal the floors of kernels/attention.py's table exactly, so an undercount fails as surely as
an overcount. Odd shapes leave masked tails on every axis; the grouped-row case (fp32, C = 12, N = 21)
reads NCHW rows in groups of 4 channels; batch 133 gives the column pass its 64-column blocks.
"""
import contextlib
from collections import Counter

import numpy as np
import pytest
import torch
from triton.runtime import interpreter

from fastsca.attention import build_attention
from kernels import LAUNCHES

FLOORS = {"sca": (4, 5), "csa": (4, 5), "cps": (4, 4), "spatial": (3, 4), "channel": (3, 4)}
"""(forward, backward) F-sized traffic in units of |F| (kernels/attention.py's table)."""
MAPS = [((3, 37, 7, 3), torch.contiguous_format), ((3, 37, 7, 3), torch.channels_last),
        ((2, 12, 7, 3), torch.contiguous_format), ((133, 5, 7, 3), torch.channels_last)]


@contextlib.contextmanager
def count_f_traffic(f_numel: int):
    """Within: bytes that interpreted kernels load from and store to F-sized tensor arguments, by phase
    (set counts['phase'] is not used: callers read `counts` between phases)."""
    counts = Counter()
    ranges: list[tuple[int, int]] = []   # [start, end) addresses of the running launch's F-sized arguments

    def attribute(ptrs, mask, kind):
        addresses = ptrs.data[mask.data.astype(bool)] if mask is not None else ptrs.data.ravel()
        size = ptrs.get_element_ty().primitive_bitwidth // 8
        for start, end in ranges:
            counts[kind] += int(np.count_nonzero((addresses >= start) & (addresses < end))) * size

    saved_load = interpreter.InterpreterBuilder.create_masked_load
    saved_store = interpreter.InterpreterBuilder.create_masked_store
    saved_run = interpreter.InterpretedFunction.run

    def load(self, ptrs, mask, other, cache_policy, is_volatile):
        attribute(ptrs, mask, "read")
        return saved_load(self, ptrs, mask, other, cache_policy, is_volatile)

    def store(self, ptrs, value, mask, cache_policy):
        attribute(ptrs, mask, "written")
        return saved_store(self, ptrs, value, mask, cache_policy)

    def run(self, *args, **kwargs):
        tensors = [a for a in (*args, *kwargs.values()) if isinstance(a, torch.Tensor)]
        ranges[:] = sorted({(t.data_ptr(), t.data_ptr() + t.numel() * t.element_size())
                            for t in tensors if t.numel() == f_numel})
        try:
            return saved_run(self, *args, **kwargs)
        finally:
            ranges.clear()

    interpreter.InterpreterBuilder.create_masked_load = load
    interpreter.InterpreterBuilder.create_masked_store = store
    interpreter.InterpretedFunction.run = run
    try:
        yield counts
    finally:
        interpreter.InterpreterBuilder.create_masked_load = saved_load
        interpreter.InterpreterBuilder.create_masked_store = saved_store
        interpreter.InterpretedFunction.run = saved_run


@pytest.mark.slow
@pytest.mark.parametrize("shape, layout", MAPS)
@pytest.mark.parametrize("arrangement", list(FLOORS))
def test_measured_f_traffic_equals_the_floor(kernel_device, arrangement, shape, layout):
    if kernel_device != "cpu":
        pytest.skip("counts what the interpreter runs; on a GPU the static report counts the compiled code")
    _, channels, time, freq = shape
    torch.manual_seed(channels + time)
    module = build_attention(arrangement=arrangement, channels=channels, time_steps=time, freq_bins=freq,
                             use_global=True, use_local=True, rd_ratio=4, global_mid_channels=4,
                             global_kernel_size=5, fused=True).train()
    x = torch.randn(shape).contiguous(memory_format=layout).requires_grad_()
    f_bytes = x.numel() * x.element_size()
    launches = sum(LAUNCHES.values())
    with count_f_traffic(x.numel()) as counts:
        out = module(x)
        forward = counts["read"] + counts["written"]
        out.backward(torch.randn_like(out))
        backward = counts["read"] + counts["written"] - forward
    assert sum(LAUNCHES.values()) > launches   # the Triton path ran
    assert (forward / f_bytes, backward / f_bytes) == FLOORS[arrangement]
