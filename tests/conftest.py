"""Shared test setup: on a machine without a GPU, the Triton kernels are built for the CPU interpreter.

Triton picks interpreter or compiler when a kernel is decorated, i.e. when `kernels` is first
imported, so TRITON_INTERPRET must be set before that. It is set only for that import: the fused ops
of other tests keep running the fast PyTorch reference on CPU; the kernel tests ask for the Triton
path with the `kernel_device` fixture.
"""
import os

import pytest
import torch

if not torch.cuda.is_available():
    _saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    import kernels  # noqa: F401  (decorates every kernel for the interpreter)
    if _saved is None:
        del os.environ["TRITON_INTERPRET"]
    else:
        os.environ["TRITON_INTERPRET"] = _saved


@pytest.fixture
def kernel_device(monkeypatch) -> str:
    """Where the Triton kernels run: the GPU, or the CPU under TRITON_INTERPRET=1 (fp32 only, slow)."""
    if torch.cuda.is_available():
        return "cuda"
    monkeypatch.setenv("TRITON_INTERPRET", "1")
    return "cpu"


def _assert_matches_reference(op, reference, args, atol, rtol):
    """Run op and reference on clones of args (same layout), backward with one random upstream gradient,
    and compare the output and the gradient of every tensor argument."""
    def clone(a):
        return a.detach().clone().requires_grad_() if isinstance(a, torch.Tensor) else a

    mine, theirs = [clone(a) for a in args], [clone(a) for a in args]
    out, expected = op(*mine), reference(*theirs)
    grad = torch.randn_like(expected)
    out.backward(grad)
    expected.backward(grad)
    torch.testing.assert_close(out, expected, atol=atol, rtol=rtol)
    for index, (a, b) in enumerate(zip(mine, theirs)):
        if isinstance(a, torch.Tensor):
            torch.testing.assert_close(a.grad, b.grad, atol=atol, rtol=rtol,
                                       msg=lambda m, index=index: f"gradient of argument {index}: {m}")
    return out


@pytest.fixture
def assert_matches_reference():
    """The forward-and-backward comparison every kernel test makes (a fixture, so every test file shares it)."""
    return _assert_matches_reference
