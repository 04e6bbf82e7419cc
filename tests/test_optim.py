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


def test_the_global_branchs_last_conv_learns_at_lr_over_its_fan_in():
    from fastsca.model import build_model
    model = build_model("at-sca-2", channels=(4, 4, 8, 8, 8, 12, 12), num_classes=3, input_frames=40,
                        global_mid_channels=3, global_kernel_size=3)
    optimiser = build_optimiser(model, OptimConfig(lr=2e-3, weight_decay=0.01))
    last = {id(p) for block in (5, 6) for p in model.blocks[block].attention.spatial.global_branch.conv2.parameters()}
    lrs = {id(p): (group["lr"], group["weight_decay"], p.dim())
           for group in optimiser.param_groups for p in group["params"]}
    assert sum(len(g["params"]) for g in optimiser.param_groups) == len(lrs) == len(list(model.parameters()))
    for p in model.parameters():   # fan-in 3 x 3 x 3 = 27; kernels decay, vectors do not, as everywhere
        assert lrs[id(p)] == (2e-3 / 27 if id(p) in last else 2e-3, 0.01 if p.dim() >= 2 else 0.0, p.dim())
    # a model without attention keeps the two groups checkpoints have always held
    assert len(build_optimiser(build_model("baseline", channels=(4,) * 7, num_classes=3, input_frames=40),
                               OptimConfig()).param_groups) == 2


def test_a_push_to_open_the_gate_everywhere_does_not_saturate_it():
    # The loss asks every cell of the spatial mask to open (as block 7's did in training: results/sed/masks.md).
    # With every parameter at lr, Adam moves each of the 8 x 5 x 5 weights of the last conv by ~lr per step
    # over non-negative inputs, and the mask saturates within 30 steps; at lr / fan-in it barely moves.
    from fastsca.attention import GlobalSpatialBranch
    s = torch.randn(3, 1, 15, 7, generator=torch.Generator().manual_seed(SEED))   # odd T x F

    def mask_after_30_steps(optimiser_of) -> torch.Tensor:
        torch.manual_seed(SEED)
        branch = GlobalSpatialBranch(8, 5)
        optimiser = optimiser_of(branch)
        for _ in range(30):
            optimiser.zero_grad(set_to_none=True)
            (-torch.sigmoid(branch(s)).mean()).backward()
            optimiser.step()
        with torch.no_grad():
            return torch.sigmoid(branch(s))

    one_lr = mask_after_30_steps(lambda m: torch.optim.AdamW(m.parameters(), lr=3e-3, weight_decay=0.01))
    ours = mask_after_30_steps(lambda m: build_optimiser(m, OptimConfig(lr=3e-3, warmup_steps=0)))
    # measured: one lr 0.983 mean, 57 % of cells above 0.99; ours 0.545, none; the bounds leave room for rounding
    assert one_lr.mean() > 0.95 and (one_lr > 0.99).float().mean() > 0.5
    assert ours.mean() < 0.6 and (ours > 0.99).sum() == 0
