"""How fastsca compiles its model for training: torch.compile, with the cheap max-pool backward on the fused path.

torch 2.13's Inductor decomposes `max_pool2d_with_indices_backward` into a scatter-add over a full-resolution
fp32 buffer (zeros, int64 indices, fp32 sources, then a cast back to bf16): about 13 bytes per input element
of a 2x2 pool against the 2.75 of Inductor's own lowering of the op (read the bf16 gradient and the int8 window
offsets once per pooled cell, write the bf16 input gradient once, fused with the ReLU backward that follows).
A Triton kernel of ours could not move fewer bytes than that lowering and would not fuse, so fastsca's fused
path compiles with that one decomposition dropped. The reference model's compile (the fair baseline,
bench/whole_step.py) keeps Inductor's defaults. With non-overlapping windows (at-sca-3's pools) each input cell
takes at most one gradient, so both give the same values (tests/test_training_compile.py).
"""
import torch

DROPPED_DECOMPOSITIONS = (torch.ops.aten.max_pool2d_with_indices_backward,)
"""Ops (every overload) Inductor lowers itself on fastsca's fused path instead of decomposing them (see the
module docstring)."""


class CheapBytesInductor:
    """A torch.compile backend: Inductor in `mode`, without the decompositions in DROPPED_DECOMPOSITIONS."""

    def __init__(self, mode: str = "default") -> None:
        self.mode = mode

    def __call__(self, graph: torch.fx.GraphModule, example_inputs):
        from torch._inductor import list_mode_options
        from torch._inductor.compile_fx import compile_fx
        from torch._inductor.decomposition import select_decomp_table

        table = {op: fn for op, fn in select_decomp_table().items()
                 if getattr(op, "overloadpacket", None) not in DROPPED_DECOMPOSITIONS}   # HOPs have no packet
        return compile_fx(graph, example_inputs, config_patches=list_mode_options(self.mode), decompositions=table)


def compile_for_training(model: torch.nn.Module, backend: str = "inductor", mode: str = "default",
                         fused: bool = False):
    """torch.compile of `model` as train.run trains it: on fastsca's fused path with Inductor, the cheap-bytes
    backend above; otherwise plain torch.compile with `backend` and `mode` (the baseline a user writes)."""
    if fused and backend == "inductor":
        return torch.compile(model, backend=CheapBytesInductor(mode))
    return torch.compile(model, backend=backend, mode=mode)
