# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Decoder blocks of AXUNet (MANet's DeBlock, from LinkNet) and its segmentation head."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from monai.networks.blocks import Convolution
from torch import nn

__all__ = ["DeBlock", "SegmentationHead", "resize_to"]

SPATIAL_DIMS = 2
#: DeBlock squeezes its input to ``in_channels // 4`` before upsampling (LinkNet/MANet).
DEBLOCK_REDUCTION = 4
#: Width of MANet's head.
HEAD_CHANNELS = 32
#: initial probability of every output (see :class:`SegmentationHead`): about the tumour share of brain voxels
PRIOR_PROBABILITY = 0.01


def _upsample_conv(in_channels: int, out_channels: int, kernel_size: int, norm: str | None) -> Convolution:
    """Transposed conv (stride 2, padding 1) + optional norm + ReLU that exactly doubles H and W.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: 3 (DeBlock) or 4 (the head); ``output_padding = 4 - kernel_size`` makes the output ``2H x 2W``.
        norm: MONAI norm name, e.g. ``"batch"``, or ``None`` for none.
    """
    return Convolution(
        spatial_dims=SPATIAL_DIMS,
        in_channels=in_channels,
        out_channels=out_channels,
        kernel_size=kernel_size,
        strides=2,
        padding=1,
        output_padding=4 - kernel_size,
        is_transposed=True,
        norm=norm,
        act="relu",
    )


class DeBlock(nn.Sequential):
    """Upsampling block: 1x1 conv to ``C/4`` + BN + ReLU, 3x3 transposed conv (stride 2, doubles H and W) + BN +
    ReLU, 1x1 conv to ``out_channels`` + BN + ReLU.

    Args:
        in_channels: input channels ``C``.
        out_channels: output channels.
        reduction: the bottleneck has ``max(1, C // reduction)`` channels.
    """

    def __init__(self, in_channels: int, out_channels: int, reduction: int = DEBLOCK_REDUCTION) -> None:
        mid = max(1, in_channels // reduction)
        conv = dict(spatial_dims=SPATIAL_DIMS, norm="batch", act="relu")
        super().__init__(
            Convolution(in_channels=in_channels, out_channels=mid, kernel_size=1, **conv),
            _upsample_conv(mid, mid, kernel_size=3, norm="batch"),
            Convolution(in_channels=mid, out_channels=out_channels, kernel_size=1, **conv),
        )


class SegmentationHead(nn.Sequential):
    """MANet's head: 4x4 transposed conv (stride 2) + ReLU, 3x3 conv + ReLU, 3x3 conv to the logits.

    The logits' bias starts at ``logit(prior_probability)`` (the prior initialisation of Lin et al., "Focal Loss
    for Dense Object Detection", 2017): tumour voxels are rare, and a network that starts at p = 0.5 everywhere is
    first driven by the BCE term to predict nothing at all, which on generated data costs tens of training steps
    before the Dice term recovers; starting near the prior skips that phase.

    Args:
        in_channels: channels of the last decoder map.
        out_channels: number of logits.
        channels: width of the head.
        prior_probability: initial sigmoid output of every logit; ``None`` keeps PyTorch's default bias.
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        channels: int = HEAD_CHANNELS,
        prior_probability: float | None = PRIOR_PROBABILITY,
    ) -> None:
        conv = dict(spatial_dims=SPATIAL_DIMS, norm=None, act="relu")
        logits = Convolution(SPATIAL_DIMS, channels, out_channels, kernel_size=3, conv_only=True)
        if prior_probability is not None:
            if not 0.0 < prior_probability < 1.0:
                raise ValueError(f"prior_probability must be in (0, 1), got {prior_probability}")
            nn.init.constant_(logits.conv.bias, math.log(prior_probability / (1.0 - prior_probability)))
        super().__init__(
            _upsample_conv(in_channels, channels, kernel_size=4, norm=None),
            Convolution(in_channels=channels, out_channels=channels, kernel_size=3, **conv),
            logits,
        )


def resize_to(x: torch.Tensor, size: torch.Size | tuple[int, int]) -> torch.Tensor:
    """Bilinearly resize ``x`` to the spatial ``size`` (no-op when it already has it).

    Needed because valid-padded encoders (Xception's stem) give maps that are not exact halves of each other.
    """
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    return F.interpolate(x, size=tuple(size), mode="bilinear", align_corners=False)
