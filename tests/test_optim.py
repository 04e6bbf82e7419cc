"""train/optim.py's AdamW: fused on CUDA only, and its state dict loads across fused and unfused optimisers."""
import copy

import torch
from torch import nn

from train.config import OptimConfig
from train.optim import build_optimiser, fused_on

SEED = 23


def _model() -> nn.Module:
    torch.manual_seed(SEED)
    # no conv bias before the BN: its gradient is rounding noise, which Adam scales up to lr-sized steps
    return nn.Sequential(nn.Conv2d(1, 5, 3, bias=False), nn.BatchNorm2d(5), nn.Flatten(), nn.Linear(5 * 5 * 3, 7))


def _steps(model: nn.Module, optimiser: torch.optim.Optimizer, steps: int, seed: int) -> None:
    generator = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        optimiser.zero_grad(set_to_none=True)
        model(torch.randn(3, 1, 7, 5, generator=generator)).square().mean().backward()
        optimiser.step()


def test_cpu_parameters_keep_the_unfused_step_and_cuda_ones_get_fused():
    model = _model()
    optimiser = build_optimiser(model, OptimConfig())
    assert not optimiser.defaults["fused"]   # a CPU run keeps torch's default step: resumes stay bit-exact
    assert not fused_on(list(model.parameters()))
    assert fused_on([nn.Parameter(torch.empty(2, device="meta"))]) is False
    assert build_optimiser(model, OptimConfig(), fused=True).defaults["fused"] is True


def test_a_fused_state_loads_into_an_unfused_optimiser_and_back():
    trained, twin = _model(), _model()
    fused = build_optimiser(trained, OptimConfig(lr=1e-2), fused=True)
    plain = build_optimiser(twin, OptimConfig(lr=1e-2))
    _steps(trained, fused, 3, seed=1)
    twin.load_state_dict(trained.state_dict())
    plain.load_state_dict(copy.deepcopy(fused.state_dict()))   # as a checkpoint holds it
    _steps(trained, fused, 2, seed=2)
    _steps(twin, plain, 2, seed=2)
    # fused and for-loop AdamW evaluate the same update in a different order: fp32 rounding, not a formula
    for a, b in zip(trained.parameters(), twin.parameters()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    back = build_optimiser(_model(), OptimConfig(lr=1e-2), fused=True)
    back.load_state_dict(copy.deepcopy(plain.state_dict()))
    assert [s["step"].item() for s in back.state.values()] == [5.0] * len(list(twin.parameters()))
    # the loaded groups keep this optimiser's implementation, not the checkpoint's
    assert [g["fused"] for g in back.param_groups] == [True, True]
    assert [g["fused"] for g in plain.param_groups] == [None, None]
