"""The fused residual block's passes as `torch.library` ops (`fastsca::block_*`), and the BatchNorm algebra
between them.

Five ops, each calling its pass in kernels/block_passes.py (kernels/block_reference.py states what each computes):
`block_conv_forward` (a convolution with an optional BN-ReLU prologue, returning its output and the per-channel
sum and sum of squares of its fp32 accumulator as the rows of one (2, C) tensor), `block_conv_input_grad` and `block_conv_weight_grad` (its
backward), `block_tail_forward` (BN of both paths, sum, ReLU, max-pool with an int8 argmax) and
`block_tail_backward`. The convolution and the tail are differentiable through `register_autograd`: the
convolution in its input, weight, prologue scale and shift, and in both sums, so that training-mode BatchNorm's
batch statistics, computed from the sums by `batch_norm_affine` in plain torch on C-sized vectors, are
differentiated by autograd like any other op and Inductor fuses that algebra and the gradient's sum terms.

Per-channel sums leave an op as the rows of one (K, C) fp32 tensor, the tensor the Triton passes reduce their
partials into (no copy), and the callers index its rows: an op's outputs may not share storage, so returning the
rows as separate outputs would cost a copy each. An absent optional result (no prologue: no prologue gradients;
pool (1, 1): no argmax) is an empty fp32 (int8 for the argmax) tensor: an op returns tensors.
"""
import torch
from torch import Tensor, nn

from kernels import block_passes
from kernels.block_reference import memory_format


def _empty(like: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
    """The stand-in for an absent result."""
    return like.new_empty((0,), dtype=dtype)


def _rows(*rows: Tensor) -> Tensor:
    """Per-channel sums as one (len(rows), C) tensor: the tensor they are the consecutive rows of, when they are (the
    Triton passes reduce their partials into one: no copy; judged by storage and offsets, which hold under every
    dispatch mode, where a view's _base may not be set), else stacked (the aten and reference passes)."""
    first, channels = rows[0], rows[0].numel()
    consecutive = all(
        row.dim() == 1 and row.numel() == channels and row.stride(0) == 1 and row.dtype == first.dtype
        and row.untyped_storage().data_ptr() == first.untyped_storage().data_ptr()
        and row.storage_offset() == first.storage_offset() + index * channels for index, row in enumerate(rows))
    if consecutive:
        return first.as_strided((len(rows), channels), (channels, 1))
    return torch.stack(rows)


def _map(like: Tensor, shape, dtype: torch.dtype | None = None) -> Tensor:
    """An uninitialised map of `shape` in like's dtype (or `dtype`) and memory format (block_reference's rule)."""
    return torch.empty(shape, dtype=dtype or like.dtype, device=like.device, memory_format=memory_format(like))


# ---- the convolution: forward, input gradient, weight gradient ----

@torch.library.custom_op("fastsca::block_conv_forward", mutates_args=())
def conv_forward(x: Tensor, weight: Tensor, in_scale: Tensor | None, in_shift: Tensor | None,
                 implicit_gemm: bool) -> tuple[Tensor, Tensor]:
    """(y, sums): y = conv(relu(x * in_scale + in_shift) or x, weight), sums (2, C_out) = (sum y, sum y*y)
    (block_reference.conv_forward)."""
    y, total, squares = block_passes.conv_forward(x, weight, in_scale, in_shift, implicit_gemm=implicit_gemm)
    return y, _rows(total, squares)


@conv_forward.register_fake
def _(x, weight, in_scale, in_shift, implicit_gemm):
    sums = x.new_empty((2, weight.shape[0]), dtype=torch.float32)
    return _map(x, (x.shape[0], weight.shape[0], x.shape[2], x.shape[3])), sums


def _sums_grad(y: Tensor | None, d_sum: Tensor | None, d_squares: Tensor | None) -> tuple | None:
    """The passes' sums_grad argument from an op's three optional tensors (all given, or none)."""
    return None if y is None else (y, d_sum, d_squares)


@torch.library.custom_op("fastsca::block_conv_input_grad", mutates_args=())
def conv_input_grad(grad: Tensor, weight: Tensor, x: Tensor | None, in_scale: Tensor | None,
                    in_shift: Tensor | None, y: Tensor | None, d_sum: Tensor | None, d_squares: Tensor | None,
                    implicit_gemm: bool) -> tuple[Tensor, Tensor]:
    """(dx, sums) from dL/dy (block_reference.conv_input_grad; with y, d_sum and d_squares, dL/dy =
    grad_with_sums(grad, y, d_sum, d_squares)): sums (2, C_in) = (d in_scale, d in_shift), empty without a
    prologue."""
    dx, d_scale, d_shift = block_passes.conv_input_grad(grad, weight, x, in_scale, in_shift,
                                                        _sums_grad(y, d_sum, d_squares), implicit_gemm=implicit_gemm)
    return dx, _empty(grad) if d_scale is None else _rows(d_scale, d_shift)


@conv_input_grad.register_fake
def _(grad, weight, x, in_scale, in_shift, y, d_sum, d_squares, implicit_gemm):
    dx = _map(grad, (grad.shape[0], weight.shape[1], grad.shape[2], grad.shape[3]))
    sums = _empty(grad) if in_scale is None else grad.new_empty((2, weight.shape[1]), dtype=torch.float32)
    return dx, sums


@torch.library.custom_op("fastsca::block_conv_weight_grad", mutates_args=())
def conv_weight_grad(x: Tensor, grad: Tensor, weight_shape: list[int], in_scale: Tensor | None,
                     in_shift: Tensor | None, y: Tensor | None, d_sum: Tensor | None, d_squares: Tensor | None,
                     implicit_gemm: bool) -> Tensor:
    """dL/dweight, fp32, in the maps' memory format (block_reference.conv_weight_grad, dL/dy formed from y, d_sum and
    d_squares when given): channels_last in a channels_last model, the layout of its weights, which the Triton pass
    writes and cuDNN's follows, so neither this op nor AccumulateGrad copies it."""
    d_weight = block_passes.conv_weight_grad(x, grad, tuple(weight_shape), in_scale, in_shift,
                                             _sums_grad(y, d_sum, d_squares), implicit_gemm=implicit_gemm)
    return d_weight.contiguous(memory_format=memory_format(x))


@conv_weight_grad.register_fake
def _(x, grad, weight_shape, in_scale, in_shift, y, d_sum, d_squares, implicit_gemm):
    return torch.empty(weight_shape, dtype=torch.float32, device=x.device, memory_format=memory_format(x))


def _conv_setup(ctx, inputs, output):
    x, weight, in_scale, in_shift, implicit_gemm = inputs
    ctx.implicit_gemm, ctx.weight_dtype = implicit_gemm, weight.dtype
    ctx.save_for_backward(x, weight, in_scale, in_shift, output[0])


def _conv_backward(ctx, d_y, d_sums):
    """Both passes take dL/dy in its parts (d_y, and the sums' gradients with y: block_reference.grad_with_sums)
    and form it as they read it: the full gradient is never written out."""
    x, weight, in_scale, in_shift, y = ctx.saved_tensors
    grad = d_y.contiguous(memory_format=memory_format(y))   # in the graph: the producer writes this layout
    d_sum, d_squares = d_sums[0], d_sums[1]
    prologue = in_scale is not None
    dx = d_scale = d_shift = d_weight = None
    needs = ctx.needs_input_grad
    if needs[0] or (prologue and (needs[2] or needs[3])):
        dx, sums = conv_input_grad(grad, weight, x if prologue else None, in_scale, in_shift, y, d_sum, d_squares,
                                   ctx.implicit_gemm)
        if prologue:
            d_scale, d_shift = sums[0], sums[1]
    if needs[1]:
        d_weight = conv_weight_grad(x, grad, list(weight.shape), in_scale, in_shift, y, d_sum, d_squares,
                                    ctx.implicit_gemm).to(ctx.weight_dtype)
    return dx, d_weight, d_scale, d_shift, None


conv_forward.register_autograd(_conv_backward, setup_context=_conv_setup)


# ---- the tail: BN of both paths, sum, ReLU, max-pool ----

@torch.library.custom_op("fastsca::block_tail_forward", mutates_args=())
def tail_forward(main: Tensor, main_scale: Tensor | None, main_shift: Tensor | None, shortcut: Tensor,
                 short_scale: Tensor, short_shift: Tensor, pool: list[int]) -> tuple[Tensor, Tensor]:
    """(out, int8 argmax) (block_reference.block_tail_forward); the argmax empty for pool (1, 1)."""
    out, argmax = block_passes.block_tail_forward(main, main_scale, main_shift, shortcut, short_scale, short_shift,
                                                  tuple(pool))
    return out, _empty(main, torch.int8) if argmax is None else argmax


@tail_forward.register_fake
def _(main, main_scale, main_shift, shortcut, short_scale, short_shift, pool):
    pt, pf = pool
    shape = (main.shape[0], main.shape[1], main.shape[2] // pt, main.shape[3] // pf)
    argmax = _empty(main, torch.int8) if (pt, pf) == (1, 1) else _map(main, shape, torch.int8)
    return _map(main, shape), argmax


@torch.library.custom_op("fastsca::block_tail_backward", mutates_args=())
def tail_backward(d_out: Tensor, argmax: Tensor | None, out: Tensor, main: Tensor, main_scale: Tensor | None,
                  main_shift: Tensor | None, shortcut: Tensor, short_scale: Tensor, short_shift: Tensor,
                  pool: list[int]) -> tuple[Tensor, Tensor, Tensor]:
    """(d_main, d_shortcut, sums) (block_reference.block_tail_backward): sums (K, C) = (d_short_scale, d_short_shift,
    d_main_scale) with K = 3, or K = 2 when main_scale is None; d_main_shift is d_short_shift (both are sum dz)."""
    d_main, d_main_scale, _, d_short, d_short_scale, d_short_shift = block_passes.block_tail_backward(
        d_out, argmax, out, main, main_scale, main_shift, shortcut, short_scale, short_shift, tuple(pool))
    rows = (d_short_scale, d_short_shift) + (() if d_main_scale is None else (d_main_scale,))
    return d_main, d_short, _rows(*rows)


@tail_backward.register_fake
def _(d_out, argmax, out, main, main_scale, main_shift, shortcut, short_scale, short_shift, pool):
    rows = 2 if main_scale is None else 3
    return _map(main, main.shape), _map(main, main.shape), main.new_empty((rows, main.shape[1]), dtype=torch.float32)


def _tail_setup(ctx, inputs, output):
    main, main_scale, main_shift, shortcut, short_scale, short_shift, pool = inputs
    ctx.pool = tuple(pool)
    ctx.save_for_backward(main, main_scale, main_shift, shortcut, short_scale, short_shift, *output)


def _tail_backward(ctx, d_out, _d_argmax):
    main, main_scale, main_shift, shortcut, short_scale, short_shift, out, argmax = ctx.saved_tensors
    d_out = d_out.contiguous(memory_format=memory_format(out))   # in the graph: the producer writes this layout
    d_main, d_short, sums = tail_backward(d_out, None if ctx.pool == (1, 1) else argmax, out, main, main_scale,
                                          main_shift, shortcut, short_scale, short_shift, list(ctx.pool))
    d_main_scale, d_main_shift = (None, None) if main_scale is None else (sums[2], sums[1])
    return d_main, d_main_scale, d_main_shift, d_short, sums[0], sums[1], None


tail_forward.register_autograd(_tail_backward, setup_context=_tail_setup)


# ---- training-mode BatchNorm from a convolution's sums ----

def batch_norm_affine(total: Tensor, squares: Tensor, count: int, bn: nn.BatchNorm2d) -> tuple[Tensor, Tensor]:
    """(scale, shift) per channel of `bn` in training mode, from the batch's sum and sum of squares over `count`
    values per channel; updates bn's running statistics exactly as nn.BatchNorm2d does (momentum, or the
    cumulative average when momentum is None; the unbiased variance; num_batches_tracked)."""
    if count == 1:   # nn.BatchNorm2d's own refusal: no variance, and an unbiased one divides by 0
        raise ValueError("Expected more than 1 value per channel when training (a batch of one 1x1 map); "
                         "give the block more clips or a larger map, or evaluate it in eval mode")
    mean = total / count
    var = (squares / count - mean.square()).clamp_min(0)   # E[y^2] - E[y]^2 rounds below 0 for a constant channel
    scale = bn.weight * torch.rsqrt(var + bn.eps)
    _update_running_statistics(bn, mean.detach(), var.detach(), count)
    return scale, bn.bias - mean * scale


@torch.no_grad()
def _update_running_statistics(bn: nn.BatchNorm2d, mean: Tensor, var: Tensor, count: int) -> None:
    bn.num_batches_tracked.add_(1)
    factor = 1.0 / bn.num_batches_tracked if bn.momentum is None else bn.momentum
    bn.running_mean.copy_(factor * mean + (1 - factor) * bn.running_mean)
    bn.running_var.copy_(factor * var * (count / (count - 1)) + (1 - factor) * bn.running_var)
