"""Shared pieces of the SCA kernels (eqs. 4-10): Triton tile helpers, strides, layouts, when Triton runs.

Every kernel sees the feature map F as B contiguous (C, N) planes, N = T * F: C rows of N (NCHW) or
N rows of C (channels_last), neither copied. Offsets come from compile-time C and N, not from runtime
strides, so Triton can prove 16-byte alignment; where an NCHW row is not a multiple of 16 bytes (bf16
at N = 100), the reductions read G channels as one row (`row_group`). The two reductions the module
needs, over channels (eq. 4) and over space (eq. 8), are one helper each; the backward passes reuse
them with the upstream gradient as the weight.
"""
import math
import os
from collections import Counter

import torch
import triton
import triton.language as tl
from triton import knobs

LAUNCHES: Counter = Counter()
"""Host launches per kernel ("gate_forward", "gate_input_grad", ...): lets tests prove the Triton path ran."""

_INTERPRETED = bool(knobs.runtime.interpret)
"""Triton picks interpreter or compiler when a kernel is decorated, i.e. when this package is imported;
CPU tensors can only run Triton if TRITON_INTERPRET=1 was set by then (see tests/conftest.py)."""


def use_triton(x: torch.Tensor) -> bool:
    """Launch the Triton kernel for x: always on CUDA, on CPU only under TRITON_INTERPRET=1."""
    if x.is_cuda:
        return True
    return x.device.type == "cpu" and _INTERPRETED and os.environ.get("TRITON_INTERPRET", "0") == "1"


def output_format(x: torch.Tensor) -> torch.memory_format:
    """The memory format of a (B, C, T, F) output or gradient that matches x (one rule for every path)."""
    if not x.is_contiguous() and x.is_contiguous(memory_format=torch.channels_last):
        return torch.channels_last
    return torch.contiguous_format


def map_strides(x: torch.Tensor) -> tuple[torch.Tensor, int, int, int]:
    """x (B, C, T, F) as (B, C, N): (x, stride_b, stride_c, stride_n), with N = T * F.

    NCHW (stride_t = F) and channels_last (stride_t = F * C) both merge T and F, and so do expanded
    gradients (all strides 0). Only a map whose T and F cannot merge is copied, once.
    """
    _, _, t, f = x.shape
    if f == 1:
        stride_n = x.stride(2)
    elif t == 1 or x.stride(2) == f * x.stride(3):
        stride_n = x.stride(3)
    else:
        x = x.contiguous()
        stride_n = x.stride(3)
    return x, x.stride(0), x.stride(1), stride_n


def plane(x: torch.Tensor) -> tuple[torch.Tensor, int, bool]:
    """x (B, C, T, F) as the contiguous (C, N) planes the kernels index: (x, stride_b, channels_last).

    NCHW planes are C rows of N, channels_last planes N rows of C; the kernels compute offsets from the
    compile-time C and N (not from runtime strides), so Triton can prove 16-byte alignment. A map whose
    plane is contiguous in neither order (an expanded gradient, a slice) is copied once.
    """
    x, stride_b, stride_c, stride_n = map_strides(x)
    channels, n = x.shape[1], x.shape[2] * x.shape[3]
    if (channels == 1 or stride_c == n) and (n == 1 or stride_n == 1):
        return x, stride_b, False
    if (n == 1 or stride_n == channels) and (channels == 1 or stride_c == 1):
        return x, stride_b, True
    x = x.contiguous()
    return x, x.stride(0), False


MAX_GROUPED_ROW = 512
"""Longest row (G * N values, padded to a power of two) a grouped-row kernel holds in one tile."""


def row_group(x: torch.Tensor, channels_last: bool) -> int:
    """G: how many NCHW channel rows of N values the reductions read as one row of G * N, so that every
    row starts on a 16-byte boundary (bf16 at N = 100: rows of 200 B, G = 2 makes them 400 B). 1 where
    rows are already aligned, for channels_last (C is the contiguous axis), and where C is not a multiple
    of G or the grouped row would not fit one tile."""
    channels, n = x.shape[1], x.shape[2] * x.shape[3]
    row_bytes = n * x.element_size()
    group = 16 // math.gcd(row_bytes, 16)
    if channels_last or group == 1 or channels % group or triton.next_power_of_2(group * n) > MAX_GROUPED_ROW:
        return 1
    return group


def check_map(name: str, x: torch.Tensor) -> None:
    """ValueError unless x is a floating (B, C, T, F) feature map."""
    if x.dim() != 4:
        raise ValueError(f"{name}: x must be a (B, C, T, F) feature map, got shape {tuple(x.shape)}")
    if not x.is_floating_point():
        raise ValueError(f"{name}: x must be floating point, got {x.dtype}")


def check_sums_grad(name: str, grad: torch.Tensor, sums_grad: tuple | None) -> None:
    """ValueError unless sums_grad is None or (y, d_sum, d_squares): y the forward's output, of grad's shape and
    dtype, and one entry per channel of grad in each vector (a convolution's backward passes' operand)."""
    if sums_grad is None:
        return
    y, d_sum, d_squares = sums_grad
    channels = grad.shape[1]
    if y.shape != grad.shape or y.dtype != grad.dtype or d_sum.numel() != channels or d_squares.numel() != channels:
        raise ValueError(f"{name}: sums_grad must be (y, d_sum, d_squares) with y the forward's output "
                         f"{tuple(grad.shape)} {grad.dtype} and {channels} entries in each vector, got "
                         f"{tuple(y.shape)} {y.dtype}, {d_sum.numel()} and {d_squares.numel()}")


@triton.jit
def plane_offsets(offs_c, offs_n, C: tl.constexpr, N: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """[BLOCK_C, BLOCK_N] element offsets of a (C, N) plane, and the in-map mask."""
    mask = (offs_c[:, None] < C) & (offs_n[None, :] < N)
    if CHANNELS_LAST:
        return offs_n[None, :] * C + offs_c[:, None], mask
    else:
        return offs_c[:, None] * N + offs_n[None, :], mask


@triton.jit
def load_plane(ptr, b, stride_b, offs_c, offs_n, C: tl.constexpr, N: tl.constexpr, CHANNELS_LAST: tl.constexpr):
    """A [BLOCK_C, BLOCK_N] fp32 tile of plane b of a (B, C, N) map (see `plane`), zero outside the map."""
    offs, mask = plane_offsets(offs_c, offs_n, C, N, CHANNELS_LAST)
    return tl.load(ptr + b * stride_b + offs, mask=mask, other=0.0).to(tl.float32)


@triton.jit
def grouped_index(offs_r, offs_m, N: tl.constexpr, G: tl.constexpr):
    """Channel [BLOCK_R, BLOCK_M] and column [BLOCK_M] of the values of grouped rows offs_r (G channels
    of N values each, see row_group) at positions offs_m < G * N."""
    return offs_r[:, None] * G + offs_m[None, :] // N, offs_m % N


@triton.jit
def load_grouped(ptr, b, stride_b, offs_r, offs_m, C: tl.constexpr, N: tl.constexpr, G: tl.constexpr):
    """A [BLOCK_R, BLOCK_M] fp32 tile of grouped rows of an NCHW plane: offsets r * G * N + m, which
    Triton proves 16-byte aligned where G * N values are a multiple of 16 bytes."""
    mask = (offs_r[:, None] < C // G) & (offs_m[None, :] < G * N)
    return tl.load(ptr + b * stride_b + offs_r[:, None] * (G * N) + offs_m[None, :], mask=mask,
                   other=0.0).to(tl.float32)


@triton.jit
def fold_groups(colsum, offs_m, N: tl.constexpr, G: tl.constexpr, BLOCK_M: tl.constexpr):
    """Per-column sums over grouped rows [BLOCK_M] -> per spatial column n: sum_j colsum[j * N + n]
    (valid at offs_m < N)."""
    total = colsum
    for j in tl.static_range(1, G):
        total += tl.gather(colsum, tl.minimum(offs_m + j * N, BLOCK_M - 1), 0)
    return total


@triton.jit
def group_sum(value, offs_m, N: tl.constexpr, j: tl.constexpr):
    """Row sums of a [BLOCK_R, BLOCK_M] grouped tile over the columns of each row's j-th channel:
    [BLOCK_R], entry r the sum for channel r * G + j (callers loop j over tl.static_range(G))."""
    return tl.sum(tl.where(((offs_m // N) == j)[None, :], value, 0.0), axis=1)


@triton.jit
def load_vector(ptr, b, offs, size, stride_b, stride, PRESENT: tl.constexpr):
    """Entries offs of row b of a (B, size) tensor in fp32 (zero past the end); all ones if not PRESENT."""
    if PRESENT:
        return tl.load(ptr + b * stride_b + offs * stride, mask=offs < size, other=0.0).to(tl.float32)
    else:
        return tl.full(offs.shape, 1.0, tl.float32)


@triton.jit
def channel_sum(x_ptr, a_ptr, b, sxb, sab, offs_n, C: tl.constexpr, N: tl.constexpr, X_CL: tl.constexpr,
                HAS_A: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """sum_c a[b, c] * x[b, c, n] for the columns offs_n, in fp32 (a = 1 without HAS_A; a contiguous rows).

    Eq. 4 (a = channel weight), and the logit gradient of eq. 8 (a = dZ). Accumulates a full tile
    and reduces once at the end: one cross-thread reduction per program instead of one per chunk.
    """
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    for c0 in range(0, C, BLOCK_C):
        offs_c = c0 + tl.arange(0, BLOCK_C)
        x = load_plane(x_ptr, b, sxb, offs_c, offs_n, C, N, X_CL)
        a = load_vector(a_ptr, b, offs_c, C, sab, 1, HAS_A)
        acc += x * a[:, None]
    return tl.sum(acc, axis=0)


@triton.jit
def space_sum(x_ptr, g_ptr, b, sxb, sgb, offs_c, C: tl.constexpr, N: tl.constexpr, X_CL: tl.constexpr,
              HAS_G: tl.constexpr, SIGMOID_G: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_N: tl.constexpr):
    """sum_n g[b, n] * x[b, c, n] for the channels offs_c, in fp32; g (contiguous rows) is sigmoid'ed if
    SIGMOID_G, 1 without HAS_G.

    Eq. 8 (g = sigmoid(logit_s)), and the channel-weight gradient of eq. 4 (g = dS).
    """
    acc = tl.zeros((BLOCK_C, BLOCK_N), dtype=tl.float32)
    for n0 in range(0, N, BLOCK_N):
        offs_n = n0 + tl.arange(0, BLOCK_N)
        x = load_plane(x_ptr, b, sxb, offs_c, offs_n, C, N, X_CL)
        g = load_vector(g_ptr, b, offs_n, N, sgb, 1, HAS_G)
        if HAS_G and SIGMOID_G:
            g = tl.sigmoid(g)
        acc += x * g[None, :]
    return tl.sum(acc, axis=1)
