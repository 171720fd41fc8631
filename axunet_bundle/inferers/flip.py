# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Flip test-time augmentation around any MONAI inferer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from monai.inferers import Inferer

__all__ = ["FlipInferer", "IN_PLANE_AXES"]

#: spatial axes of a ``(B, C, H, W, D)`` volume that lie in the axial slice plane
IN_PLANE_AXES = (0, 1)
#: probabilities are clamped away from 0 and 1 before turning their mean back into a logit
PROBABILITY_EPS = 1e-6


class FlipInferer(Inferer):
    """
    Flip test-time augmentation: runs ``inferer`` on the volume and on its mirror images along each of
    ``spatial_axes`` (flipping the predictions back), averages the sigmoid probabilities and returns them as logits,
    so the bundle's post-processing (sigmoid, threshold) is unchanged.

    Args:
        inferer: the inferer to wrap (e.g. ``SliceInferer``).
        spatial_axes: spatial axes to mirror, one pass each (default: both in-plane axes).
    """

    def __init__(self, inferer: Inferer, spatial_axes: Sequence[int] = IN_PLANE_AXES) -> None:
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(int(a) for a in spatial_axes)

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        probabilities = torch.sigmoid(self.inferer(inputs, network, *args, **kwargs).float())
        for axis in self.spatial_axes:
            dims = [axis + 2]
            flipped = self.inferer(torch.flip(inputs, dims), network, *args, **kwargs)
            probabilities += torch.sigmoid(torch.flip(flipped, dims).float())
        probabilities /= 1 + len(self.spatial_axes)
        return torch.logit(probabilities.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS))
