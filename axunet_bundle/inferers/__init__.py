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
from .slices import (
    BACKENDS,
    DEFAULT_BACKGROUND_LOGIT,
    GUARD_MIN_DICE,
    GUARD_SLICES,
    BrainSliceInferer,
    brain_slice_mask,
    label_agreement,
)

__all__ = [
    "BACKENDS",
    "DEFAULT_BACKGROUND_LOGIT",
    "GUARD_MIN_DICE",
    "GUARD_SLICES",
    "PRECISIONS",
    "BrainSliceInferer",
    "FlipInferer",
    "autocast_dtype",
    "brain_slice_mask",
    "label_agreement",
    "build_onnx_network",
    "fuse_batchnorm",
    "prepare_network",
    "weights_fingerprint",
]
