"""fastsca/training_compile.py: the fused path's compile drops the max-pool backward's fp32 scatter, on the
production path (compiled, bf16 autocast, channels_last, training-mode BatchNorm): the pool's gradient is exact
against eager PyTorch, and a residual block's values and gradients match the baseline compile's."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch._inductor.utils import run_and_get_code

from fastsca.backbone import ResidualBlock
from fastsca.training_compile import compile_for_training

SEED = 29


@pytest.fixture(autouse=True)
def fresh_compiles():
    """Each compile from scratch: a cached graph of the other backend must not stand in for this one's. With
    dynamic threads the baseline's scatter-add stays an extern `scatter_reduce_` whatever torch's thread count
    (with one thread Inductor would inline it as a loop, and the code would not say "scatter")."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config

    torch._dynamo.reset()
    with (inductor_config.patch({"fx_graph_cache": False, "cpp.dynamic_threads": True}),
          functorch_config.patch(enable_autograd_cache=False)):
        yield
    torch._dynamo.reset()


def _channels_last(*shape: int, seed: int, grad: bool = False) -> torch.Tensor:
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(seed)).contiguous(memory_format=torch.channels_last)
    return x.requires_grad_(grad)


@pytest.mark.parametrize("pool", [(2, 2), (2, 1), (1, 3)])
def test_the_pool_gradient_is_exact_against_eager(pool):
    x = _channels_last(3, 5, 14, 9, seed=SEED, grad=True)
    upstream = _channels_last(3, 5, 14 // pool[0], 9 // pool[1], seed=SEED + 1)

    def step(fn):
        x.grad = None
        out = fn(x.bfloat16())   # bf16 as under autocast: many ties inside a window, resolved alike
        out.backward(upstream.bfloat16())
        return out.detach(), x.grad

    pool_fn = nn.MaxPool2d(pool)
    (eager_out, eager_grad), (out, grad) = step(pool_fn), step(compile_for_training(pool_fn, fused=True))
    assert torch.equal(out, eager_out) and torch.equal(grad, eager_grad)


def _blocks() -> nn.Module:
    torch.manual_seed(SEED)
    return nn.Sequential(ResidualBlock(3, 5, nn.Identity(), (2, 2)),
                         ResidualBlock(5, 7, nn.Identity(), (2, 1))).to(memory_format=torch.channels_last).train()


def _block_step(fused: bool) -> tuple[list[torch.Tensor], str]:
    """Output, input gradient and every parameter gradient of one compiled bf16 step, and Inductor's code."""
    model = _blocks()
    compiled = compile_for_training(model, fused=fused)
    x = _channels_last(3, 3, 14, 6, seed=SEED + 2, grad=True)
    upstream = _channels_last(3, 7, 3, 3, seed=SEED + 3)

    def run():
        with torch.autocast("cpu", torch.bfloat16):
            out = compiled(x)
        out.backward(upstream.to(out.dtype))
        return out

    out, code = run_and_get_code(run)
    return [out.detach(), x.grad, *(p.grad for p in model.parameters())], "\n".join(code)


def test_the_fused_path_drops_the_scatter_and_a_block_matches_the_baseline_compile():
    (cheap_out, *cheap_grads), cheap_code = _block_step(fused=True)
    (baseline_out, *baseline_grads), baseline_code = _block_step(fused=False)
    assert "scatter" in baseline_code and "scatter" not in cheap_code
    assert torch.equal(cheap_out, baseline_out)
    # With another backward graph AOTAutograd's partitioner saves other intermediates (a bf16 copy of a BN input
    # where the baseline saves its fp32 statistics and recomputes), so gradients agree to a few bf16 roundings
    # (2^-8 relative each) of the tensor's scale, not bit for bit; the pool's own gradient is exact (above).
    for cheap, baseline in zip(cheap_grads, baseline_grads, strict=True):
        torch.testing.assert_close(cheap, baseline, rtol=0, atol=2 ** -6 * baseline.abs().max().item())


def test_another_backend_or_the_unfused_path_is_plain_torch_compile():
    x = _channels_last(2, 3, 8, 4, seed=SEED + 4)
    pool = nn.MaxPool2d((2, 2))
    _, code = run_and_get_code(compile_for_training(pool, backend="inductor", fused=False), x)
    assert code   # Inductor compiled it
    eager_backend = compile_for_training(pool, backend="eager", fused=True)
    _, code = run_and_get_code(eager_backend, x)
    assert not code and torch.equal(eager_backend(x), pool(x))   # the eager backend generates no code
