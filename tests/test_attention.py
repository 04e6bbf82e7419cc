"""attention (§3.3): each arrangement as one autograd unit, forward and backward, against the reference module.

The reference is the same module with fused=False, run by autograd (kernels/reference.py's equations,
nn.Conv2d, nn.BatchNorm2d, nn.Linear): so the unit's hand-written backward of the sub-networks is checked
too, every parameter gradient, and BatchNorm's running statistics after a training step. Each F-sized
pass op goes through opcheck (schema, fake kernel strides, dispatch) on the Triton path and the CPU
passes, and each pass's Triton kernel is checked against its CPU pass on the same arguments.
"""
import ast
import math
from pathlib import Path

import pytest
import torch

from fastsca.attention import build_attention
from fastsca.config import ATTENTION_ARRANGEMENTS, Arrangement, Combine, Order, arrangement_of
from kernels import LAUNCHES, AttentionParams, attention
from kernels.attention import PASSES

ARRANGEMENTS = tuple(ATTENTION_ARRANGEMENTS)

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


def _build(arrangement, shape, use_global=True, use_local=True, fused=True, rd_ratio=8):
    _, channels, time, freq = shape
    return build_attention(arrangement=arrangement, channels=channels, time_steps=time, freq_bins=freq,
                           use_global=use_global, use_local=use_local, rd_ratio=rd_ratio, global_mid_channels=4,
                           global_kernel_size=5, fused=fused)


def _twins(arrangement, shape, use_global, use_local, training, device):
    """The reference module and the fused one, same random weights (biases and BN affine too)."""
    modules = [_build(arrangement, shape, use_global, use_local, fused).to(device) for fused in (False, True)]
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


def _grad_atol(grad: torch.Tensor, terms: int, atol: float) -> float:
    """Tolerance of a parameter gradient that sums `terms` products in another order than autograd's (the
    unit's hand-written BatchNorm, local-FC and channel-MLP backward): fp32 rounding of the two orders
    drifts apart like a random walk, ~sqrt(terms) * 6e-8 * |term|. Measured: up to ~3e-5 at 2793 terms
    where they cancel, and at 63 terms (the one-branch maps) at most 5e-6 of the largest entry over 150
    seeds of each one-branch arrangement, where a flat atol of 1e-5 failed about 1 run in 150. atol *
    sqrt(terms), scaled to the tensor's largest entry (7.9e-5 at 63 terms), covers that and still fails a
    wrong term, which is off by O(0.1-1)."""
    return atol * math.sqrt(terms) * max(1.0, grad.abs().max().item())


def _assert_same_gradients(reference, fused, terms: int, atol: float, rtol: float) -> None:
    for (name, expected), actual in zip(reference.named_parameters(), fused.parameters()):
        torch.testing.assert_close(actual.grad, expected.grad, atol=_grad_atol(expected.grad, terms, atol), rtol=rtol,
                                   msg=lambda m, name=name: f"gradient of {name}: {m}")


@pytest.mark.slow
@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("arrangement", ARRANGEMENTS)
@pytest.mark.parametrize("shape, layout", MAPS)
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5)])
def test_attention_matches_reference(kernel_device, shape, arrangement, training, layout, dtype, atol, rtol):
    torch.manual_seed(sum(shape) + len(arrangement) + training)
    reference, fused = _twins(arrangement, shape, True, True, training, kernel_device)
    x = torch.randn(shape, device=kernel_device, dtype=dtype).contiguous(memory_format=layout)
    grad = torch.randn(shape, device=kernel_device, dtype=dtype)
    before = LAUNCHES.copy()
    out, dx = _run(fused, x, grad)
    launched = {name for name in LAUNCHES if LAUNCHES[name] > before[name]}
    expected_out, expected_dx = _run(reference, x, grad)
    torch.testing.assert_close(out, expected_out, atol=atol, rtol=rtol)
    torch.testing.assert_close(dx, expected_dx, atol=atol, rtol=rtol, msg=lambda m: f"gradient of x: {m}")
    _assert_same_gradients(reference, fused, shape[0] * shape[2] * shape[3], atol, rtol)
    for (name, expected), actual in zip(reference.named_buffers(), fused.buffers()):
        torch.testing.assert_close(actual, expected, atol=atol, rtol=rtol, msg=lambda m, name=name: f"{name}: {m}")
    assert out.is_contiguous(memory_format=layout) and dx.is_contiguous(memory_format=layout)
    assert launched == FORWARD_KERNELS[arrangement] | BACKWARD_KERNELS[arrangement]


@pytest.mark.parametrize("shape, layout", [((1, 256, 100, 4), torch.contiguous_format),
                                           ((1, 512, 100, 1), torch.channels_last),
                                           ((3, 512, 7, 2), torch.contiguous_format)])
@pytest.mark.parametrize("arrangement", ["sca", "csa"])
def test_attention_at_real_maps(kernel_device, arrangement, shape, layout):
    # The at-sca-3 maps at B = 1 (N = 400 and 100) and C = 512 at N = 14: SCA and CSA between them run
    # every kernel (rows, columns, both second passes), with full and masked tiles.
    torch.manual_seed(shape[1] + shape[3])
    reference, fused = _twins(arrangement, shape, True, True, True, kernel_device)
    x = torch.randn(shape, device=kernel_device).contiguous(memory_format=layout)
    grad = torch.randn(shape, device=kernel_device)
    for mine, expected in zip(_run(fused, x, grad), _run(reference, x, grad)):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)
    _assert_same_gradients(reference, fused, shape[0] * shape[2] * shape[3], 1e-5, 1e-5)


@pytest.mark.parametrize("use_global, use_local", BRANCHES[1:])
@pytest.mark.parametrize("arrangement", ["sca", "csa", "cps", "spatial"])
def test_attention_with_one_spatial_branch(kernel_device, arrangement, use_global, use_local):
    torch.manual_seed(len(arrangement) + 2 * use_global)
    shape = (3, 37, 7, 3)
    reference, fused = _twins(arrangement, shape, use_global, use_local, True, kernel_device)
    x, grad = torch.randn(shape, device=kernel_device), torch.randn(shape, device=kernel_device)
    for (mine, expected) in zip(_run(fused, x, grad), _run(reference, x, grad)):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)
    _assert_same_gradients(reference, fused, shape[0] * shape[2] * shape[3], 1e-5, 1e-5)


@pytest.mark.parametrize("arrangement", ARRANGEMENTS)
def test_attention_with_a_broadcast_upstream_gradient(kernel_device, arrangement):
    # out.sum().backward() hands the backward an expanded gradient: every stride 0.
    torch.manual_seed(7)
    reference, fused = _twins(arrangement, (2, 37, 7, 3), True, True, True, kernel_device)
    x = torch.randn(2, 37, 7, 3, device=kernel_device).contiguous(memory_format=torch.channels_last)
    grads = []
    for module in (fused, reference):
        xi = x.clone().requires_grad_()
        module(xi).sum().backward()
        grads.append(xi.grad)
    torch.testing.assert_close(grads[0], grads[1], atol=1e-5, rtol=1e-5)


def pass_samples(device, shape=(2, 37, 7, 3), dtype=torch.float32) -> dict[str, list[tuple]]:
    """Sample arguments of every pass op, on a channels_last map (odd sizes by default: C = 37, T = 7,
    F = 3), logits and gradients of the sub-networks in fp32 as the unit computes them; one spatial
    logit is a slice of a channels_last map (T and F merge, its batch stride is not T * F)."""
    generator = torch.Generator().manual_seed(11)
    b, c, t, f = shape

    def randn(*size, scale=1.0):
        return (torch.randn(*size, generator=generator) * scale).to(device)

    x = randn(b, c, t, f).to(dtype).contiguous(memory_format=torch.channels_last)
    grad = randn(b, c, t, f).to(dtype)
    s, z = randn(b, 1, t, f, scale=2), randn(b, c, scale=2)
    sliced = randn(b, 3, t, f, scale=2).contiguous(memory_format=torch.channels_last)[:, 1:2]
    weight = torch.sigmoid(randn(b, c))
    with torch.autocast(x.device.type, enabled=False):
        rows = torch.ops.fastsca.attention_rows(grad, x, s, z, False)[1]
        columns = torch.ops.fastsca.attention_columns(grad, x, s, z, False)[1]
    return {
        "attention_pool": [(x, None), (x, weight)],
        "attention_squeeze": [(x, None), (x, s), (x, sliced)],
        "attention_gate": [(x, s, z, False), (x, s, None, False), (x, None, z, False), (x, s, z, True)],
        "attention_rows": [(grad, x, s, z, False), (grad, x, None, z, False), (grad, x, s, z, True)],
        "attention_columns": [(grad, x, s, z, False), (grad, x, s, None, False)],
        "attention_squeeze_logit_grad": [(x, s, z, rows)],
        "attention_pool_logit_grad": [(x, z, s, columns)],
        "attention_input_grad": [(grad, x, s, z, False, z, True, None, False),       # SCA
                                 (grad, x, s, z, False, None, False, s, True),       # CSA
                                 (grad, x, s, z, True, None, False, None, False),    # C//S
                                 (grad.contiguous(memory_format=torch.channels_last), x, s, None, False, None, False,
                                  None, False)],                                     # spatial only, dF'' like F
    }


def comparable(result):
    """A pass's result as the tensors both paths agree on: partial rows (B, K, size) differ in how the sum is
    split over K (the CPU pass puts it all in row 0), so they are compared summed."""
    if isinstance(result, tuple):
        return result[0], result[1].sum(dim=1)
    return result


@pytest.mark.parametrize("name", PASSES)
def test_every_pass_matches_its_cpu_pass(kernel_device, name, monkeypatch):
    # The Triton kernel against the pass's PyTorch expression on the same arguments: each sums N or C
    # fp32 terms (C = 37 or N = 21 here) in another order, a few ulps of |F|-sized values apart.
    launches = sum(LAUNCHES.values())
    for args in pass_samples(kernel_device)[name]:
        mine = comparable(getattr(torch.ops.fastsca, name)(*args))
        monkeypatch.setenv("TRITON_INTERPRET", "0")
        cpu_args = [a.cpu() if isinstance(a, torch.Tensor) else a for a in args]
        expected = comparable(getattr(torch.ops.fastsca, name)(*cpu_args))
        monkeypatch.setenv("TRITON_INTERPRET", "1")
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5, check_device=False)
    assert sum(LAUNCHES.values()) > launches


@pytest.mark.parametrize("name", PASSES)
def test_every_pass_op_passes_opcheck(kernel_device, name, monkeypatch):
    # The CPU passes first, then the Triton kernels: the fake kernels must match both.
    for triton in ("0", "1"):
        monkeypatch.setenv("TRITON_INTERPRET", triton)
        before = sum(LAUNCHES.values())
        for args in pass_samples(kernel_device)[name]:
            torch.library.opcheck(getattr(torch.ops.fastsca, name).default, args)
        assert (sum(LAUNCHES.values()) > before) == (triton == "1" or kernel_device == "cuda")


def test_only_the_passes_are_registered():
    # Two op families: the fastsca namespace holds the attention unit's passes and the fused block's, nothing else.
    registered = {name.split("::")[1] for name in torch._C._dispatch_get_all_op_names() if name.startswith("fastsca::")}
    block = {"block_conv_forward", "block_conv_input_grad", "block_conv_weight_grad", "block_tail_forward",
             "block_tail_backward"}
    assert registered == set(PASSES) | block


@pytest.mark.slow
@pytest.mark.parametrize("arrangement", ARRANGEMENTS)
def test_attention_compiles_without_graph_break(kernel_device, arrangement):
    torch.manual_seed(3)
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
    return _build(arrangement, (2, 37, 7, 3), fused=False).unit_params()


SCA = arrangement_of("sca")


@pytest.mark.parametrize("arrangement, params, message", [
    ("sac", _params("sca"), "must describe the arrangement"),
    (SCA, AttentionParams(None, None, _params("sca").channel), "needs the global or the local spatial branch"),
    (SCA, _params("spatial"), "needs the channel MLP"),
    (arrangement_of("channel"), _params("sca"), "takes no spatial branch"),
    (SCA, list(_params("sca")), "must be an AttentionParams"),
    (SCA, _params("sca")._replace(local=_params("sca").local._replace(b2=torch.zeros(4, 7))), "built for"),
])
def test_attention_rejects_bad_arguments(arrangement, params, message):
    with pytest.raises(ValueError, match=message):
        attention(torch.randn(2, 37, 7, 3), arrangement, params, bn_training=True)


def test_attention_rejects_a_map_that_is_not_4d():
    with pytest.raises(ValueError, match=r"\(B, C, T, F\)"):
        attention(torch.randn(37, 7, 3), SCA, _params("sca"), bn_training=True)


def test_build_attention_rejects_an_unknown_arrangement():
    with pytest.raises(ValueError, match="unknown attention arrangement 'sac'; valid: spatial, channel, sca, csa, cps"):
        _build("sac", (2, 37, 7, 3))


def test_each_arrangement_is_described_once_as_data():
    flags = {name: (a.spatial, a.channel, a.squeeze_gated, a.pool_weighted, a.additive)
             for name, a in ATTENTION_ARRANGEMENTS.items()}
    assert flags == {"spatial": (True, False, False, False, False), "channel": (False, True, False, False, False),
                     "sca": (True, True, True, False, False), "csa": (True, True, False, True, False),
                     "cps": (True, True, False, False, True)}


@pytest.mark.parametrize("fields, message", [
    (dict(spatial=False, channel=False), "needs the spatial or the channel mask"),
    (dict(spatial=True, channel=False, order=Order.SPATIAL_FIRST), "needs both masks"),
    (dict(spatial=True, channel=True, order=Order.CHANNEL_FIRST, combine=Combine.SUM), "combine sum needs both"),
])
def test_an_arrangement_that_cannot_be_built_is_refused(fields, message):
    with pytest.raises(ValueError, match=message):
        Arrangement("odd", **fields)


def _imported_packages(path: Path) -> set[str]:
    """Top-level packages a file imports, at the top or inside a function."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def test_kernels_import_nothing_of_fastsca_and_the_vocabulary_nothing_of_kernels():
    # No cycle: the model's vocabulary (fastsca/config.py) stands alone, kernels/ receives it as an argument.
    root = Path(__file__).resolve().parents[1]
    kernel_files = sorted((root / "kernels").glob("*.py"))
    assert {p.name for p in kernel_files} >= {"attention.py", "reference.py", "subnets.py"}
    assert {p.name: "fastsca" in _imported_packages(p) for p in kernel_files} == {p.name: False for p in kernel_files}
    assert "kernels" not in _imported_packages(root / "fastsca" / "config.py")
