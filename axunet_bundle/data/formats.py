# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
The image file formats the bundle reads, and the header of the formats nibabel does not read, through ITK.

NIfTI (``.nii``, ``.nii.gz``) is read with nibabel, as MONAI's ``NibabelReader`` reads it; NRRD (``.nrrd``, ``.nhdr``)
and MetaImage (``.mha``, ``.mhd``), what 3D Slicer and ITK-based tools save, with ITK, as MONAI's ``ITKReader`` reads
them (``itk``: imported on first use only, as it takes seconds; optional for the bundle, where a case in such files
without it is one line saying so). MONAI's readers give the
voxels; this module gives what the case checks need before, without reading voxels: the shape, the channels and the
RAS affine (ITK's LPS space turned to RAS as ``ITKReader`` turns it).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from monai.data.utils import orientation_ras_lps
from monai.utils import optional_import

__all__ = ["IMAGE_SUFFIXES", "NIFTI_SUFFIXES", "ItkImage", "image_stem", "is_nifti", "voxel_location"]

#: NIfTI file-name endings (nibabel reads them)
NIFTI_SUFFIXES = (".nii.gz", ".nii")
#: every image file-name ending a case's files may have, any letter case (".nii.gz" before ".nii")
IMAGE_SUFFIXES = (*NIFTI_SUFFIXES, ".nrrd", ".nhdr", ".mha", ".mhd")
_HEADER_BYTES = 1 << 16  # an NRRD or MetaImage header is text; it never comes near this


def image_stem(name: str) -> str | None:
    """``BRATS_001.nii.gz`` -> ``BRATS_001``, ``t1ce.NRRD`` -> ``t1ce``; ``None`` for a name of no image format."""
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return name[: -len(suffix)]
    return None


def is_nifti(path: str | os.PathLike) -> bool:
    """Whether a file's name says NIfTI (nibabel reads it); other image formats are read with ITK."""
    return Path(path).name.lower().endswith(NIFTI_SUFFIXES)


def _itk() -> Any:
    """The ``itk`` module, imported now (seconds: only when a dataset holds NRRD or MetaImage files)."""
    itk, available = optional_import("itk")
    if not available:
        raise ValueError("reading NRRD and MetaImage files needs the itk package (pip install itk)")
    return itk


class ItkImage:
    """
    An NRRD or MetaImage file as the case checks see a nibabel image: ``shape`` (``X, Y, Z`` then the channels, if
    more than one), ``affine`` (RAS, millimetres), ``dataobj`` (the voxels, read on access, in the same axis order)
    and ``data_bytes`` (the voxel bytes the header announces).

    Args:
        path: the file.

    Raises:
        ValueError: when ITK has no reader for the file (not an image, or garbage), or ``itk`` is not installed.
        RuntimeError: ITK's, when the header cannot be read.
    """

    def __init__(self, path: str | os.PathLike) -> None:
        itk = _itk()
        self.path = str(path)
        io = itk.ImageIOFactory.CreateImageIO(self.path, itk.CommonEnums.IOFileMode_ReadMode)
        if io is None:
            raise ValueError("not an image file ITK can read")
        io.SetFileName(self.path)
        io.ReadImageInformation()
        dims = range(io.GetNumberOfDimensions())
        components = self.components = int(io.GetNumberOfComponents())
        self.shape = tuple(int(io.GetDimensions(i)) for i in dims) + ((components,) if components > 1 else ())
        self.data_bytes = int(io.GetImageSizeInBytes())
        lps = np.eye(4)
        for i in dims:
            if i < 3:  # the spatial axes; a 4th (time) axis has no place in the affine
                lps[:3, i] = np.asarray(io.GetDirection(i), dtype=np.float64)[:3] * float(io.GetSpacing(i))
                lps[i, 3] = float(io.GetOrigin(i))
        self.affine = orientation_ras_lps(lps)  # as MONAI's ITKReader turns it

    @property
    def dataobj(self) -> np.ndarray:
        """The voxels, ``X, Y, Z[, C]`` (ITK's arrays are ``Z, Y, X[, C]``)."""
        itk = _itk()
        array: Any = itk.array_from_image(itk.imread(self.path))
        spatial = array.ndim - (1 if self.components > 1 else 0)
        order = [*reversed(range(spatial)), *range(spatial, array.ndim)]
        return np.transpose(array, order)

    def voxel_file(self) -> tuple[Path, int | None]:
        """The file holding the voxels (:func:`voxel_location`) and the bytes it must hold when they are uncompressed
        (for the header's own file, header plus voxels); ``None`` when that cannot be told from the header
        (compressed voxels, skipped bytes, a list of files), as ITK's header reader does not tell."""
        path, offset = voxel_location(self.path)
        return path, None if offset is None else offset + self.data_bytes


def voxel_location(header: str | os.PathLike) -> tuple[Path, int | None]:
    """Where an NRRD or MetaImage file's voxels lie, from its header text: ``(file, offset)``, the file being the
    header's own or the one it names (an ``.nhdr``'s ``data file``, an ``.mhd``'s ``ElementDataFile``, relative to
    its folder) and ``offset`` where uncompressed voxels start in it; ``None`` when they are not plain bytes at a known
    place (compressed, skipped bytes, a list or pattern of files: ITK's to read)."""
    path = Path(header)
    with open(path, "rb") as f:
        head = f.read(_HEADER_BYTES)
    if path.name.lower().endswith((".nrrd", ".nhdr")):
        end = head.find(b"\n\n")
        fields = head[: end if end >= 0 else len(head)]
        raw = re.search(rb"^encoding:\s*raw\s*$", fields, re.M | re.I) and not re.search(rb"skip:", fields, re.I)
        detached = re.search(rb"^data ?file:[ \t]*(\S[^\r\n]*?)[ \t]*\r?$", fields, re.M | re.I)
        if detached:
            return _beside(path, detached[1], 0 if raw else None)
        return path, end + 2 if end > 0 and raw else None
    local = re.search(rb"^ElementDataFile\s*=[ \t]*(\S[^\r\n]*?)[ \t]*\r?$", head, re.M | re.I)
    if local is None:
        return path, None
    fields = head[: local.start()]
    raw = not re.search(rb"^CompressedData\s*=\s*True", fields, re.M | re.I) and not re.search(
        rb"^HeaderSize\s*=", fields, re.M | re.I
    )
    if local[1].upper() != b"LOCAL":
        return _beside(path, local[1], 0 if raw else None)
    return path, local.end() + 1 if raw else None


def _beside(header: Path, name: bytes, offset: int | None) -> tuple[Path, int | None]:
    """The voxel file a detached header names (relative to the header's folder); a list or a pattern of files
    (``LIST``, ``%03d``) is ITK's to read: the header's own path, nothing to tell."""
    text = name.decode("utf-8", "replace")
    if text.upper().startswith("LIST") or "%" in text or " " in text:
        return header, None
    return header.parent / text, offset
