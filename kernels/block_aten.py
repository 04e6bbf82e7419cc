"""The residual block's convolution passes in aten ops: cuDNN on CUDA, the CPU's convolutions elsewhere.

What a convolution runs when the per-layer plan (fastsca/backbone_plan.py) leaves it to cuDNN, and what every
convolution runs on the CPU: the passes of kernels/block_reference.py with the same signatures, computed
in the map's dtype the way a user's model computes them (a bf16 convolution accumulates in fp32 inside cuDNN
and rounds its output), not in fp32 like the reference. The prologue's activation is written out once
for the convolution to read, and the sums come from the rounded output (two reductions that upcast inside
the kernel, `dtype=torch.float32`, so no fp32 copy of the map is made). In fp32 these are the reference's
values up to summation order; in bf16 they differ from it by the output's rounding (tests/test_block_aten.py).
"""
import torch

from kernels.block_reference import SUM_DIMS, activate, grad_with_sums, memory_format


def _sums(y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel fp32 sums of y and y * y, accumulated in fp32 inside the reductions."""
    return (y.sum(SUM_DIMS, dtype=torch.float32),
            torch.linalg.vector_norm(y, 2, dim=SUM_DIMS, dtype=torch.float32).square())


def conv_forward(x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None,
                 in_shift: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """block_reference.conv_forward, as a plain convolution of the written-out activation."""
    a = x if in_scale is None else activate(x, in_scale, in_shift)
    y = torch.nn.functional.conv2d(a, weight.to(x.dtype), padding=weight.shape[-1] // 2)
    y = y.contiguous(memory_format=memory_format(x))
    return (y, *_sums(y))


def conv_input_grad(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor | None = None,
                    in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None,
                    sums_grad: tuple | None = None) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """block_reference.conv_input_grad, as cuDNN's data gradient and one pointwise pass for the prologue (and
    one before it forming the full gradient when sums_grad is given)."""
    if sums_grad is not None:
        grad = grad_with_sums(grad, *sums_grad)
    a_shape = (grad.shape[0], weight.shape[1], grad.shape[2], grad.shape[3])
    d_a = torch.nn.grad.conv2d_input(a_shape, weight.to(grad.dtype), grad, padding=weight.shape[-1] // 2)
    d_a = d_a.contiguous(memory_format=memory_format(grad))
    if in_scale is None:
        return d_a, None, None
    scale, shift = in_scale.float().view(1, -1, 1, 1), in_shift.float().view(1, -1, 1, 1)
    g = torch.where(x.float() * scale + shift > 0, d_a.float(), 0.0)
    return ((g * scale).to(grad.dtype).contiguous(memory_format=memory_format(grad)),
            (g * x.float()).sum(SUM_DIMS), g.sum(SUM_DIMS))


def conv_weight_grad(x: torch.Tensor, grad: torch.Tensor, weight_shape: tuple[int, int, int, int],
                     in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None,
                     sums_grad: tuple | None = None) -> torch.Tensor:
    """block_reference.conv_weight_grad, as cuDNN's weight gradient of the (re-made) activation, in fp32 (of
    the full gradient, formed in one pointwise pass when sums_grad is given)."""
    if sums_grad is not None:
        grad = grad_with_sums(grad, *sums_grad)
    a = x if in_scale is None else activate(x, in_scale, in_shift)
    return torch.nn.grad.conv2d_weight(a, weight_shape, grad.to(a.dtype), padding=weight_shape[-1] // 2).float()
