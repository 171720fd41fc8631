# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Flip test-time augmentation around any MONAI inferer, and the per-voxel uncertainty it measures."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from typing import Any

import torch
from monai.config import KeysCollection
from monai.inferers import Inferer
from monai.transforms import MapTransform

__all__ = ["FlipInferer", "IN_PLANE_AXES", "SplitUncertaintyd"]

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
        uncertainty: also return, as one more channel after the logits, the per-voxel uncertainty: the variance of
            the passes' sigmoid probabilities, averaged over the regions (0 to 0.25; :class:`SplitUncertaintyd`
            takes it out of the prediction).

    Returns (``__call__``):
        ``(B, C, H, W, D)`` float32 mean logits, or ``(B, C + 1, H, W, D)`` with ``uncertainty``.
    """

    def __init__(
        self, inferer: Inferer, spatial_axes: Sequence[int] = IN_PLANE_AXES, uncertainty: bool = False
    ) -> None:
        super().__init__()
        self.inferer = inferer
        self.spatial_axes = tuple(int(a) for a in spatial_axes)
        self.uncertainty = uncertainty

    def __call__(self, inputs: torch.Tensor, network: Callable[..., torch.Tensor], *args: Any, **kwargs: Any):
        probabilities = torch.sigmoid(self.inferer(inputs, network, *args, **kwargs).float())
        squares = probabilities.square()
        for axis in self.spatial_axes:
            dims = [axis + 2]
            flipped = self.inferer(torch.flip(inputs, dims), network, *args, **kwargs)
            passed = torch.sigmoid(torch.flip(flipped, dims).float())
            probabilities += passed
            squares += passed.square()
        passes = 1 + len(self.spatial_axes)
        probabilities /= passes
        logits = torch.logit(probabilities.clamp(PROBABILITY_EPS, 1 - PROBABILITY_EPS))
        if not self.uncertainty:
            return logits
        # Var = E[p^2] - E[p]^2, from running sums so that no pass is kept; rounding can make it slightly negative
        variance = (squares / passes - probabilities.square()).clamp_min(0)
        return torch.cat([logits, variance.mean(dim=1, keepdim=True)], dim=1)


class SplitUncertaintyd(MapTransform):
    """
    Take the uncertainty channel that :class:`FlipInferer` (``uncertainty=True``) appends out of the prediction:
    ``d[key]`` keeps the ``(C, H, W, D)`` logits, ``d[uncertainty_key]`` gets the ``(1, H, W, D)`` map, with the
    prediction's metadata, so that ``Invertd`` brings both back onto the input's grid.

    Args:
        keys: the prediction's key.
        uncertainty_key: where the map goes.
    """

    def __init__(self, keys: KeysCollection, uncertainty_key: str = "uncertainty") -> None:
        super().__init__(keys)
        self.uncertainty_key = uncertainty_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[self.uncertainty_key] = d[key][-1:]
            d[key] = d[key][:-1]
        return d
