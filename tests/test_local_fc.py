"""local_fc (eq. 6): the two-layer per-row MLP kernels, forward and backward, against local_fc_reference; op checks."""
import pytest
import torch

import kernels
from kernels import LAUNCHES, local_fc, local_fc_reference
from kernels.local_fc import MAX_TILE

RD_RATIO = 16   # the paper's r: H = T // 16


def _inputs(batch, time, freq, device, dtype=torch.float32, strided=False):
    hidden = max(1, time // RD_RATIO)
    if strided:   # S as a slice of a channels_last map: strides (3 T F, 1, 3 F, 3)
        s = torch.randn(batch, 3, time, freq, device=device, dtype=dtype)
        s = s.contiguous(memory_format=torch.channels_last)[:, 1:2]
    else:
        s = torch.randn(batch, 1, time, freq, device=device, dtype=dtype)
    w1 = torch.randn(freq, hidden, time, device=device, dtype=dtype) * time ** -0.5
    b1 = torch.randn(freq, hidden, device=device, dtype=dtype) * 0.5
    w2 = torch.randn(freq, time, hidden, device=device, dtype=dtype) * hidden ** -0.5
    b2 = torch.randn(freq, time, device=device, dtype=dtype)
    return [s, w1, b1, w2, b2]


# (B, T, F): the at-sca-3 rows (T = 100, F = 4, 2, 1), an odd batch (9), and T = 7 (H = 1), F = 3.
@pytest.mark.parametrize("batch, time, freq", [(2, 100, 4), (9, 100, 2), (3, 100, 1), (3, 7, 3), (1, 40, 3)])
@pytest.mark.parametrize("strided", [False, True])
@pytest.mark.parametrize("dtype, atol, rtol", [(torch.float32, 1e-5, 1e-5)])
def test_local_fc_matches_reference(kernel_device, assert_matches_reference, batch, time, freq, strided,
                                    dtype, atol, rtol):
    args = _inputs(batch, time, freq, kernel_device, dtype, strided)
    before = LAUNCHES.copy()
    assert_matches_reference(local_fc, local_fc_reference, args, atol, rtol)
    assert LAUNCHES["local_fc_forward"] == before["local_fc_forward"] + 1
    assert LAUNCHES["local_fc_backward"] == before["local_fc_backward"] + 1


def test_local_fc_rows_too_long_for_the_kernel_run_the_reference(kernel_device, assert_matches_reference):
    time = 400   # block 1 of a depth-7 model: an H x T = 25 x 400 row pads to 32 x 512 > MAX_TILE
    assert 32 * 512 > MAX_TILE
    before = LAUNCHES.copy()
    assert_matches_reference(local_fc, local_fc_reference, _inputs(2, time, 2, kernel_device), 1e-5, 1e-5)
    assert LAUNCHES["local_fc_forward"] == before["local_fc_forward"]


def test_local_fc_with_a_broadcast_upstream_gradient(kernel_device):
    # out.sum().backward() hands the backward an expanded gradient: every stride 0.
    args = _inputs(3, 100, 2, kernel_device)
    grads = []
    for op in (local_fc, local_fc_reference):
        cloned = [a.clone().requires_grad_() for a in args]
        op(*cloned).sum().backward()
        grads.append([a.grad for a in cloned])
    for mine, expected in zip(*grads):
        torch.testing.assert_close(mine, expected, atol=1e-5, rtol=1e-5)


def test_local_fc_opcheck():
    args = [a.requires_grad_() for a in _inputs(3, 100, 2, "cpu", strided=True)]
    torch.library.opcheck(torch.ops.fastsca.local_fc.default, args)


def test_local_fc_opcheck_through_the_kernels(kernel_device):
    args = [a.requires_grad_() for a in _inputs(3, 7, 3, kernel_device)]
    before = LAUNCHES["local_fc_backward"]
    torch.library.opcheck(torch.ops.fastsca.local_fc.default, args)
    assert LAUNCHES["local_fc_backward"] > before


def test_local_fc_compiles_without_graph_break(kernel_device):
    args = _inputs(3, 100, 2, kernel_device)

    def local_branch(s, w1, b1, w2, b2):   # eq. 6 twice, the second on the first's sigmoid
        return kernels.local_fc(torch.sigmoid(kernels.local_fc(s, w1, b1, w2, b2)), w1, b1, w2, b2)

    torch._dynamo.reset()
    compiled = torch.compile(local_branch, fullgraph=True)
    eager_args = [a.clone().requires_grad_() for a in args]
    compiled_args = [a.clone().requires_grad_() for a in args]
    before = LAUNCHES.copy()
    compiled(*compiled_args).square().sum().backward()
    assert LAUNCHES["local_fc_forward"] == before["local_fc_forward"] + 2
    assert LAUNCHES["local_fc_backward"] == before["local_fc_backward"] + 2
    local_branch(*eager_args).square().sum().backward()
    for mine, expected in zip(compiled_args, eager_args):
        torch.testing.assert_close(mine.grad, expected.grad, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("index, bad, message", [
    (0, torch.randn(2, 3, 100, 4), r"s must be a \(B, 1, T, F\)"),
    (1, torch.randn(4, 6, 99), "w1 must have shape"),
    (2, torch.randn(4, 5), "b1 must have shape"),
    (3, torch.randn(4, 6, 100), "w2 must have shape"),
    (4, torch.randn(3, 100), "b2 must have shape"),
])
def test_local_fc_rejects_bad_shapes(index, bad, message):
    args = _inputs(2, 100, 4, "cpu")
    args[index] = bad
    with pytest.raises(ValueError, match=message):
        local_fc(*args)
