"""Fused SCA kernels (Triton) behind torch.library ops, each beside its plain PyTorch reference.

`attention` runs a whole attention arrangement as one autograd unit whose F-sized passes are the ops
`fastsca::attention_<pass>` (the production path); `channel_pool`, `local_fc`, `spatial_squeeze` and `gate`
are its steps as standalone ops `fastsca::<name>` (autograd and torch.compile ready): Triton forward and backward kernels on CUDA tensors, and on CPU tensors under
TRITON_INTERPRET=1; the `*_reference` function otherwise. `LAUNCHES` counts kernel launches by name.
"""
from kernels.attention import AttentionParams, attention
from kernels.channel_pool import channel_pool, channel_pool_reference
from kernels.common import LAUNCHES
from kernels.gate import gate, gate_reference
from kernels.local_fc import local_fc, local_fc_reference
from kernels.spatial_squeeze import spatial_squeeze, spatial_squeeze_reference

__all__ = [
    "LAUNCHES",
    "AttentionParams",
    "attention",
    "channel_pool",
    "channel_pool_reference",
    "gate",
    "gate_reference",
    "local_fc",
    "local_fc_reference",
    "spatial_squeeze",
    "spatial_squeeze_reference",
]
