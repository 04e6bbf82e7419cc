"""Fused SCA kernels (Triton) behind torch.library ops, and the plain PyTorch reference they are checked against.

`attention` runs a whole attention arrangement as one autograd unit whose F-sized passes are the ops
`fastsca::attention_<pass>` (kernels/attention.py: the only ops registered here, the ones the model
calls): Triton kernels on CUDA tensors, and on CPU tensors under TRITON_INTERPRET=1; plain PyTorch
otherwise. `reference` is the attention of §3 equation by equation (kernels/reference.py). `LAUNCHES`
counts kernel launches by name. `conv` (the residual block's convolutions, kernels/conv.py) is imported
here so that its kernels are decorated with the others (for the interpreter, tests/conftest.py).
"""
from kernels import conv, reference
from kernels.attention import AttentionParams, attention
from kernels.common import LAUNCHES

__all__ = ["LAUNCHES", "AttentionParams", "attention", "conv", "reference"]
