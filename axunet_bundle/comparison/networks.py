# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Builders for AXUNet and the paper's comparison models, so that one config line selects any of them.

All take ``in_channels`` and ``out_channels`` and return a 2D network mapping ``(B, in, H, W)`` to
``(B, out, H, W)`` logits.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.networks.nets import AttentionUnet, BasicUNet
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from ..errors import ConfigurationError
from ..networks import AXUNet

__all__ = [
    "axunet",
    "xception_unet",
    "attention_resunet",
    "attention_gate_unet",
    "unet",
    "NETWORKS",
    "build_network",
    "count_flops",
    "count_parameters",
]

SPATIAL_DIMS = 2
#: Channel widths and strides of the Attention-Gate UNet baseline (Oktay et al.), five levels like Xception.
ATTENTION_GATE_CHANNELS = (32, 64, 128, 256, 512)
ATTENTION_GATE_STRIDES = (2, 2, 2, 2)
#: MANet's encoder: AXUNet's decoder and attention on ResNet-50 is the paper's Attention-ResUNet-style model.
RESNET_BACKBONE = "resnet50"


def axunet(in_channels: int = 3, out_channels: int = 3, **kwargs: Any) -> AXUNet:
    """The paper's AXUNet (Xception + PAM/CAM on all four skips + DeBlock decoder)."""
    return AXUNet(in_channels=in_channels, out_channels=out_channels, **kwargs)


def xception_unet(in_channels: int = 3, out_channels: int = 3, **kwargs: Any) -> AXUNet:
    """Xception-UNet: AXUNet without attention (ablation and baseline)."""
    return AXUNet(in_channels=in_channels, out_channels=out_channels, attention_levels=(), **kwargs)


def attention_resunet(in_channels: int = 3, out_channels: int = 3, **kwargs: Any) -> AXUNet:
    """Attention-ResUNet-style model: the same attention and decoder on a timm ResNet-50 encoder (= MANet)."""
    kwargs.setdefault("backbone", RESNET_BACKBONE)
    return AXUNet(in_channels=in_channels, out_channels=out_channels, **kwargs)


def attention_gate_unet(in_channels: int = 3, out_channels: int = 3) -> nn.Module:
    """Attention-Gate UNet (MONAI ``AttentionUnet``)."""
    return AttentionUnet(
        spatial_dims=SPATIAL_DIMS,
        in_channels=in_channels,
        out_channels=out_channels,
        channels=ATTENTION_GATE_CHANNELS,
        strides=ATTENTION_GATE_STRIDES,
    )


def unet(in_channels: int = 3, out_channels: int = 3) -> nn.Module:
    """Plain UNet (MONAI ``BasicUNet`` with its default widths)."""
    return BasicUNet(spatial_dims=SPATIAL_DIMS, in_channels=in_channels, out_channels=out_channels)


NETWORKS: dict[str, Callable[..., nn.Module]] = {
    "axunet": axunet,
    "xception_unet": xception_unet,
    "attention_resunet": attention_resunet,
    "attention_gate_unet": attention_gate_unet,
    "unet": unet,
}


def build_network(name: str, **kwargs: Any) -> nn.Module:
    """Build a network by name (one of :data:`NETWORKS`), passing ``kwargs`` to its builder."""
    if name not in NETWORKS:
        raise ConfigurationError(f"unknown network {name!r}; choose one of {sorted(NETWORKS)}")
    return NETWORKS[name](**kwargs)


def count_parameters(network: nn.Module) -> int:
    """All parameters of ``network`` (trainable or not)."""
    return sum(p.numel() for p in network.parameters())


def count_flops(network: nn.Module, shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``network`` on an input of ``shape``, counted on the meta device (no compute).

    PyTorch's :class:`~torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-add of convolutions and
    matrix products (element-wise operations are not counted).
    """
    meta = copy.deepcopy(network).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(*shape, device="meta"))
    return int(counter.get_total_flops())
