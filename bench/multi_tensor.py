"""How many kernels one of torch's multi-tensor CUDA ops launches: the `_foreach_*` ops and the fused optimisers.

On CUDA these ops go through `multi_tensor_apply` (ATen's native/cuda/MultiTensorApply.cuh): the tensor lists are
cut into chunks of CHUNK_ELEMENTS elements, one thread block per chunk, and a kernel is launched whenever it
holds MAX_TENSORS[depth] tensors or MAX_BLOCKS blocks, or the last chunk of the last tensor is placed; a
tensor cut by a launch carries over into the next one. `depth` is the number of tensor lists the kernel walks
(fused AdamW: params, grads, exp_avg, exp_avg_sq = 4; `_foreach_norm`, `_foreach_mul_` by a scalar tensor,
`_foreach_add_` by a scalar = 1). `_foreach_norm` adds one clean-up kernel that sums the per-chunk partial norms.
"""
CHUNK_ELEMENTS = 65536
"""kChunkSize in MultiTensorApply.cuh."""
MAX_TENSORS = {1: 110, 2: 64, 3: 48, 4: 36, 5: 30}
"""depth_to_max_tensors in MultiTensorApply.cuh: tensor addresses one launch's kernel argument holds."""
MAX_BLOCKS = 320
"""depth_to_max_blocks in MultiTensorApply.cuh (the same for every depth)."""
DEPTH = {"_fused_adamw_": 4, "_fused_adam_": 4}
"""Tensor lists walked per op; ops not listed walk one (the in-place foreach ops and _foreach_norm)."""
EXTRA_KERNELS = {"_foreach_norm": 1}
"""Kernels an op launches after its multi-tensor kernels (the norm's clean-up over its partial sums)."""


def multi_tensor_launches(numels: list[int], depth: int) -> int:
    """Kernels multi_tensor_apply launches over tensors of these sizes (in list order) at this depth."""
    launches = tensors = blocks = 0
    for index, numel in enumerate(numels):
        tensors += 1
        chunks = max(1, -(-numel // CHUNK_ELEMENTS))
        for chunk in range(chunks):
            blocks += 1
            last_chunk = chunk == chunks - 1
            if (tensors == MAX_TENSORS[depth] and last_chunk) or blocks == MAX_BLOCKS or (
                    index == len(numels) - 1 and last_chunk):
                launches += 1
                blocks = 0
                tensors = 0 if last_chunk else 1
    return launches


def launches_of(op_name: str, numels: list[int]) -> int:
    """Kernels the op `op_name` (aten's name, e.g. '_foreach_norm') launches over its first list's tensors."""
    return multi_tensor_launches(numels, DEPTH.get(op_name, 1)) + EXTRA_KERNELS.get(op_name, 0)


def is_multi_tensor(op_name: str) -> bool:
    return op_name.startswith("_foreach_") or op_name in DEPTH
