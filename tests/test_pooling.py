"""Attention pooling is eq. 2 exactly: no clamp on the logits, finite for any logit, gradients everywhere."""
import pytest
import torch

from fastsca.pooling import AttentionPooling


def _eq2(att_logit: torch.Tensor, tag_logit: torch.Tensor) -> torch.Tensor:
    """Eq. 2 as the paper writes it, in float64: sum_t e v / sum_t e with e = exp(logit)."""
    e = att_logit.double().exp()
    return (e * torch.sigmoid(tag_logit.double())).sum(dim=1) / e.sum(dim=1)


@pytest.mark.parametrize("batch, frames, features, classes", [(2, 7, 5, 3), (3, 100, 37, 11)])
@pytest.mark.parametrize("scale", [1.0, 30.0])   # 30: logits far past the old clamp of +-10
def test_matches_eq_2_with_large_logits(batch, frames, features, classes, scale):
    pooling = AttentionPooling(features, classes)
    x = torch.randn(batch, frames, features) * scale
    att_logit, tag_logit = pooling.attention(x), pooling.tagging(x)
    if scale > 1:
        assert att_logit.abs().max() > 10
    clip, frame = pooling(x)
    torch.testing.assert_close(clip.double(), _eq2(att_logit, tag_logit), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(frame, torch.sigmoid(tag_logit))


def test_clamp_would_have_changed_the_output():
    pooling = AttentionPooling(4, 2)
    x = torch.randn(3, 9, 4) * 40
    clamped = AttentionPooling(4, 2, logit_clamp=10.0)
    clamped.load_state_dict(pooling.state_dict())
    assert pooling.attention(x).abs().max() > 10
    assert (pooling(x)[0] - clamped(x)[0]).abs().max() > 1e-3


def test_finite_output_and_gradients_for_huge_logits():
    pooling = AttentionPooling(6, 3)
    x = (torch.randn(2, 13, 6) * 500).requires_grad_()   # logits in the thousands: exp() alone overflows
    assert torch.isinf(pooling.attention(x).exp()).any()
    clip, _ = pooling(x)
    assert torch.isfinite(clip).all()
    upstream = torch.randn_like(clip)
    (clip * upstream).sum().backward()
    # a saturated softmax has (near) zero gradient: what matters is that nothing is inf or nan
    assert torch.isfinite(x.grad).all() and torch.isfinite(pooling.attention.weight.grad).all()


def test_gradient_of_large_logits_matches_eq_2():
    classes, frames = 4, 11
    pooling = AttentionPooling(2 * classes, classes).double()
    with torch.no_grad():   # x = [attention logits, tagging logits]: the linear maps pick one half each
        eye, zero = torch.eye(classes, dtype=torch.float64), torch.zeros(classes, classes, dtype=torch.float64)
        pooling.attention.weight.copy_(torch.cat([eye, zero], dim=1))
        pooling.tagging.weight.copy_(torch.cat([zero, eye], dim=1))
        pooling.attention.bias.zero_()
        pooling.tagging.bias.zero_()
    att_logit = torch.randn(3, frames, classes, dtype=torch.float64) * 15
    tag_logit = torch.randn(3, frames, classes, dtype=torch.float64)
    assert att_logit.abs().max() > 10
    x = torch.cat([att_logit, tag_logit], dim=2).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    upstream = torch.randn(3, classes, dtype=torch.float64)
    (pooling(x)[0] * upstream).sum().backward()
    (_eq2(reference[..., :classes], reference[..., classes:]) * upstream).sum().backward()
    # the module computes eq. 2 in fp32 (it casts the logits with .float()): fp32 tolerances
    torch.testing.assert_close(x.grad, reference.grad, atol=1e-6, rtol=1e-4)
    # logits above 10 carry gradient (a clamp would zero it there)
    assert x.grad[..., :classes][att_logit > 10].abs().sum() > 1e-6
