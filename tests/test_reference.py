"""kernels/reference.py, the fair baseline: under bf16 autocast the reference attention computes in bf16 as a
user's model would, and no F-sized fp32 tensor is made, forward or backward; in fp32 it is the oracle.

What is recorded: the output of every aten op the reference module's forward and backward dispatch (a
TorchDispatchMode sees each op autograd runs too), with its dtype and the elements its storage holds;
an expanded view (a reduction's gradient broadcast back over F) holds no F-sized storage and is not one.
"""
import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_leaves

from fastsca.attention import build_attention
from fastsca.config import ATTENTION_ARRANGEMENTS
from kernels import reference


class OutputLog(TorchDispatchMode):
    """(op name, dtype, storage elements) of every tensor an aten op returns while active."""

    def __init__(self):
        super().__init__()
        self.outputs: list[tuple[str, torch.dtype, int]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor):
                self.outputs.append((str(func), t.dtype, t.untyped_storage().nbytes() // t.element_size()))
        return out


def _module(arrangement, shape):
    _, channels, time, freq = shape
    return build_attention(arrangement=arrangement, channels=channels, time_steps=time, freq_bins=freq,
                           use_global=True, use_local=True, rd_ratio=4, global_mid_channels=4,
                           global_kernel_size=5, fused=False).train()


@pytest.mark.parametrize("layout", [torch.contiguous_format, torch.channels_last])
@pytest.mark.parametrize("arrangement", list(ATTENTION_ARRANGEMENTS))
def test_bf16_reference_makes_no_f_sized_fp32_tensor(arrangement, layout):
    torch.manual_seed(5)
    shape = (3, 37, 7, 3)
    module = _module(arrangement, shape).to(memory_format=torch.channels_last)
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=layout).requires_grad_()
    grad = torch.randn(shape).to(torch.bfloat16)
    log = OutputLog()
    with log:
        with torch.autocast("cpu", torch.bfloat16):
            out = module(x)
        out.backward(grad)
    f_numel = x.numel()
    assert out.dtype == torch.bfloat16 and x.grad.dtype == torch.bfloat16
    assert any(numel >= f_numel and dtype == torch.bfloat16 for _, dtype, numel in log.outputs)   # F'' itself
    fp32_f = [(op, numel) for op, dtype, numel in log.outputs if dtype == torch.float32 and numel >= f_numel]
    assert not fp32_f, fp32_f


def test_the_fp32_reference_follows_equations_4_to_10():
    # Each step spelled out with plain means, for one arrangement per order: the reference's fp32 sums
    # over C = 37 or N = 21 terms round like the means (the same summation), so the tolerance is fp32's.
    torch.manual_seed(9)
    x = torch.randn(2, 37, 7, 3)
    s_logit, c_logit = torch.randn(2, 1, 7, 3), torch.randn(2, 37)
    weight = torch.sigmoid(c_logit)
    torch.testing.assert_close(reference.channel_pool(x), x.mean(dim=1, keepdim=True), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(reference.channel_pool(x, weight),
                               (x * weight[:, :, None, None]).mean(dim=1, keepdim=True), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(reference.spatial_squeeze(x, s_logit), (x * torch.sigmoid(s_logit)).mean(dim=(2, 3)),
                               atol=1e-6, rtol=1e-6)
    m_s, m_c = torch.sigmoid(s_logit), torch.sigmoid(c_logit)[:, :, None, None]
    torch.testing.assert_close(reference.gate(x, s_logit, c_logit), m_c * (m_s * x), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(reference.gate(x, s_logit, c_logit, additive=True),
                               torch.sigmoid(s_logit + c_logit[:, :, None, None]) * x, atol=1e-6, rtol=1e-6)
    with pytest.raises(ValueError, match="additive"):
        reference.gate(x, s_logit, None, additive=True)


def test_the_bf16_reference_stays_within_bf16_rounding_of_fp32():
    # The same module and values in bf16 (autocast) and fp32: F'' a few bf16 roundings (3.9e-3 relative
    # each) of the fp32 oracle, scaled to its largest entry; a reduction in bf16 (no fp32 accumulation)
    # over C = 64 would be off by ~0.1 of its mean.
    torch.manual_seed(13)
    shape = (2, 64, 20, 4)
    module = _module("sca", shape).eval()
    x = torch.randn(shape).to(torch.bfloat16)
    expected = module(x.float())
    with torch.autocast("cpu", torch.bfloat16):
        out = module(x)
    torch.testing.assert_close(out.float(), expected, atol=3e-2 * expected.abs().max().item(), rtol=3e-2)
