"""Where a counted step goes: each launch row of bench/whole_step.py put in one category, and the table.

Rules, first match wins (Inductor's kernels are named after the torch modules and functions they fuse:
bench/inductor_cpu.py sets `descriptive_names = "torch"`, e.g. `triton_red_fused_BatchNorm2d_ReLU_12`):
1. eager work outside the compiled graphs by its phase: front end, head + loss (the BCE and its backward),
   non-finite check, clipping, optimiser;
2. fastsca's kernels and the aten work inside its ops, by the op (BLOCK_OP_CATEGORIES): the fused block's
   convolutions by role (a cuDNN convolution inside one by its role too, and the copy making its bf16 weight
   matrix; the sums and activations around a cuDNN one as BN stats or BN apply), its tail; the attention's
   passes: attention;
3. extern calls: a convolution by its role (conv fwd, conv dgrad, conv wgrad), the attention's own global-branch
   convolutions (kernel size `attention_kernel`) as attention; a matmul producing the class dimension as head +
   loss, any other matmul (the reference's channel MLP) as attention;
4. Inductor's kernels by name: MaxPool2d (max-pool fwd / bwd), the BatchNorm algebra fused around the block ops
   (kernels naming block_conv, block_tail or rsqrt: BN stats, apply, bwd reductions or pointwise), softmax or a tensor with the class dimension
   (head + loss; a Linear without it is the reference attention's channel MLP), the attention's own functions
   (ATTENTION_MARKERS), then BatchNorm (BN_MARKERS;
   forward: reductions are BN stats, pointwise kernels BN apply + ReLU + add; backward: reductions are BN bwd
   reductions, pointwise kernels BN/ReLU/add bwd pointwise), then ReLU/add alone likewise, then Conv2d (the bf16
   casts of the weights: conv fwd; of their gradients: conv wgrad); what is left is the attention's plain-torch
   work (the MLPs' products and sums).
A kernel that fuses work of two categories goes to the first rule it matches (an attention gate fused into a BN
apply is attention).
"""
CATEGORIES = ("front end", "conv fwd", "conv dgrad", "conv wgrad", "BN stats", "BN apply+ReLU+add fwd",
              "BN/ReLU/add bwd pointwise", "BN bwd reductions", "max-pool fwd", "max-pool bwd", "block tail fwd",
              "block tail bwd", "attention",
              "head+loss", "non-finite check", "clipping", "optimiser", "other")
EAGER_PHASES = {"front end": "front end", "loss": "head+loss", "non-finite check": "non-finite check",
                "clipping": "clipping", "optimiser": "optimiser"}
HEAD_MARKERS = ("softmax", "binary_cross_entropy", "clamp", "Linear_mean")
"""The head's work: its softmax and clamp, the BCE, and the mean over bins that feeds its Linears."""
ATTENTION_MARKERS = ("einsum", "sigmoid", "attention", "channel_pool", "spatial_squeeze", "gate", "local_fc",
                     "mean_mul")
"""Functions only the attention calls (the head's sigmoid is caught before, with its Linear)."""
BN_MARKERS = ("BatchNorm2d", "var_mean", "rsqrt", "lerp", "batch_norm", "truediv")
"""BatchNorm's module name, or its decomposition where a kernel carries aten names (statistics, running stats)."""
POINTWISE_MARKERS = ("ReLU", "relu", "add", "threshold", "gt", "convolution_backward")
BLOCK_OP_CATEGORIES = {"fastsca::block_conv_forward": "conv fwd", "fastsca::block_conv_input_grad": "conv dgrad",
                       "fastsca::block_conv_weight_grad": "conv wgrad", "fastsca::block_tail_forward": "block tail fwd",
                       "fastsca::block_tail_backward": "block tail bwd"}
"""The fused residual block's ops (kernels/residual_block.py) and the category of the work inside each."""
BLOCK_OP_SIDE_WORK = {"conv fwd": ("BN stats", "BN apply+ReLU+add fwd"),
                      "conv dgrad": ("BN bwd reductions", "BN/ReLU/add bwd pointwise"),
                      "conv wgrad": ("BN bwd reductions", "BN/ReLU/add bwd pointwise")}
"""Inside a block convolution op run by cuDNN (aten), the work around the convolution: (reductions, the rest)."""


def _project_category(row: dict) -> str:
    """A fastsca kernel or an aten call inside a fastsca op, by the op (attention when it is not a block op)."""
    role = BLOCK_OP_CATEGORIES.get(row.get("op", ""), "attention")
    weight_matrix = "copy_" in row["name"]   # the convolution's bf16 weight matrix: its own, as a weight cast is
    if row["kind"] == "fastsca" or role not in BLOCK_OP_SIDE_WORK or "role" in (row.get("detail") or {}) \
            or weight_matrix:
        return role
    reductions, rest = BLOCK_OP_SIDE_WORK[role]
    return reductions if any(m in row["name"] for m in ("sum", "norm")) else rest


def _extern_category(row: dict, attention_kernel: int) -> str:
    detail = row.get("detail") or {}
    if "role" in detail:
        if detail["kernel"] == [attention_kernel, attention_kernel]:
            return "attention"
        return {"forward": "conv fwd", "dgrad": "conv dgrad", "wgrad": "conv wgrad"}[detail["role"]]
    if any(op in row["name"] for op in ("mm", "addmm", "bmm", "linear")):
        return "head+loss" if row.get("touches_classes") else "attention"
    return _kernel_category(row)


def _kernel_category(row: dict) -> str:
    name, backward = row["name"], row["phase"] == "backward"
    reduction = name.startswith(("triton_red", "triton_per"))
    if "MaxPool2d" in name or "max_pool" in name:
        return "max-pool bwd" if backward else "max-pool fwd"
    if ("block_conv" in name or "block_tail" in name or "rsqrt" in name) and not row.get("touches_classes"):
        # the BatchNorm algebra around the fused block's ops, or (rsqrt) written out as torch ops around a cuDNN
        # convolution of the fused block: its clamp_min is not the head's clamp
        if backward:
            return "BN bwd reductions" if reduction else "BN/ReLU/add bwd pointwise"
        return "BN stats" if reduction else "BN apply+ReLU+add fwd"
    if row.get("touches_classes") or any(m in name for m in HEAD_MARKERS):
        return "head+loss"
    if any(m in name for m in ATTENTION_MARKERS):
        return "attention"
    bn = any(m in name for m in BN_MARKERS)
    if bn or any(m in name for m in POINTWISE_MARKERS):
        if backward:
            return "BN bwd reductions" if reduction and bn else "BN/ReLU/add bwd pointwise"
        return "BN stats" if reduction and bn else "BN apply+ReLU+add fwd"
    if "Conv2d" in name:
        return "conv wgrad" if backward else "conv fwd"
    return "attention"   # the rest are the attention's plain-torch pieces (mul, sum, matmul of its MLPs)


def category(row: dict, attention_kernel: int) -> str:
    """The row's category (see the module docstring)."""
    if row["phase"] in EAGER_PHASES:
        return EAGER_PHASES[row["phase"]]
    if row["kind"] in ("fastsca", "aten in fastsca op"):
        return _project_category(row)

    if row["kind"] == "extern":
        return _extern_category(row, attention_kernel)
    return _kernel_category(row)


def breakdown(rows: list[dict], prices: dict) -> list[dict]:
    """Per category: launches, bytes, FLOPs and µs at each price in `prices` (name -> row -> µs), in CATEGORIES'
    order, empty categories left out."""
    table = {name: {"category": name, "launches": 0, "bytes": 0, "flops": 0, **{p: 0.0 for p in prices}}
             for name in CATEGORIES}
    for row in rows:
        entry = table[row["category"]]
        entry["launches"] += row.get("launches", 1)
        entry["bytes"] += row["bytes"]
        entry["flops"] += row["flops"]
        for price, fn in prices.items():
            entry[price] += fn(row)
    return [entry for entry in table.values() if entry["launches"]]
