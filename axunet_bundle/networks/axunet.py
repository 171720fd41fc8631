# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""AXUNet: Attention Xception UNet (Moodi et al., arXiv 2503.20446) for 2D brain-tumour segmentation."""

from __future__ import annotations

import os
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigurationError
from .attention import DEFAULT_QK_REDUCTION, DualAttention
from .decoder import HEAD_CHANNELS, DeBlock, SegmentationHead, resize_to
from .encoder import DEFAULT_BACKBONE, DEFAULT_OUT_INDICES, TimmEncoder

__all__ = ["AXUNet", "ATTENTION_TYPES", "ALL_LEVELS"]

#: Skip levels, fine to coarse: 1 = stride 4, 2 = stride 8, 3 = stride 16, 4 = stride 32.
ALL_LEVELS = (1, 2, 3, 4)
#: What each attended level applies.
ATTENTION_TYPES = ("pam_cam", "pam", "cam")


class AXUNet(nn.Module):
    """Attention Xception UNet: an Xception encoder, PAM + CAM self-attention on the four skip connections and a
    decoder of four DeBlocks whose outputs are fused with the attended skips by addition (MANet's wiring with
    Xception in place of ResNet-50).

    Input: ``(B, in_channels, H, W)`` slices, by default T1CE, T2, FLAIR. Output: ``(B, out_channels, H, W)``
    logits at the input resolution, by default whole tumour, tumour core, enhancing tumour (WT, TC, ET); apply a
    sigmoid per channel for probabilities (losses and post-processing do, the network does not). Any input size
    works (the encoder's valid padding gives odd map sizes; decoder maps are resized to their skip); inputs of at
    least 64 x 64 keep the stride-32 map at 2 x 2 or more.

    Parameters of the default model (in_channels 3, out_channels 3): 31.24 M in all, of which the Xception
    encoder 20.81 M, attention 6.01 M, decoder 4.35 M and head 0.08 M.

    Args:
        in_channels: input channels (3 for T1CE, T2, FLAIR; 4 with T1 also works).
        out_channels: output logits.
        backbone: timm backbone; ``"legacy_xception"`` is the paper's, ``"resnet50"`` gives MANet
            (an Attention-ResUNet).
        pretrained: load timm's ImageNet weights for the encoder (needs timm's hub or cache).
        pretrained_path: local timm-format encoder weights file; takes precedence over ``pretrained``.
        attention_levels: skip levels that get attention, among 1 (stride 4) ... 4 (stride 32); empty gives the
            Xception-UNet baseline.
        attention: ``"pam_cam"`` (the paper), ``"pam"`` or ``"cam"`` only.
        pam_kernel: ``"softplus"`` (linear-cost kernel attention, the paper) or ``"softmax"`` (DANet's quadratic
            dot-product attention).
        qk_reduction: PAM query/key channels are ``C // qk_reduction``.
        head_channels: width of the segmentation head.
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_channels: int = 3,
        backbone: str = DEFAULT_BACKBONE,
        pretrained: bool = False,
        pretrained_path: str | os.PathLike | None = None,
        attention_levels: Sequence[int] = ALL_LEVELS,
        attention: str = "pam_cam",
        pam_kernel: str = "softplus",
        qk_reduction: int = DEFAULT_QK_REDUCTION,
        head_channels: int = HEAD_CHANNELS,
    ) -> None:
        super().__init__()
        if attention not in ATTENTION_TYPES:
            raise ConfigurationError(f"attention must be one of {ATTENTION_TYPES}, got {attention!r}")
        levels = tuple(attention_levels)
        if not set(levels) <= set(ALL_LEVELS):
            raise ConfigurationError(f"attention_levels must be a subset of {ALL_LEVELS}, got {levels}")
        #: what builds this network again (without the encoder's starting weights): kept with trained weights
        self.init_args = {
            "in_channels": in_channels,
            "out_channels": out_channels,
            "backbone": backbone,
            "attention_levels": list(levels),
            "attention": attention,
            "pam_kernel": pam_kernel,
            "qk_reduction": qk_reduction,
            "head_channels": head_channels,
        }
        self.encoder = TimmEncoder(
            backbone,
            in_channels=in_channels,
            out_indices=DEFAULT_OUT_INDICES,
            pretrained=pretrained,
            pretrained_path=pretrained_path,
        )
        skips = self.encoder.channels  # e.g. 128, 256, 728, 2048 for Xception
        self.attention_levels = levels
        self.attention = nn.ModuleList(
            [
                (
                    DualAttention(
                        channels,
                        use_pam=attention in ("pam_cam", "pam"),
                        use_cam=attention in ("pam_cam", "cam"),
                        pam_kernel=pam_kernel,
                        qk_reduction=qk_reduction,
                    )
                    if level in levels
                    else nn.Identity()
                )
                for level, channels in zip(ALL_LEVELS, skips)
            ]
        )
        # DeBlocks run coarse to fine; each doubles the resolution and maps to the next finer skip's width, the
        # last one (after the stride-4 fusion) keeps its width.
        self.decoder = nn.ModuleList(
            [DeBlock(c_in, c_out) for c_in, c_out in zip(skips[:0:-1], skips[-2::-1])] + [DeBlock(skips[0], skips[0])]
        )
        self.head = SegmentationHead(skips[0], out_channels, channels=head_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [attend(feature) for attend, feature in zip(self.attention, self.encoder(x))]
        out = skips[-1]
        for deblock, skip in zip(self.decoder, skips[-2::-1]):
            out = resize_to(deblock(out), skip.shape[-2:]) + skip
        out = self.head(self.decoder[-1](out))
        return resize_to(out, x.shape[-2:])
