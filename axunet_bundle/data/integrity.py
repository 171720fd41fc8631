# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
Dataset integrity checks, in the spirit of nnU-Net's ``verify_dataset_integrity``.

:func:`check_case` and :func:`dataset_problems` look at files on disk and report every problem as a
:class:`~axunet_bundle.errors.CaseError` instead of raising; ``axunet check DIR`` (:mod:`axunet_bundle.cli.data`)
runs them over a dataset, reading every voxel. The runs select their cases by the headers alone; the voxels are
checked once, as the chain loads them, by :class:`axunet_bundle.data.pipeline.ValidateCased` with the same
:func:`image_problems` and :func:`label_problems`.
"""

from __future__ import annotations

import gzip
import logging
import math
import os
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.utils import affine_to_spacing, correct_nifti_header_if_necessary
from monai.utils import convert_to_numpy
from nibabel.filebasedimages import ImageFileError

from ..errors import CaseError
from ..settings import AUTO_GRID, resolve_grid_modality
from .cases import LABEL_SUFFIX, LAYOUT_MSD, MODALITIES, Case, Discovery, automated_segmentation, validate_modalities
from .formats import ItkImage, is_nifti, voxel_location
from .labels import AUTO, RC_OR_ET, invalid_label_values, label_values, resolve_convention, validate_convention

__all__ = [
    "AFFINE_TOLERANCE",
    "INVALID_AFFINE",
    "channel_problems",
    "check_case",
    "dataset_problems",
    "file_problems",
    "grid_of",
    "image_problems",
    "label_problems",
    "read_problem",
    "same_grid",
    "spatial_shape",
]

#: Largest absolute difference between two files' affine entries (mm) that still counts as the same grid; a modality on
#: another grid is resampled onto the reference modality's, a label on another grid is refused.
AFFINE_TOLERANCE = 1e-3
#: why a file whose orientation cannot be read is refused
INVALID_AFFINE = "unreadable orientation: its affine is non-finite or singular (a zero voxel size or direction)"
logger = logging.getLogger(__name__)
LOADED_DTYPE = np.dtype(np.float32)  # what the bundle's LoadImaged gives the network


SPATIAL_DIMS = 3
NIFTI1_HEADER_BYTES = 348  # the smallest NIfTI header (NIfTI-1); a file shorter than this was cut inside it
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ISIZE_BYTES = 4  # the last 4 bytes of a gzip member: its uncompressed length modulo 2**32
_GZIP_ISIZE_MODULUS = 2**32
_COUNT_CHUNK_BYTES = 1 << 20
_MAX_LISTED_VALUES = 10  # a continuous image saved as "seg" would otherwise list millions of values
_BRATS2023_FOUR = (
    ": 4 is the resection cavity in BraTS 2024 post-treatment labels (set label_convention brats2024) and the "
    "enhancing tumour in BraTS 2021 labels (set brats2021)"
)


def _format_values(values: Sequence[int | float]) -> str:
    shown = ", ".join(str(v) for v in values[:_MAX_LISTED_VALUES])
    return shown + (f", ... ({len(values)} distinct values)" if len(values) > _MAX_LISTED_VALUES else "")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _header_failure(path: Path, compressed: bool) -> str:
    """Why nibabel found no NIfTI header: a file cut short, corrupt compressed data, or simply not NIfTI."""
    opener: Any = gzip.open if compressed else open
    try:
        with opener(path, "rb") as f:
            head = f.read(NIFTI1_HEADER_BYTES)
    except EOFError:
        head = b""  # the compressed stream ends before the header does
    except (OSError, zlib.error) as exc:
        return f"corrupt compressed data ({_first_line(exc)})"
    if len(head) < NIFTI1_HEADER_BYTES:
        return "truncated file: it ends inside the NIfTI header"
    return "not a NIfTI file (no valid NIfTI header)"


def _open_header(path: Path) -> tuple[Any, str | None]:
    """Load a NIfTI header with nibabel: ``(image, None)``, or ``(None, reason)`` when the file is unusable."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        return None, f"cannot access file ({exc.strerror or _first_line(exc)})"
    if size == 0:
        return None, "empty file"
    if not is_nifti(path):
        return _open_itk_header(path, size)
    compressed = path.name.lower().endswith(".gz")
    if compressed:
        try:  # the gzip magic and trailer in one open
            with open(path, "rb") as f:
                magic = f.read(len(_GZIP_MAGIC))
                f.seek(max(0, size - _GZIP_ISIZE_BYTES))
                isize = int.from_bytes(f.read(_GZIP_ISIZE_BYTES), "little")
        except OSError as exc:
            return None, f"cannot read file ({exc.strerror or _first_line(exc)})"
        if magic != _GZIP_MAGIC:
            return None, "not gzip-compressed although named .gz"
    try:
        img = nib.load(path)
    except ImageFileError:
        return None, _header_failure(path, compressed)
    except Exception as exc:  # never raise for a bad file
        return None, f"unreadable NIfTI header ({_first_line(exc)})"
    try:
        proxy = img.dataobj  # nibabel's ArrayProxy knows where the voxels start and their on-disk dtype
        expected = int(proxy.offset) + math.prod(proxy.shape) * np.dtype(proxy.dtype).itemsize
    except Exception as exc:  # never raise for a bad file
        return None, f"unreadable NIfTI header ({_first_line(exc)})"
    # A header can claim more voxels than the file holds. nibabel allocates the whole claim before reading, so a cut
    # or damaged file is refused here, from its length, without reading (or allocating) any voxels.
    if not compressed and size < expected:
        return None, f"truncated file: {size} bytes where the header needs {expected}"
    if compressed and not _decompresses_to(path, expected, isize):
        return None, f"truncated file: the compressed data holds less than the {expected} bytes the header needs"
    return img, None


def _itk_reason(exc: BaseException) -> str:
    """ITK's error in one line: its last line says what went wrong (the first names ITK's source file)."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return lines[-1].removeprefix("[nrrd] ") if lines else type(exc).__name__


def _open_itk_header(path: Path, size: int) -> tuple[Any, str | None]:
    """:func:`_open_header` for the formats ITK reads (NRRD, MetaImage)."""
    voxels = path
    try:
        voxels = voxel_location(path)[0]
        if voxels != path:  # a detached header (.nhdr, .mhd): its voxels lie in the file it names
            size = voxels.stat().st_size
    except OSError as exc:
        what = "file" if voxels == path else f"its voxel file {voxels.name}"
        return None, f"cannot read {what} ({exc.strerror or _first_line(exc)})"
    try:
        img = ItkImage(path)
        voxels, needed = img.voxel_file()
    except Exception as exc:  # never raise for a bad file
        return None, f"unreadable image header ({_itk_reason(exc)})"
    if needed is not None and size < needed:
        where = "" if voxels == path else f" (its voxel file {voxels.name})"
        return None, f"truncated file{where}: {size} bytes where the header needs {needed}"
    return img, None


def _decompresses_to(path: Path, needed: int, isize: int) -> bool:
    """Whether a gzip file decompresses to at least ``needed`` bytes.

    The gzip trailer's ISIZE (`isize`: the uncompressed length modulo 2**32) answers without decompressing for a file
    of one gzip member; otherwise (a short ISIZE, a claim of 4 GiB or more, several members) the data are decompressed
    in chunks and counted, stopping at ``needed``, so memory stays small whatever the header claims.
    """
    if needed < _GZIP_ISIZE_MODULUS and isize >= needed:
        return True
    remaining = needed
    try:
        with gzip.open(path, "rb") as f:
            while remaining > 0:
                chunk = f.read(min(remaining, _COUNT_CHUNK_BYTES))
                if not chunk:
                    return False
                remaining -= len(chunk)
        return True
    except (OSError, EOFError, zlib.error):
        return False  # a damaged stream cannot hold the volume either


def spatial_shape(shape: tuple[int, ...]) -> tuple[tuple[int, ...] | None, str | None]:
    """3D shape of a volume, allowing trailing singleton dims (e.g. 240x240x155x1); else a reason."""
    dims = list(shape)
    while len(dims) > SPATIAL_DIMS and dims[-1] == 1:
        dims.pop()
    if len(dims) != SPATIAL_DIMS:
        return None, f"{len(dims)}D image of shape {tuple(shape)} where a 3D volume is expected"
    return tuple(dims), None


def _non_finite_reasons(data: np.ndarray, voxels: str) -> list[str]:
    """The reason ``"<count> non-finite <voxels>"`` when `data` has NaN/inf voxels, else nothing.

    Args:
        data: loaded voxels; only floating-point data can hold NaN/inf.
        voxels: what the counted voxels are, e.g. ``"label voxels (NaN/inf)"``.
    """
    if not np.issubdtype(data.dtype, np.floating):
        return []
    n_bad = int(np.count_nonzero(~np.isfinite(data)))
    if n_bad:
        return [f"{n_bad} non-finite {voxels}"]
    if data.dtype.itemsize > LOADED_DTYPE.itemsize:  # e.g. a huge scl_slope: finite here, inf once loaded
        n_big = int(np.count_nonzero(np.abs(data) > np.finfo(LOADED_DTYPE).max))
        if n_big:
            return [f"{n_big} non-finite {voxels} once read as {LOADED_DTYPE} (values beyond its range)"]
    return []


def label_problems(data: NdarrayOrTensor, convention: str) -> list[str]:
    """Reasons why a loaded label map is unusable in `convention` (empty list when it is fine); the one label check
    of the bundle (the case check, the training's and inference's chains and the evaluation use it)."""
    data = np.asarray(convert_to_numpy(data))
    reasons = _non_finite_reasons(data, "label voxels (NaN/inf)")
    invalid = [v for v in invalid_label_values(data, convention) if math.isfinite(v)]
    non_integral = [v for v in invalid if isinstance(v, float)]
    outside = [v for v in invalid if isinstance(v, int)]
    if non_integral:
        reasons.append(f"non-integral label values {_format_values(non_integral)}")
    if outside:
        valid = ", ".join(map(str, label_values(convention)))
        hint = _BRATS2023_FOUR if convention == "brats2023" and RC_OR_ET in outside else ""
        reasons.append(f"label values {_format_values(outside)} outside the {convention} labels ({valid}){hint}")
    return reasons


def image_problems(data: np.ndarray, modality: str) -> list[str]:
    """Reasons why a loaded image volume is unusable (empty list when it is fine)."""
    reasons = _non_finite_reasons(data, f"voxels (NaN/inf) in {modality}")
    if not np.any(data):
        reasons.append(f"{modality} image is all zero")
    return reasons


def _read_voxels(img: Any) -> tuple[np.ndarray | None, str | None]:
    try:
        return np.asanyarray(img.dataobj), None
    except EOFError:
        return None, "truncated file: the compressed data ends before the volume is complete"
    except zlib.error as exc:
        return None, f"corrupt compressed data ({_first_line(exc)})"
    except Exception as exc:  # never raise for a bad file
        return None, f"voxel data unreadable ({_itk_reason(exc) if isinstance(img, ItkImage) else _first_line(exc)})"


def read_problem(path: str | os.PathLike, voxels: bool = True) -> str | None:
    """Why an image file cannot be read (header, length, compressed data; with `voxels`, the voxels too), or ``None``
    when it can: what names the file when a chain's loading fails (only then, so a sound case is read once)."""
    img, reason = _open_header(Path(path))
    return reason if img is None or not voxels else _read_voxels(img)[1]


_Geometry = tuple[str, tuple[int, ...], np.ndarray]  # (kind of file, 3D shape, affine)


def same_grid(shape: Sequence[int], affine: NdarrayOrTensor, ref_shape: Sequence[int], ref_affine: Any) -> bool:
    """Whether two volumes lie on one grid: the same spatial shape, affines within :data:`AFFINE_TOLERANCE`."""
    diff = np.abs(convert_to_numpy(affine, dtype=np.float64) - convert_to_numpy(ref_affine, dtype=np.float64))
    return tuple(shape) == tuple(ref_shape) and float(np.max(diff)) <= AFFINE_TOLERANCE


def grid_of(shape: Sequence[int], affine: NdarrayOrTensor) -> str:
    """A grid in words for the log: ``"240x240x52 voxels of 1x1x3 mm"``."""
    spacing = affine_to_spacing(convert_to_numpy(affine, dtype=np.float64), r=SPATIAL_DIMS)
    return f"{'x'.join(map(str, shape))} voxels of {'x'.join(f'{s:.3g}' for s in spacing)} mm"


def _extent(shape: Sequence[int], affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The box (world mm, RAS) that a grid's voxels cover."""
    corners = np.array(np.meshgrid(*[(-0.5, n - 0.5) for n in shape], indexing="ij")).reshape(SPATIAL_DIMS, -1)
    world = affine[:SPATIAL_DIMS, :SPATIAL_DIMS] @ corners + affine[:SPATIAL_DIMS, SPATIAL_DIMS:]
    return world.min(axis=1), world.max(axis=1)


def _grid_problems(geometry: _Geometry, reference: _Geometry) -> tuple[list[str], str]:
    """Why a file's grid cannot be used with the reference modality's, and, for a modality that will be resampled onto
    the reference's grid (by :class:`~axunet_bundle.data.pipeline.LoadCased`), the log line that says so: both grids
    and how far apart their fields of view end (the largest distance between their boxes' faces, mm)."""
    (kind, shape, affine), (ref_kind, ref_shape, ref_affine) = geometry, reference
    if same_grid(shape, affine, ref_shape, ref_affine):
        return [], ""
    if LABEL_SUFFIX in (kind, ref_kind):  # a label is never interpolated: it must lie on its images' grid
        max_diff = float(np.max(np.abs(affine - ref_affine)))
        reasons = [f"shape {shape} differs from {ref_kind}'s {ref_shape}"] if shape != ref_shape else []
        if max_diff > AFFINE_TOLERANCE:
            reasons.append(f"affine differs from {ref_kind}'s (largest difference {max_diff:.4g})")
        return [
            r + " (a label must lie on the reference modality's grid: labels are never interpolated)" for r in reasons
        ], ""
    (low, high), (ref_low, ref_high) = _extent(shape, affine), _extent(ref_shape, ref_affine)
    if not np.all(np.maximum(low, ref_low) < np.minimum(high, ref_high)):
        return [f"its field of view does not overlap {ref_kind}'s: nothing to resample onto {ref_kind}'s grid"], ""
    apart = float(np.max(np.abs(np.concatenate([low - ref_low, high - ref_high]))))
    grids = f"{grid_of(shape, affine)} -> {grid_of(ref_shape, ref_affine)}"
    return [], f"{kind} resampled onto {ref_kind}'s grid ({grids}; fields of view {apart:.3g} mm apart at most)"


def _spatial_and_channels(shape: tuple[int, ...], multichannel: bool) -> tuple[tuple[int, ...] | None, int, str]:
    """``(3D shape, channels, "")`` of a header's shape, or ``(None, 0, reason)``. A multi-channel file is ``X, Y, Z,
    C`` or ITK's vector layout ``X, Y, Z, 1, C``; any other file is 3D (trailing singleton dimensions allowed)."""
    if multichannel and len(shape) > SPATIAL_DIMS:
        return tuple(shape[:SPATIAL_DIMS]), math.prod(shape[SPATIAL_DIMS:]), ""
    spatial, reason = spatial_shape(shape)
    return spatial, 1, reason or ""


def channel_problems(channels: int, needed: Sequence[int] | None, modalities: Sequence[str]) -> list[str]:
    """Why a multi-channel file cannot give ``modalities`` (from ``needed`` channels, or in order)."""
    names = ", ".join(modalities)
    if needed is not None:
        if max(needed) >= channels:
            return [f"{channels} channels, but dataset.json puts {names} in channels {list(needed)}"]
        return []
    if channels != len(modalities):
        return [
            f"{channels} channels where {len(modalities)} are expected ({names}, in this order); a file of other "
            "channels needs a dataset.json naming them"
        ]
    return []


def file_problems(
    path: Path,
    kind: str,
    read_voxels: bool,
    convention: str,
    dataset_convention: str,
    modalities: Sequence[str] | None = None,
    indices: Sequence[int] | None = None,
) -> tuple[list[str], _Geometry | None]:
    """Reasons why one file is unusable, and its geometry when the header could be read.

    Args:
        path: the file.
        kind: a modality, ``"seg"``, or ``"image"`` for a multi-channel file.
        read_voxels: read the voxel data (else headers only).
        convention: the label convention setting (``"auto"`` or a name).
        dataset_convention: the case's dataset's convention.
        modalities: for a multi-channel file, the modalities it must give.
        indices: their channels in the file (``dataset.json``'s); ``None``: the file's channels are `modalities`, in
            order.
    """
    img, reason = _open_header(path)
    if img is None:
        return [reason or "unreadable"], None
    shape, n_channels, reason = _spatial_and_channels(img.shape, modalities is not None)
    if shape is None:
        return [reason or "no shape"], None
    reasons = [] if modalities is None else channel_problems(n_channels, indices, modalities)
    if reasons:
        return reasons, None
    try:
        # the geometry MONAI's NibabelReader will use: it swaps a sform that disagrees with pixdim for the qform
        img = img if isinstance(img, ItkImage) else correct_nifti_header_if_necessary(img)
    except Exception as exc:  # never raise for a bad file
        return [f"inconsistent NIfTI geometry header ({_first_line(exc)})"], None
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:SPATIAL_DIMS, :SPATIAL_DIMS])) == 0:
        return [INVALID_AFFINE], None  # its voxels cannot be placed (ITK refuses to read them): one line says so
    geometry = (kind, shape, affine)
    if read_voxels:
        data, reason = _read_voxels(img)
        if data is None:
            return reasons + [reason or "no voxel data"], geometry
        if kind == LABEL_SUFFIX:
            reasons += label_problems(data, resolve_convention(convention, dataset_convention, data))
        elif modalities is not None:
            volumes = data.reshape(*shape, -1)
            for position, modality in enumerate(modalities):
                reasons += image_problems(volumes[..., position if indices is None else indices[position]], modality)
        else:
            reasons += image_problems(data, kind)
    return reasons, geometry


def check_case(
    case: Case,
    modalities: Sequence[str] = MODALITIES,
    read_voxels: bool = True,
    convention: str = AUTO,
    grid_modality: str = AUTO_GRID,
) -> list[CaseError]:
    """
    Check one case's files; every problem is reported, none is raised.

    Header checks (always): missing modality (or named channel); unreadable, empty, truncated or non-NIfTI file; an
    image that is not 3D (a trailing singleton dimension such as 240x240x155x1 counts as 3D) or, for a multi-channel
    file, that lacks the channels its modalities need; the grids (geometry read as MONAI's ``NibabelReader`` reads
    it), each file's against the reference modality's (`grid_modality`): a modality on another grid is resampled onto
    it (logged: both grids, how far apart their fields of view end) unless their fields of view share no space or its
    affine is broken; the label must lie on it (within :data:`AFFINE_TOLERANCE`: labels are never interpolated); a
    header that claims more voxels than the file holds is refused before any voxel is read. With `read_voxels`, also
    the voxels: damaged compressed data, non-finite voxels, an all-zero modality, label values outside the case's
    convention (resolved with the label, as the chain resolves it).

    Args:
        case: the case to check.
        modalities: canonical modalities the case must have; other image files are not checked.
        read_voxels: read the voxel data too. ``False`` reads the headers and the files' lengths only (a
            ``.nii.gz``'s from its gzip trailer): how the runs select their cases, leaving the voxels to the chain.
        convention: the label convention setting: ``"auto"`` (the case's dataset's) or a convention name.
        grid_modality: the modality whose grid is the reference: one of `modalities`, or ``"auto"`` (T1CE where
            `modalities` hold it, else the first; see :func:`~axunet_bundle.settings.resolve_grid_modality`). The
            one file of a multi-channel case is its own reference.

    Returns:
        the problems found, in file order (modalities in the given order, then the label); empty if none.

    Raises:
        ConfigurationError: for unknown modality or convention names, or a `grid_modality` not among `modalities`
            (a usage error, not a data problem).
    """
    mods = validate_modalities(modalities)
    grid_modality = resolve_grid_modality(grid_modality, mods)
    validate_convention(convention, allow_auto=True)
    what = "channel" if case.channels is not None else "image"
    problems = [
        CaseError(case.case_id, case.directory / case.expected_file_name(m), f"missing {m} {what}")
        for m in case.missing_modalities(mods)
    ]
    files: list[tuple[str, Path, tuple]] = []  # (kind, path, a multi-channel file's modalities and their indices)
    if case.multichannel and not problems:
        files = [("image", Path(case.image_files(mods)[0]), (mods, case.channel_indices(mods)))]
    elif not case.multichannel:
        files = [(m, case.images[m], ()) for m in mods if m in case.images]
    if case.label is not None:
        files.append((LABEL_SUFFIX, case.label, ()))
    checked = [
        (path, *file_problems(path, kind, read_voxels, convention, case.convention, *channels))
        for kind, path, channels in files
    ]
    # the reference grid: the grid modality's file (a multi-channel case's one file); unreadable, it is the problem
    reference = next((g for g in (c[2] for c in checked) if g is not None and g[0] in (grid_modality, "image")), None)
    for path, reasons, geometry in checked:
        if reference is not None and geometry is not None and geometry is not reference:
            grid_reasons, resampled = _grid_problems(geometry, reference)
            reasons = grid_reasons + reasons
            if resampled:
                logger.info("case %s: %s", case.case_id, resampled)
        problems.extend(CaseError(case.case_id, path, reason) for reason in reasons)
    return problems


def dataset_problems(found: Discovery, labels_needed: bool = True) -> list[CaseError]:
    """The problems of a dataset beyond its cases' files: every image file discovery could not place (a stray, or
    a case's file that may be a misnamed label: never silently ignored), and, when labels are needed and some cases
    have one, every case without its label (not silently dropped from training) but those with a program's
    segmentation (:func:`~axunet_bundle.data.cases.automated_segmentation`: a collection that labels a subset by
    hand, as UPenn-GBM; ``axunet check`` warns of them)."""
    problems = [CaseError(owner or "-", path, reason) for owner, path, reason in found.strays]
    labelled = sum(case.label is not None for case in found.cases)
    if labelled and labels_needed:
        problems += [
            CaseError(
                case.case_id,
                case.directory / case.expected_file_name(LABEL_SUFFIX),
                f"no label, where "
                f"{labelled} of the dataset's {len(found.cases)} cases have one: it cannot train or be evaluated",
            )
            for case in found.cases
            if case.label is None
            and case.layout != LAYOUT_MSD  # dataset.json lists its test cases as such
            and automated_segmentation(case) is None
        ]
    return problems
