# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Transforms and output helpers the bundle's chains need and MONAI does not provide."""

from __future__ import annotations

import os
from collections.abc import Hashable, Mapping

import numpy as np
import torch
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data import ITKWriter, NibabelWriter
from monai.transforms import MapTransform
from monai.utils import convert_to_dst_type
from scipy import ndimage

from .atomic import atomic_path
from .data.cases import case_id_from_path
from .data.labels import REGIONS
from .data.pipeline import CASE_ID_KEY
from .settings import check_setting

__all__ = [
    "is_nonzero",
    "ET_CHANNEL",
    "RemoveSmallEnhancingd",
    "case_id_from_meta",
    "case_name_formatter",
    "AtomicNibabelWriter",
    "AtomicITKWriter",
    "atomic_writer",
]

#: index of the enhancing-tumour channel in (WT, TC, ET) region masks
ET_CHANNEL = REGIONS.index("ET")
#: appended to the subject given to MONAI's SaveImage, which removes one extension from it
SUBJECT_EXTENSION = ".nii"


def is_nonzero(image: NdarrayOrTensor) -> NdarrayOrTensor:
    """Foreground selector for ``CropForegroundd``: brain voxels are the non-zero ones.

    MONAI's default (``x > 0``) would drop brain voxels of scans stored with negative intensities.
    """
    return image != 0


class RemoveSmallEnhancingd(MapTransform):
    """
    Relabel enhancing-tumour components smaller than ``min_voxels`` as necrosis, a common BraTS post-processing:
    small ET blobs are mostly false positives, and an ET prediction where the reference has none costs a whole
    case's ET Dice. Works on binary ``(WT, TC, ET, *spatial)`` region masks: the ET channel is cleared in the
    small components while TC stays set, so the label map written afterwards shows necrosis there. MONAI's
    ``RemoveSmallObjectsd`` acts on whole channels and needs scikit-image, which the bundle does not require.

    Args:
        keys: keys of the region masks.
        min_voxels: components with fewer voxels are relabelled; 0 turns the transform off.
        allow_missing_keys: don't raise if a key is missing.
    """

    def __init__(self, keys: KeysCollection, min_voxels: int = 0, allow_missing_keys: bool = False) -> None:
        super().__init__(keys, allow_missing_keys)
        check_setting("et_min_voxels", min_voxels)  # the bundle id's rule and message, as initialize checks it
        self.min_voxels = int(min_voxels)

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        d = dict(data)
        if self.min_voxels == 0:
            return d
        for key in self.key_iterator(d):
            regions = d[key]
            enhancing = np.asarray(regions[ET_CHANNEL].detach().cpu() if isinstance(regions, torch.Tensor) else regions)
            # every neighbour, diagonals included (26 in 3D), as BraTS post-processing usually does
            structure = ndimage.generate_binary_structure(enhancing.ndim, enhancing.ndim)
            components, count = ndimage.label(enhancing > 0, structure=structure)
            if count == 0:
                continue
            sizes = np.bincount(components.ravel())
            small = np.isin(components, np.flatnonzero(sizes < self.min_voxels)) & (components > 0)
            kept = enhancing * ~small
            out = regions.clone() if isinstance(regions, torch.Tensor) else regions.copy()
            out[ET_CHANNEL] = convert_to_dst_type(kept, out[ET_CHANNEL])[0]
            d[key] = out
        return d


def case_id_from_meta(metadict: Mapping) -> str:
    """A prediction's case id: the one its case's item carries (``ValidateCased`` puts it in the image's metadata,
    which the prediction inherits), else the one its image file's name gives (a chain without that step)."""
    return str(metadict.get(CASE_ID_KEY) or case_id_from_path(metadict.get("filename_or_obj", "case")))


def case_name_formatter(metadict: dict, saver: object) -> dict:
    """``SaveImaged(output_name_formatter=...)``: name outputs after the case (``<case_id>_seg.nii.gz``) rather than
    after the first image file (``<case_id>_t1ce_seg.nii.gz``): the id the case's item carries (``ValidateCased``
    puts it in the image's metadata, which the prediction inherits), else the one its image file's name gives (a
    chain without that step). Either way a plain name, so no output leaves the output folder."""
    case_id = case_id_from_meta(metadict)
    # MONAI strips what looks like an extension from the subject ("a..b" -> "a."), which would merge cases whose ids
    # differ after a dot: give it an extension to strip
    return {"subject": str(case_id) + SUBJECT_EXTENSION, "idx": None}


class _AtomicWrite:
    """A MONAI image writer that writes to a temporary file beside the target and renames it into place, so an
    interrupted run never leaves a truncated file that looks like a finished segmentation."""

    def write(self, filename: str | os.PathLike, verbose: bool = False, **obj_kwargs) -> None:
        with atomic_path(filename) as tmp:
            super().write(tmp, verbose=verbose, **obj_kwargs)  # type: ignore[misc]


class AtomicNibabelWriter(_AtomicWrite, NibabelWriter):
    """MONAI's ``NibabelWriter`` (NIfTI), written atomically."""


class AtomicITKWriter(_AtomicWrite, ITKWriter):
    """MONAI's ``ITKWriter`` (NRRD, MetaImage), written atomically."""


def atomic_writer(output_ext: str) -> type:
    """The atomic writer for a label map's file-name ending (:data:`~axunet_bundle.outputs.SEGMENTATION_EXTENSIONS`):
    ``SaveImaged(writer=...)``.

    Raises:
        ConfigurationError: an ending the bundle does not write.
    """
    check_setting("output_ext", output_ext)
    return AtomicNibabelWriter if output_ext.startswith(".nii") else AtomicITKWriter
