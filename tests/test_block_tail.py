"""kernels/block_tail.py against kernels/block_reference.py: the block tail's two Triton passes, under the
interpreter on CPU or on a GPU, at odd shapes: fp32 maps in both layouts (and mixed), tie-heavy inputs,
NaN and infinity, and bf16 channels_last maps (the production dtype; see test_bf16_maps for its rounding).

Exactness: out, argmax, d_main and d_short must EQUAL the reference's. The kernels make the same fp32
operations in the same order ((shortcut * s_scale + s_shift) + (main * m_scale + m_shift), no fused
multiply-add: the launcher turns contraction off; a gradient is one fp32 product d_out * scale),
max is exact, and a later tap replaces the maximum only if strictly greater (or NaN), as nn.MaxPool2d does.
The per-channel sums add the same fp32 terms in another order: rtol = atol = 1e-5 (at most 3 * 11 * 9
terms of size ~1, fp32 epsilon 1.2e-7, so the two orders differ by ~1e-6; a wrong or missing term
is off by ~0.1 or more).
"""
import importlib

import pytest
import torch

from kernels import LAUNCHES
from kernels import block_reference as ref

SUM_TOL = {"rtol": 1e-5, "atol": 1e-5}
SHAPES = [(1, 33, 6, 5), (3, 7, 11, 9)]
"""(B, C, T, F): odd channels (a masked channel tile; 33 > 32 spans two rows of 8-wide vectors), and
T, F odd so that pools (2, 2) and (1, 2) drop a row and/or a column."""
POOLS = [(2, 2), (1, 2), (1, 1)]


@pytest.fixture
def tail(kernel_device):
    """kernels.block_tail, imported once TRITON_INTERPRET is set (its kernels are decorated on import)."""
    return importlib.import_module("kernels.block_tail")


def _vector(channels: int) -> torch.Tensor:
    return torch.rand(channels) * 2 - 1


def _operands(shape, device, main_scale: bool, layout, short_layout=None) -> dict:
    """Random main, shortcut and BN vectors (main_scale False: a normalised main, no main BN)."""
    channels = shape[1]
    main = torch.randn(shape, device=device).contiguous(memory_format=layout)
    shortcut = torch.randn(shape, device=device).contiguous(memory_format=short_layout or layout)
    given = {"main_scale": _vector(channels).to(device), "main_shift": _vector(channels).to(device)}
    return {"main": main, **(given if main_scale else {"main_scale": None, "main_shift": None}),
            "shortcut": shortcut, "short_scale": _vector(channels).to(device),
            "short_shift": _vector(channels).to(device)}


def _forward_matches(tail, ops: dict, pool) -> tuple:
    """Both forwards on ops: asserts equal out and argmax, in main's format; returns the reference's."""
    before = LAUNCHES["block_tail_forward"]
    out, argmax = tail.block_tail_forward_triton(**ops, pool=pool)
    assert LAUNCHES["block_tail_forward"] == before + 1
    expected, expected_argmax = ref.block_tail_forward(**ops, pool=pool)
    assert torch.equal(out, expected) and out.dtype == expected.dtype and out.stride() == expected.stride()
    if pool == (1, 1):
        assert argmax is None and expected_argmax is None
    else:
        assert torch.equal(argmax, expected_argmax) and argmax.dtype == torch.int8
        assert argmax.stride() == expected_argmax.stride()
    return expected, expected_argmax


def _backward_matches(tail, ops: dict, pool, out, argmax, d_out) -> None:
    before = LAUNCHES["block_tail_backward"]
    got = tail.block_tail_backward_triton(d_out, argmax, out, **ops, pool=pool)
    assert LAUNCHES["block_tail_backward"] == before + 1
    expected = ref.block_tail_backward(d_out, argmax, out, **ops, pool=pool)
    names = ["d_main", "d_main_scale", "d_main_shift", "d_short", "d_short_scale", "d_short_shift"]
    for name, mine, theirs in zip(names, got, expected):
        if theirs is None:
            assert mine is None, name
        elif name in ("d_main", "d_short"):
            assert torch.equal(mine, theirs), (name, (mine - theirs).abs().max())
            assert mine.dtype == theirs.dtype and mine.stride() == theirs.stride(), name
        else:
            torch.testing.assert_close(mine, theirs, **SUM_TOL, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"])
@pytest.mark.parametrize("main_scale", [True, False], ids=["bn_main", "normalised_main"])
@pytest.mark.parametrize("pool", POOLS, ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=str)
def test_tail_matches_reference(tail, kernel_device, shape, pool, main_scale, layout):
    ops = _operands(shape, kernel_device, main_scale, layout)
    out, argmax = _forward_matches(tail, ops, pool)
    assert (out > 0).any() and (out == 0).any()   # both ReLU branches are exercised
    _backward_matches(tail, ops, pool, out, argmax, torch.randn_like(out))


def test_mixed_layouts(tail, kernel_device):
    """main channels_last, shortcut NCHW, d_out NCHW (autograd's default) beside a channels_last out:
    each map is indexed in its own layout, outputs follow main's."""
    ops = _operands((3, 7, 11, 9), kernel_device, True, torch.channels_last, torch.contiguous_format)
    out, argmax = _forward_matches(tail, ops, (2, 2))
    _backward_matches(tail, ops, (2, 2), out, argmax, torch.randn(out.shape, device=kernel_device))


@pytest.mark.parametrize("pool", [(2, 2), (1, 2)], ids=str)
@pytest.mark.parametrize("layout", [torch.channels_last, torch.contiguous_format], ids=["channels_last", "nchw"])
def test_ties_take_the_first_maximum(tail, kernel_device, pool, layout):
    """Small integers make z repeat inside windows (and all-negative windows pool ReLU's zeros): the argmax
    must be the first maximum in row-major window order, and the gradient goes there only."""
    shape = (3, 33, 11, 9)
    ops = _operands(shape, kernel_device, True, layout)
    ops["main"] = torch.randint(-2, 3, shape, device=kernel_device).float().contiguous(memory_format=layout)
    ops["shortcut"] = torch.randint(-2, 3, shape, device=kernel_device).float().contiguous(memory_format=layout)
    for name in ("main_scale", "short_scale"):
        ops[name] = torch.ones(shape[1], device=kernel_device)
    for name in ("main_shift", "short_shift"):
        ops[name] = torch.randint(-1, 2, (shape[1],), device=kernel_device).float()
    out, argmax = _forward_matches(tail, ops, pool)
    # The data has windows whose maximum repeats (a last-maximum rule would differ there) and, with four
    # taps, repeats whose first maximum is not the window's first tap.
    z = torch.relu(ops["main"] + ops["main_shift"].view(1, -1, 1, 1) + ops["shortcut"]
                   + ops["short_shift"].view(1, -1, 1, 1))
    windows = torch.nn.functional.unfold(z[:, :, :out.shape[2] * pool[0], :out.shape[3] * pool[1]].reshape(
        -1, 1, out.shape[2] * pool[0], out.shape[3] * pool[1]), pool, stride=pool)
    repeated = (windows == windows.max(1, keepdim=True).values).sum(1) > 1
    assert repeated.any()
    assert pool[0] * pool[1] == 2 or (repeated & (argmax.reshape(repeated.shape) > 0)).any()
    _backward_matches(tail, ops, pool, out, argmax, torch.randn_like(out))


def test_bad_input_gets_a_one_line_error(tail, kernel_device):
    ops = _operands((1, 7, 6, 5), kernel_device, True, torch.channels_last)
    with pytest.raises(ValueError, match="pool must be"):
        tail.block_tail_forward_triton(**ops, pool=(0, 2))
    with pytest.raises(ValueError, match="shortcut must have main's shape"):
        tail.block_tail_forward_triton(**{**ops, "shortcut": ops["shortcut"][:, :, :5]}, pool=(2, 2))
    with pytest.raises(ValueError, match="main_scale and main_shift together"):
        tail.block_tail_forward_triton(**{**ops, "main_shift": None}, pool=(2, 2))
    out, argmax = tail.block_tail_forward_triton(**ops, pool=(2, 2))
    with pytest.raises(ValueError, match="argmax must be the forward's int8 argmax"):
        tail.block_tail_backward_triton(out, argmax.long(), out, **ops, pool=(2, 2))
    with pytest.raises(ValueError, match="out and d_out must be"):
        tail.block_tail_backward_triton(out, argmax, out, **ops, pool=(1, 2))


@pytest.mark.parametrize("main_scale", [True, False], ids=["bn_main", "normalised_main"])
@pytest.mark.parametrize("pool", [(2, 2), (1, 2)], ids=str)
def test_bf16_maps(tail, kernel_device, pool, main_scale):
    """The production dtype: bf16 channels_last maps, fp32 BN vectors. The argmax and the sums are checked as
    in fp32 (the maps convert to fp32 exactly, and the ReLU mask, recomputed as z rounded to bf16 where main
    has a BN, is the reference's). Rounding to bf16: the GPU rounds to nearest even, exactly as torch does;
    Triton's CPU interpreter truncates, so there the maps may differ by one bf16 ulp (2^-7 relative)."""
    map_tol = {"rtol": 0.0, "atol": 0.0} if kernel_device == "cuda" else {"rtol": 2.0 ** -7, "atol": 0.0}
    ops = _operands((3, 33, 11, 9), kernel_device, main_scale, torch.channels_last)
    ops["main"], ops["shortcut"] = ops["main"].bfloat16(), ops["shortcut"].bfloat16()
    out, argmax = tail.block_tail_forward_triton(**ops, pool=pool)
    expected, expected_argmax = ref.block_tail_forward(**ops, pool=pool)
    assert torch.equal(argmax, expected_argmax) and out.dtype == torch.bfloat16
    torch.testing.assert_close(out, expected, **map_tol)
    d_out = torch.randn_like(expected)
    got = tail.block_tail_backward_triton(d_out, expected_argmax, expected, **ops, pool=pool)
    want = ref.block_tail_backward(d_out, expected_argmax, expected, **ops, pool=pool)
    for index, (mine, theirs) in enumerate(zip(got, want)):
        if theirs is None:
            assert mine is None
        else:
            torch.testing.assert_close(mine, theirs, **(map_tol if mine.dim() == 4 else SUM_TOL),
                                       msg=lambda m, index=index: f"output {index}: {m}")


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")   # the interpreter's 0 * inf
@pytest.mark.parametrize("pool", [(2, 2), (1, 1)], ids=str)
def test_non_finite_values_pass_as_in_the_reference(tail, kernel_device, pool):
    """A NaN or an infinity in a map reaches out as it does in the reference (torch.relu keeps NaN, and
    nn.MaxPool2d lets a NaN take its window: the last NaN's position is the argmax): a diverging run is not
    hidden from the loss's non-finite watch. The backward routes nothing through a NaN window (NaN > 0 is false)."""
    ops = _operands((3, 7, 11, 9), kernel_device, True, torch.channels_last)
    flat = ops["main"].permute(0, 2, 3, 1).view(-1)   # the channels_last storage: each index one element
    index = torch.randperm(flat.numel(), device=kernel_device)[:40]
    flat[index[:30]] = float("nan")
    flat[index[30:]] = torch.tensor([float("inf"), -float("inf")], device=kernel_device).repeat(5)
    out, argmax = tail.block_tail_forward_triton(**ops, pool=pool)
    expected, expected_argmax = ref.block_tail_forward(**ops, pool=pool)
    assert expected.isnan().any() and expected.isinf().any()
    torch.testing.assert_close(out, expected, rtol=0, atol=0, equal_nan=True)
    assert (argmax is None and expected_argmax is None) or torch.equal(argmax, expected_argmax)
    d_out = torch.randn_like(expected)
    got = tail.block_tail_backward_triton(d_out, expected_argmax, expected, **ops, pool=pool)
    want = ref.block_tail_backward(d_out, expected_argmax, expected, **ops, pool=pool)
    for index, (mine, theirs) in enumerate(zip(got, want)):
        torch.testing.assert_close(mine, theirs, **SUM_TOL, equal_nan=True,
                                   msg=lambda m, index=index: f"output {index}: {m}")
