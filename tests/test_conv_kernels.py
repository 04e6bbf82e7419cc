"""kernels/conv.py against kernels/block_reference.py: the implicit-GEMM convolution and its data gradient.

Run by the Triton interpreter on this CPU (fp32 only): odd batches, channels, times and frequencies, so
every tile has masked rows and channels; C_in 1, 3, 5 walk the flattened K axis, 16 (one whole channel
step), 17 and 80 (a masked and a two-step channel loop) walk tap by tap. Tolerances: the kernel sums in
another order than PyTorch's convolution, so maps agree to ~1e-5 relative (atol 1e-5 near 0; the weights
are scaled by 1/sqrt(K) so maps are of order 1 whatever K is, as after He initialisation), and the
per-channel sums (hundreds of terms) to 1e-5 relative (atol 1e-4 for sums near 0).
Each test also checks the launch counter: a silent fallback to PyTorch would fail it.
"""
import pytest
import torch

from kernels import block_reference as ref
from kernels import conv
from kernels.common import LAUNCHES
from kernels.conv import conv_forward_triton, conv_input_grad_triton

SHAPES = [
    # (B, C_in, C_out, T, F)
    (1, 1, 7, 11, 9),
    (3, 3, 33, 5, 7),
    (3, 5, 7, 5, 7),
    (3, 16, 7, 5, 7),
    (1, 17, 33, 5, 7),
    (1, 80, 7, 5, 3),
]
MAP_TOL = {"rtol": 1e-5, "atol": 1e-5}
SUM_TOL = {"rtol": 1e-5, "atol": 1e-4}


def _operands(shape, k, prologue, layout):
    b, c_in, c_out, t, f = shape
    x = torch.randn(b, c_in, t, f).contiguous(memory_format=layout)
    weight = torch.randn(c_out, c_in, k, k) / (c_in * k * k) ** 0.5   # He-like: y of order 1 whatever K is
    # Shifts of both signs: the ReLU passes some values and zeroes others in every channel.
    scale, shift = (torch.rand(c_in) * 2 - 0.5, torch.rand(c_in) * 2 - 1) if prologue else (None, None)
    return x, weight, scale, shift


def _same_layout(mine: torch.Tensor, theirs: torch.Tensor) -> None:
    fmt = ref.memory_format(theirs)
    assert mine.dtype == theirs.dtype and mine.is_contiguous(memory_format=fmt), (mine.stride(), theirs.stride())


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("prologue", [False, True], ids=["plain", "prologue"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_forward_matches_reference(kernel_device, shape, k, prologue, layout):
    x, weight, scale, shift = _operands(shape, k, prologue, layout)
    before = LAUNCHES["conv_forward"]
    y, y_sum, y_sumsq = conv_forward_triton(x, weight, scale, shift)
    assert LAUNCHES["conv_forward"] == before + 1
    ref_y, ref_sum, ref_sumsq = ref.conv_forward(x, weight, scale, shift)
    torch.testing.assert_close(y, ref_y, **MAP_TOL)
    _same_layout(y, ref_y)
    torch.testing.assert_close(y_sum, ref_sum, **SUM_TOL)
    torch.testing.assert_close(y_sumsq, ref_sumsq, **SUM_TOL)


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["nhwc", "nchw"])
@pytest.mark.parametrize("prologue", [False, True], ids=["plain", "activation_grad"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_input_grad_matches_reference(kernel_device, shape, k, prologue, layout):
    x, weight, scale, shift = _operands(shape, k, prologue, layout)
    b, _, c_out, t, f = shape
    grad = torch.randn(b, c_out, t, f).contiguous(memory_format=layout)
    before = LAUNCHES["conv_input_grad"]
    dx, d_scale, d_shift = conv_input_grad_triton(grad, weight, x, scale, shift)
    assert LAUNCHES["conv_input_grad"] == before + 1
    ref_dx, ref_scale, ref_shift = ref.conv_input_grad(grad, weight, x, scale, shift)
    torch.testing.assert_close(dx, ref_dx, **MAP_TOL)
    _same_layout(dx, ref_dx)
    if prologue:
        torch.testing.assert_close(d_scale, ref_scale, **SUM_TOL)
        torch.testing.assert_close(d_shift, ref_shift, **SUM_TOL)
    else:
        assert d_scale is None and d_shift is None


def _sums_grad(like: torch.Tensor, seed: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, d_sum, d_squares) for a gradient map `like`: y of both signs in like's layout, d_sum of order 1 and
    d_squares so that 2 y * d_squares is of the order of the gradient."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.randn(like.shape, generator=generator).contiguous(memory_format=ref.memory_format(like))
    channels = like.shape[1]
    return y, torch.randn(channels, generator=generator), torch.randn(channels, generator=generator) / 2


@pytest.mark.parametrize("prologue", [False, True], ids=["plain", "activation_grad"])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_conv_input_grad_with_the_sums_gradients_matches_reference(kernel_device, shape, k, prologue):
    # dL/dy = d_y + 2 y * d_squares + d_sum formed as the A tile is read: zero in the padding (d_sum is not
    # zero, so a tile formed before the padding mask would add d_sum * weight at every border tap).
    x, weight, scale, shift = _operands(shape, k, prologue, torch.channels_last)
    b, _, c_out, t, f = shape
    grad = torch.randn(b, c_out, t, f).contiguous(memory_format=torch.channels_last)
    sums_grad = _sums_grad(grad)
    before = LAUNCHES["conv_input_grad"]
    got = conv_input_grad_triton(grad, weight, x, scale, shift, sums_grad)
    assert LAUNCHES["conv_input_grad"] == before + 1
    expected = ref.conv_input_grad(grad, weight, x, scale, shift, sums_grad)
    torch.testing.assert_close(got[0], expected[0], **MAP_TOL)
    _same_layout(got[0], expected[0])
    for mine, theirs in zip(got[1:], expected[1:]):
        assert (mine is None) == (theirs is None) == (not prologue)
        if prologue:
            torch.testing.assert_close(mine, theirs, **SUM_TOL)


def test_padding_is_zero_after_the_activation(kernel_device):
    # A shift of 3 makes relu(0 * scale + 3) = 3 where x is zero: a kernel that padded x instead of the
    # activation would add 3 * weight at every border tap. Constant x = 0 and a ones weight make the
    # expected map exact: 3 * (number of in-map taps) per output position.
    x = torch.zeros(1, 2, 5, 7).contiguous(memory_format=torch.channels_last)
    weight = torch.ones(3, 2, 3, 3)
    y, _, _ = conv_forward_triton(x, weight, torch.ones(2), torch.full((2,), 3.0))
    taps = torch.nn.functional.conv2d(torch.ones(1, 1, 5, 7), torch.ones(1, 1, 3, 3), padding=1)
    torch.testing.assert_close(y, (2 * 3 * taps).expand(1, 3, 5, 7), rtol=0, atol=0)


def test_bad_operands_are_refused_with_one_line(kernel_device):
    x = torch.randn(1, 3, 5, 7)
    with pytest.raises(ValueError, match="weight must be"):
        conv_forward_triton(x, torch.randn(4, 3, 5, 5))
    with pytest.raises(ValueError, match="input channels"):
        conv_forward_triton(x, torch.randn(4, 2, 3, 3))
    with pytest.raises(ValueError, match="both in_scale and in_shift"):
        conv_forward_triton(x, torch.randn(4, 3, 3, 3), torch.ones(3))
    with pytest.raises(ValueError, match="must be the forward's input map"):
        conv_input_grad_triton(torch.randn(1, 4, 5, 7), torch.randn(4, 3, 3, 3), None, torch.ones(3), torch.ones(3))
    grad = torch.randn(1, 4, 5, 7)
    with pytest.raises(ValueError, match=r"y the forward's output \(1, 4, 5, 7\)"):
        conv_input_grad_triton(grad, torch.randn(4, 3, 3, 3), sums_grad=(x, torch.zeros(4), torch.zeros(4)))
    with pytest.raises(ValueError, match="got .* 4 and 3"):
        conv_input_grad_triton(grad, torch.randn(4, 3, 3, 3), sums_grad=(grad, torch.zeros(4), torch.zeros(3)))


@pytest.mark.parametrize("prologue", [False, True], ids=["plain", "prologue"])
@pytest.mark.parametrize("shape", [(1, 64, 130, 5, 7), (3, 1, 33, 5, 7)], ids=lambda s: "x".join(map(str, s)))
def test_bf16_tiling_matches_reference(kernel_device, monkeypatch, shape, prologue):
    # The interpreter runs fp32 only, and fp32 maps get their own smaller tiles: here fp32 values go
    # through the tiles a bf16 map gets (BLOCK_M 128, BLOCK_K 64 over whole channel steps at C_in = 64,
    # BLOCK_N 128 or 64 with two N tiles at C_out = 130, the flattened K at C_in = 1), forward and back.
    chosen = conv.tiles
    monkeypatch.setattr(conv, "tiles", lambda c_in, c_out, k, fused, itemsize: chosen(c_in, c_out, k, fused, 2))
    x, weight, scale, shift = _operands(shape, 3, prologue, torch.channels_last)
    for mine, theirs in zip(conv_forward_triton(x, weight, scale, shift), ref.conv_forward(x, weight, scale, shift)):
        torch.testing.assert_close(mine, theirs, **(MAP_TOL if mine.dim() == 4 else SUM_TOL))
    grad = torch.randn(shape[0], shape[2], *shape[3:]).contiguous(memory_format=torch.channels_last)
    sums_grad = _sums_grad(grad) if prologue else None   # the production backward's prologue, with its epilogue
    got = conv_input_grad_triton(grad, weight, x, scale, shift, sums_grad)
    expected = ref.conv_input_grad(grad, weight, x, scale, shift, sums_grad)
    torch.testing.assert_close(got[0], expected[0], **MAP_TOL)
    for mine, theirs in zip(got[1:], expected[1:]):
        assert (mine is None) == (theirs is None) == (not prologue)
        if prologue:
            torch.testing.assert_close(mine, theirs, **SUM_TOL)
