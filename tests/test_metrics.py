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

from __future__ import annotations

import math

import pytest
import torch
from monai.metrics import compute_hausdorff_distance

from axunet_bundle.evaluation.metrics import HD95_EMPTY_PENALTY, compute_brats_dice, compute_brats_hd95

SIZE = 16  # side of the test volumes
N_REGIONS = 3


def _empty(batch: int = 1, spatial: tuple[int, ...] = (SIZE, SIZE, SIZE)) -> torch.Tensor:
    return torch.zeros(batch, N_REGIONS, *spatial)


def _plates(shift: int, axis: int = 0, ndim: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    """One-voxel-thick plates (lines in 2D), the second shifted by ``shift`` voxels along ``axis``.

    Every surface voxel of either plate is exactly ``shift`` voxels from the other plate, so HD95 = shift.
    """
    spatial = (SIZE,) * ndim
    a, b = _empty(spatial=spatial), _empty(spatial=spatial)
    index_a = [slice(4, 12)] * ndim
    index_a[axis] = 3
    index_b = list(index_a)
    index_b[axis] = 3 + shift
    a[(0, 0, *index_a)] = 1
    b[(0, 0, *index_b)] = 1
    return a[:, :1], b[:, :1]


def test_penalty_is_brats_volume_diagonal():
    assert HD95_EMPTY_PENALTY == pytest.approx(math.sqrt(240**2 + 240**2 + 155**2), abs=1e-4)


def test_dice_of_overlapping_cubes():
    pred, true = _empty(), _empty()
    pred[0, 0, 2:6, 2:6, 2:6] = 1  # 4x4x4 = 64 voxels
    true[0, 0, 4:8, 2:6, 2:6] = 1  # shifted by 2: overlap 2x4x4 = 32 voxels
    pred[0, 1, 0:4, 0:4, 0] = 1  # 16 voxels inside a 32-voxel ground truth
    true[0, 1, 0:4, 0:8, 0] = 1
    pred[0, 2, 5, 5, 5] = 1
    true[0, 2, 5, 5, 5] = 1
    dice = compute_brats_dice(pred, true)
    assert dice.shape == (1, N_REGIONS)
    assert dice.dtype == torch.float64
    expected = torch.tensor([[2 * 32 / (64 + 64), 2 * 16 / (16 + 32), 1.0]], dtype=torch.float64)
    torch.testing.assert_close(dice, expected)


def test_dice_2d_and_symmetric():
    pred, true = _empty(spatial=(SIZE, SIZE)), _empty(spatial=(SIZE, SIZE))
    pred[0, :, 0:10, 0:10] = 1  # 100 pixels
    true[0, :, 0:10, 5:10] = 1  # 50 pixels, all inside the prediction
    expected = torch.full((1, N_REGIONS), 2 * 50 / (100 + 50), dtype=torch.float64)
    torch.testing.assert_close(compute_brats_dice(pred, true), expected)
    torch.testing.assert_close(compute_brats_dice(true, pred), expected)


@pytest.mark.parametrize("ndim", [2, 3])
@pytest.mark.parametrize("shift", [1, 3, 5])
def test_hd95_of_shifted_plates(ndim, shift):
    pred, true = _plates(shift, axis=0, ndim=ndim)
    hd = compute_brats_hd95(pred.repeat(1, N_REGIONS, *[1] * ndim), true.repeat(1, N_REGIONS, *[1] * ndim))
    assert hd.shape == (1, N_REGIONS)
    torch.testing.assert_close(hd, torch.full((1, N_REGIONS), float(shift), dtype=torch.float64))


def test_hd95_uses_spacing_per_axis():
    shift = 2
    pred, true = _plates(shift, axis=1)
    # the shift is along axis 1: only that axis' spacing matters
    hd = compute_brats_hd95(pred, true, spacing=(1.0, 2.5, 4.0))
    torch.testing.assert_close(hd, torch.tensor([[shift * 2.5]], dtype=torch.float64))
    hd = compute_brats_hd95(pred, true, spacing=(3.0, 1.0, 3.0))
    torch.testing.assert_close(hd, torch.tensor([[float(shift)]], dtype=torch.float64))
    # one spacing per case
    hd = compute_brats_hd95(pred.repeat(2, 1, 1, 1, 1), true.repeat(2, 1, 1, 1, 1), spacing=[(1, 1, 1), (1, 0.5, 1)])
    torch.testing.assert_close(hd, torch.tensor([[float(shift)], [shift * 0.5]], dtype=torch.float64))
    # a (B, 3) tensor, as collated from the images' pixdim
    spacing = torch.tensor([[1.0, 1.0, 1.0], [1.0, 3.0, 1.0]])
    hd = compute_brats_hd95(pred.repeat(2, 1, 1, 1, 1), true.repeat(2, 1, 1, 1, 1), spacing=spacing)
    torch.testing.assert_close(hd, torch.tensor([[float(shift)], [shift * 3.0]], dtype=torch.float64))


@pytest.mark.filterwarnings("ignore:.*always_return_as_numpy")  # raised inside MONAI 1.5-1.6
def test_hd95_ignores_outliers_below_5_percent():
    pred = _empty()[:, :1]
    pred[0, 0, 8, 3:13, 3:13] = 1  # a 10x10 plate: 100 surface voxels
    true = pred.clone()
    true[0, 0, 0, 0, 0] = 1  # 1 outlier among 101 surface voxels
    # the maximum Hausdorff distance sees the outlier, the 95th percentile does not
    assert compute_hausdorff_distance(pred, true, include_background=True).item() > 8
    assert compute_brats_hd95(pred, true).item() == 0.0


def test_empty_conventions():
    pred, true = _empty(batch=2), _empty(batch=2)
    # case 0: WT both empty, TC prediction only, ET ground truth only
    pred[0, 1, 2:4, 2:4, 2:4] = 1
    true[0, 2, 2:4, 2:4, 2:4] = 1
    # case 1: identical non-empty WT, the rest both empty
    pred[1, 0, 1:5, 1:5, 1:5] = 1
    true[1, 0, 1:5, 1:5, 1:5] = 1
    dice = compute_brats_dice(pred, true)
    hd = compute_brats_hd95(pred, true)
    torch.testing.assert_close(dice, torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]], dtype=torch.float64))
    torch.testing.assert_close(
        hd, torch.tensor([[0.0, HD95_EMPTY_PENALTY, HD95_EMPTY_PENALTY], [0.0, 0.0, 0.0]], dtype=torch.float64)
    )
    assert torch.isfinite(hd).all() and torch.isfinite(dice).all()


def test_accepts_bool_and_rejects_bad_shapes():
    pred, true = _plates(2)
    torch.testing.assert_close(compute_brats_hd95(pred.bool(), true.bool()), torch.tensor([[2.0]], dtype=torch.float64))
    with pytest.raises(ValueError):
        compute_brats_dice(pred, true[..., :-1])
    with pytest.raises(ValueError):
        compute_brats_hd95(pred[0, 0], true[0, 0])  # no batch and channel dimensions
