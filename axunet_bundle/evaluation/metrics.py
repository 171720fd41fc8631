# Copyright (c) AXUNet bundle developers
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
BraTS region metrics (Dice and HD95) with the legacy BraTS (<= 2021) conventions for empty regions.

Inputs are binarised region masks ``(B, 3, *spatial)`` with channels (WT, TC, ET), 2D or 3D. Per case and region:

- prediction and ground truth both empty: Dice 1, HD95 0;
- exactly one of them empty: Dice 0, HD95 :py:data:`HD95_EMPTY_PENALTY`;
- otherwise: Dice ``2|A & B| / (|A| + |B|)``, HD95 the 95th percentile of the pooled edge distances in mm (medpy's
  ``hd95``, as the BraTS evaluations compute it).

Unlike MONAI's defaults (NaN for an empty ground truth, which ``reduction`` then skips), every case gets a finite
score, so a model is rewarded for predicting no enhancing tumour where there is none and penalised for missing it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np
import torch
from monai.metrics import compute_dice
from monai.metrics.utils import get_edge_surface_distance, prepare_spacing

__all__ = ["HD95_EMPTY_PENALTY", "HD95_PERCENTILE", "compute_brats_dice", "compute_brats_hd95"]

#: HD95 (mm) when exactly one of prediction and ground truth is empty: the diagonal of the 240x240x155 mm BraTS volume,
#: ``sqrt(240**2 + 240**2 + 155**2)``, as in the BraTS <= 2021 evaluation (CaPTk). It does not depend on the image size
#: or spacing, so scores stay comparable with published BraTS results.
HD95_EMPTY_PENALTY = 373.12866
HD95_PERCENTILE = 95.0

SpacingType = float | Sequence[float] | Sequence[Sequence[float]] | np.ndarray | torch.Tensor | None


def _check_inputs(y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Validate ``(B, C, *spatial)`` shapes (2D or 3D) and return boolean tensors."""
    y_pred, y = torch.as_tensor(y_pred), torch.as_tensor(y)
    if y_pred.shape != y.shape:
        raise ValueError(f"y_pred and y should have the same shape, got {tuple(y_pred.shape)} and {tuple(y.shape)}.")
    if y_pred.ndim not in (4, 5):
        raise ValueError(f"expected (B, C, H, W) or (B, C, H, W, D) inputs, got shape {tuple(y_pred.shape)}.")
    return y_pred.bool(), y.bool()


def _float_spacing(spacing: SpacingType) -> float | list | None:
    """Spacing as python floats: MONAI's ``prepare_spacing`` rejects mixed types such as ``(1, 0.5, 1)``."""
    if spacing is None:
        return None
    if isinstance(spacing, torch.Tensor):
        spacing = spacing.detach().cpu().numpy()
    values = np.asarray(spacing, dtype=float)
    return float(values) if values.ndim == 0 else values.tolist()


def compute_brats_dice(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """
    Dice per case and region, with the BraTS convention for empty masks.

    Args:
        y_pred: binarised prediction ``(B, C, *spatial)``, usually C = 3 regions (WT, TC, ET).
        y: binarised ground truth, same shape.

    Returns:
        float64 tensor ``(B, C)``: 1 where both are empty, 0 where exactly one is empty, the Dice coefficient
        otherwise.

    Raises:
        ValueError: when the shapes differ or are not 2D/3D batch-first.
    """
    y_pred, y = _check_inputs(y_pred, y)
    # ignore_empty=False is exactly the BraTS convention: 1 if both masks are empty, 0 if only y is empty
    return compute_dice(y_pred.double(), y.double(), include_background=True, ignore_empty=False).double()


def compute_brats_hd95(y_pred: torch.Tensor, y: torch.Tensor, spacing: SpacingType = None) -> torch.Tensor:
    """
    95th-percentile Hausdorff distance (mm) per case and region, with the BraTS convention for empty masks.

    For non-empty pairs this is the HD95 of medpy's ``hd95``, which the legacy BraTS evaluation used (nnU-Net's
    BraTS 2020 scoring), and of the challenges' ``brats-evaluation`` (panoptica): the 95th percentile (numpy's
    linear interpolation) of the pooled distances from every edge voxel of each mask to the nearest edge voxel of the
    other, in both directions. MONAI's :py:func:`monai.metrics.compute_hausdorff_distance` takes the larger of the two
    directed percentiles instead, which differs when the two directions' distances are distributed differently
    (2.0 against 1.73 for a one-voxel lesion inside a 3x3x3 prediction). The edges and distances are MONAI's
    (:py:func:`monai.metrics.utils.get_edge_surface_distance`).

    Args:
        y_pred: binarised prediction ``(B, C, *spatial)``, usually C = 3 regions (WT, TC, ET).
        y: binarised ground truth, same shape.
        spacing: voxel spacing in mm: ``None`` (1 mm isotropic), a number, one value per spatial axis,
            or one such sequence per case, e.g. a ``(B, 3)`` tensor of ``pixdim``
            (see :py:func:`monai.metrics.utils.prepare_spacing`).

    Returns:
        float64 tensor ``(B, C)``: 0 where both are empty, ``HD95_EMPTY_PENALTY`` where exactly one is empty,
        the HD95 in mm otherwise.

    Raises:
        ValueError: when the shapes differ or are not 2D/3D batch-first, or ``spacing`` does not fit them.
    """
    y_pred, y = _check_inputs(y_pred, y)
    batch = y_pred.shape[0]
    spacings = prepare_spacing(spacing=_float_spacing(spacing), batch_size=batch, img_dim=y_pred.ndim - 2)
    pred_any = y_pred.flatten(2).any(-1)
    true_any = y.flatten(2).any(-1)
    hd = torch.zeros(pred_any.shape, dtype=torch.float64, device=y_pred.device)
    hd[pred_any != true_any] = HD95_EMPTY_PENALTY
    for b, c in zip(*torch.nonzero(pred_any & true_any, as_tuple=True)):
        # only non-empty pairs reach MONAI, which would otherwise warn and return inf/nan for empty masks
        with warnings.catch_warnings():
            # MONAI (1.5 - 1.6) passes its own deprecated `always_return_as_numpy` internally; nothing to act on here
            warnings.filterwarnings("ignore", message=".*always_return_as_numpy.*")
            _, distances, _ = get_edge_surface_distance(
                y_pred[b, c], y[b, c], spacing=spacings[int(b)], symmetric=True, class_index=int(c)
            )
        pooled = np.concatenate([d.detach().cpu().numpy().astype(np.float64).ravel() for d in distances])
        hd[b, c] = float(np.percentile(pooled, HD95_PERCENTILE))
    return hd
