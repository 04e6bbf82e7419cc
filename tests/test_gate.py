"""gate (eqs. 7, 9, 10): the Triton kernels, forward and backward, against gate_reference; op checks."""
import pytest
import torch

import kernels
from kernels import LAUNCHES, gate, gate_reference

# (B, C, T, F): the at-sca-3 maps at B = 1, awkward sizes (C = 37, T = 7, F = 3) that leave partial
# tiles on every axis, and C = 12 at N = 21, read as grouped rows of 4 channels (kernels.common.row_group).
SHAPES = [(2, 37, 7, 3), (1, 256, 100, 4), (3, 512, 7, 2), (1, 512, 100, 1), (2, 12, 7, 3)]
# (spatial logit, channel logit, additive): SCA/CSA, AT-S, AT-C, no gate, C//S.
VARIANTS = [(True, True, False), (True, False, False), (False, True, False), (False, False, False), (True, True, True)]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _inputs(shape, spatial, channel, layout, device, dtype=torch.float32):
    b, c, t, f = shape
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=layout)
    s = torch.randn(b, 1, t, f, device=device, dtype=dtype) * 2 if spatial else None
    z = torch.randn(b, c, device=device, dtype=dtype) * 2 if channel else None
    return x, s, z


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("spatial, channel, additive", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5)])
def test_gate_matches_reference(kernel_device, assert_matches_reference, shape, spatial, channel, additive, layout,
                                dtype, atol, rtol):
    x, s, z = _inputs(shape, spatial, channel, layout, kernel_device, dtype)
    before = LAUNCHES.copy()
    out = assert_matches_reference(gate, gate_reference, [x, s, z, additive], atol, rtol)
    assert LAUNCHES["gate_forward"] == before["gate_forward"] + 1
    assert LAUNCHES["gate_input_grad"] == before["gate_input_grad"] + 1
    assert out.is_contiguous(memory_format=layout)


def test_gate_with_a_broadcast_upstream_gradient(kernel_device):
    # out.sum().backward() hands the backward an expanded gradient: every stride 0.
    x, s, z = _inputs((2, 37, 7, 3), True, True, torch.contiguous_format, kernel_device)
    grads = []
    for op in (gate, gate_reference):
        args = [a.clone().requires_grad_() for a in (x, s, z)]
        op(*args, False).sum().backward()
        grads.append([a.grad for a in args])
    for mine, expected in zip(*grads):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("spatial, channel, additive", [(True, True, False), (False, True, False), (True, True, True)])
def test_gate_opcheck(spatial, channel, additive):
    x, s, z = _inputs((2, 37, 7, 3), spatial, channel, torch.channels_last, "cpu")
    args = [a.requires_grad_() if a is not None else None for a in (x, s, z)]
    torch.library.opcheck(torch.ops.fastsca.gate.default, (*args, additive))


def test_gate_opcheck_through_the_kernels(kernel_device):
    x, s, z = _inputs((2, 37, 7, 3), True, True, torch.contiguous_format, kernel_device)
    before = LAUNCHES["gate_input_grad"]
    torch.library.opcheck(torch.ops.fastsca.gate.default, (x.requires_grad_(), s.requires_grad_(), z.requires_grad_(), True))
    assert LAUNCHES["gate_input_grad"] > before


def test_gate_compiles_without_graph_break(kernel_device):
    x, s, z = _inputs((2, 37, 7, 3), True, True, torch.channels_last, kernel_device)

    def attention(x, s, z):   # a tiny SCA-like use: both gates, then the parallel form
        return kernels.gate(x, s, z, False) + kernels.gate(x, s, z, True)

    torch._dynamo.reset()
    compiled = torch.compile(attention, fullgraph=True)
    eager_args = [a.clone().requires_grad_() for a in (x, s, z)]
    compiled_args = [a.clone().requires_grad_() for a in (x, s, z)]
    before = LAUNCHES.copy()
    compiled(*compiled_args).square().sum().backward()
    assert LAUNCHES["gate_forward"] == before["gate_forward"] + 2
    assert LAUNCHES["gate_input_grad"] == before["gate_input_grad"] + 2
    attention(*eager_args).square().sum().backward()
    for mine, expected in zip(compiled_args, eager_args):
        torch.testing.assert_close(mine.grad, expected.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (lambda x: (x[0], None, None, False), r"\(B, C, T, F\)"),
    (lambda x: (x.int(), None, None, False), "floating point"),
    (lambda x: (x, torch.randn(2, 1, 7, 4), None, False), r"spatial_logit must have shape \(B, 1, T, F\)"),
    (lambda x: (x, None, torch.randn(2, 36), False), r"channel_logit must have shape \(B, C\)"),
    (lambda x: (x, torch.randn(2, 1, 7, 3), None, True), "additive"),
])
def test_gate_rejects_bad_shapes(args, message):
    x = torch.randn(2, 37, 7, 3)
    with pytest.raises(ValueError, match=message):
        gate(*args(x))
