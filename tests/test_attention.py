"""attention (§3.3): each arrangement as one autograd unit, forward and backward, against the step-by-step module.

The reference is the same module run through REFERENCE_OPS with autograd (nn.Conv2d, nn.BatchNorm2d,
nn.Linear, local_fc_reference): so the unit's hand-written backward of the sub-networks is checked too,
every parameter gradient, and BatchNorm's running statistics after a training step. Each F-sized pass op
goes through opcheck (schema, fake kernel strides, dispatch) on the Triton path and the CPU passes.
"""
import pytest
import torch

from fastsca.attention import FUSED_OPS, REFERENCE_OPS, build_attention
from kernels import LAUNCHES, AttentionParams, attention
from kernels.attention import ARRANGEMENTS, PASSES

# (B, C, T, F) and layout: awkward sizes leaving partial tiles on every axis (C = 37, T = 7, F = 3) in
# both layouts, T = 20 for a local MLP with 2 hidden units (r = 8), a 100 x 2 map with 64 channels, and
# C = 12 at N = 21, where fp32 rows of 84 B are read as grouped rows of 4 channels (kernels.common.row_group),
# and batch 133, where the column pass has programs enough for 132 SMs with 64-column blocks (fewer
# batch rows halve them: kernels.gate.FILL_PROGRAMS).
MAPS = [((3, 37, 7, 3), torch.contiguous_format), ((3, 37, 7, 3), torch.channels_last),
        ((2, 5, 20, 1), torch.channels_last), ((2, 64, 100, 2), torch.contiguous_format),
        ((2, 12, 7, 3), torch.contiguous_format), ((133, 5, 7, 3), torch.channels_last)]
BRANCHES = [(True, True), (True, False), (False, True)]
"""(global branch, local branch) of the spatial attention."""
# Launches per fused forward and backward, by arrangement: only the F-sized passes are kernels of ours
# (the local FC and the other sub-networks are plain PyTorch that torch.compile fuses).
FORWARD_KERNELS = {
    "sca": {"channel_pool_forward", "spatial_squeeze_forward", "gate_forward"},
    "csa": {"channel_pool_forward", "spatial_squeeze_forward", "gate_forward"},
    "cps": {"channel_pool_forward", "spatial_squeeze_forward", "gate_forward"},
    "spatial": {"channel_pool_forward", "gate_forward"},
    "channel": {"spatial_squeeze_forward", "gate_forward"},
}
BACKWARD_KERNELS = {
    "sca": {"gate_logit_grad_rows", "spatial_squeeze_logit_grad", "gate_input_grad"},
    "csa": {"gate_logit_grad_columns", "channel_pool_logit_grad", "gate_input_grad"},
    "cps": {"gate_logit_grad_rows", "gate_input_grad"},
    "spatial": {"gate_logit_grad_columns", "gate_input_grad"},
    "channel": {"gate_logit_grad_rows", "gate_input_grad"},
}


def _twins(arrangement, shape, use_global, use_local, training, device):
    """The module with reference ops and the fused one, same random weights (biases and BN affine too)."""
    _, channels, time, freq = shape
    modules = [build_attention(arrangement, channels, time, freq, use_global, use_local, 8, 4, 5, ops).to(device)
               for ops in (REFERENCE_OPS, FUSED_OPS)]
    with torch.no_grad():
        for p in modules[0].parameters():
            p.copy_(torch.randn_like(p) * 0.5)
        for name, buffer in modules[0].named_buffers():
            if "running_var" in name:
                buffer.copy_(torch.rand_like(buffer) + 0.5)
            elif "running_mean" in name:
                buffer.copy_(torch.randn_like(buffer) * 0.1)
    modules[1].load_state_dict(modules[0].state_dict())
    return [m.train(training) for m in modules]


def _run(module, x, grad):
    x = x.clone().requires_grad_()
    out = module(x)
    out.backward(grad)
    return out, x.grad


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("arrangement", ARRANGEMENTS)
@pytest.mark.parametrize("shape, layout", MAPS)
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5)])
def test_attention_matches_reference(kernel_device, shape, arrangement, training, layout, dtype, atol, rtol):
    reference, fused = _twins(arrangement, shape, True, True, training, kernel_device)
    x = torch.randn(shape, device=kernel_device, dtype=dtype).contiguous(memory_format=layout)
    grad = torch.randn(shape, device=kernel_device, dtype=dtype)
    before = LAUNCHES.copy()
    out, dx = _run(fused, x, grad)
    launched = {name for name in LAUNCHES if LAUNCHES[name] > before[name]}
    expected_out, expected_dx = _run(reference, x, grad)
    torch.testing.assert_close(out, expected_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(dx, expected_dx, atol=atol, rtol=rtol, msg=lambda m: f"gradient of x: {m}")
    for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
        # A parameter's gradient sums B * T * F terms (400 to 2793 here) in another order than autograd's
        # (the unit's hand-written BatchNorm and local-FC backward): fp32 rounding of ~n * 6e-8 * |term|, up
        # to ~3e-5 measured where the terms cancel; 10x the map's tolerance, scaled to the tensor's largest
        # entry, still fails a wrong term, which is off by O(0.1-1).
        scale = 10 * max(1.0, expected.grad.abs().max().item())
        torch.testing.assert_close(actual.grad, expected.grad, atol=atol * scale, rtol=rtol,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")
    for (name, expected), actual in zip(reference.named_buffers(), fused.buffers()):
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
    assert out.is_contiguous(memory_format=layout) and dx.is_contiguous(memory_format=layout)
    assert launched == FORWARD_KERNELS[arrangement] | BACKWARD_KERNELS[arrangement]


@pytest.mark.parametrize("use_global, use_local", BRANCHES[1:])
@pytest.mark.parametrize("arrangement", ["sca", "csa", "cps", "spatial"])
def test_attention_with_one_spatial_branch(kernel_device, arrangement, use_global, use_local):
    shape = (3, 37, 7, 3)
    reference, fused = _twins(arrangement, shape, use_global, use_local, True, kernel_device)
    x, grad = torch.randn(shape, device=kernel_device), torch.randn(shape, device=kernel_device)
    for (mine, expected) in zip(_run(fused, x, grad), _run(reference, x, grad)):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)
    for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(actual.grad, expected.grad, atol=1e-5, rtol=1e-5,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


def test_attention_with_a_broadcast_upstream_gradient(kernel_device):
    # out.sum().backward() hands the backward an expanded gradient: every stride 0.
    reference, fused = _twins("sca", (2, 37, 7, 3), True, True, True, kernel_device)
    x = torch.randn(2, 37, 7, 3, device=kernel_device)
    grads = []
    for module in (fused, reference):
        xi = x.clone().requires_grad_()
        module(xi).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def _pass_args(device):
    """Sample arguments of every pass op, on a channels_last map with odd sizes (C = 37, T = 7, F = 3)."""
    b, c, t, f = 2, 37, 7, 3
    x = torch.randn(b, c, t, f, device=device).contiguous(memory_format=torch.channels_last)
    grad = torch.randn(b, c, t, f, device=device)
    s, z = torch.randn(b, 1, t, f, device=device), torch.randn(b, c, device=device)
    rows, columns = torch.ops.fastsca.attention_rows(grad, x, s, z, False)[1], \
        torch.ops.fastsca.attention_columns(grad, x, s, z, False)[1]
    return {
        "attention_pool": [(x, None), (x, torch.rand(b, c, device=device))],
        "attention_squeeze": [(x, None), (x, s)],
        "attention_gate": [(x, s, z, False), (x, s, None, False), (x, s, z, True)],
        "attention_rows": [(grad, x, s, z, False), (grad, x, None, z, False), (grad, x, s, z, True)],
        "attention_columns": [(grad, x, s, z, False), (grad, x, s, None, False)],
        "attention_squeeze_logit_grad": [(x, s, z, rows)],
        "attention_pool_logit_grad": [(x, z, s, columns)],
        "attention_input_grad": [(grad, x, s, z, False, z, True, None, False), (grad, x, s, z, True, None, False, s, True)],
    }


@pytest.mark.parametrize("name", PASSES)
def test_every_pass_op_passes_opcheck(kernel_device, name, monkeypatch):
    # The CPU passes first, then the Triton kernels: the fake kernels must match both.
    for triton in ("0", "1"):
        monkeypatch.setenv("TRITON_INTERPRET", triton)
        before = sum(LAUNCHES.values())
        for args in _pass_args(kernel_device)[name]:
            torch.library.opcheck(getattr(torch.ops.fastsca, name).default, args)
        assert (sum(LAUNCHES.values()) > before) == (triton == "1" or kernel_device == "cuda")


@pytest.mark.parametrize("arrangement", ["sca", "csa", "cps"])
def test_attention_compiles_without_graph_break(kernel_device, arrangement):
    reference, fused = _twins(arrangement, (2, 37, 7, 3), True, True, True, kernel_device)
    torch._dynamo.reset()
    compiled = torch.compile(fused, fullgraph=True, backend="aot_eager")
    x, grad = torch.randn(2, 37, 7, 3, device=kernel_device), torch.randn(2, 37, 7, 3, device=kernel_device)
    before = LAUNCHES.copy()
    for (mine, expected) in zip(_run(compiled, x, grad), _run(reference, x, grad)):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)
    assert LAUNCHES["gate_input_grad"] == before["gate_input_grad"] + 1
    for (name, expected), actual in zip(reference.named_buffers(), fused.buffers()):
        torch.testing.assert_close(actual, expected, atol=1e-5, rtol=1e-5, msg=lambda m, name=name: f"{name}: {m}")


def _params(arrangement):
    return build_attention(arrangement, 37, 7, 3, True, True, 8, 4, 5, REFERENCE_OPS).unit_params()


@pytest.mark.parametrize("arrangement, params, message", [
    ("sac", _params("sca"), "unknown arrangement 'sac'"),
    ("sca", AttentionParams(None, None, _params("sca").channel), "needs the global or the local spatial branch"),
    ("sca", _params("spatial"), "needs the channel MLP"),
    ("channel", _params("sca"), "takes no spatial branch"),
    ("sca", list(_params("sca")), "must be an AttentionParams"),
    ("sca", _params("sca")._replace(local=_params("sca").local._replace(b2=torch.zeros(4, 7))), "built for"),
])
def test_attention_rejects_bad_arguments(arrangement, params, message):
    with pytest.raises(ValueError, match=message):
        attention(torch.randn(2, 37, 7, 3), arrangement, params, True)


def test_attention_rejects_a_map_that_is_not_4d():
    with pytest.raises(ValueError, match=r"\(B, C, T, F\)"):
        attention(torch.randn(37, 7, 3), "sca", _params("sca"), True)
