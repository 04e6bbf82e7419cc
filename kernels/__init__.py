"""Fused SCA kernels (Triton) behind torch.library ops, and the plain PyTorch reference they are checked against.

`attention` runs a whole attention arrangement as one autograd unit whose F-sized passes are the ops
`fastsca::attention_<pass>` (kernels/attention.py): Triton kernels on CUDA tensors, and on CPU tensors under
TRITON_INTERPRET=1; plain PyTorch otherwise. The fused residual block's passes are the ops `fastsca::block_<pass>`
(kernels/residual_block.py, over kernels/block_passes.py; what each computes: kernels/block_reference.py). These
are the only ops registered here, the ones the model calls. `reference` is the attention of §3 equation by
equation (kernels/reference.py). `LAUNCHES` counts kernel launches by name. The Triton modules are imported here
so that their kernels are decorated with the others (for the interpreter, tests/conftest.py). Importing the
package keys torch.compile's caches by its source (kernels/compile_cache.py): a graph compiled against another
version of these ops is never replayed.
"""
from kernels import reference, residual_block
from kernels.attention import AttentionParams, attention
from kernels.common import LAUNCHES
from kernels.compile_cache import tag_compile_caches

tag_compile_caches()

__all__ = ["LAUNCHES", "AttentionParams", "attention", "reference", "residual_block"]
