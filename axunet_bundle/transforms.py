# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Small functions the bundle's transform chains need and MONAI does not provide."""

from __future__ import annotations

from monai.config.type_definitions import NdarrayOrTensor

__all__ = ["is_nonzero"]


def is_nonzero(image: NdarrayOrTensor) -> NdarrayOrTensor:
    """Foreground selector for ``CropForegroundd``: brain voxels are the non-zero ones.

    MONAI's default (``x > 0``) would drop brain voxels of scans stored with negative intensities.
    """
    return image != 0
