"""spatial_squeeze (eq. 8): the Triton kernels, forward and backward, against spatial_squeeze_reference; op checks."""
import pytest
import torch

import kernels
from kernels import LAUNCHES, spatial_squeeze, spatial_squeeze_reference

# (B, C, T, F): the at-sca-3 maps at B = 1, awkward sizes (C = 37, T = 7, F = 3) that leave partial
# tiles on every axis, and C = 12 at N = 21, read as grouped rows of 4 channels (kernels.common.row_group).
SHAPES = [(2, 37, 7, 3), (1, 256, 100, 4), (3, 512, 7, 2), (1, 512, 100, 1), (2, 12, 7, 3)]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _inputs(shape, with_logit, layout, device, dtype=torch.float32):
    b, _, t, f = shape
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=layout)
    logit = torch.randn(b, 1, t, f, device=device, dtype=dtype) * 2 if with_logit else None
    return x, logit


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("with_logit", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5)])
def test_spatial_squeeze_matches_reference(kernel_device, assert_matches_reference, shape, with_logit, layout,
                                           dtype, atol, rtol):
    x, logit = _inputs(shape, with_logit, layout, kernel_device, dtype)
    before = LAUNCHES.copy()
    assert_matches_reference(spatial_squeeze, spatial_squeeze_reference, [x, logit], atol, rtol)
    assert LAUNCHES["spatial_squeeze_forward"] == before["spatial_squeeze_forward"] + 1
    assert LAUNCHES["spatial_squeeze_backward"] == before["spatial_squeeze_backward"] + 1


def test_spatial_squeeze_with_a_channels_last_logit(kernel_device, assert_matches_reference):
    # A (B, 1, T, F) logit can carry odd strides (here a slice of a wider map); both merge T and F.
    x, _ = _inputs((2, 37, 7, 3), False, torch.channels_last, kernel_device)
    logit = torch.randn(2, 3, 7, 3, device=kernel_device).contiguous(memory_format=torch.channels_last)[:, 1:2]
    assert_matches_reference(spatial_squeeze, spatial_squeeze_reference, [x, logit], 1e-5, 1e-5)


def test_spatial_squeeze_with_a_broadcast_upstream_gradient(kernel_device):
    # out.sum().backward() hands the backward an expanded gradient: every stride 0.
    x, logit = _inputs((2, 37, 7, 3), True, torch.contiguous_format, kernel_device)
    grads = []
    for op in (spatial_squeeze, spatial_squeeze_reference):
        args = [x.clone().requires_grad_(), logit.clone().requires_grad_()]
        op(*args).sum().backward()
        grads.append([a.grad for a in args])
    for mine, expected in zip(*grads):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("with_logit", [False, True])
def test_spatial_squeeze_opcheck(with_logit):
    x, logit = _inputs((2, 37, 7, 3), with_logit, torch.channels_last, "cpu")
    torch.library.opcheck(torch.ops.fastsca.spatial_squeeze.default,
                          (x.requires_grad_(), logit.requires_grad_() if with_logit else None))


def test_spatial_squeeze_opcheck_through_the_kernels(kernel_device):
    x, logit = _inputs((2, 37, 7, 3), True, torch.contiguous_format, kernel_device)
    before = LAUNCHES["spatial_squeeze_backward"]
    torch.library.opcheck(torch.ops.fastsca.spatial_squeeze.default, (x.requires_grad_(), logit.requires_grad_()))
    assert LAUNCHES["spatial_squeeze_backward"] > before


def test_spatial_squeeze_compiles_without_graph_break(kernel_device):
    x, logit = _inputs((2, 37, 7, 3), True, torch.channels_last, kernel_device)

    def squeeze(x, logit):   # SCA's Z from F', and AT-C's plain squeeze
        return kernels.spatial_squeeze(x, logit) * kernels.spatial_squeeze(x, None)

    torch._dynamo.reset()
    compiled = torch.compile(squeeze, fullgraph=True)
    eager_args = [a.clone().requires_grad_() for a in (x, logit)]
    compiled_args = [a.clone().requires_grad_() for a in (x, logit)]
    before = LAUNCHES.copy()
    compiled(*compiled_args).sum().backward()
    assert LAUNCHES["spatial_squeeze_forward"] == before["spatial_squeeze_forward"] + 2
    assert LAUNCHES["spatial_squeeze_backward"] == before["spatial_squeeze_backward"] + 2
    squeeze(*eager_args).sum().backward()
    for mine, expected in zip(compiled_args, eager_args):
        torch.testing.assert_close(mine.grad, expected.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (lambda x: (x[0], None), r"\(B, C, T, F\)"),
    (lambda x: (x.int(), None), "floating point"),
    (lambda x: (x, torch.randn(2, 37, 7, 3)), r"spatial_logit must have shape \(B, 1, T, F\)"),
    (lambda x: (x, torch.randn(2, 1, 3, 7)), r"spatial_logit must have shape \(B, 1, T, F\)"),
])
def test_spatial_squeeze_rejects_bad_shapes(args, message):
    x = torch.randn(2, 37, 7, 3)
    with pytest.raises(ValueError, match=message):
        spatial_squeeze(*args(x))
