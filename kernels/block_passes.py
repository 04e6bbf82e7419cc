"""The residual block's passes as the fused block's ops run them: the one place that picks a pass's engine.

Each function has kernels/block_reference.py's signature (and its conventions); the convolutions take one more
keyword, `implicit_gemm`: the per-layer rule's choice for that convolution (fastsca/backbone_plan.py). A
convolution runs the Triton implicit-GEMM kernel with its fused prologue and epilogue (kernels/conv.py,
kernels/conv_weight_grad.py) where the rule chose it and Triton runs (CUDA, or the CPU under TRITON_INTERPRET=1),
else the same pass in aten ops (kernels/block_aten.py: cuDNN on CUDA, the CPU's convolutions elsewhere). The
block's tail runs its Triton kernels (kernels/block_tail.py) wherever Triton runs, else the reference's PyTorch.
"""
import torch

from kernels import block_aten, block_reference
from kernels.block_tail import block_tail_backward_triton, block_tail_forward_triton
from kernels.common import use_triton
from kernels.conv import conv_forward_triton, conv_input_grad_triton
from kernels.conv_weight_grad import conv_weight_grad_triton


def conv_forward(x: torch.Tensor, weight: torch.Tensor, in_scale: torch.Tensor | None = None,
                 in_shift: torch.Tensor | None = None, *, implicit_gemm: bool = False):
    """block_reference.conv_forward."""
    run = conv_forward_triton if implicit_gemm and use_triton(x) else block_aten.conv_forward
    return run(x, weight, in_scale, in_shift)


def conv_input_grad(grad: torch.Tensor, weight: torch.Tensor, x: torch.Tensor | None = None,
                    in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None,
                    sums_grad: tuple | None = None, *, implicit_gemm: bool = False):
    """block_reference.conv_input_grad."""
    run = conv_input_grad_triton if implicit_gemm and use_triton(grad) else block_aten.conv_input_grad
    return run(grad, weight, x, in_scale, in_shift, sums_grad)


def conv_weight_grad(x: torch.Tensor, grad: torch.Tensor, weight_shape: tuple[int, int, int, int],
                     in_scale: torch.Tensor | None = None, in_shift: torch.Tensor | None = None,
                     sums_grad: tuple | None = None, *, implicit_gemm: bool = False) -> torch.Tensor:
    """block_reference.conv_weight_grad."""
    run = conv_weight_grad_triton if implicit_gemm and use_triton(x) else block_aten.conv_weight_grad
    return run(x, grad, weight_shape, in_scale, in_shift, sums_grad)


def block_tail_forward(main, main_scale, main_shift, shortcut, short_scale, short_shift, pool):
    """block_reference.block_tail_forward."""
    run = block_tail_forward_triton if use_triton(main) else block_reference.block_tail_forward
    return run(main, main_scale, main_shift, shortcut, short_scale, short_shift, pool)


def block_tail_backward(d_out, argmax, out, main, main_scale, main_shift, shortcut, short_scale, short_shift, pool):
    """block_reference.block_tail_backward."""
    run = block_tail_backward_triton if use_triton(d_out) else block_reference.block_tail_backward
    return run(d_out, argmax, out, main, main_scale, main_shift, shortcut, short_scale, short_shift, pool)
