"""channel_pool (eq. 4): the Triton kernels, forward and backward, against channel_pool_reference; op checks."""
import pytest
import torch

import kernels
from kernels import LAUNCHES, channel_pool, channel_pool_reference

# (B, C, T, F): the at-sca-3 maps at B = 1, awkward sizes (C = 37, T = 7, F = 3) that leave partial
# tiles on every axis, and C = 12 at N = 21, read as grouped rows of 4 channels (kernels.common.row_group).
SHAPES = [(2, 37, 7, 3), (1, 256, 100, 4), (3, 512, 7, 2), (1, 512, 100, 1), (2, 12, 7, 3)]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


def _inputs(shape, weighted, layout, device, dtype=torch.float32):
    x = torch.randn(shape, device=device, dtype=dtype).contiguous(memory_format=layout)
    weight = torch.rand(shape[:2], device=device, dtype=dtype) + 0.1 if weighted else None  # a sigmoid's range
    return x, weight


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("weighted", [False, True])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5)])
def test_channel_pool_matches_reference(kernel_device, assert_matches_reference, shape, weighted, layout,
                                        dtype, atol, rtol):
    x, weight = _inputs(shape, weighted, layout, kernel_device, dtype)
    before = LAUNCHES.copy()
    assert_matches_reference(channel_pool, channel_pool_reference, [x, weight], atol, rtol)
    assert LAUNCHES["channel_pool_forward"] == before["channel_pool_forward"] + 1
    assert LAUNCHES["channel_pool_backward"] == before["channel_pool_backward"] + 1


def test_channel_pool_with_a_broadcast_upstream_gradient(kernel_device):
    # out.sum().backward() hands the backward an expanded gradient: every stride 0.
    x, weight = _inputs((2, 37, 7, 3), True, torch.channels_last, kernel_device)
    grads = []
    for op in (channel_pool, channel_pool_reference):
        args = [x.clone().requires_grad_(), weight.clone().requires_grad_()]
        op(*args).sum().backward()
        grads.append([a.grad for a in args])
    for mine, expected in zip(*grads):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("weighted", [False, True])
def test_channel_pool_opcheck(weighted):
    x, weight = _inputs((2, 37, 7, 3), weighted, torch.channels_last, "cpu")
    torch.library.opcheck(torch.ops.fastsca.channel_pool.default,
                          (x.requires_grad_(), weight.requires_grad_() if weighted else None))


def test_channel_pool_opcheck_through_the_kernels(kernel_device):
    x, weight = _inputs((2, 37, 7, 3), True, torch.contiguous_format, kernel_device)
    before = LAUNCHES["channel_pool_backward"]
    torch.library.opcheck(torch.ops.fastsca.channel_pool.default, (x.requires_grad_(), weight.requires_grad_()))
    assert LAUNCHES["channel_pool_backward"] > before


def test_channel_pool_compiles_without_graph_break(kernel_device):
    x, weight = _inputs((2, 37, 7, 3), True, torch.contiguous_format, kernel_device)

    def pool(x, logit):   # the CSA use: S from the channel-weighted map
        return kernels.channel_pool(x, torch.sigmoid(logit)) * kernels.channel_pool(x, None)

    torch._dynamo.reset()
    compiled = torch.compile(pool, fullgraph=True)
    eager_args = [a.clone().requires_grad_() for a in (x, weight)]
    compiled_args = [a.clone().requires_grad_() for a in (x, weight)]
    before = LAUNCHES.copy()
    compiled(*compiled_args).sum().backward()
    assert LAUNCHES["channel_pool_forward"] == before["channel_pool_forward"] + 2
    assert LAUNCHES["channel_pool_backward"] == before["channel_pool_backward"] + 2
    pool(*eager_args).sum().backward()
    for mine, expected in zip(compiled_args, eager_args):
        torch.testing.assert_close(mine.grad, expected.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("args, message", [
    (lambda x: (x[0], None), r"\(B, C, T, F\)"),
    (lambda x: (x.long(), None), "floating point"),
    (lambda x: (x, torch.rand(2, 36)), r"channel_weight must have shape \(B, C\)"),
    (lambda x: (x, torch.rand(2, 37, 1)), r"channel_weight must have shape \(B, C\)"),
])
def test_channel_pool_rejects_bad_shapes(args, message):
    x = torch.randn(2, 37, 7, 3)
    with pytest.raises(ValueError, match=message):
        channel_pool(*args(x))
