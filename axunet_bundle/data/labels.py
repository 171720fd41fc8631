# Copyright (c) AXUNet bundle developers.
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
BraTS label maps <-> tumour-region masks, in one place.

Label conventions (:data:`LABEL_CONVENTIONS`):

- ``"brats2021"``: 1 = necrotic tumour core (NCR), 2 = peritumoral edema (ED), 4 = enhancing tumour (ET).
- ``"brats2023"``: 1 = NCR (NETC), 2 = ED (SNFH), 3 = ET.

Regions, in channel order :data:`REGIONS`: WT (whole tumour) = NCR + ED + ET, TC (tumour core) = NCR + ET,
ET (enhancing tumour) = ET.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from types import MappingProxyType

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform, Transform
from monai.utils import TransformBackends, convert_to_dst_type, convert_to_numpy

from ..errors import ConfigurationError

__all__ = [
    "REGIONS",
    "LABEL_CONVENTIONS",
    "DEFAULT_CONVENTION",
    "BACKGROUND",
    "validate_convention",
    "label_values",
    "region_labels",
    "labels_to_regions",
    "regions_to_labels",
    "invalid_label_values",
    "LabelsToRegions",
    "RegionsToLabels",
    "LabelsToRegionsd",
    "RegionsToLabelsd",
]

REGIONS: tuple[str, ...] = ("WT", "TC", "ET")
"""Region channel order: whole tumour, tumour core, enhancing tumour (the paper's order)."""

BACKGROUND = 0

LABEL_CONVENTIONS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "brats2021": MappingProxyType({"NCR": 1, "ED": 2, "ET": 4}),
        "brats2023": MappingProxyType({"NCR": 1, "ED": 2, "ET": 3}),
    }
)
"""Convention name -> tumour class (``"NCR"``, ``"ED"``, ``"ET"``) -> label value."""

DEFAULT_CONVENTION = "brats2021"

# classes that make up each region
_REGION_CLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"WT": ("NCR", "ED", "ET"), "TC": ("NCR", "ET"), "ET": ("ET",)}
)
_N_REGIONS = len(REGIONS)


def validate_convention(convention: str) -> str:
    """
    Check a label-convention name.

    Args:
        convention: a key of :data:`LABEL_CONVENTIONS`.

    Returns:
        `convention` unchanged.

    Raises:
        ConfigurationError: naming the valid conventions when `convention` is not one of them.
    """
    if not isinstance(convention, str) or convention not in LABEL_CONVENTIONS:
        raise ConfigurationError(
            f"unknown label convention {convention!r}: valid conventions are {', '.join(LABEL_CONVENTIONS)}"
        )
    return convention


def label_values(convention: str) -> tuple[int, ...]:
    """
    All label values a segmentation may hold in `convention`, background included (e.g. ``(0, 1, 2, 4)``).

    Raises:
        ValueError: for an unknown convention.
    """
    return (BACKGROUND, *sorted(LABEL_CONVENTIONS[validate_convention(convention)].values()))


def region_labels(convention: str) -> dict[str, tuple[int, ...]]:
    """
    Label values making up each region, e.g. ``{"WT": (1, 2, 4), "TC": (1, 4), "ET": (4,)}`` for ``brats2021``.

    Raises:
        ValueError: for an unknown convention.
    """
    classes = LABEL_CONVENTIONS[validate_convention(convention)]
    return {r: tuple(sorted(classes[c] for c in _REGION_CLASSES[r])) for r in REGIONS}


def _check_channels(data: NdarrayOrTensor, channels: int, what: str) -> None:
    if data.ndim < 2 or data.shape[0] != channels:
        raise ValueError(f"{what} must be channel-first with {channels} channel(s), got shape {tuple(data.shape)}")


def _any_equal(data: NdarrayOrTensor, values: tuple[int, ...]) -> NdarrayOrTensor:
    # a few "==" comparisons work alike for numpy and torch, any dtype, and avoid torch.isin's dtype rules
    mask = data == values[0]
    for value in values[1:]:
        mask = mask | (data == value)
    return mask


def labels_to_regions(label: NdarrayOrTensor, convention: str = DEFAULT_CONVENTION) -> NdarrayOrTensor:
    """
    Turn a BraTS label map into region masks.

    Args:
        label: channel-first label map of shape ``(1, *spatial)``, numpy or torch (MetaTensor keeps its metadata),
            any integer, float or bool dtype holding integral label values.
        convention: label convention of `label`, a key of :data:`LABEL_CONVENTIONS`.

    Returns:
        ``(3, *spatial)`` float32 masks of 0 and 1 in :data:`REGIONS` order (WT, TC, ET), of the same array type
        and on the same device as `label`. Float32 is what MONAI's Dice losses and metrics take.

    Raises:
        ValueError: for an unknown convention or a label that does not have exactly one channel.
    """
    groups = region_labels(convention)
    _check_channels(label, 1, "label")
    data = label.as_tensor() if hasattr(label, "as_tensor") else label  # plain tensor: no metadata bookkeeping
    masks = [_any_equal(data[0], groups[r]) for r in REGIONS]
    out = torch.stack(masks) if isinstance(data, torch.Tensor) else np.stack(masks)
    dtype = torch.float32 if isinstance(label, torch.Tensor) else np.float32
    converted, *_ = convert_to_dst_type(out, dst=label, dtype=dtype)
    return converted


def regions_to_labels(regions: NdarrayOrTensor, convention: str = DEFAULT_CONVENTION) -> NdarrayOrTensor:
    """
    Turn binary region masks back into a BraTS label map.

    Each voxel gets the label of the innermost region it is in: ET, else TC (-> NCR), else WT (-> ED), else 0.
    This priority makes predictions whose regions are not nested (e.g. ET outside WT) map deterministically, and
    makes ``regions_to_labels(labels_to_regions(x, c), c)`` equal ``x`` for every valid label map.

    Args:
        regions: ``(3, *spatial)`` masks in :data:`REGIONS` order holding only 0 and 1 (or bool), numpy or torch
            (MetaTensor keeps its metadata). Threshold probabilities first, e.g. with MONAI ``AsDiscrete``.
        convention: label convention of the result, a key of :data:`LABEL_CONVENTIONS`.

    Returns:
        ``(1, *spatial)`` uint8 label map of the same array type and on the same device as `regions`.

    Raises:
        ValueError: for an unknown convention, a channel count other than 3, or values other than 0 and 1.
    """
    classes = LABEL_CONVENTIONS[validate_convention(convention)]
    _check_channels(regions, _N_REGIONS, "regions")
    data = regions.as_tensor() if hasattr(regions, "as_tensor") else regions
    if not bool(((data == 0) | (data == 1)).all()):
        raise ValueError("regions must be binary (0/1); threshold probabilities first, e.g. with AsDiscrete")
    wt, tc, et = (data[REGIONS.index(r)] == 1 for r in REGIONS)
    if isinstance(data, torch.Tensor):
        out = torch.zeros((1, *data.shape[1:]), dtype=torch.uint8, device=data.device)
    else:
        out = np.zeros((1, *data.shape[1:]), dtype=np.uint8)
    # later assignments win: ET > TC > WT
    out[0][wt] = classes["ED"]
    out[0][tc] = classes["NCR"]
    out[0][et] = classes["ET"]
    dtype = torch.uint8 if isinstance(regions, torch.Tensor) else np.uint8
    converted, *_ = convert_to_dst_type(out, dst=regions, dtype=dtype)
    return converted


def invalid_label_values(label: NdarrayOrTensor, convention: str = DEFAULT_CONVENTION) -> list[int | float]:
    """
    Distinct values of `label` that are not labels of `convention` (background 0 is valid).

    Args:
        label: label map of any shape, numpy or torch.
        convention: a key of :data:`LABEL_CONVENTIONS`.

    Returns:
        the invalid values in ascending order (NaN last); integral values as ``int``, others as ``float``.
        Empty when `label` is valid.

    Raises:
        ValueError: for an unknown convention.
    """
    allowed = label_values(convention)
    data = np.asarray(convert_to_numpy(label))
    # only the (usually zero) invalid voxels are sorted by np.unique, not the whole volume
    bad = np.unique(data[~_any_equal(data, allowed)])
    return [int(v) if np.isfinite(v) and float(v).is_integer() else float(v) for v in bad.tolist()]


class _ConventionTransform(Transform):
    """
    Base of the array label/region converters: holds a validated label convention.

    Args:
        convention: label convention, a key of :data:`LABEL_CONVENTIONS`.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]

    def __init__(self, convention: str = DEFAULT_CONVENTION) -> None:
        self.convention = validate_convention(convention)


class LabelsToRegions(_ConventionTransform):
    """
    Array transform version of :func:`labels_to_regions`.

    Args:
        convention: label convention of the input, a key of :data:`LABEL_CONVENTIONS`.
    """

    def __call__(self, label: NdarrayOrTensor) -> NdarrayOrTensor:
        return labels_to_regions(label, self.convention)


class RegionsToLabels(_ConventionTransform):
    """
    Array transform version of :func:`regions_to_labels`.

    Args:
        convention: label convention of the output, a key of :data:`LABEL_CONVENTIONS`.
    """

    def __call__(self, regions: NdarrayOrTensor) -> NdarrayOrTensor:
        return regions_to_labels(regions, self.convention)


class _ConventionMapd(MapTransform):
    """
    Base of the dictionary-based label/region converters: applies :attr:`converter_class`, built with `convention`,
    to every key.

    Args:
        keys: keys of the data to convert.
        convention: label convention, a key of :data:`LABEL_CONVENTIONS`.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ValueError: for an unknown convention.
    """

    backend = [TransformBackends.TORCH, TransformBackends.NUMPY]
    converter_class: type[_ConventionTransform]

    def __init__(
        self, keys: KeysCollection, convention: str = DEFAULT_CONVENTION, allow_missing_keys: bool = False
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.converter = self.converter_class(convention)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        for key in self.key_iterator(d):
            d[key] = self.converter(d[key])
        return d


class LabelsToRegionsd(_ConventionMapd):
    """
    Dictionary-based :class:`LabelsToRegions`: ``(1, *spatial)`` label maps -> ``(3, *spatial)`` WT/TC/ET masks.

    Args:
        keys: keys of the label maps to convert.
        convention: label convention of the inputs, a key of :data:`LABEL_CONVENTIONS`.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ValueError: for an unknown convention.
    """

    converter_class = LabelsToRegions


class RegionsToLabelsd(_ConventionMapd):
    """
    Dictionary-based :class:`RegionsToLabels`: ``(3, *spatial)`` binary WT/TC/ET masks -> ``(1, *spatial)`` labels.

    Args:
        keys: keys of the region masks to convert.
        convention: label convention of the outputs, a key of :data:`LABEL_CONVENTIONS`.
        allow_missing_keys: don't raise if a key is missing.

    Raises:
        ValueError: for an unknown convention.
    """

    converter_class = RegionsToLabels
