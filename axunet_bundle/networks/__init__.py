# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Networks: AXUNet and its building blocks (the comparison models are in :mod:`axunet_bundle.comparison.networks`)."""

from ..weights import PretrainedWeightsError
from .attention import ChannelAttention, DualAttention, PositionAttention
from .axunet import AXUNet
from .encoder import TimmEncoder, load_encoder_weights

__all__ = [
    "AXUNet",
    "ChannelAttention",
    "DualAttention",
    "PositionAttention",
    "PretrainedWeightsError",
    "TimmEncoder",
    "load_encoder_weights",
]
