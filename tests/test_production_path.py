"""The path a GPU training run takes, run on this box: the fused attention unit inside
`torch.compile(fullgraph=True)` with Inductor, channels_last activations and weights, training-mode
BatchNorm, AdamW steps, fp32 and bf16 autocast; through the Triton kernels (CPU under TRITON_INTERPRET=1,
small odd shapes) and through the CPU passes. Each is checked against the reference model (or module)
from the same initial weights.

Tolerances, and why:
- fp32 whole model, 3 AdamW steps: losses and BatchNorm running statistics within 1e-5; the first step's
  gradients within 1e-4 of each tensor's largest entry (test_fused_model's bound: both fp32 models are
  within ~2e-6 of an fp64 run). Parameters after the steps within 0.1 lr: AdamW divides each gradient by
  its own running size, so an entry whose gradient is near rounding noise moves by a noisy fraction of lr
  (measured: up to 0.04 lr), while a wrong gradient moves an entry by ~lr per step. The parameters whose
  gradient is 0 in exact arithmetic (ZERO_GRADIENT) get pure noise, steps of up to lr: within steps * lr.
- bf16 attention module: the unit computes its sub-networks in fp32 from bf16 F, so against the fp32
  reference on the same (bf16-valued) input only the bf16 rounding of F'' and dF remains: 2e-2 relative
  to each tensor's largest entry (bf16 has an 8-bit mantissa, 3.9e-3 relative per rounding).
- bf16 whole model: at batch 3 through seven small BatchNorms, bf16 gradients of the reference model itself
  are 20-50 % off its fp32 gradients per tensor (measured), so per-tensor checks cannot be tight. Losses
  agree with fp32 within 2e-2, running statistics within 2e-2, and the fused model's gradient is no further
  from the fp32 gradient than the eager bf16 reference's is (relative L2 over all parameters, 1.5x + 0.05).
"""
import pytest
import torch
import torch.nn.functional as F

from fastsca import build_model
from fastsca.attention import build_attention
from fastsca.config import ATTENTION_ARRANGEMENTS
from fastsca.run_options import RunOptions
from kernels import LAUNCHES

WIDTHS = (3, 5, 8, 11, 13, 21, 37)
"""Odd block widths: the attention sites (blocks 5-7) see C = 13, 21, 37 on 7 x 4 maps."""
MODEL = dict(channels=WIDTHS, input_frames=28, num_classes=7)
STEPS, LR, BATCH = 3, 1e-3, 3
PASSES_PER_STEP = {"sca": 6, "csa": 6, "cps": 5, "spatial": 4, "channel": 4}
"""F-sized kernels one forward and backward launch (kernels/attention.py's table: pool, squeeze, gate;
pass 1, SCA's or CSA's pass 2, dF)."""
ZERO_GRADIENT = {"pooling.attention.bias", "blocks.0.shortcut.0.weight"}
"""Parameters whose gradient is 0 in exact arithmetic: the pooling bias (see the module docstring), and
block 1's 1x1 shortcut conv of the one input channel, which its training-mode BatchNorm makes
scale-invariant."""


def odd_model(options: RunOptions, state: dict | None) -> torch.nn.Module:
    """at-sca-3 at the odd WIDTHS with these execution options, channels_last, in training mode (from `state`)."""
    model = build_model("at-sca-3", options, **MODEL)
    if state is not None:
        model.load_state_dict(state)
    return model.to(memory_format=torch.channels_last).train()


def _model(fused: bool, state: dict | None) -> torch.nn.Module:
    return odd_model(RunOptions(fused_attention=fused), state)


def batches(seed: int):
    """STEPS seeded (log-mel, target) batches of BATCH clips, log-mel channels_last."""
    generator = torch.Generator().manual_seed(seed)
    return [(torch.randn(BATCH, 1, MODEL["input_frames"], 64, generator=generator)
             .contiguous(memory_format=torch.channels_last),
             (torch.rand(BATCH, MODEL["num_classes"], generator=generator) > 0.5).float()) for _ in range(STEPS)]


def train_steps(model, batches, compiled: bool, bf16: bool):
    """STEPS AdamW steps as train.run takes them: (losses, the first step's gradients)."""
    optimiser = torch.optim.AdamW(model.parameters(), lr=LR)
    step = torch.compile(model, fullgraph=True) if compiled else model
    losses, first_grads = [], None
    for log_mel, target in batches:
        optimiser.zero_grad(set_to_none=True)
        with torch.autocast("cpu", torch.bfloat16, enabled=bf16):
            out = step(log_mel)
        loss = F.binary_cross_entropy(out.clip.float().clamp(1e-7, 1 - 1e-7), target)
        loss.backward()
        if first_grads is None:
            first_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
        optimiser.step()
        losses.append(loss.item())
    return losses, first_grads


def assert_tracks_in_fp32(fused, fused_run, reference, reference_run) -> None:
    """The fp32 tolerances of the module docstring: losses, first gradients, parameters after the steps and running
    statistics of `fused` against `reference`, each run (losses, first gradients) from train_steps."""
    (fused_losses, fused_grads), (reference_losses, reference_grads) = fused_run, reference_run
    torch.testing.assert_close(fused_losses, reference_losses, atol=1e-5, rtol=1e-5)
    for name, expected in reference_grads.items():
        atol = 1e-4 * expected.abs().max().item() + (1e-6 if name in ZERO_GRADIENT else 0)
        torch.testing.assert_close(fused_grads[name], expected, atol=atol, rtol=1e-4,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")
    for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
        atol = STEPS * LR if name in ZERO_GRADIENT else 0.1 * LR
        torch.testing.assert_close(actual, expected, atol=atol, rtol=0, msg=lambda m, name=name: f"{name}: {m}")
    for (name, expected), actual in zip(reference.named_buffers(), fused.buffers()):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def assert_bf16_as_close_as_the_reference(fused, fused_run, fp32, fp32_run, eager_bf16_grads) -> None:
    """The bf16 tolerances of the module docstring: `fused`'s losses and running statistics within 2e-2 of the fp32
    model's, its gradients no further from the fp32 ones than the eager bf16 reference's (relative L2, 1.5x + 0.05)."""
    (fused_losses, fused_grads), (fp32_losses, fp32_grads) = fused_run, fp32_run

    def distance(grads):   # relative L2 distance of all gradients from the fp32 ones
        num = sum(((grads[n] - g).float() ** 2).sum() for n, g in fp32_grads.items())
        return (num / sum((g ** 2).sum() for g in fp32_grads.values())).sqrt().item()

    torch.testing.assert_close(fused_losses, fp32_losses, atol=2e-2, rtol=0)
    assert distance(fused_grads) <= 1.5 * distance(eager_bf16_grads) + 0.05
    for (name, expected), actual in zip(fp32.named_buffers(), fused.buffers()):
        torch.testing.assert_close(actual.float(), expected.float(), atol=2e-2, rtol=2e-2,
                                   msg=lambda m, name=name: f"{name}: {m}")


def _passes(path: str, monkeypatch) -> str:
    """Which F-sized passes run: 'triton' (the kernels, interpreted on CPU) or 'torch' (the CPU passes)."""
    monkeypatch.setenv("TRITON_INTERPRET", "1" if path == "triton" else "0")
    torch._dynamo.reset()
    return "cuda" if path == "triton" and torch.cuda.is_available() else "cpu"


@pytest.mark.slow
@pytest.mark.parametrize("path", ["torch", "triton"])
def test_compiled_fused_training_matches_the_reference_fp32(path, monkeypatch):
    _passes(path, monkeypatch)
    torch.manual_seed(0)
    reference = _model(False, None)
    fused = _model(True, reference.state_dict())
    steps = batches(1)
    before = LAUNCHES.copy()
    fused_run = train_steps(fused, steps, compiled=True, bf16=False)
    launched = sum(LAUNCHES.values()) - sum(before.values())
    assert_tracks_in_fp32(fused, fused_run, reference, train_steps(reference, steps, compiled=False, bf16=False))
    # 3 attention blocks x 3 steps x (forward: pool, squeeze, gate; backward: rows, squeeze grad, input grad)
    assert launched == (3 * STEPS * 6 if path == "triton" else 0)


@pytest.mark.slow
def test_compiled_fused_training_in_bf16_is_as_close_to_fp32_as_the_reference(monkeypatch):
    _passes("torch", monkeypatch)
    torch.manual_seed(0)
    fp32 = _model(False, None)
    state = {k: v.clone() for k, v in fp32.state_dict().items()}
    steps = batches(2)
    fp32_run = train_steps(fp32, steps, compiled=False, bf16=False)
    _, eager_grads = train_steps(_model(False, state), steps, compiled=False, bf16=True)
    fused = _model(True, state)
    assert_bf16_as_close_as_the_reference(fused, train_steps(fused, steps, compiled=True, bf16=True), fp32, fp32_run,
                                          eager_grads)


def _module_twins(arrangement, shape):
    _, channels, time, freq = shape
    modules = [build_attention(arrangement=arrangement, channels=channels, time_steps=time, freq_bins=freq,
                               use_global=True, use_local=True, rd_ratio=4, global_mid_channels=4,
                               global_kernel_size=5, fused=fused)
               for fused in (False, True)]
    with torch.no_grad():
        for p in modules[0].parameters():
            p.copy_(torch.randn_like(p) * 0.5)
    modules[1].load_state_dict(modules[0].state_dict())
    return [m.to(memory_format=torch.channels_last).train() for m in modules]


@pytest.mark.slow
@pytest.mark.parametrize("path", ["torch", "triton"])
@pytest.mark.parametrize("arrangement", list(ATTENTION_ARRANGEMENTS))
def test_compiled_unit_in_bf16_matches_the_fp32_reference(path, arrangement, monkeypatch):
    _passes(path, monkeypatch)
    torch.manual_seed(len(arrangement))
    shape = (3, 13, 7, 4)
    reference, fused = _module_twins(arrangement, shape)
    x = torch.randn(shape).to(torch.bfloat16).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(shape).to(torch.bfloat16)
    compiled = torch.compile(fused, fullgraph=True)
    xf = x.clone().requires_grad_()
    before = sum(LAUNCHES.values())
    with torch.autocast("cpu", torch.bfloat16):
        out = compiled(xf)
    out.backward(grad)
    assert sum(LAUNCHES.values()) - before == (PASSES_PER_STEP[arrangement] if path == "triton" else 0)
    xr = x.float().requires_grad_()
    expected = reference(xr)
    expected.backward(grad.float())
    assert out.dtype == torch.bfloat16 and out.is_contiguous(memory_format=torch.channels_last)

    def close(actual, wanted, what):
        atol = 2e-2 * wanted.abs().max().item()
        torch.testing.assert_close(actual.float(), wanted, atol=atol, rtol=2e-2, msg=lambda m: f"{what}: {m}")

    close(out, expected, "F''")
    close(xf.grad, xr.grad, "dF")
    for (name, p), q in zip(reference.named_parameters(), fused.parameters()):
        close(q.grad, p.grad, f"gradient of {name}")
    for (name, p), q in zip(reference.named_buffers(), fused.buffers()):
        torch.testing.assert_close(q.float(), p.float(), atol=1e-4, rtol=1e-4, msg=lambda m, name=name: f"{name}: {m}")
