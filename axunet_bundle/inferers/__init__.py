# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Inferers for whole 3D volumes: the bundle's slice-by-slice inferer with its faster backends, and flip test-time
augmentation around any MONAI inferer."""

from .backends import autocast_dtype, build_onnx_network, prepare_network
from .flip import FlipInferer, SplitUncertaintyd
from .slices import BrainSliceInferer, brain_slice_mask

__all__ = [
    "BrainSliceInferer",
    "FlipInferer",
    "SplitUncertaintyd",
    "autocast_dtype",
    "brain_slice_mask",
    "build_onnx_network",
    "prepare_network",
]
