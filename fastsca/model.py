"""The AT-SCA model (paper Fig. 2): input BatchNorm, seven residual blocks, MIL pooling (eq. 2 attention by default).

`build_model(name_or_config, options)` makes any preset of fastsca.config, run as `options` say
(fastsca/run_options.py: the fused attention ops and fused backbone, or the reference). Input log-mel
(B, 1, T, F) with T = config.input_frames and F = config.n_mels; output clip probabilities (B, K) and
frame-level probabilities (B, T', K) at 10 Hz for the default 400-frame input.
"""
from dataclasses import replace
from typing import NamedTuple

import torch
from torch import nn

from fastsca.attention import build_attention
from fastsca.backbone import ResidualBlock
from fastsca.config import ModelConfig
from fastsca.pooling import build_pooling
from fastsca.run_options import RunOptions


class TaggingOutput(NamedTuple):
    """What the model returns: the bag (clip) prediction of its MIL pooling (eq. 2) and its instance (frame) predictions."""

    clip: torch.Tensor    # (B, K)
    frame: torch.Tensor   # (B, T', K)


class ATSCA(nn.Module):
    """Residual CNN with attention in its last `attention_depth` blocks and MIL pooling (`config.pooling`)."""

    def __init__(self, config: ModelConfig, options: RunOptions = RunOptions()) -> None:
        super().__init__()
        self.config = config
        self.options = options
        self.input_norm = nn.BatchNorm2d(config.n_mels)   # PANNs' bn0: one BatchNorm per mel bin
        blocks, in_channels = [], 1
        for index, (channels, pool, (time_steps, freq_bins)) in enumerate(
                zip(config.channels, config.pools, config.block_input_sizes())):
            attention = nn.Identity()
            if index in config.attention_blocks:
                attention = build_attention(
                    arrangement=config.arrangement,
                    channels=channels,
                    time_steps=time_steps,
                    freq_bins=freq_bins,
                    use_global=config.spatial_global,
                    use_local=config.spatial_local,
                    rd_ratio=config.rd_ratio,
                    global_mid_channels=config.global_mid_channels,
                    global_kernel_size=config.global_kernel_size,
                    fused=options.fused_attention,
                )
            blocks.append(ResidualBlock(in_channels, channels, attention, pool, fused=options.fused_backbone))
            in_channels = channels
        self.blocks = nn.Sequential(*blocks)
        self.pooling = build_pooling(config.pooling, in_channels, config.num_classes, config.pool_logit_clamp)

    def forward(self, log_mel: torch.Tensor) -> TaggingOutput:   # log_mel: (B, 1, T, F)
        x = self.input_norm(log_mel.transpose(1, 3)).transpose(1, 3)   # normalise each mel bin
        x = self.blocks(x)                                             # (B, C, T', F')
        frames = x.mean(dim=3).transpose(1, 2)                         # x_t: (B, T', C)
        clip, frame = self.pooling(frames)
        return TaggingOutput(clip, frame)


def build_model(name_or_config: str | ModelConfig, options: RunOptions = RunOptions(), **overrides) -> ATSCA:
    """An AT-SCA model from a preset name (with optional field overrides) or a ModelConfig, run as `options` say."""
    if isinstance(name_or_config, str):
        config = ModelConfig.from_name(name_or_config, **overrides)
    elif overrides:
        config = replace(name_or_config, **overrides)
    else:
        config = name_or_config
    return ATSCA(config, options)
