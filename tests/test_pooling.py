"""The MIL poolings: attention is eq. 2 exactly (no clamp on the logits, finite for any logit, gradients
everywhere); linear softmax, exponential softmax, max and average are TALNet's formulas, with their gradients; a
checkpoint keeps its pooling, and one written before the choice existed loads as attention."""
from dataclasses import asdict

import pytest
import torch

from fastsca.config import ModelConfig
from fastsca.frontend import LogMelConfig
from fastsca.inference import CHECKPOINT_FORMAT, load_trained_model
from fastsca.model import build_model
from fastsca.pooling import AttentionPooling, build_pooling, linear_softmax_weights
from fastsca.run_options import RunOptions


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


# Each pooling of fastsca/pooling.py as TALNet writes it, on the frame probabilities v (B, T', K), in float64.
TALNET = {
    "linear_softmax": lambda v: (v * v).sum(dim=1) / v.sum(dim=1),
    "exp_softmax": lambda v: (v * v.exp()).sum(dim=1) / v.exp().sum(dim=1),
    "max": lambda v: v.amax(dim=1),
    "average": lambda v: v.mean(dim=1),
}


@pytest.mark.parametrize("name", list(TALNET))
@pytest.mark.parametrize("batch, frames, features, classes", [(2, 7, 5, 3), (3, 100, 37, 11)])
def test_each_pooling_matches_its_formula_and_its_frames_are_sigmoids(name, batch, frames, features, classes):
    torch.manual_seed(7)
    pooling = build_pooling(name, features, classes)
    x = torch.randn(batch, frames, features) * 3
    clip, frame = pooling(x)
    tag_logit = pooling.tagging(x)
    # the module computes in fp32, the formula in float64: fp32 rounding of sums over <= 100 frames
    torch.testing.assert_close(clip.double(), TALNET[name](torch.sigmoid(tag_logit.double())), atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(frame, torch.sigmoid(tag_logit))
    assert list(pooling.state_dict()) == ["tagging.weight", "tagging.bias"]


@pytest.mark.parametrize("name", list(TALNET))
def test_each_pooling_has_the_formula_s_gradient(name):
    torch.manual_seed(11)
    pooling = build_pooling(name, 5, 3).double()
    x = torch.randn(4, 13, 5, dtype=torch.float64).requires_grad_()
    reference = x.detach().clone().requires_grad_()
    upstream = torch.randn(4, 3, dtype=torch.float64)
    (pooling(x)[0] * upstream).sum().backward()
    (TALNET[name](torch.sigmoid(pooling.tagging(reference).double())) * upstream).sum().backward()
    assert torch.isfinite(x.grad).all()
    # the module casts the logits to fp32: fp32 tolerances
    torch.testing.assert_close(x.grad, reference.grad, atol=1e-6, rtol=1e-4)


@pytest.mark.parametrize("name", ["attention", *TALNET])
def test_saturated_frames_give_finite_clips_and_gradients(name):
    torch.manual_seed(3)
    pooling = build_pooling(name, 6, 3)
    x = (torch.randn(2, 9, 6) * 500).requires_grad_()   # sigmoids of 0 and 1 exactly in fp32
    clip, frame = pooling(x)
    assert (frame == 0).any() and (frame == 1).any()
    (clip * torch.randn_like(clip)).sum().backward()
    assert torch.isfinite(clip).all() and torch.isfinite(x.grad).all()
    assert torch.isfinite(pooling.tagging.weight.grad).all()


def test_linear_softmax_of_frames_all_zero_is_zero():
    frame_prob = torch.zeros(2, 5, 3).requires_grad_()   # every sigmoid underflowed: 0 / 0 without the floor
    clip = (linear_softmax_weights(frame_prob) * frame_prob).sum(dim=1)
    clip.sum().backward()
    assert torch.equal(clip, torch.zeros(2, 3)) and torch.isfinite(frame_prob.grad).all()


def test_clip_embedding_is_the_frames_under_the_pooling_weights():
    torch.manual_seed(5)
    pooling = build_pooling("linear_softmax", 6, 3)
    x = torch.randn(2, 9, 6)
    v = torch.sigmoid(pooling.tagging(x))
    weight = (v / v.sum(dim=1, keepdim=True)).mean(dim=2)                 # (B, T')
    torch.testing.assert_close(pooling.clip_embedding(x), (weight[..., None] * x).sum(dim=1))


def test_unknown_pooling_is_refused_listing_the_valid_ones():
    with pytest.raises(ValueError, match="linear_softmax"):
        build_pooling("softmax", 4, 2)
    with pytest.raises(ValueError, match="pooling 'softmax' is not one of attention"):
        ModelConfig(pooling="softmax")
    with pytest.raises(ValueError, match="pool_logit_clamp"):
        ModelConfig(pooling="max", pool_logit_clamp=10.0)


@pytest.mark.parametrize("name", ["attention", *TALNET])
def test_a_checkpoint_round_trips_its_pooling(name, tmp_path):
    torch.manual_seed(2)
    config = ModelConfig.from_name("at-sca-1", pooling=name, channels=(4, 4, 8, 8, 8, 8, 8), num_classes=3,
                                   input_frames=40)
    model = build_model(config, RunOptions(fused_attention=False)).eval()
    path = tmp_path / "model.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "step": 1, "label_names": list("abc"),
                "config": {"model": asdict(config), "log_mel": asdict(LogMelConfig(clip_samples=16000))}}, path)
    loaded = load_trained_model(path)
    assert loaded.model.config.pooling == name and type(loaded.model.pooling) is type(model.pooling)
    log_mel = torch.randn(2, 1, 40, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(log_mel).clip, model(log_mel).clip)


def test_a_checkpoint_without_the_pooling_field_loads_as_attention(tmp_path):
    torch.manual_seed(4)
    config = ModelConfig.from_name("at-sca-1", channels=(4, 4, 8, 8, 8, 8, 8), num_classes=3, input_frames=40)
    model = build_model(config, RunOptions(fused_attention=False)).eval()
    old = {name: value for name, value in asdict(config).items() if name != "pooling"}   # written before the field
    path = tmp_path / "old.pt"
    torch.save({"format": CHECKPOINT_FORMAT, "model": model.state_dict(), "step": 1, "label_names": list("abc"),
                "config": {"model": old, "log_mel": asdict(LogMelConfig(clip_samples=16000))}}, path)
    loaded = load_trained_model(path)
    assert loaded.model.config.pooling == "attention" and isinstance(loaded.model.pooling, AttentionPooling)
    log_mel = torch.randn(2, 1, 40, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(log_mel).clip, model(log_mel).clip)


def test_the_pooling_flag_reaches_the_model_and_describe_shows_it(capsys):
    from fastsca.describe import main
    from fastsca.model_options import model_config
    from train.profiles import PROFILES
    from train.run import parse_args
    args = parse_args(["--profile", "cpu", "--pooling", "exp_softmax"])
    assert model_config(args, "at-sca-3", PROFILES["cpu"]).pooling == "exp_softmax"
    assert model_config(parse_args(["--profile", "cpu"]), "at-sca-3", PROFILES["cpu"]).pooling == "attention"
    main(["at-sca-3", "--profile", "cpu", "--pooling", "exp_softmax"])
    table = capsys.readouterr().out
    assert "exp_softmax pooling" in table.splitlines()[0] and "MIL pooling        exp softmax" in table
