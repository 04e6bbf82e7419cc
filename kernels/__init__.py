"""Fused SCA kernels (Triton) behind torch.library ops, each beside its plain PyTorch reference."""
from kernels.channel_pool import channel_pool_reference
from kernels.gate import gate_reference
from kernels.local_fc import local_fc_reference
from kernels.spatial_squeeze import spatial_squeeze_reference

__all__ = [
    "channel_pool_reference",
    "gate_reference",
    "local_fc_reference",
    "spatial_squeeze_reference",
]
