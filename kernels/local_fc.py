"""Per-frequency-band local FC attention, eq. 6: for each frequency row f its own MLP T -> T/r -> T.

m^f = W2[f] @ relu(W1[f] @ s^f + b1[f]) + b2[f], with s^f the time series of row f of S.
Both layers run in one kernel: a program holds the weights of one row f in registers and applies
them to one batch row; the hidden layer never leaves registers. The backward kernel recomputes the
hidden layer and writes dS and, per row, the hidden activations and their gradient (B x F x H, tiny);
the weight gradients, sums over the batch, are then two batched matmuls and two sums. The op
`fastsca::local_fc` runs these kernels on CUDA (and on CPU under TRITON_INTERPRET=1) and
`local_fc_reference` otherwise, and for rows too long for the register tile.
"""
import torch
import triton
import triton.language as tl

from kernels.common import LAUNCHES, use_triton

# One program per (frequency row, batch row): S is tiny (B * T * F values), so the cost is latency,
# and a serial loop over batch rows (8 per program before) left 32-128 programs for 132 SMs at B = 256;
# now B * F (256-1024). Each program reloads its row's weights (6.4 KB fp32 at T = 100), from L2.
# Largest padded H x T weight tile the kernels hold in registers (two of them, fp32). ptxas (sm_90)
# before this change, with two more gradient accumulators in backward: 8 x 128 (the real T = 100,
# H = 6) at 4 warps 56 / 113 registers forward / backward; 16 x 256 at 8 warps 80 / 243; 32 x 512
# spilled even at 16 warps. Larger rows (T > 256 at r = 16: attention in block 1) run local_fc_reference instead.
MAX_TILE = 2 ** 12
# Warps for tiles up to 1024 values (the real 8 x 128); larger tiles get twice as many.
NUM_WARPS = 4


@triton.jit
def load_row_weights(w1_ptr, b1_ptr, w2_ptr, f, offs_t, offs_h, T, H):
    """Row f's W1 and W2 as [BLOCK_H, BLOCK_T] fp32 tiles (w2 is stored (F, T, H): read transposed)
    and b1 [BLOCK_H]; zero padding makes padded hidden units relu(0) = 0 and padded times add nothing."""
    mask_ht = (offs_h[:, None] < H) & (offs_t[None, :] < T)
    w1 = tl.load(w1_ptr + f * H * T + offs_h[:, None] * T + offs_t[None, :], mask=mask_ht, other=0.0).to(tl.float32)
    w2 = tl.load(w2_ptr + f * T * H + offs_t[None, :] * H + offs_h[:, None], mask=mask_ht, other=0.0).to(tl.float32)
    b1 = tl.load(b1_ptr + f * H + offs_h, mask=offs_h < H, other=0.0).to(tl.float32)
    return w1, w2, b1


@triton.jit
def local_fc_hidden(s, w1, b1):
    """Pre-activation and ReLU of the hidden layer for one row: s [BLOCK_T], w1 [BLOCK_H, BLOCK_T], b1 [BLOCK_H]."""
    pre = tl.sum(w1 * s[None, :], axis=1) + b1
    return pre, tl.maximum(pre, 0.0)


@triton.jit
def local_fc_forward_kernel(
    s_ptr, w1_ptr, b1_ptr, w2_ptr, b2_ptr, out_ptr,
    T, H,
    ssb, sst, ssf, sob, sot, sof,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """out[b, t, f] = sum_h W2[f, t, h] relu(W1[f] s[b, :, f] + b1[f])[h] + b2[f, t]; grid (F, B)."""
    f = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_h = tl.arange(0, BLOCK_H)
    mask = offs_t < T
    w1, w2, b1 = load_row_weights(w1_ptr, b1_ptr, w2_ptr, f, offs_t, offs_h, T, H)
    b2 = tl.load(b2_ptr + f * T + offs_t, mask=mask, other=0.0).to(tl.float32)
    s = tl.load(s_ptr + b * ssb + offs_t * sst + f * ssf, mask=mask, other=0.0).to(tl.float32)
    _, hidden = local_fc_hidden(s, w1, b1)
    out = tl.sum(w2 * hidden[:, None], axis=0) + b2
    tl.store(out_ptr + b * sob + offs_t * sot + f * sof, out.to(out_ptr.dtype.element_ty), mask=mask)


@triton.jit
def local_fc_backward_kernel(
    s_ptr, w1_ptr, b1_ptr, w2_ptr, dout_ptr, ds_ptr, hidden_ptr, dpre_ptr,
    T, H, F,
    ssb, sst, ssf, sdob, sdot, sdof, sdsb, sdst, sdsf,
    BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr,
):
    """ds for row (b, f), and that row's hidden activations and pre-activation gradient into the fp32
    (B, F, H) buffers hidden and dpre (the weight gradients' factors); grid (F, B)."""
    f = tl.program_id(0)
    b = tl.program_id(1).to(tl.int64)
    offs_t = tl.arange(0, BLOCK_T)
    offs_h = tl.arange(0, BLOCK_H)
    mask = offs_t < T
    w1, w2, b1 = load_row_weights(w1_ptr, b1_ptr, w2_ptr, f, offs_t, offs_h, T, H)
    s = tl.load(s_ptr + b * ssb + offs_t * sst + f * ssf, mask=mask, other=0.0).to(tl.float32)
    dout = tl.load(dout_ptr + b * sdob + offs_t * sdot + f * sdof, mask=mask, other=0.0).to(tl.float32)
    pre, hidden = local_fc_hidden(s, w1, b1)
    dpre = tl.where(pre > 0.0, tl.sum(w2 * dout[None, :], axis=1), 0.0)
    ds = tl.sum(w1 * dpre[:, None], axis=0)
    tl.store(ds_ptr + b * sdsb + offs_t * sdst + f * sdsf, ds.to(ds_ptr.dtype.element_ty), mask=mask)
    row = (b * F + f) * H
    tl.store(hidden_ptr + row + offs_h, hidden, mask=offs_h < H)
    tl.store(dpre_ptr + row + offs_h, dpre, mask=offs_h < H)


def fits_kernel(time: int, hidden: int) -> bool:
    """Whether one padded H x T weight row fits the kernels' register tile (MAX_TILE)."""
    return triton.next_power_of_2(time) * triton.next_power_of_2(hidden) <= MAX_TILE


def _launch_meta(time: int, hidden: int) -> dict:
    """Block sizes and warps for one (H, T) weight tile; ValueError past MAX_TILE."""
    if not fits_kernel(time, hidden):
        raise ValueError(f"local_fc: a T x H = {time} x {hidden} weight row exceeds the kernels' register tile "
                         f"({MAX_TILE} padded values); use local_fc_reference")
    block_t, block_h = triton.next_power_of_2(time), triton.next_power_of_2(hidden)
    return dict(BLOCK_T=block_t, BLOCK_H=block_h, num_warps=NUM_WARPS if block_t * block_h <= 1024 else 2 * NUM_WARPS)


def local_fc_forward(s, w1, b1, w2, b2) -> torch.Tensor:
    """Launch the forward kernel: s (B, 1, T, F) and the weights of eq. 6 -> (B, 1, T, F).

    The weights are made contiguous (a no-op for parameters); s may have any strides.
    """
    batch, _, time, freq = s.shape
    hidden = w1.shape[1]
    out = torch.empty_like(s, memory_format=torch.contiguous_format)
    if out.numel() == 0:
        return out
    local_fc_forward_kernel[(freq, batch)](
        s, w1.contiguous(), b1.contiguous(), w2.contiguous(), b2.contiguous(), out,
        time, hidden,
        s.stride(0), s.stride(2), s.stride(3), out.stride(0), out.stride(2), out.stride(3),
        **_launch_meta(time, hidden),
    )
    LAUNCHES["local_fc_forward"] += 1
    return out


def local_fc_backward(grad, s, w1, b1, w2, b2) -> tuple[torch.Tensor, ...]:
    """Launch the backward kernel: (ds, dw1, db1, dw2, db2), each in its input's dtype. The weight
    gradients sum over the batch as two batched matmuls (einsum) and two sums of tiny tensors."""
    batch, _, time, freq = s.shape
    hidden = w1.shape[1]
    ds = torch.empty_like(s, memory_format=torch.contiguous_format)
    # The kernel fills every (b, f) row of these; with nothing to launch they must be zeros.
    new = torch.empty if ds.numel() > 0 else torch.zeros
    acts, dpre = (new((batch, freq, hidden), device=s.device, dtype=torch.float32) for _ in range(2))
    if ds.numel() > 0:
        local_fc_backward_kernel[(freq, batch)](
            s, w1.contiguous(), b1.contiguous(), w2.contiguous(), grad, ds, acts, dpre,
            time, hidden, freq,
            s.stride(0), s.stride(2), s.stride(3), grad.stride(0), grad.stride(2), grad.stride(3),
            ds.stride(0), ds.stride(2), ds.stride(3),
            **_launch_meta(time, hidden),
        )
        LAUNCHES["local_fc_backward"] += 1
    rows = s[:, 0].float().transpose(1, 2)       # (B, F, T)
    dout = grad[:, 0].float().transpose(1, 2)    # (B, F, T)
    grads = (torch.einsum("bfh,bft->fht", dpre, rows), dpre.sum(dim=0),
             torch.einsum("bft,bfh->fth", dout, acts), dout.sum(dim=0))
    return (ds, *(g.to(w.dtype) for g, w in zip(grads, (w1, b1, w2, b2))))


def _check(s, w1, b1, w2, b2) -> None:
    if s.dim() != 4 or s.shape[1] != 1:
        raise ValueError(f"local_fc: s must be a (B, 1, T, F) map, got shape {tuple(s.shape)}")
    _, _, time, freq = s.shape
    hidden = w1.shape[1] if w1.dim() == 3 else -1
    expected = {"w1": (freq, hidden, time), "b1": (freq, hidden), "w2": (freq, time, hidden), "b2": (freq, time)}
    for name, tensor in zip(expected, (w1, b1, w2, b2)):
        if tuple(tensor.shape) != expected[name] or tensor.device != s.device:
            raise ValueError(f"local_fc: for s of shape {tuple(s.shape)} (T={time}, F={freq}) {name} must have "
                             f"shape (F, H, T) / (F, H) / (F, T, H) / (F, T) = {expected[name]} on {s.device}, "
                             f"got {tuple(tensor.shape)} on {tensor.device}")


@torch.library.custom_op("fastsca::local_fc", mutates_args=())
def _local_fc_op(
    s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
) -> torch.Tensor:
    _check(s, w1, b1, w2, b2)
    if use_triton(s) and fits_kernel(s.shape[2], w1.shape[1]):
        return local_fc_forward(s, w1, b1, w2, b2)
    return local_fc_reference(s, w1, b1, w2, b2).contiguous()


@_local_fc_op.register_fake
def _(s, w1, b1, w2, b2):
    _check(s, w1, b1, w2, b2)
    return torch.empty_like(s, memory_format=torch.contiguous_format)


@torch.library.custom_op("fastsca::local_fc_backward", mutates_args=())
def _local_fc_backward_op(
    grad: torch.Tensor, s: torch.Tensor, w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    if use_triton(s) and fits_kernel(s.shape[2], w1.shape[1]):
        return local_fc_backward(grad, s, w1, b1, w2, b2)
    return local_fc_backward_reference(grad, s, w1, b1, w2, b2)


@_local_fc_backward_op.register_fake
def _(grad, s, w1, b1, w2, b2):
    return tuple(torch.empty_like(t, memory_format=torch.contiguous_format) for t in (s, w1, b1, w2, b2))


def _setup_context(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _backward(ctx, grad):
    return torch.ops.fastsca.local_fc_backward(grad, *ctx.saved_tensors)


_local_fc_op.register_autograd(_backward, setup_context=_setup_context)


def local_fc(
    s: torch.Tensor,   # (B, 1, T, F)
    w1: torch.Tensor,  # (F, H, T), H = T // r
    b1: torch.Tensor,  # (F, H)
    w2: torch.Tensor,  # (F, T, H)
    b2: torch.Tensor,  # (F, T)
) -> torch.Tensor:     # (B, 1, T, F)
    """Eq. 6 as the fused op: the Triton kernels on CUDA, local_fc_reference on CPU."""
    return torch.ops.fastsca.local_fc(s, w1, b1, w2, b2)


def local_fc_reference(
    s: torch.Tensor,   # (B, 1, T, F)
    w1: torch.Tensor,  # (F, H, T), H = T // r
    b1: torch.Tensor,  # (F, H)
    w2: torch.Tensor,  # (F, T, H)
    b2: torch.Tensor,  # (F, T)
) -> torch.Tensor:     # (B, 1, T, F)
    """Local attention logits M_local, accumulated in fp32."""
    rows = s[:, 0].float().transpose(1, 2)                                           # (B, F, T)
    hidden = torch.relu(torch.einsum("bft,fht->bfh", rows, w1.float()) + b1.float())  # (B, F, H)
    out = torch.einsum("bfh,fth->bft", hidden, w2.float()) + b2.float()              # (B, F, T)
    return out.transpose(1, 2).unsqueeze(1).to(s.dtype)


def local_fc_backward_reference(
    grad: torch.Tensor,   # (B, 1, T, F), dL/dout
    s: torch.Tensor,      # (B, 1, T, F)
    w1: torch.Tensor, b1: torch.Tensor, w2: torch.Tensor, b2: torch.Tensor,
) -> tuple[torch.Tensor, ...]:
    """(ds, dw1, db1, dw2, db2) of local_fc_reference in plain PyTorch, each in its input's dtype (for
    custom ops' bodies, where autograd does not run)."""
    rows = s[:, 0].float().transpose(1, 2)                                      # (B, F, T)
    dout = grad[:, 0].float().transpose(1, 2)                                   # (B, F, T)
    pre = torch.einsum("bft,fht->bfh", rows, w1.float()) + b1.float()           # (B, F, H)
    dpre = torch.einsum("bft,fth->bfh", dout, w2.float()) * (pre > 0)           # (B, F, H)
    ds = torch.einsum("bfh,fht->bft", dpre, w1.float()).transpose(1, 2).unsqueeze(1)
    grads = (ds, torch.einsum("bfh,bft->fht", dpre, rows), dpre.sum(dim=0),
             torch.einsum("bft,bfh->fth", dout, torch.relu(pre)), dout.sum(dim=0))
    return tuple(g.to(t.dtype).contiguous() for g, t in zip(grads, (s, w1, b1, w2, b2)))
