# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Networks: AXUNet, its building blocks and the paper's comparison models."""

from ..weights import PretrainedWeightsError
from .attention import ChannelAttention, DualAttention, PositionAttention
from .axunet import AXUNet
from .baselines import NETWORKS, build_network
from .decoder import DeBlock, SegmentationHead
from .encoder import TimmEncoder

__all__ = [
    "AXUNet",
    "NETWORKS",
    "build_network",
    "ChannelAttention",
    "DeBlock",
    "DualAttention",
    "PositionAttention",
    "PretrainedWeightsError",
    "SegmentationHead",
    "TimmEncoder",
]
