# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Inferers for whole 3D volumes: the bundle's slice-by-slice inferer with its faster backends, and flip test-time
augmentation around any MONAI inferer."""

from .backends import (
    PRECISIONS,
    autocast_dtype,
    build_onnx_network,
    fuse_batchnorm,
    prepare_network,
    weights_fingerprint,
)
from .flip import FlipInferer
from .slices import BACKENDS, DEFAULT_BACKGROUND_LOGIT, BrainSliceInferer, brain_slice_mask

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKGROUND_LOGIT",
    "PRECISIONS",
    "BrainSliceInferer",
    "FlipInferer",
    "autocast_dtype",
    "brain_slice_mask",
    "build_onnx_network",
    "fuse_batchnorm",
    "prepare_network",
    "weights_fingerprint",
]
