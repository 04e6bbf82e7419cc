"""fastsca's fused model against the reference on the device the report runs on: one training step, same weights.

`bench.gpu_report` runs it first, so the first GPU that runs the report says whether the Triton kernels of the
fused attention and the fused backbone compute what the reference computes there (the CPU suite checks them only
under Triton's interpreter, in fp32). Both models start from the same weights and take one forward and backward
in training mode on the same batch, as train.run runs them on that device (CUDA: bf16 autocast, channels_last,
compiled with Inductor; the CPU smoke run: fp32, eager, tiny). Compared: the clip outputs, the loss, every
parameter's gradient and every BatchNorm's running statistics, each as |fused - reference| / |reference| (norms
over the tensor), against TOLERANCE for the precision. A tensor that is nearly zero by construction (the
attention pooling's bias, whose gradient a softmax over time cancels; block 1's 1x1 shortcut of one channel,
whose gradient is zero in exact arithmetic because the BatchNorm after it removes its scale; a running mean of a
zero-mean input) is compared at a floor instead of its own norm: FLOOR times the largest gradient's norm, or
times sqrt(elements) for a running statistic (the unit scale BatchNorm normalises to).
"""
import torch

from fastsca import build_model
from fastsca.run_options import RunOptions

TOLERANCE = {"bf16": 5e-2, "fp32": 1e-4}
"""Largest relative difference allowed. bf16: the two paths round to bf16 at different points (the fused
convolutions round y once from an fp32 accumulator, the reference after cuDNN; BatchNorm statistics come from
fp32 sums against cuDNN's reductions), about 2^-8 relative per rounding, compounded over seven blocks and the
backward; fp32: summation order only."""
FLOOR = 1e-2
"""The smallest denominator, relative to the largest gradient's norm (or to a unit-scale statistic)."""
SIZES = {"gpu": {"batch": 16, "overrides": {}},
         "smoke": {"batch": 4, "overrides": {"channels": (4, 8, 8, 16, 16, 16, 16), "input_frames": 40,
                                             "num_classes": 5}}}
"""The step's batch and model: the preset as it is on a GPU; a tiny one for the CPU smoke run."""


def _relative(a: torch.Tensor, b: torch.Tensor, floor: float) -> float:
    return float((a.float() - b.float()).norm() / max(float(b.float().norm()), floor))


def _step(model: torch.nn.Module, log_mel: torch.Tensor, target: torch.Tensor, cuda: bool, compiled: bool):
    run = torch.compile(model) if compiled else model
    with torch.autocast("cuda", torch.bfloat16, enabled=cuda):
        clip = run(log_mel).clip
    loss = torch.nn.functional.binary_cross_entropy(clip.float(), target)
    loss.backward()
    return clip.detach(), loss.detach()


def check(device: torch.device, smoke: bool) -> dict:
    """One step of each model; the worst relative difference of each kind, and whether all are within tolerance."""
    cuda = device.type == "cuda"
    sizes = SIZES["smoke" if smoke else "gpu"]
    precision = "bf16" if cuda else "fp32"
    torch.manual_seed(0)
    reference = build_model("at-sca-3", RunOptions(), **sizes["overrides"]).to(device)
    fused = build_model(reference.config, RunOptions(fused_attention=True, fused_backbone=True)).to(device)
    fused.load_state_dict(reference.state_dict())
    layout = torch.channels_last if cuda else torch.contiguous_format
    reference, fused = (m.to(memory_format=layout).train() for m in (reference, fused))
    config = reference.config
    log_mel = (torch.randn(sizes["batch"], 1, config.input_frames, config.n_mels, device=device) * 20 - 50)
    target = (torch.rand(sizes["batch"], config.num_classes, device=device) < 0.1).float()
    (clip_r, loss_r), (clip_f, loss_f) = (_step(m, log_mel, target, cuda, compiled=cuda) for m in (reference, fused))
    pairs = [(name, p_r.grad, p_f.grad) for (name, p_r), (_, p_f)
             in zip(reference.named_parameters(), fused.named_parameters()) if p_r.grad is not None]
    largest = max(float(g.float().norm()) for _, g, _ in pairs)
    grads = {name: _relative(g_f, g_r, FLOOR * largest) for name, g_r, g_f in pairs}
    buffers = {name: _relative(b_f, b_r, FLOOR * b_r.numel() ** 0.5) for (name, b_r), (_, b_f)
               in zip(reference.named_buffers(), fused.named_buffers()) if b_r.is_floating_point()}
    worst_grad = max(grads, key=grads.get)
    worst_buffer = max(buffers, key=buffers.get)
    result = {"precision": precision, "tolerance": TOLERANCE[precision], "batch": sizes["batch"],
              "clip": _relative(clip_f, clip_r, 1e-12), "loss": _relative(loss_f, loss_r, 1e-12),
              "worst_gradient": worst_grad, "gradient": grads[worst_grad],
              "worst_running_statistic": worst_buffer, "running_statistic": buffers[worst_buffer]}
    result["passed"] = all(result[k] <= result["tolerance"] for k in ("clip", "loss", "gradient", "running_statistic"))
    return result


def markdown(result: dict) -> str:
    """One line for the report."""
    verdict = "matches" if result["passed"] else "**does not match**"
    return (f"fastsca's fused model (fused attention and backbone) {verdict} the reference on this device "
            f"({result['precision']}, one training step at batch {result['batch']}, tolerance "
            f"{result['tolerance']:g} relative): clip outputs {result['clip']:.2e}, loss {result['loss']:.2e}, "
            f"worst gradient {result['gradient']:.2e} ({result['worst_gradient']}), worst running statistic "
            f"{result['running_statistic']:.2e} ({result['worst_running_statistic']})")
