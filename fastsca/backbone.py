"""The residual block of the AT-SCA backbone (paper §4.2; docs/model.md).

conv3x3-BN-ReLU-conv3x3-BN on the main path, conv1x1-BN on the shortcut, sum, ReLU, then a max-pool.
Attention, where the block has it, acts on the main path's output before the sum (the SE-Net and
CBAM convention; the paper's Fig. 2 does not say which side of the sum it sits on).
"""
import torch
from torch import nn


class ResidualBlock(nn.Module):
    """One residual block with optional attention on the main path and a (time, freq) max-pool after."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        attention: nn.Module,
        pool: tuple[int, int],
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

    def forward(self, x: torch.Tensor) -> torch.Tensor:          # x: (B, C_in, T, F)
        main = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))   # (B, C, T, F)
        main = self.attention(main)
        return self.pool(self.act(main + self.shortcut(x)))           # (B, C, T/pt, F/pf)
