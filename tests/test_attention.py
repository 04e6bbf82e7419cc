"""attention (§3.3): each arrangement as one fused op, forward and backward, against the step-by-step module.

The reference is the same module run through REFERENCE_OPS with autograd (nn.Conv2d, nn.BatchNorm2d,
nn.Linear, local_fc_reference): so the op's hand-written backward of the sub-networks is checked too,
every parameter gradient, and BatchNorm's running statistics after a training step.
"""
import pytest
import torch

from fastsca.attention import FUSED_OPS, REFERENCE_OPS, build_attention
from kernels import LAUNCHES, attention
from kernels.attention import ARRANGEMENTS, PARAM_NAMES

# (B, C, T, F) and layout: awkward sizes leaving partial tiles on every axis (C = 37, T = 7, F = 3) in
# both layouts, T = 20 for a local MLP with 2 hidden units (r = 8), a 100 x 2 map with 64 channels, and
# C = 12 at N = 21, where fp32 rows of 84 B are read as grouped rows of 4 channels (kernels.common.row_group).
MAPS = [((3, 37, 7, 3), torch.contiguous_format), ((3, 37, 7, 3), torch.channels_last),
        ((2, 5, 20, 1), torch.channels_last), ((2, 64, 100, 2), torch.contiguous_format),
        ((2, 12, 7, 3), torch.contiguous_format)]
BRANCHES = [(True, True), (True, False), (False, True)]
"""(global branch, local branch) of the spatial attention."""
# Launches per fused forward and backward, by arrangement (spatial branches both present).
FORWARD_KERNELS = {
    "sca": {"channel_pool_forward", "spatial_squeeze_forward", "gate_forward", "local_fc_forward"},
    "csa": {"channel_pool_forward", "spatial_squeeze_forward", "gate_forward", "local_fc_forward"},
    "cps": {"channel_pool_forward", "spatial_squeeze_forward", "gate_forward", "local_fc_forward"},
    "spatial": {"channel_pool_forward", "gate_forward", "local_fc_forward"},
    "channel": {"spatial_squeeze_forward", "gate_forward"},
}
BACKWARD_KERNELS = {
    "sca": {"gate_logit_grad_rows", "spatial_squeeze_logit_grad", "gate_input_grad", "local_fc_backward"},
    "csa": {"gate_logit_grad_columns", "channel_pool_logit_grad", "gate_input_grad", "local_fc_backward"},
    "cps": {"gate_logit_grad_rows", "gate_input_grad", "local_fc_backward"},
    "spatial": {"gate_logit_grad_columns", "gate_input_grad", "local_fc_backward"},
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
        torch.testing.assert_close(actual.grad, expected.grad, atol=atol, rtol=rtol,
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


def _op_args(arrangement, device):
    module = build_attention(arrangement, 37, 7, 3, True, True, 8, 4, 5, REFERENCE_OPS).to(device)
    params = [None] * len(PARAM_NAMES)
    if module.spatial is not None:
        params[0:7] = module.spatial.global_branch.unit_tensors()
        params[7:11] = module.spatial.local_branch.unit_tensors()
    if module.channel is not None:
        params[11:15] = module.channel.unit_tensors()
    x = torch.randn(2, 37, 7, 3, device=device).contiguous(memory_format=torch.channels_last)
    return (x.requires_grad_(), arrangement, *params, True, 1e-5)


@pytest.mark.parametrize("arrangement", ARRANGEMENTS)
def test_attention_opcheck(arrangement):
    torch.library.opcheck(torch.ops.fastsca.attention.default, _op_args(arrangement, "cpu"))


@pytest.mark.parametrize("arrangement", ["sca", "csa"])
def test_attention_opcheck_through_the_kernels(kernel_device, arrangement):
    before = LAUNCHES["gate_input_grad"]
    torch.library.opcheck(torch.ops.fastsca.attention.default, _op_args(arrangement, kernel_device))
    assert LAUNCHES["gate_input_grad"] > before


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


@pytest.mark.parametrize("args, message", [
    (lambda a: (a[0][0], *a[1:]), r"\(B, C, T, F\)"),
    (lambda a: (a[0], "sac", *a[2:]), "unknown arrangement 'sac'"),
    (lambda a: (a[0], a[1], *[None] * 15, *a[17:]), "needs the global or the local spatial branch"),
])
def test_attention_rejects_bad_arguments(args, message):
    op_args = _op_args("sca", "cpu")
    with pytest.raises(ValueError, match=message):
        torch.ops.fastsca.attention(*args(op_args))


def test_attention_rejects_a_wrong_parameter_count():
    with pytest.raises(ValueError, match="params must hold 15"):
        attention(torch.randn(2, 37, 7, 3), "sca", [None] * 3, True, 1e-5)
