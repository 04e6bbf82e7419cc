"""The residual block of the AT-SCA backbone (paper §4.2; docs/design.md, "Backbone and pooling plan").

conv3x3-BN-ReLU-conv3x3-BN on the main path, conv1x1-BN on the shortcut, sum, ReLU, then a max-pool.
Attention, where the block has it, acts on the main path's output before the sum (the SE-Net and
CBAM convention; the paper's Fig. 2 does not say which side of the sum it sits on).

In training mode a block built with `fused=True` runs as the fused passes of kernels/residual_block.py (the
`fastsca::block_*` ops): each convolution also returns the per-channel sums its BatchNorm needs, BN1-ReLU is
applied as conv2 reads its input (the normalised map is never written), and one tail pass does both paths'
BatchNorm, the sum, the ReLU and the max-pool. Its submodules, and so its state_dict and checkpoints, are the
reference's; the BatchNorm statistics, running ones included, are nn.BatchNorm2d's.
"""
import torch
import torch.nn.functional as F
from torch import nn

from fastsca.backbone_plan import implicit_gemm
from kernels.block_reference import activate
from kernels.residual_block import batch_norm_affine, conv_forward, tail_forward


class ResidualBlock(nn.Module):
    """One residual block with optional attention on the main path and a (time, freq) max-pool after."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        attention: nn.Module,
        pool: tuple[int, int],
        fused: bool = False,
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_channels)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.attention = attention
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
            nn.BatchNorm2d(out_channels),
        )
        self.pool = nn.MaxPool2d(pool) if pool != (1, 1) else nn.Identity()
        self.pool_size = tuple(pool)
        self.fused = fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # x: (B, C_in, T, F)
        """The fused passes when built fused and training (`_batch_statistics`); the reference otherwise. In eval
        mode BatchNorm normalises with its running statistics: there are no batch statistics for a convolution to
        sum, and each BatchNorm is a fixed affine map that Inductor folds into one pointwise op beside its
        neighbours, so the fused passes would save nothing there."""
        if self.fused and self._batch_statistics():
            return self._fused_forward(x)
        main = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))   # (B, C, T, F)
        main = self.attention(main)
        return self.pool(self.act(main + self.shortcut(x)))           # (B, C, T/pt, F/pf)

    def _batch_statistics(self) -> bool:
        """Every BatchNorm of the block normalises with batch statistics and updates running ones (what the fused
        path computes): the block and its BatchNorms in training mode, tracking running statistics."""
        norms = (self.bn1, self.bn2, self.shortcut[1])
        return self.training and all(bn.training and bn.track_running_stats for bn in norms)

    def _fused_forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, C_in, T, F)
        if torch.is_autocast_enabled(x.device.type):   # the convolutions' input, as autocast would cast it
            x = x.to(torch.get_autocast_dtype(x.device.type))
        batch, c_in, t, f = x.shape
        pixels = batch * t * f
        c_out = self.conv1.out_channels
        shortcut_conv, shortcut_bn = self.shortcut
        y1, sum1, squares1 = _convolution(x, self.conv1.weight, None, None,
                                          implicit_gemm(c_in, c_out, 3, pixels, False))   # (B, C, T, F)
        ys, sum_s, squares_s = _convolution(x, shortcut_conv.weight, None, None,
                                            implicit_gemm(c_in, c_out, 1, pixels, False))
        scale1, shift1 = batch_norm_affine(sum1, squares1, pixels, self.bn1)             # (C,)
        y2, sum2, squares2 = _convolution(y1, self.conv2.weight, scale1, shift1,
                                          implicit_gemm(c_out, c_out, 3, pixels, True))   # (B, C, T, F)
        scale2, shift2 = batch_norm_affine(sum2, squares2, pixels, self.bn2)
        scale_s, shift_s = batch_norm_affine(sum_s, squares_s, pixels, shortcut_bn)
        if isinstance(self.attention, nn.Identity):
            out, _ = tail_forward(y2, scale2, shift2, ys, scale_s, shift_s, list(self.pool_size))
            return out                                                # (B, C, T/pt, F/pf)
        main = y2.float() * scale2.view(1, -1, 1, 1) + shift2.view(1, -1, 1, 1)   # BN2: one pointwise op
        main = self.attention(main.to(y2.dtype))
        out, _ = tail_forward(main, None, None, ys, scale_s, shift_s, list(self.pool_size))
        return out


def _convolution(x: torch.Tensor, weight: torch.Tensor, scale: torch.Tensor | None, shift: torch.Tensor | None,
                 triton: bool) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(y, sum y, sum y*y) of y = conv(relu(x * scale + shift) or x, weight): the fused op where the per-layer rule
    chose the Triton implicit GEMM; elsewhere the same in plain torch, which torch.compile hands to cuDNN with
    the activation and the two sums as Inductor kernels fused around it (and autograd differentiates), so a
    compute-bound layer pays cuDNN's passes and nothing eager."""
    if triton:
        y, sums = conv_forward(x, weight, scale, shift, True)   # sums (2, C): rows of one tensor
        return y, sums[0], sums[1]
    if scale is not None:
        x = activate(x, scale, shift)
    y = F.conv2d(x, weight.to(x.dtype), padding=weight.shape[-1] // 2)
    dims = (0, 2, 3)
    return y, y.sum(dims, dtype=torch.float32), y.float().square().sum(dims)
