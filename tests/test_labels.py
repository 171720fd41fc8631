"""Tests for BraTS label <-> region conversion (axunet_bundle.data.labels)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from monai.data import MetaTensor
from monai.transforms import Compose

from axunet_bundle.data.labels import (
    LABEL_CONVENTIONS,
    REGIONS,
    invalid_label_values,
    label_values,
    labels_to_regions,
    region_labels,
    regions_to_labels,
)
from axunet_bundle.data.pipeline import LabelsToRegionsd, RegionsToLabelsd

CONVENTIONS = sorted(LABEL_CONVENTIONS)


def test_conventions_and_region_order():
    assert REGIONS == ("WT", "TC", "ET")
    assert dict(LABEL_CONVENTIONS["brats2021"]) == {"NCR": 1, "ED": 2, "ET": 4}
    assert dict(LABEL_CONVENTIONS["brats2023"]) == {"NCR": 1, "ED": 2, "ET": 3}
    assert region_labels("brats2021") == {"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}
    assert region_labels("brats2023") == {"WT": (1, 2, 3), "TC": (1, 3), "ET": (3,)}
    assert label_values("brats2023") == (0, 1, 2, 3)


@pytest.mark.parametrize(
    "convention, values", [("brats2021", [0, 1, 2, 4]), ("brats2023", [0, 1, 2, 3])]  # background, NCR, ED, ET
)
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int64, np.float32, np.float64])
def test_labels_to_regions_numpy(convention, values, dtype):
    label = np.array(values, dtype=dtype).reshape(1, 2, 2, 1)
    regions = labels_to_regions(label, convention)
    assert isinstance(regions, np.ndarray) and regions.dtype == np.float32
    assert regions.shape == (3, 2, 2, 1)
    flat = regions.reshape(3, -1)
    np.testing.assert_array_equal(flat[0], [0, 1, 1, 1])  # WT: NCR, ED, ET
    np.testing.assert_array_equal(flat[1], [0, 1, 0, 1])  # TC: NCR, ET
    np.testing.assert_array_equal(flat[2], [0, 0, 0, 1])  # ET


def test_conventions_differ_on_label_3_and_4():
    label = np.array([[[3, 4]]])
    np.testing.assert_array_equal(labels_to_regions(label, "brats2021")[2, 0], [0, 1])
    np.testing.assert_array_equal(labels_to_regions(label, "brats2023")[2, 0], [1, 0])


def test_labels_to_regions_torch_keeps_type_and_metadata():
    affine = torch.diag(torch.tensor([2.0, 2.0, 2.0, 1.0]))
    label = MetaTensor(
        torch.tensor([0, 1, 2, 4], dtype=torch.int16).reshape(1, 2, 2, 1),
        affine=affine,
        meta={"filename_or_obj": "/d/BraTS2021_00000_seg.nii.gz"},
    )
    regions = labels_to_regions(label, "brats2021")
    assert isinstance(regions, MetaTensor) and regions.dtype == torch.float32
    assert regions.meta["filename_or_obj"] == "/d/BraTS2021_00000_seg.nii.gz"
    torch.testing.assert_close(regions.affine, affine.to(regions.affine.dtype))
    assert regions.reshape(3, -1)[:, 3].tolist() == [1.0, 1.0, 1.0]

    plain = labels_to_regions(torch.zeros(1, 2, 2, 2, dtype=torch.uint8), "brats2021")
    assert type(plain) is torch.Tensor and plain.shape == (3, 2, 2, 2) and not plain.any()


def test_regions_to_labels_priority_for_non_nested_regions():
    # columns: nothing, WT only, TC only (outside WT), ET only (outside TC/WT), WT+TC, all three
    regions = np.array(
        [[0, 1, 0, 0, 1, 1], [0, 0, 1, 0, 1, 1], [0, 0, 0, 1, 0, 1]], dtype=np.float32  # WT  # TC  # ET
    ).reshape(3, 6, 1, 1)
    labels = regions_to_labels(regions, "brats2021")
    assert labels.dtype == np.uint8 and labels.shape == (1, 6, 1, 1)
    assert labels.ravel().tolist() == [0, 2, 1, 4, 1, 4]
    assert regions_to_labels(regions, "brats2023").ravel().tolist() == [0, 2, 1, 3, 1, 3]


def test_regions_to_labels_torch_bool_and_metadata():
    regions = MetaTensor(torch.tensor([True, True, False]).reshape(3, 1, 1, 1), meta={"filename_or_obj": "p.nii"})
    labels = regions_to_labels(regions, "brats2021")
    assert isinstance(labels, MetaTensor) and labels.dtype == torch.uint8
    assert labels.meta["filename_or_obj"] == "p.nii"
    assert labels.item() == 1


def test_regions_to_labels_rejects_probabilities_and_wrong_channels():
    with pytest.raises(ValueError, match="binary"):
        regions_to_labels(np.full((3, 2, 2, 2), 0.7, dtype=np.float32))
    with pytest.raises(ValueError, match="3 channel"):
        regions_to_labels(np.zeros((2, 2, 2, 2)))
    with pytest.raises(ValueError, match="1 channel"):
        labels_to_regions(np.zeros((3, 2, 2, 2)))


@pytest.mark.parametrize("convention", CONVENTIONS)
@settings(max_examples=25, deadline=None)
@given(data=st.data())
def test_round_trip_is_exact(convention, data):
    """Labels -> regions -> labels gives the labels back; a resection cavity (BraTS 2024's 4) is in no tumour
    region, so it comes back as background, as the bundle writes it."""
    values = list(label_values(convention))
    label = data.draw(arrays(np.int16, (1, 3, 4, 2), elements=st.sampled_from(values)))
    expected = np.where(label == LABEL_CONVENTIONS[convention].get("RC", -1), 0, label)
    back = regions_to_labels(labels_to_regions(label, convention), convention)
    np.testing.assert_array_equal(back, expected)
    back_t = regions_to_labels(labels_to_regions(torch.from_numpy(label), convention), convention)
    np.testing.assert_array_equal(back_t.numpy(), expected)


@pytest.mark.parametrize("convention", ["brats2022", "BraTS2021", "", None])
def test_unknown_convention_lists_valid_names(convention):
    for call in (
        lambda: labels_to_regions(np.zeros((1, 2, 2, 2)), convention),
        lambda: regions_to_labels(np.zeros((3, 2, 2, 2)), convention),
        lambda: LabelsToRegionsd("label", convention=convention),
        lambda: RegionsToLabelsd("pred", convention=convention),
    ):
        with pytest.raises(ValueError, match="valid conventions are brats2021, brats2023"):
            call()


def test_invalid_label_values():
    label = np.array([0, 1, 2, 3, 4, 5, 5, 2.5, np.nan])
    assert invalid_label_values(label[:5], "brats2021") == [3]
    assert invalid_label_values(label[:5], "brats2023") == [4]
    bad = invalid_label_values(label, "brats2021")
    assert bad[:3] == [2.5, 3, 5] and np.isnan(bad[3])
    assert invalid_label_values(torch.tensor([[0, 1, 2, 4]]), "brats2021") == []


def test_dict_transforms_round_trip_in_compose():
    label = MetaTensor(
        torch.tensor([0, 1, 2, 3], dtype=torch.uint8).reshape(1, 4, 1, 1), meta={"filename_or_obj": "c-seg.nii.gz"}
    )
    pipeline = Compose(
        [
            LabelsToRegionsd(["label", "other"], convention="brats2023", allow_missing_keys=True),
            RegionsToLabelsd("label", convention="brats2023"),
        ]
    )
    out = pipeline({"label": label, "image": "untouched"})
    assert out["image"] == "untouched"
    assert isinstance(out["label"], MetaTensor) and out["label"].meta["filename_or_obj"] == "c-seg.nii.gz"
    assert out["label"].ravel().tolist() == [0, 1, 2, 3]

    regions = LabelsToRegionsd("label", convention="brats2023")({"label": label})["label"]
    assert regions.shape == (3, 4, 1, 1) and regions.dtype == torch.float32
    with pytest.raises(KeyError):
        LabelsToRegionsd("missing")({"label": label})
