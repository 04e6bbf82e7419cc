"""The residual block's passes as the fused block's ops run them: the one place that picks a pass's engine.

Each function has kernels/block_reference.py's signature (and its conventions); the convolutions take one more
keyword, `implicit_gemm`: the per-layer rule's choice for that convolution (fastsca/backbone_plan.py), True where
the Triton implicit-GEMM convolution with fused prologue and epilogue pays, False where cuDNN plus separate
passes does. Every pass runs the reference today; a Triton pass is chosen here as
`triton_fn(...) if implicit_gemm and use_triton(x) else reference_fn(...)` (the tail passes: `use_triton` alone).
"""
import torch

from kernels import block_reference as reference


def conv_forward(x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None,
                 in_shift: torch.Tensor | None = None, *, implicit_gemm: bool = False):
    """block_reference.conv_forward."""
    return reference.conv_forward(x, weight, in_scale, in_shift)


def conv_input_grad(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor | None = None,
                    in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None, *,
                    implicit_gemm: bool = False):
    """block_reference.conv_input_grad."""
    return reference.conv_input_grad(grad, weight, x, in_scale, in_shift)


def conv_weight_grad(x: torch.Tensor, grad: torch.Tensor, weight_shape: tuple[int, int, int, int],
                     in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None, *,
                     implicit_gemm: bool = False) -> torch.Tensor:
    """block_reference.conv_weight_grad."""
    return reference.conv_weight_grad(x, grad, weight_shape, in_scale, in_shift)


def block_tail_forward(main, main_scale, main_shift, shortcut, short_scale, short_shift, pool):
    """block_reference.block_tail_forward."""
    return reference.block_tail_forward(main, main_scale, main_shift, shortcut, short_scale, short_shift, pool)


def block_tail_backward(d_out, argmax, out, main, main_scale, main_shift, shortcut, short_scale, short_shift, pool):
    """block_reference.block_tail_backward."""
    return reference.block_tail_backward(d_out, argmax, out, main, main_scale, main_shift, shortcut, short_scale,
                                         short_shift, pool)
