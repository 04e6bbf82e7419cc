"""Whole models with the fused attention ops: equal to the reference model, and compiled with no graph break."""
import pytest
import torch

from fastsca import PRESETS, build_model
from fastsca.run_options import RunOptions
from kernels import LAUNCHES

NARROW = (4, 8, 8, 16, 16, 32, 32)
"""Channel widths of a cheap model of any preset: same structure and map sizes, far fewer channels."""
OPS = ("channel_pool", "spatial_squeeze", "gate")
"""The kernels of the F-sized forward passes (attention_pool, _squeeze, _gate: `<op>_forward` in LAUNCHES); the
local FC is plain PyTorch inside the unit."""
UNIQUE_PRESETS = list({config: name for name, config in reversed(PRESETS.items())}.values())
"""One name per distinct config (at-sca and at-sca-1 are the same model)."""


def _twin_models(name: str, **overrides) -> tuple[torch.nn.Module, torch.nn.Module]:
    """A reference model and a fused one with the same weights, in eval mode.

    Eval mode because in train mode BatchNorm makes some gradients 0 in exact arithmetic (a 1x1 conv
    of one channel before a BatchNorm is scale-invariant) and both fp32 models return only rounding
    noise for them, O(1) apart relative to their size. The attention ops run the same either way.
    """
    reference = build_model(name, RunOptions(fused_attention=False), **overrides).eval()
    fused = build_model(name, RunOptions(fused_attention=True), **overrides).eval()
    fused.load_state_dict(reference.state_dict())
    return reference, fused


def _forward_backward(model: torch.nn.Module, log_mel: torch.Tensor):
    out = model(log_mel)
    ramp = torch.linspace(-1, 1, out.frame.shape[-1], device=log_mel.device)
    (out.clip.sum() + (out.frame * ramp).sum()).backward()
    return out


def _assert_same(reference: torch.nn.Module, fused: torch.nn.Module, log_mel: torch.Tensor) -> None:
    """Outputs and every parameter gradient agree, gradients at 1e-4 of each tensor's largest entry
    (both fp32 models are within ~2e-6 of it from an fp64 run, measured on at-sca-3 and the narrow
    presets; a wrong kernel gradient is off by O(1)). The 1e-6 floor is for the attention-pooling
    bias, whose gradient is 0 in exact arithmetic (a softmax over time ignores a shift): up to ~1.2e-7
    of rounding noise in fp32."""
    outs = _forward_backward(reference, log_mel)
    ours = _forward_backward(fused, log_mel)
    torch.testing.assert_close(ours.clip, outs.clip, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(ours.frame, outs.frame, atol=1e-5, rtol=1e-4)
    for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
        atol = 1e-4 * expected.grad.abs().max().item() + 1e-6
        torch.testing.assert_close(actual.grad, expected.grad, atol=atol, rtol=1e-4,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.parametrize("name, overrides", [
    pytest.param("at-sca-3", {}, marks=pytest.mark.slow),   # the real maps of at-sca-3
    ("at-csa-3", dict(channels=NARROW)),       # channel-weighted pooling
    ("at-cps-3", dict(channels=NARROW)),       # additive gate
    ("at-s-local-3", dict(channels=NARROW)),   # local branch alone, spatial gate only
    ("at-c-3", dict(channels=NARROW)),         # plain squeeze, channel gate only
])
def test_fused_model_matches_reference_through_the_kernels(kernel_device, name, overrides):
    torch.manual_seed(0)
    reference, fused = (model.to(kernel_device) for model in _twin_models(name, **overrides))
    before = LAUNCHES.copy()
    _assert_same(reference, fused, torch.randn(1, 1, 400, 64, device=kernel_device))
    launched = {op for op in OPS if LAUNCHES[f"{op}_forward"] > before[f"{op}_forward"]}
    expected = {"at-c-3": {"spatial_squeeze", "gate"}, "at-s-local-3": {"channel_pool", "gate"}}
    assert launched == expected.get(name, set(OPS))
    # One backward unit per attention block: dF written once by gate_input_grad, and nothing else of ours
    # launched but the passes of the arrangement's table (kernels/attention.py).
    assert LAUNCHES["gate_input_grad"] == before["gate_input_grad"] + 3
    backward = {"at-c-3": {"gate_logit_grad_rows"}, "at-s-local-3": {"gate_logit_grad_columns"},
                "at-cps-3": {"gate_logit_grad_rows"},
                "at-csa-3": {"gate_logit_grad_columns", "channel_pool_logit_grad"}}
    launched = {name for name in LAUNCHES if LAUNCHES[name] > before[name]}
    assert launched == ({f"{op}_forward" for op in expected.get(name, OPS)} | {"gate_input_grad"}
                        | backward.get(name, {"gate_logit_grad_rows", "spatial_squeeze_logit_grad"}))


@pytest.mark.slow
@pytest.mark.parametrize("name", UNIQUE_PRESETS)
def test_every_preset_compiles_with_fused_ops(name):
    # aot_eager: Dynamo with fullgraph=True (raises on any graph break) and AOTAutograd tracing forward
    # and backward through the ops' fake and autograd registrations; Inductor is the next test.
    torch._dynamo.reset()
    torch.manual_seed(0)
    reference, fused = _twin_models(name, channels=NARROW)
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    _assert_same(reference, compiled, torch.randn(2, 1, 400, 64))


@pytest.mark.slow
def test_at_sca_3_compiles_with_inductor():
    # The training setup: default torch.compile (Inductor). ~75 s cold on a 2-core CPU, ~13 s with
    # Inductor's on-disk cache warm.
    torch._dynamo.reset()
    torch.manual_seed(0)
    reference, fused = _twin_models("at-sca-3", channels=NARROW)
    _assert_same(reference, torch.compile(fused, fullgraph=True), torch.randn(2, 1, 400, 64))
