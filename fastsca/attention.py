"""Spatial and channel-wise attention (paper §3, eqs. 4-10) in every arrangement of §3.3.

Blocks: `GlobalSpatialBranch` (eq. 5), `LocalSpatialBranch` (eq. 6), `SpatialAttention` (eqs. 4, 7),
`ChannelAttention` (eqs. 8-9), and `Attention`, which composes them as its arrangement
(fastsca.config.Arrangement: which masks, in what order, how combined) says. It runs either the
reference (kernels/reference.py, the equations in plain PyTorch) or, fused, the whole arrangement as
one autograd unit (`kernels.attention`) whose forward reads F three times and writes it once (F', the
spatially weighted map, is never materialised) and whose backward writes dF once; only its F-sized
passes are opaque ops, the sub-networks between them are traced by torch.compile (docs/kernels.md gives
the bytes of each arrangement). Differences from the paper: none in the maths; the module returns
F'' = M_c * M_s * F in one gate instead of two successive products (equal in exact arithmetic).
"""
import torch
from torch import nn

import kernels
from fastsca.config import Arrangement, arrangement_of
from kernels import reference
from kernels.attention import AttentionParams
from kernels.subnets import ChannelParams, GlobalParams, LocalParams


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

    def lr_scales(self) -> list[tuple[nn.Parameter, float]]:
        """Learning-rate multipliers for the optimiser (train/optim.py): the last conv at 1 / its fan-in (M k^2).
        Its input is M maps of ReLU(BN(.)), non-negative and of unit scale, and Adam moves each of its M k^2
        weights by about lr per step whatever the gradient's size: a push to open the gate everywhere raises the
        logit by about lr x M k^2 x mean ReLU per step (0.3 at lr 3e-3), and block 7's mask saturated (94 % of
        sigma(logit_s) above 0.99 after the default CPU run, and from step 100 on, where the gradient through the
        sigmoid is gone). At lr / fan-in the conv moves the logit like one bias does (results/sed/masks.md)."""
        scale = 1.0 / self.conv2.weight[0].numel()
        return [(self.conv2.weight, scale), (self.conv2.bias, scale)]

    def unit_params(self) -> GlobalParams:
        """The tensors the fused unit takes for this branch."""
        bn = self.bn
        return GlobalParams(self.conv1.weight, bn.weight, bn.bias, bn.running_mean, bn.running_var,
                            self.conv2.weight, self.conv2.bias)

    def update_running_stats(self, mean: torch.Tensor, var: torch.Tensor, count: int) -> None:
        """What nn.BatchNorm2d's training forward does to its buffers, given the batch mean and biased
        variance over count values per channel (the fused unit computes them but does not mutate buffers)."""
        bn = self.bn
        with torch.no_grad():
            bn.num_batches_tracked.add_(1)
            momentum = bn.momentum if bn.momentum is not None else 1.0 / bn.num_batches_tracked.item()
            bn.running_mean.lerp_(mean.to(bn.running_mean.dtype), momentum)
            bn.running_var.lerp_((var * (count / max(count - 1, 1))).to(bn.running_var.dtype), momentum)


class LocalSpatialBranch(nn.Module):
    """Eq. 6: for every frequency row f its own MLP over time, T -> T/r -> T, with biases and ReLU."""

    def __init__(
        self,
        time_steps: int,
        freq_bins: int,
        rd_ratio: int,
    ) -> None:
        super().__init__()
        hidden = max(1, time_steps // rd_ratio)
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
        return reference.local_fc(s, self.w1, self.b1, self.w2, self.b2)  # (B, 1, T, F)

    def unit_params(self) -> LocalParams:
        """The tensors the fused unit takes for this branch."""
        return LocalParams(self.w1, self.b1, self.w2, self.b2)


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
    ) -> None:
        super().__init__()
        branches = []
        if use_global:
            branches.append(GlobalSpatialBranch(global_mid_channels, global_kernel_size))
        if use_local:
            branches.append(LocalSpatialBranch(time_steps, freq_bins, rd_ratio))
        self.branches = nn.ModuleList(branches)

    @property
    def global_branch(self) -> GlobalSpatialBranch | None:
        return next((b for b in self.branches if isinstance(b, GlobalSpatialBranch)), None)

    @property
    def local_branch(self) -> LocalSpatialBranch | None:
        return next((b for b in self.branches if isinstance(b, LocalSpatialBranch)), None)

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

    def unit_params(self) -> ChannelParams:
        """The tensors the fused unit takes for the MLP."""
        return ChannelParams(self.fc1.weight, self.fc1.bias, self.fc2.weight, self.fc2.bias)


class Attention(nn.Module):
    """The attention module of one residual block: its arrangement, its spatial and channel parts (None
    where the arrangement has no such mask), and whether it runs fused.

    The reference path spells the arrangement out with kernels/reference.py; the fused path runs the
    same maths as one autograd node (so F gets one gradient, written once).
    """

    def __init__(
        self,
        arrangement: Arrangement,
        spatial: SpatialAttention | None,
        channel: ChannelAttention | None,
        fused: bool,
    ) -> None:
        super().__init__()
        if channel is not None and not isinstance(channel.act, nn.ReLU) and fused:
            raise ValueError("the fused attention unit implements the channel MLP with ReLU; use fused=False")
        self.arrangement, self.spatial, self.channel, self.fused = arrangement, spatial, channel, fused

    def forward(self, x: torch.Tensor) -> torch.Tensor:   # x: (B, C, T, F)
        if not self.fused:
            return reference.attention(x, self.arrangement, self.spatial, self.channel)   # eqs. 4-10
        out, mean, var = kernels.attention(x, self.arrangement, self.unit_params(), bn_training=self.training)
        global_branch = self.spatial.global_branch if self.spatial is not None else None
        if global_branch is not None and self.training:
            global_branch.update_running_stats(mean, var, x.shape[0] * x.shape[2] * x.shape[3])
        return out

    def unit_params(self) -> AttentionParams:
        """The sub-networks as the fused unit takes them."""
        global_branch = self.spatial.global_branch if self.spatial is not None else None
        local = self.spatial.local_branch if self.spatial is not None else None
        return AttentionParams(
            global_branch=global_branch.unit_params() if global_branch is not None else None,
            local=local.unit_params() if local is not None else None,
            channel=self.channel.unit_params() if self.channel is not None else None,
            bn_eps=global_branch.bn.eps if global_branch is not None else 1e-5,
        )


def build_attention(
    *,
    arrangement: str,
    channels: int,
    time_steps: int,
    freq_bins: int,
    use_global: bool,
    use_local: bool,
    rd_ratio: int,
    global_mid_channels: int,
    global_kernel_size: int,
    fused: bool,
) -> Attention:
    """The attention module of one residual block, by arrangement name (fastsca.config.ATTENTION_ARRANGEMENTS)."""
    described = arrangement_of(arrangement)
    spatial = None
    if described.spatial:
        spatial = SpatialAttention(time_steps, freq_bins, use_global, use_local, rd_ratio,
                                   global_mid_channels, global_kernel_size)
    channel = ChannelAttention(channels, rd_ratio) if described.channel else None
    return Attention(described, spatial, channel, fused)
