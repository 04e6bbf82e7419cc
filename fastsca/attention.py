"""Spatial and channel-wise attention (paper §3, eqs. 4-10) in every arrangement of §3.3.

Blocks: `GlobalSpatialBranch` (eq. 5), `LocalSpatialBranch` (eq. 6), `SpatialAttention` (eqs. 4, 7),
`ChannelAttention` (eqs. 8-9), and the arrangements that compose them: spatial only (AT-S), channel
only (AT-C), SCA (eq. 10), CSA and the parallel C//S. The heavy steps over the feature map F run
through four ops (`AttentionOps`): the fused Triton ones of `kernels` or their PyTorch references.
Each arrangement reads F three times and writes it once; F' (the spatially weighted map) is never
materialised. Differences from the paper: none in the maths; the module returns F'' = M_c * M_s * F
in one gate instead of two successive products (equal in exact arithmetic).
"""
from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

import kernels


@dataclass(frozen=True)
class AttentionOps:
    """The four feature-map ops an attention arrangement is made of (see kernels/)."""

    channel_pool: Callable
    local_fc: Callable
    spatial_squeeze: Callable
    gate: Callable


REFERENCE_OPS = AttentionOps(
    channel_pool=kernels.channel_pool_reference,
    local_fc=kernels.local_fc_reference,
    spatial_squeeze=kernels.spatial_squeeze_reference,
    gate=kernels.gate_reference,
)
FUSED_OPS = AttentionOps(
    channel_pool=kernels.channel_pool,
    local_fc=kernels.local_fc,
    spatial_squeeze=kernels.spatial_squeeze,
    gate=kernels.gate,
)


class GlobalSpatialBranch(nn.Module):
    """Eq. 5: M_global = conv5x5(ReLU(BN(conv5x5(S)))), on the (T, F) descriptor S."""

    def __init__(
        self,
        mid_channels: int,
        kernel_size: int,
    ) -> None:
        super().__init__()
        padding = kernel_size // 2
        self.conv1 = nn.Conv2d(1, mid_channels, kernel_size, padding=padding, bias=False)
        self.bn = nn.BatchNorm2d(mid_channels)
        self.act = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(mid_channels, 1, kernel_size, padding=padding)

    def forward(self, s: torch.Tensor) -> torch.Tensor:   # s: (B, 1, T, F)
        return self.conv2(self.act(self.bn(self.conv1(s))))  # (B, 1, T, F)


class LocalSpatialBranch(nn.Module):
    """Eq. 6: for every frequency row f its own MLP over time, T -> T/r -> T, with biases and ReLU."""

    def __init__(
        self,
        time_steps: int,
        freq_bins: int,
        rd_ratio: int,
        ops: AttentionOps,
    ) -> None:
        super().__init__()
        hidden = max(1, time_steps // rd_ratio)
        self.ops = ops
        self.w1 = nn.Parameter(torch.empty(freq_bins, hidden, time_steps))   # W_{f,1}: (T/r, T) per row
        self.b1 = nn.Parameter(torch.empty(freq_bins, hidden))
        self.w2 = nn.Parameter(torch.empty(freq_bins, time_steps, hidden))   # W_{f,2}: (T, T/r) per row
        self.b2 = nn.Parameter(torch.empty(freq_bins, time_steps))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default init, row by row: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
        for weight, bias in ((self.w1, self.b1), (self.w2, self.b2)):
            bound = weight.shape[-1] ** -0.5
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)

    def forward(self, s: torch.Tensor) -> torch.Tensor:   # s: (B, 1, T, F)
        return self.ops.local_fc(s, self.w1, self.b1, self.w2, self.b2)  # (B, 1, T, F)


class SpatialAttention(nn.Module):
    """Eq. 7 before the sigmoid: logit_s = M_global(S) + M_local(S), from the descriptor S of eq. 4."""

    def __init__(
        self,
        time_steps: int,
        freq_bins: int,
        use_global: bool,
        use_local: bool,
        rd_ratio: int,
        global_mid_channels: int,
        global_kernel_size: int,
        ops: AttentionOps,
    ) -> None:
        super().__init__()
        branches = []
        if use_global:
            branches.append(GlobalSpatialBranch(global_mid_channels, global_kernel_size))
        if use_local:
            branches.append(LocalSpatialBranch(time_steps, freq_bins, rd_ratio, ops))
        self.branches = nn.ModuleList(branches)

    def forward(self, s: torch.Tensor) -> torch.Tensor:   # s: (B, 1, T, F) -> logit_s (B, 1, T, F)
        return sum(branch(s) for branch in self.branches)


class ChannelAttention(nn.Module):
    """Eq. 9 before the sigmoid: logit_c = W1 ReLU(W0 Z + b0) + b1, the squeeze-and-excitation MLP."""

    def __init__(
        self,
        channels: int,
        rd_ratio: int,
        act_layer: type[nn.Module] = nn.ReLU,
    ) -> None:
        super().__init__()
        hidden = max(1, channels // rd_ratio)
        self.fc1 = nn.Linear(channels, hidden)
        self.act = act_layer()
        self.fc2 = nn.Linear(hidden, channels)

    def forward(self, z: torch.Tensor) -> torch.Tensor:   # z: (B, C) -> logit_c (B, C)
        return self.fc2(self.act(self.fc1(z)))


class Arrangement(nn.Module):
    """An attention arrangement: its spatial and channel parts (either may be None) and the ops it runs."""

    def __init__(
        self,
        spatial: SpatialAttention | None,
        channel: ChannelAttention | None,
        ops: AttentionOps,
    ) -> None:
        super().__init__()
        self.spatial, self.channel, self.ops = spatial, channel, ops


class SpatialOnly(Arrangement):
    """AT-S: F'' = sigma(logit_s(mean_c F)) * F."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, C, T, F)
        logit_s = self.spatial(self.ops.channel_pool(x, None))           # eqs. 4-7
        return self.ops.gate(x, logit_s, None, False)


class ChannelOnly(Arrangement):
    """AT-C: F'' = sigma(logit_c(mean_tf F)) * F."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, C, T, F)
        logit_c = self.channel(self.ops.spatial_squeeze(x, None))        # eqs. 8-9
        return self.ops.gate(x, None, logit_c, False)


class SpatialThenChannel(Arrangement):
    """SCA, eq. 10: F' = M_s * F, F'' = M_c(F') * F'; Z is squeezed from F' without writing F'."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, C, T, F)
        logit_s = self.spatial(self.ops.channel_pool(x, None))           # (B, 1, T, F)
        logit_c = self.channel(self.ops.spatial_squeeze(x, logit_s))     # (B, C), Z from F'
        return self.ops.gate(x, logit_s, logit_c, False)


class ChannelThenSpatial(Arrangement):
    """CSA: F' = M_c(F) * F, F'' = M_s(F') * F'; S is the mean of the channel-weighted map."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, C, T, F)
        logit_c = self.channel(self.ops.spatial_squeeze(x, None))        # (B, C)
        logit_s = self.spatial(self.ops.channel_pool(x, torch.sigmoid(logit_c)))  # S from F'
        return self.ops.gate(x, logit_s, logit_c, False)


class ParallelChannelSpatial(Arrangement):
    """C//S: both masks from F, F'' = sigma(logit_s + logit_c) * F (§3.3)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, C, T, F)
        logit_s = self.spatial(self.ops.channel_pool(x, None))
        logit_c = self.channel(self.ops.spatial_squeeze(x, None))
        return self.ops.gate(x, logit_s, logit_c, True)


ARRANGEMENT_REGISTRY: dict[str, type[Arrangement]] = {
    "spatial": SpatialOnly,
    "channel": ChannelOnly,
    "sca": SpatialThenChannel,
    "csa": ChannelThenSpatial,
    "cps": ParallelChannelSpatial,
}


def build_attention(
    arrangement: str,
    channels: int,
    time_steps: int,
    freq_bins: int,
    use_global: bool,
    use_local: bool,
    rd_ratio: int,
    global_mid_channels: int,
    global_kernel_size: int,
    ops: AttentionOps,
) -> Arrangement:
    """The attention module of one residual block, by arrangement name."""
    if arrangement not in ARRANGEMENT_REGISTRY:
        raise ValueError(f"unknown attention arrangement {arrangement!r}; valid: {', '.join(ARRANGEMENT_REGISTRY)}")
    spatial = None
    if arrangement != "channel":
        spatial = SpatialAttention(time_steps, freq_bins, use_global, use_local, rd_ratio,
                                   global_mid_channels, global_kernel_size, ops)
    channel = ChannelAttention(channels, rd_ratio) if arrangement != "spatial" else None
    return ARRANGEMENT_REGISTRY[arrangement](spatial, channel, ops)
