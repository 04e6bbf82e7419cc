"""kernels/conv_weight_grad.py: the Triton weight gradient equals block_reference.conv_weight_grad.

Under TRITON_INTERPRET=1 on CPU (tests/conftest.py), fp32 only, so the shapes are small and odd: channels,
time and frequency are multiples of no block size, and rows (B*T*F) of no BLOCK_M. Tolerance 1e-4 relative
and absolute: the kernel sums the same fp32 products as the reference in another order (tiles of 64 rows,
then splits), which moves the last bits of sums of up to ~900 terms of magnitude ~1.
"""
import pytest
import torch

from kernels import block_reference as ref
from kernels.common import LAUNCHES

if not torch.cuda.is_available():   # kernels/__init__.py does not import this module: decorate it for the
    with pytest.MonkeyPatch.context() as patch:   # interpreter as tests/conftest.py does the package
        patch.setenv("TRITON_INTERPRET", "1")
        from kernels import conv_weight_grad as wgrad
else:
    from kernels import conv_weight_grad as wgrad

RTOL = ATOL = 1e-4
SHAPES = [   # (B, C_in, C_out, T, F)
    (1, 1, 33, 11, 9),     # C_in = 1: K' = 9 (k = 3) or 1, one tile of 16 rows
    (3, 3, 7, 5, 7),
    (3, 5, 33, 11, 9),
    (1, 5, 7, 5, 7),
]


def _inputs(shape, k, prologue, channels_last, device):
    batch, c_in, c_out, time, freq = shape
    x = torch.randn(batch, c_in, time, freq, device=device)
    grad = torch.randn(batch, c_out, time, freq, device=device)
    if channels_last:
        x, grad = x.to(memory_format=torch.channels_last), grad.to(memory_format=torch.channels_last)
    # Shifts in [-1, 1): some channels' relu(shift) > 0, so padding x (not a) with zeros would be caught.
    scale = torch.rand(c_in, device=device) * 2 - 1 if prologue else None
    shift = torch.rand(c_in, device=device) * 2 - 1 if prologue else None
    return x, grad, (c_out, c_in, k, k), scale, shift


def _check_against_reference(args):
    before = LAUNCHES["conv_weight_grad"]
    out = wgrad.conv_weight_grad_triton(*args)
    assert LAUNCHES["conv_weight_grad"] == before + 1   # the Triton kernel ran, once
    expected = ref.conv_weight_grad(*args)
    assert out.dtype == torch.float32 and out.shape == expected.shape
    assert out.is_contiguous(memory_format=torch.channels_last)   # the layout of a channels_last model's weight
    torch.testing.assert_close(out, expected, rtol=RTOL, atol=ATOL)


@pytest.mark.parametrize("channels_last", [False, True])
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_matches_reference(kernel_device, shape, k, prologue, channels_last):
    _check_against_reference(_inputs(shape, k, prologue, channels_last, kernel_device))


def _with_sums_grad(args):
    """args with their grad taken as d_y and the sums' gradients (y, d_sum, d_squares) added: a y of both
    signs, d_sum of order 1 and d_squares scaled so 2 y * d_squares is of the order of d_y."""
    x, grad, weight_shape, scale, shift = args
    generator = torch.Generator().manual_seed(7)
    y = torch.randn(grad.shape, generator=generator).to(grad.device).contiguous(memory_format=ref.memory_format(grad))
    c_out = grad.shape[1]
    d_sum = torch.randn(c_out, generator=generator).to(grad.device)
    d_squares = torch.randn(c_out, generator=generator).to(grad.device) / 2
    return x, grad, weight_shape, scale, shift, (y, d_sum, d_squares)


@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("k", [1, 3])
@pytest.mark.parametrize("shape", SHAPES)
def test_the_sums_gradients_prologue_matches_reference(kernel_device, shape, k, prologue):
    # dL/dy formed as grad is read (d_y + 2 y * d_squares + d_sum, rounded to the map's dtype) in the
    # rows of every split, for every output channel.
    _check_against_reference(_with_sums_grad(_inputs(shape, k, prologue, True, kernel_device)))


@pytest.mark.parametrize("k", [1, 3])
def test_many_tiles_and_splits_match_reference(kernel_device, monkeypatch, k):
    # The real shapes' tiling in miniature: tiles of 16 make 3 tiles of K' = 45 (k = 3) and of C_out = 33,
    # and one step per split makes a split of every 64 rows (a split boundary inside a batch row). x is
    # channels_last and grad NCHW: each map is converted on its own.
    monkeypatch.setattr(wgrad, "MAX_BLOCK", 16)
    monkeypatch.setattr(wgrad, "MIN_STEPS", 1)
    x, grad, *rest = _with_sums_grad(_inputs((3, 5, 33, 11, 9), k, True, True, kernel_device))
    args = (x, grad.contiguous(), *rest)
    tile = wgrad.tiling(5, 33, k, 3 * 11 * 9, 4)
    assert tile["CO_TILES"] == 3 and tile["tiles"] == 3 * (3 if k == 3 else 1)
    assert tile["SPLIT"] == 5 and tile["steps_per_split"] == 1   # 297 rows: 5 steps of 64
    _check_against_reference(args)


def test_a_flop_bound_layer_matches_reference(kernel_device):
    # 133 -> 131 channels (k = 3): above the ridge even in fp32, so the tiling of blocks 3-7 (C_out tiles of
    # 128 with a masked tail, 8 warps) runs, with K' = 1197 in 19 tiles of 64 (the last one masked).
    args = _inputs((1, 133, 131, 5, 7), 3, True, True, kernel_device)
    tile = wgrad.tiling(133, 131, 3, 35, 4)
    assert (tile["BLOCK_KP"], tile["BLOCK_CO"], tile["tiles"], tile["num_warps"]) == (64, 128, 38, 8)
    _check_against_reference(args)


def test_without_triton_the_reference_runs(monkeypatch):
    # CPU tensors without TRITON_INTERPRET=1: no launch, block_reference's result itself.
    monkeypatch.delenv("TRITON_INTERPRET", raising=False)
    args = _inputs((3, 5, 7, 5, 7), 3, True, True, "cpu")
    before = LAUNCHES["conv_weight_grad"]
    out = wgrad.conv_weight_grad_triton(*args)
    assert LAUNCHES["conv_weight_grad"] == before
    torch.testing.assert_close(out, ref.conv_weight_grad(*args), rtol=0, atol=0)


def test_empty_batch_gives_zeros(kernel_device):
    x, grad, weight_shape, _, _ = _inputs((1, 3, 7, 5, 7), 3, False, True, kernel_device)
    out = wgrad.conv_weight_grad_triton(x[:0], grad[:0], weight_shape)
    assert out.shape == weight_shape and not out.any() and out.is_contiguous(memory_format=torch.channels_last)


@pytest.mark.parametrize("change, message", [
    (lambda a: {**a, "weight_shape": (7, 4, 3, 3)}, "weight_shape (7, 4, 3, 3) must be (C_out=7, C_in=3, k, k)"),
    (lambda a: {**a, "weight_shape": (7, 3, 2, 2)}, "with k odd"),
    (lambda a: {**a, "grad": a["grad"][:, :, :4]}, "must match x"),
    (lambda a: {**a, "grad": a["grad"].double()}, "must match x"),
    (lambda a: {**a, "in_shift": None}, "give both in_scale and in_shift"),
    (lambda a: {**a, "in_scale": a["in_scale"][:2], "in_shift": a["in_shift"][:2]}, "C_in = 3 entries"),
    (lambda a: {**a, "sums_grad": (a["x"], torch.zeros(7), torch.zeros(7))}, "y the forward's output (1, 7, 5, 7)"),
    (lambda a: {**a, "sums_grad": (a["grad"], torch.zeros(7), torch.zeros(3))}, "got (1, 7, 5, 7) torch.float32, 7 and 3"),
])
def test_bad_input_gets_a_clear_error(change, message):
    x, grad, weight_shape, scale, shift = _inputs((1, 3, 7, 5, 7), 3, True, False, "cpu")
    args = change({"x": x, "grad": grad, "weight_shape": weight_shape, "in_scale": scale, "in_shift": shift})
    with pytest.raises(ValueError, match="conv_weight_grad: ") as error:
        wgrad.conv_weight_grad_triton(**args)
    assert message in str(error.value)
