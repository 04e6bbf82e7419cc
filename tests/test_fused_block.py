"""The fused residual block (fastsca/backbone.py's fused path over kernels/residual_block.py's ops) against the
reference block, on the CPU with the reference passes (kernels/block_reference.py).

Tolerances, and why:
- fp32 block, forward and backward: outputs and the input gradient within 1e-5 relative and 1e-5 of the map's
  largest entry absolute (the BatchNorm scales carry ~1e-6 relative rounding into every value, so the absolute
  error of a small sum of two large terms follows the terms' size: measured up to 1.3e-5 at a 0.02 entry of a
  map whose entries reach 12), each
  parameter gradient within 1e-4 of its tensor's largest entry (test_fused_model's bound). Both blocks are
  fp32; the fused one takes the batch variance as E[y^2] - E[y]^2 from fp32 sums (over up to 133 x 99 values)
  where nn.BatchNorm2d takes the mean of squared deviations, and sums its gradients in another order: rounding
  only (measured: outputs ~1e-6; gradients ~1e-6 of the largest entry, up to 3.5e-5 for the attention's
  scalar conv bias, a sum of 13,167 terms that largely cancel), while a wrong term is off by O(1). A 1x1
  shortcut of ONE input channel before a training-mode BatchNorm is scale-invariant, so its weight's gradient is
  0 in exact arithmetic and both blocks return rounding noise: that one is held to 1e-4 of the block's largest
  gradient.
- Running statistics after 3 steps: 1e-5 relative, 1e-6 absolute (the same fp32 update; the variance rounded
  as above, measured up to 1.7e-6 relative at batch 133); num_batches_tracked exactly. Eval mode with the
  same state: bit for bit (both blocks run the reference there).
- The whole model in fp32 and in bf16: see `test_compiled_fused_model_tracks_the_reference`.
"""
import copy

import pytest
import torch
import torch.nn.functional as F

import fastsca.backbone
import train.run
from fastsca import build_model
from fastsca.attention import build_attention
from fastsca.backbone import ResidualBlock
from fastsca.backbone_plan import (CUDNN_EFFICIENCY, H100, MEMORY_EFFICIENCY, TRITON_CONV_EFFICIENCY, backbone_plan,
                                   implicit_gemm)
from fastsca.config import ModelConfig
from fastsca.describe import main as describe_main
from fastsca.export import ExportableModel
from fastsca.inference import TrainedModel
from fastsca.frontend import LogMelConfig
from fastsca.run_options import PROFILE_RUN_OPTIONS, RunOptions, options_for_device, resolve_run_options
from kernels import residual_block

C, T, FREQ = 7, 11, 9
STEPS = 3


def _attention(fused: bool, arrangement: str = "sca") -> torch.nn.Module:
    return build_attention(arrangement=arrangement, channels=C, time_steps=T, freq_bins=FREQ, use_global=True,
                           use_local=True, rd_ratio=4, global_mid_channels=4, global_kernel_size=5, fused=fused)


def _twins(c_in: int, pool, attention: str | None, momentum=0.1, fused_attention: bool = False):
    """A reference block and a fused one with the same random weights (BatchNorm affines not 1 and 0), with the
    `attention` arrangement on the main path (None: none)."""
    make = (lambda: _attention(fused_attention, attention)) if attention else torch.nn.Identity
    reference = ResidualBlock(c_in, C, make(), pool)
    with torch.no_grad():
        for p in reference.parameters():
            p.copy_(torch.randn_like(p) * 0.5 + (1.0 if p.dim() == 1 and p.shape[0] == C else 0.0))
    for module in reference.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = momentum
    fused = ResidualBlock(c_in, C, make(), pool, fused=True)
    fused.load_state_dict(reference.state_dict())
    for module in fused.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.momentum = momentum
    return reference.train(), fused.train()


KINK_MARGIN = 1e-5
"""Least |input| of every ReLU of the reference block on a drawn batch: 5x the largest gap between the two paths'
pre-activations (measured: 2e-6 at batch 133; typically 4e-7); at batch 133 a draw has ~1.5 ReLU inputs within
it on average, so about one draw in five qualifies."""


def _smooth_batch(reference, shape) -> torch.Tensor:
    """A random batch on which no ReLU input of the reference block lies within KINK_MARGIN of 0.

    Where one does, the two paths' pre-activations (1e-6 apart by rounding) may fall on either side of the kink,
    and each path's gradient is then a correct one-sided derivative of its own: the difference of one element's
    gradient, spread by the BatchNorms' backward over the whole batch, is not rounding. Drawn from the seeded
    generator, so the batch is the same every run."""
    probe, least = copy.deepcopy(reference), []
    probe.fused = False   # the reference path, whose ReLUs are modules
    hooks = [m.register_forward_pre_hook(lambda mod, inp: least.append(inp[0].abs().min().item()))
             for m in probe.modules() if isinstance(m, torch.nn.ReLU)]
    for _ in range(50):
        x, least[:] = torch.randn(shape), []
        with torch.no_grad():
            probe(x)
        if min(least) > KINK_MARGIN:
            break
    for hook in hooks:
        hook.remove()
    assert min(least) > KINK_MARGIN, "no smooth batch in 50 draws"
    return x


def _step(block, x, grad):
    x = x.clone().requires_grad_()
    out = block(x)
    out.backward(grad)
    grads = {name: p.grad.clone() for name, p in block.named_parameters()}
    block.zero_grad(set_to_none=True)
    return out.detach(), x.grad, grads


def _count_ops(monkeypatch) -> dict[str, int]:
    """Counts of the fused block's calls of its conv and tail ops, from now on."""
    calls = {"conv_forward": 0, "tail_forward": 0}
    for name in calls:
        op = getattr(fastsca.backbone, name)

        def counted(*args, name=name, op=op):
            calls[name] += 1
            return op(*args)
        monkeypatch.setattr(fastsca.backbone, name, counted)
    return calls


def _assert_map(actual, expected):
    torch.testing.assert_close(actual, expected, atol=1e-5 * expected.abs().max().item(), rtol=1e-5)


def _assert_grads(actual: dict, expected: dict, zero: set[str]):
    largest = max(g.abs().max().item() for g in expected.values())
    for name, wanted in expected.items():
        atol = 1e-4 * (largest if name in zero else wanted.abs().max().item())
        torch.testing.assert_close(actual[name], wanted, atol=atol, rtol=1e-5,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def _assert_buffers(fused, reference):
    for (name, expected), actual in zip(reference.named_buffers(), fused.buffers()):
        if expected.dtype == torch.long:
            assert torch.equal(actual, expected), name
        else:
            torch.testing.assert_close(actual, expected, atol=1e-6, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


@pytest.mark.parametrize("batch", [1, 133])
@pytest.mark.parametrize("c_in", [1, 5])
@pytest.mark.parametrize("pool", [(2, 2), (1, 2), (1, 1)])
@pytest.mark.parametrize("attention", [None, "channel"])
def test_fused_block_matches_the_reference_in_training(batch, c_in, pool, attention, monkeypatch):
    # The channel arrangement's few ReLUs (B x 1 in its MLP) are all checked for kinks by _smooth_batch; sca's
    # global and local branches hold B x 4 x T x F more behind functional ReLUs (test_compiled_fused_block_...).
    reference, fused = _twins(c_in, pool, attention)
    calls = _count_ops(monkeypatch)
    zero = {"shortcut.0.weight"} if c_in == 1 else set()
    for _ in range(STEPS):
        x = _smooth_batch(reference, (batch, c_in, T, FREQ))
        grad = torch.randn(batch, C, T // pool[0], FREQ // pool[1])
        out, dx, grads = _step(fused, x, grad)
        expected_out, expected_dx, expected_grads = _step(reference, x, grad)
        _assert_map(out, expected_out)
        _assert_map(dx, expected_dx)
        _assert_grads(grads, expected_grads, zero)
    _assert_buffers(fused, reference)
    assert calls == {"conv_forward": 3 * STEPS, "tail_forward": STEPS}   # the fused path ran
    fused.load_state_dict(reference.state_dict())   # eval runs the reference path: the same numbers bit for bit
    x = torch.randn(batch, c_in, T, FREQ)
    assert torch.equal(fused.eval()(x), reference.eval()(x))
    assert calls == {"conv_forward": 3 * STEPS, "tail_forward": STEPS}


def test_cumulative_running_statistics_with_momentum_none():
    reference, fused = _twins(5, (2, 2), None, momentum=None)
    for _ in range(STEPS):
        x = torch.randn(4, 5, T, FREQ)
        reference(x).sum().backward()
        fused(x).sum().backward()
    _assert_buffers(fused, reference)
    assert int(fused.bn1.num_batches_tracked) == STEPS


def test_a_batch_of_one_value_per_channel_is_refused_as_batchnorm_refuses_it():
    reference, fused = _twins(5, (1, 1), None)
    x = torch.randn(1, 5, 1, 1)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        reference(x)
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):
        fused(x)


# ---- the ops ----

def _vec(n: int, requires_grad: bool) -> torch.Tensor:
    return (torch.rand(n) + 0.5).requires_grad_(requires_grad)


@pytest.mark.parametrize("dtype, channels_last", [(torch.float32, False), (torch.bfloat16, True)])
@pytest.mark.parametrize("prologue", [False, True])
@pytest.mark.parametrize("k", [1, 3])
def test_conv_ops_pass_opcheck(dtype, channels_last, prologue, k):
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(3, 5, T, FREQ, dtype=dtype).contiguous(memory_format=fmt)
    weight = torch.randn(C, 5, k, k)
    scale, shift = (_vec(5, True), _vec(5, True) - 1) if prologue else (None, None)
    shift = shift.detach().requires_grad_() if prologue else None
    torch.library.opcheck(residual_block.conv_forward,
                          (x.requires_grad_(), weight.requires_grad_(), scale, shift, k == 3))
    grad = torch.randn(3, C, T, FREQ, dtype=dtype).contiguous(memory_format=fmt)
    plain = [None if v is None else v.detach() for v in (scale, shift)]
    torch.library.opcheck(residual_block.conv_input_grad,
                          (grad, weight.detach(), x.detach() if prologue else None, *plain, False))
    torch.library.opcheck(residual_block.conv_weight_grad, (x.detach(), grad, list(weight.shape), *plain, False))


@pytest.mark.parametrize("pool", [(2, 2), (1, 2), (1, 1)])
@pytest.mark.parametrize("normalised_main", [False, True])
def test_tail_ops_pass_opcheck(pool, normalised_main):
    main = torch.randn(3, C, T, FREQ).contiguous(memory_format=torch.channels_last)
    shortcut = torch.randn(3, C, T, FREQ).contiguous(memory_format=torch.channels_last)
    main_affine = (None, None) if normalised_main else (_vec(C, True), _vec(C, True))
    args = (main.requires_grad_(), *main_affine, shortcut.requires_grad_(), _vec(C, True), _vec(C, True), list(pool))
    torch.library.opcheck(residual_block.tail_forward, args)
    plain = [a.detach() if isinstance(a, torch.Tensor) else a for a in args]
    out, argmax = residual_block.tail_forward(*plain)
    assert argmax.dtype == torch.int8 and argmax.numel() == (0 if pool == (1, 1) else out.numel())
    torch.library.opcheck(residual_block.tail_backward,
                          (torch.randn_like(out), None if pool == (1, 1) else argmax, out, *plain))


# ---- compiled ----

@pytest.mark.parametrize("pool, attention", [((2, 2), None), ((1, 2), "sca")])
def test_compiled_fused_block_matches_eager(pool, attention):
    torch._dynamo.reset()
    eager, fused = _twins(5, pool, attention, fused_attention=True)
    eager.fused = True
    compiled = torch.compile(fused, fullgraph=True)
    for _ in range(2):
        x = _smooth_batch(eager, (3, 5, T, FREQ)).contiguous(memory_format=torch.channels_last)
        grad = torch.randn(3, C, T // pool[0], FREQ // pool[1])
        out, dx, grads = _step(compiled, x, grad)
        expected_out, expected_dx, expected_grads = _step(eager, x, grad)
        _assert_map(out, expected_out)
        _assert_map(dx, expected_dx)
        _assert_grads({n.removeprefix("_orig_mod."): g for n, g in grads.items()}, expected_grads, set())
    _assert_buffers(fused, eager)
