# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
BraTS label maps <-> tumour-region masks, in one place.

Label conventions (:data:`LABEL_CONVENTIONS`):

- ``"brats2021"`` (BraTS 2017-2021): 1 = necrotic tumour core (NCR), 2 = peritumoral edema (ED), 4 = enhancing
  tumour (ET).
- ``"brats2023"`` (BraTS 2023+): 1 = NCR (NETC), 2 = ED (SNFH), 3 = ET.
- ``"brats2024"`` (BraTS 2024-2025 adult glioma post-treatment): as ``brats2023``, and 4 = resection cavity (RC).
- ``"msd"`` (Medical Segmentation Decathlon Task01_BrainTumour, nnU-Net's Task001): 1 = edema (ED),
  2 = non-enhancing tumour (NCR), 3 = enhancing tumour (ET).

Regions, in channel order :data:`REGIONS`: WT (whole tumour) = NCR + ED + ET, TC (tumour core) = NCR + ET,
ET (enhancing tumour) = ET. The resection cavity is in no region (the BraTS 2024 rule): it trains as background and
is never predicted, so a label map written in ``brats2024`` holds 0-3 only.

``"auto"`` (:data:`AUTO`) reads each case in its own dataset's convention: the one its file names or its
``dataset.json`` tell (:func:`resolve_convention`).
"""

from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType

import numpy as np
import torch
from monai.config.type_definitions import NdarrayOrTensor
from monai.utils import convert_to_dst_type, convert_to_numpy

from ..errors import ConfigurationError

__all__ = [
    "REGIONS",
    "LABEL_CONVENTIONS",
    "AUTO",
    "DEFAULT_CONVENTION",
    "BACKGROUND",
    "convention_for_values",
    "resolve_convention",
    "validate_convention",
    "label_values",
    "region_labels",
    "labels_to_regions",
    "regions_to_labels",
    "invalid_label_values",
    "RC_OR_ET",
]

#: Region channel order: whole tumour, tumour core, enhancing tumour (the paper's order).
REGIONS: tuple[str, ...] = ("WT", "TC", "ET")

BACKGROUND = 0

#: Convention name -> class (``"NCR"``, ``"ED"``, ``"ET"``, ``"RC"``) -> label value.
LABEL_CONVENTIONS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        "brats2021": MappingProxyType({"NCR": 1, "ED": 2, "ET": 4}),
        "brats2023": MappingProxyType({"NCR": 1, "ED": 2, "ET": 3}),
        "brats2024": MappingProxyType({"NCR": 1, "ED": 2, "ET": 3, "RC": 4}),
        "msd": MappingProxyType({"ED": 1, "NCR": 2, "ET": 3}),
    }
)

#: each case in its own dataset's convention
AUTO = "auto"
DEFAULT_CONVENTION = "brats2021"

# classes that make up each region (RC, the resection cavity, is in none)
_REGION_CLASSES: Mapping[str, tuple[str, ...]] = MappingProxyType(
    {"WT": ("NCR", "ED", "ET"), "TC": ("NCR", "ET"), "ET": ("ET",)}
)
_N_REGIONS = len(REGIONS)
#: the value a 2023-named label map must not hold alone: ET in the 2021 labels, the resection cavity in the 2024 ones
RC_OR_ET = LABEL_CONVENTIONS["brats2024"]["RC"]


def validate_convention(convention: str, allow_auto: bool = False) -> str:
    """
    Check a label-convention name.

    Args:
        convention: a key of :data:`LABEL_CONVENTIONS` (or ``"auto"`` with `allow_auto`).
        allow_auto: accept :data:`AUTO` too.

    Returns:
        `convention` unchanged.

    Raises:
        ConfigurationError: naming the valid conventions when `convention` is not one of them.
    """
    valid = (*LABEL_CONVENTIONS, *((AUTO,) if allow_auto else ()))
    if not isinstance(convention, str) or convention not in valid:
        raise ConfigurationError(f"unknown label convention {convention!r}: valid conventions are {', '.join(valid)}")
    return convention


def convention_for_values(label: NdarrayOrTensor) -> str:
    """The BraTS convention a label map alone implies, when nothing names its dataset: ``brats2023`` when it holds 3
    (ET since 2023; with 4 too, :func:`resolve_convention` makes it ``brats2024``), else ``brats2021`` (1 and 2 mean
    the same in both). Decathlon labels (1 edema, 2 core) cannot be told apart by their values: name ``msd``."""
    data = label.as_tensor() if hasattr(label, "as_tensor") else label
    return "brats2023" if bool((data == LABEL_CONVENTIONS["brats2023"]["ET"]).any()) else DEFAULT_CONVENTION


def resolve_convention(convention: str, dataset_convention: str | None, label: NdarrayOrTensor | None = None) -> str:
    """
    The convention to read a case's labels in.

    Args:
        convention: the setting (``label_convention``): a convention name, used as given, or :data:`AUTO`.
        dataset_convention: the convention the case's dataset implies (its names or ``dataset.json``).
        label: the case's label map, when known. Under :data:`AUTO`, a ``brats2023`` case whose label holds both 3
            and 4 is BraTS 2024 post-treatment data (3 is ET, so 4 can only be the resection cavity): ``brats2024``.
            A 4 without any 3 stays ambiguous (ET in BraTS 2021 labels, RC in 2024 ones) and is refused by the label
            check, which says which convention to set.

    Returns:
        a key of :data:`LABEL_CONVENTIONS`.

    Raises:
        ConfigurationError: for an unknown convention name.
    """
    if validate_convention(convention, allow_auto=True) != AUTO:
        return convention
    resolved = validate_convention(dataset_convention or DEFAULT_CONVENTION)
    if resolved == "brats2023" and label is not None:
        data = label.as_tensor() if hasattr(label, "as_tensor") else label
        values = data == RC_OR_ET
        if bool(values.any()) and bool((data == LABEL_CONVENTIONS["brats2023"]["ET"]).any()):
            return "brats2024"
    return resolved


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
