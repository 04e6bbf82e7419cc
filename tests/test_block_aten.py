"""kernels/block_aten.py (the cuDNN and CPU path of the block's convolutions) against kernels/block_reference.py.

fp32: the same values up to summation order (tolerance 1e-5 relative, 1e-4 for sums over ~10^3 terms).
bf16: the aten path rounds the convolution's output (and the gradients) to bf16 where the reference keeps
fp32 until the end, so values agree to bf16's resolution (2^-8 relative, tolerance 1e-2 relative plus 1e-2
absolute for values near zero) and the sums to the same relative resolution.
"""
import pytest
import torch

from kernels import block_aten, block_reference

B, C_IN, C, T, FREQ = 3, 5, 7, 11, 9


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_aten_conv_passes_match_reference(dtype, prologue, k):
    x = torch.randn(B, C_IN, T, FREQ).to(dtype).contiguous(memory_format=torch.channels_last)
    weight = torch.randn(C, C_IN, k, k)
    vectors = (torch.rand(C_IN) + 0.5, torch.rand(C_IN) - 0.5) if prologue else (None, None)
    grad = torch.randn(B, C, T, FREQ).to(dtype).contiguous(memory_format=torch.channels_last)
    rtol, atol = (1e-5, 1e-4) if dtype == torch.float32 else (1e-2, 1e-2)

    for name, args in (("conv_forward", (x, weight, *vectors)),
                       ("conv_input_grad", (grad, weight, x if prologue else None, *vectors)),
                       ("conv_weight_grad", (x, grad, tuple(weight.shape), *vectors))):
        got, want = getattr(block_aten, name)(*args), getattr(block_reference, name)(*args)
        got, want = (got, want) if isinstance(got, tuple) else ((got,), (want,))
        for g, w in zip(got, want):
            if w is None:
                assert g is None
                continue
            assert g.dtype == w.dtype and g.shape == w.shape
            if g.dim() == 4 and name != "conv_weight_grad":
                assert g.is_contiguous(memory_format=torch.channels_last)
            scale = w.float().abs().max()   # sums are compared relative to their largest entry
            torch.testing.assert_close(g.float(), w.float(), rtol=rtol, atol=atol * max(1.0, float(scale)))
