"""The Triton kernels on a GPU at the real at-sca-3 shapes (B = 32), in fp32, bf16 and fp16, NCHW and channels_last.

The CPU suite runs the same kernels under the Triton interpreter, fp32 only and at small batches;
this file adds what only a GPU can check: half-precision loads and stores, the compiled kernels,
and torch.compile of a whole fused model with Inductor's CUDA backend.
"""
import pytest
import torch

from fastsca import build_model
from fastsca.attention import build_attention
from fastsca.config import ATTENTION_ARRANGEMENTS
from fastsca.run_options import RunOptions
from kernels import LAUNCHES
from kernels.attention import PASSES
from test_attention import comparable, pass_samples

pytestmark = pytest.mark.skipif(
    not torch.cuda.is_available(),
    reason="needs a CUDA GPU: bf16/fp16 kernels and the real shapes (the CPU suite covers fp32 under the interpreter)")

REAL_SHAPES = [(32, 256, 100, 4), (32, 512, 100, 4), (32, 512, 100, 2), (32, 512, 100, 1)]
"""The maps the attention modules see at B = 32: blocks 5-7 of the time-freq plan (N = 400) and of the
six-pool plan (N = 400, 200, 100)."""
# One rounding of the output (and of each gradient) in the input dtype, both sides accumulating in fp32.
DTYPES = [(torch.float32, 1e-5, 1e-5), (torch.bfloat16, 2e-2, 2e-2), (torch.float16, 1e-2, 1e-2)]
LAYOUTS = [torch.contiguous_format, torch.channels_last]


@pytest.mark.parametrize("name", PASSES)
@pytest.mark.parametrize("shape", REAL_SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_every_pass_on_gpu(monkeypatch, name, shape, dtype, atol, rtol):
    # Each compiled Triton pass on a half-precision map against the same op's PyTorch pass on CPU copies
    # (fp32 arithmetic on the same values): one rounding of the output in the map's dtype apart; the
    # fp32 logit and partial-row outputs sum up to C or N fp32 terms, scaled to their largest entry.
    monkeypatch.setenv("TRITON_INTERPRET", "0")
    launches = sum(LAUNCHES.values())
    for args in pass_samples("cuda", shape, dtype)[name]:
        mine = comparable(getattr(torch.ops.fastsca, name)(*args))
        expected = comparable(getattr(torch.ops.fastsca, name)(*[a.cpu() if isinstance(a, torch.Tensor) else a
                                                                  for a in args]))
        for m, e in zip(mine if isinstance(mine, tuple) else (mine,), expected if isinstance(expected, tuple)
                        else (expected,)):
            assert m.dtype == e.dtype
            torch.testing.assert_close(m.float().cpu(), e.float(), atol=atol * max(1.0, e.float().abs().max().item()),
                                       rtol=rtol)
    assert sum(LAUNCHES.values()) > launches


def _build(arrangement, shape, fused):
    _, channels, time, freq = shape
    return build_attention(arrangement=arrangement, channels=channels, time_steps=time, freq_bins=freq,
                           use_global=True, use_local=True, rd_ratio=16, global_mid_channels=8,
                           global_kernel_size=5, fused=fused).cuda()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("shape", REAL_SHAPES)
@pytest.mark.parametrize("dtype, atol, rtol", DTYPES)
def test_attention_on_gpu(monkeypatch, shape, layout, dtype, atol, rtol):
    # The fused unit on a half-precision map against the reference module in fp32 on the same values
    # (it accumulates in fp32 and runs the sub-networks in fp32): one rounding of F'' and dF apart.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    _, channels, _, freq = shape
    torch.manual_seed(channels + freq)
    x = torch.randn(shape, device="cuda").to(dtype).contiguous(memory_format=layout)
    grad = torch.randn(shape, device="cuda").to(dtype)
    for arrangement in ATTENTION_ARRANGEMENTS:
        reference, fused = (_build(arrangement, shape, fused) for fused in (False, True))
        fused.load_state_dict(reference.state_dict())
        results = []
        for module, inputs in ((fused, x), (reference, x.float())):
            inputs = inputs.clone().requires_grad_()
            out = module(inputs)
            out.backward(grad.to(out.dtype))
            results.append((out, inputs.grad))
        (out, dx), (expected, expected_dx) = results
        assert out.dtype == dtype and out.is_contiguous(memory_format=layout), arrangement
        torch.testing.assert_close(out.float(), expected, atol=atol, rtol=rtol)
        torch.testing.assert_close(dx.float(), expected_dx, atol=atol, rtol=rtol)
        for (name, p), q in zip(reference.named_parameters(), fused.parameters()):
            where = f"{arrangement}: gradient of {name}"
            torch.testing.assert_close(q.grad, p.grad, atol=atol * p.grad.abs().max().item() + 1e-6, rtol=rtol,
                                       msg=lambda m, where=where: f"{where}: {m}")


def test_fused_model_matches_reference_on_gpu(monkeypatch):
    # fp32 without TF32, so both models round alike; tolerances as in test_fused_model.py.
    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)
    torch.manual_seed(0)
    reference = build_model("at-sca-3", RunOptions(fused_attention=False)).cuda().eval()
    fused = build_model("at-sca-3", RunOptions(fused_attention=True)).cuda().eval()
    fused.load_state_dict(reference.state_dict())
    log_mel = torch.randn(8, 1, 400, 64, device="cuda")
    outs = []
    for model in (reference, fused):
        out = model(log_mel)
        (out.clip.sum() + out.frame.square().sum()).backward()
        outs.append(out)
    torch.testing.assert_close(outs[1].clip, outs[0].clip, atol=1e-5, rtol=1e-4)
    for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
        atol = 1e-4 * expected.grad.abs().max().item() + 1e-6
        torch.testing.assert_close(actual.grad, expected.grad, atol=atol, rtol=1e-4,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def test_compiled_fused_model_runs_the_kernels_in_bf16():
    torch._dynamo.reset()
    model = build_model("at-sca-3", RunOptions(fused_attention=True)).cuda().to(memory_format=torch.channels_last)
    compiled = torch.compile(model, fullgraph=True)
    log_mel = torch.randn(32, 1, 400, 64, device="cuda")
    before = LAUNCHES.copy()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out = compiled(log_mel)
    out.clip.float().sum().backward()
    # One launch of each F-sized pass per attention block (three blocks); the local FC is plain PyTorch
    # inside the unit, which Inductor compiles with the rest.
    for op in ("channel_pool", "spatial_squeeze", "gate"):
        assert LAUNCHES[f"{op}_forward"] == before[f"{op}_forward"] + 3, op
    for kernel in ("gate_logit_grad_rows", "spatial_squeeze_logit_grad", "gate_input_grad"):
        assert LAUNCHES[kernel] == before[kernel] + 3, kernel
    assert torch.isfinite(out.clip).all()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
