"""kernels/block_reference.py: each pass and its stated gradients agree with autograd of plain PyTorch.

The passes are the specification the fused residual block's Triton kernels are checked against, so they
are checked here against the definitions they restate (nn.functional convolutions, BatchNorm algebra,
max-pool) in fp64-free fp32 at odd shapes. Tolerances: 1e-5 relative (fp32 sums in another order).
"""
import pytest
import torch
import torch.nn.functional as F

from kernels import block_reference as ref

B, C_IN, C, T, FREQ = 3, 5, 7, 11, 9


def _vec(n: int, low: float = -1.0) -> torch.Tensor:
    return (torch.rand(n) * (1 - low) + low).requires_grad_()


def _convolution(prologue: bool, k: int) -> tuple[list[torch.Tensor], torch.Tensor]:
    """(leaves, y): leaves [x, weight] (and the prologue's scale and shift), all requiring grad, and y = conv2d(a,
    weight) of a = relu(x * scale + shift) or x."""
    x = torch.randn(B, C_IN, T, FREQ, requires_grad=True)
    weight = torch.randn(C, C_IN, k, k, requires_grad=True)
    leaves = [x, weight] + ([_vec(C_IN), _vec(C_IN)] if prologue else [])
    a = torch.relu(x * leaves[2].view(1, -1, 1, 1) + leaves[3].view(1, -1, 1, 1)) if prologue else x
    return leaves, F.conv2d(a, weight, padding=k // 2)


def _assert_backward_passes(grad: torch.Tensor, leaves: list[torch.Tensor], expected, sums_grad=None) -> None:
    """conv_input_grad and conv_weight_grad from grad (and sums_grad) against autograd's gradients of the leaves."""
    x, weight, *vectors = (leaf.detach() for leaf in leaves)
    dx, d_scale, d_shift = ref.conv_input_grad(grad, weight, x, *vectors, sums_grad=sums_grad)
    torch.testing.assert_close(dx, expected[0], rtol=1e-5, atol=1e-5)
    if vectors:
        torch.testing.assert_close(d_scale, expected[2], rtol=1e-5, atol=1e-4)
        torch.testing.assert_close(d_shift, expected[3], rtol=1e-5, atol=1e-4)
    d_weight = ref.conv_weight_grad(x, grad, tuple(weight.shape), *vectors, sums_grad=sums_grad)
    torch.testing.assert_close(d_weight, expected[1], rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_conv_passes_match_autograd(prologue, k):
    leaves, y = _convolution(prologue, k)
    grad = torch.randn_like(y)
    expected = torch.autograd.grad(y, leaves, grad)

    y_pass, y_sum, y_sumsq = ref.conv_forward(*(leaf.detach() for leaf in leaves))
    torch.testing.assert_close(y_pass, y, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(y_sum, y.sum((0, 2, 3)), rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(y_sumsq, y.square().sum((0, 2, 3)), rtol=1e-5, atol=1e-4)
    _assert_backward_passes(grad, leaves, expected)


@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_conv_backward_with_the_sums_gradients_matches_autograd(prologue, k):
    # When y's sums feed a BatchNorm, dL/dy comes in parts: d_y on y itself and d_sum, d_squares on the
    # sums. The loss <d_y, y> + <d_sum, sum y> + <d_squares, sum y*y> has exactly those parts, so autograd of
    # it is what both backward passes must give from (d_y, (y, d_sum, d_squares)).
    leaves, y = _convolution(prologue, k)
    d_y, d_sum, d_squares = torch.randn_like(y), torch.randn(C), torch.randn(C) / (B * T * FREQ)
    loss = (d_y * y).sum() + (d_sum * y.sum((0, 2, 3))).sum() + (d_squares * y.square().sum((0, 2, 3))).sum()
    expected = torch.autograd.grad(loss, leaves + [y])

    sums_grad = (y.detach(), d_sum, d_squares)
    torch.testing.assert_close(ref.grad_with_sums(d_y, *sums_grad), expected[-1], rtol=1e-5, atol=1e-5)
    _assert_backward_passes(d_y, leaves, expected, sums_grad)


@pytest.mark.parametrize("pool", [(2, 2), (1, 2), (1, 1)])
@pytest.mark.parametrize("normalised_main", [False, True])
def test_tail_passes_match_autograd(pool, normalised_main):
    main = torch.randn(B, C, T, FREQ, requires_grad=True).to(memory_format=torch.channels_last)
    shortcut = torch.randn(B, C, T, FREQ, requires_grad=True)
    s_scale, s_shift = _vec(C), _vec(C)
    m_scale, m_shift = (None, None) if normalised_main else (_vec(C), _vec(C))
    m = main if normalised_main else main * m_scale.view(1, -1, 1, 1) + m_shift.view(1, -1, 1, 1)
    z = torch.relu(m + shortcut * s_scale.view(1, -1, 1, 1) + s_shift.view(1, -1, 1, 1))
    out = F.max_pool2d(z, pool) if pool != (1, 1) else z
    d_out = torch.randn_like(out)
    leaves = [main, shortcut, s_scale, s_shift] + ([] if normalised_main else [m_scale, m_shift])
    expected = dict(zip(["main", "short", "s_scale", "s_shift", "m_scale", "m_shift"],
                        torch.autograd.grad(out, leaves, d_out)))

    detached = [None if v is None else v.detach() for v in (main, m_scale, m_shift, shortcut, s_scale, s_shift)]
    args = (*detached, pool)
    out_pass, argmax = ref.block_tail_forward(*args)
    torch.testing.assert_close(out_pass, out, rtol=1e-6, atol=1e-6)
    assert out_pass.is_contiguous(memory_format=torch.channels_last)
    if pool != (1, 1):
        assert argmax.dtype == torch.int8 and int(argmax.max()) < pool[0] * pool[1]
    grads = ref.block_tail_backward(d_out, argmax, out_pass, *args[:6], pool)
    torch.testing.assert_close(grads[0], expected["main"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[3], expected["short"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grads[4], expected["s_scale"], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(grads[5], expected["s_shift"], rtol=1e-5, atol=1e-5)
    if normalised_main:
        assert grads[1] is None and grads[2] is None
    else:
        torch.testing.assert_close(grads[1], expected["m_scale"], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(grads[2], expected["m_shift"], rtol=1e-5, atol=1e-5)


def test_one_channel_map_gives_channels_last_outputs():
    """Block 1's input has one channel, contiguous in both layouts (torch keeps its strides either way): its
    outputs are channels_last, the kernels' layout; a many-channel NCHW map keeps NCHW."""
    weight = torch.randn(3, 1, 3, 3)
    for x in (torch.randn(2, 1, 5, 7), torch.randn(2, 1, 5, 7).contiguous(memory_format=torch.channels_last)):
        y = ref.conv_forward(x, weight)[0]
        assert y.is_contiguous(memory_format=torch.channels_last) and not y.is_contiguous()
    assert ref.conv_forward(torch.randn(2, 3, 5, 7), torch.randn(4, 3, 1, 1))[0].is_contiguous()
