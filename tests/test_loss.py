"""The clip BCE: matches the formula, stays finite at saturated probabilities, is fp32 under bf16 inputs."""
import pytest
import torch

from train.loss import clip_bce


@pytest.mark.parametrize("batch, classes", [(4, 10), (3, 37), (1, 1)])
def test_matches_formula(batch, classes):
    prob = torch.rand(batch, classes).clamp(0.01, 0.99)
    target = (torch.rand(batch, classes) > 0.7).float()
    expected = -(target * prob.log() + (1 - target) * (1 - prob).log()).mean()
    torch.testing.assert_close(clip_bce(prob, target), expected)


def test_saturated_probabilities_give_finite_loss_and_gradient():
    prob = torch.tensor([[0.0, 1.0, 1.0, 0.0]], requires_grad=True)
    target = torch.tensor([[1.0, 0.0, 1.0, 0.0]])
    loss = clip_bce(prob, target)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(prob.grad).all()
    # the two wrong answers cost -log(1e-7) and -log(1 - fp32(1 - 1e-7)) = -log(2**-23); the right ones ~0
    assert loss.item() == pytest.approx((16.118 + 15.942) / 4, rel=1e-4)


def test_fp32_under_bf16_input():
    prob = torch.rand(8, 5).clamp(0.01, 0.99)
    target = (torch.rand(8, 5) > 0.5).float()
    loss = clip_bce(prob.to(torch.bfloat16), target)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, clip_bce(prob.to(torch.bfloat16).float(), target))
