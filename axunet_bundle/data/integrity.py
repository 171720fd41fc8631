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
Dataset integrity checks, in the spirit of nnU-Net's ``verify_dataset_integrity``.

:func:`check_case` / :func:`check_dataset` look at files on disk and report every problem as a :class:`Problem`
instead of raising; :func:`run_check` is the command-line entry (``python -m axunet_bundle check DIR``);
:class:`ValidateCased` checks data already loaded by a MONAI pipeline and raises a :class:`CaseError`.
"""

from __future__ import annotations

import gzip
import math
import os
import sys
import zlib
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.data.utils import correct_nifti_header_if_necessary
from monai.transforms import MapTransform
from monai.utils import ImageMetaKey, convert_to_numpy, ensure_tuple
from nibabel.filebasedimages import ImageFileError

from axunet_bundle.data.cases import (
    DEFAULT_MODALITIES,
    LABEL_SUFFIX,
    MODALITIES,
    Case,
    CaseError,
    find_cases,
    parse_file_name,
    validate_modalities,
)
from axunet_bundle.data.labels import DEFAULT_CONVENTION, invalid_label_values, label_values, validate_convention
from axunet_bundle.progress import progress as show_progress

__all__ = [
    "AFFINE_TOLERANCE",
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "EXIT_UNUSABLE",
    "Problem",
    "check_case",
    "check_dataset",
    "run_check",
    "ValidateCased",
]

AFFINE_TOLERANCE = 1e-3
"""Largest absolute difference between a label's and the images' affine entries that still counts as the same
geometry. Image modalities are stacked by MONAI's ``LoadImage``, which needs ``np.allclose`` affines."""
LOADED_DTYPE = np.dtype(np.float32)  # what the bundle's LoadImaged gives the network

EXIT_OK = 0
EXIT_PROBLEMS = 1
EXIT_UNUSABLE = 2  # the dataset directory is missing, empty or cannot be enumerated

SPATIAL_DIMS = 3
NIFTI1_HEADER_BYTES = 348  # the smallest NIfTI header (NIfTI-1); a file shorter than this was cut inside it
_GZIP_MAGIC = b"\x1f\x8b"
_GZIP_ISIZE_BYTES = 4  # the last 4 bytes of a gzip member: its uncompressed length modulo 2**32
_GZIP_ISIZE_MODULUS = 2**32
_COUNT_CHUNK_BYTES = 1 << 20
_MAX_LISTED_VALUES = 10  # a continuous image saved as "seg" would otherwise list millions of values


@dataclass(frozen=True)
class Problem:
    """
    One problem found in one file of one case; ``str()`` is the single line ``"<case_id>: <file name>: <reason>"``.

    Args:
        case_id: id of the case.
        file: the file concerned (a missing file is named as it is expected to be called), or ``None``.
        reason: what is wrong.
    """

    case_id: str
    file: Path | None
    reason: str

    def __str__(self) -> str:
        return str(CaseError(self.case_id, self.file, self.reason))

    def to_error(self) -> CaseError:
        """The problem as an exception, for callers that must stop on it."""
        return CaseError(self.case_id, self.file, self.reason)


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
    compressed = path.name.lower().endswith(".gz")
    if compressed:
        try:
            with open(path, "rb") as f:
                magic = f.read(len(_GZIP_MAGIC))
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
    if compressed and not _decompresses_to(path, expected):
        return None, f"truncated file: the compressed data holds less than the {expected} bytes the header needs"
    return img, None


def _decompresses_to(path: Path, needed: int) -> bool:
    """Whether a gzip file decompresses to at least ``needed`` bytes.

    The gzip trailer's ISIZE (the uncompressed length modulo 2**32) answers without decompressing for a file of one
    gzip member; otherwise (a short ISIZE, a claim of 4 GiB or more, several members) the data are decompressed in
    chunks and counted, stopping at ``needed``, so memory stays small whatever the header claims.
    """
    try:
        with open(path, "rb") as f:
            f.seek(-_GZIP_ISIZE_BYTES, os.SEEK_END)
            isize = int.from_bytes(f.read(_GZIP_ISIZE_BYTES), "little")
        if needed < _GZIP_ISIZE_MODULUS and isize >= needed:
            return True
        remaining = needed
        with gzip.open(path, "rb") as f:
            while remaining > 0:
                chunk = f.read(min(remaining, _COUNT_CHUNK_BYTES))
                if not chunk:
                    return False
                remaining -= len(chunk)
        return True
    except (OSError, EOFError, zlib.error):
        return False  # a damaged stream cannot hold the volume either


def _spatial_shape(shape: tuple[int, ...]) -> tuple[tuple[int, ...] | None, str | None]:
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


def _label_problems(data: np.ndarray, convention: str) -> list[str]:
    """Reasons why a loaded label map is unusable in `convention` (empty list when it is fine)."""
    reasons = _non_finite_reasons(data, "label voxels (NaN/inf)")
    invalid = [v for v in invalid_label_values(data, convention) if math.isfinite(v)]
    non_integral = [v for v in invalid if isinstance(v, float)]
    outside = [v for v in invalid if isinstance(v, int)]
    if non_integral:
        reasons.append(f"non-integral label values {_format_values(non_integral)}")
    if outside:
        valid = ", ".join(map(str, label_values(convention)))
        reasons.append(f"label values {_format_values(outside)} outside the {convention} labels ({valid})")
    return reasons


def _image_problems(data: np.ndarray, modality: str) -> list[str]:
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
        return None, f"voxel data unreadable ({_first_line(exc)})"


_Geometry = tuple[str, tuple[int, ...], np.ndarray]  # (kind of file, 3D shape, affine)


def _check_file(
    path: Path, kind: str, convention: str, reference: _Geometry | None, read_voxels: bool
) -> tuple[list[str], _Geometry | None]:
    """Reasons why one file is unusable, and its geometry when the header could be read."""
    img, reason = _open_header(path)
    if img is None:
        return [reason or "unreadable"], None
    shape, reason = _spatial_shape(img.shape)
    if shape is None:
        return [reason or "no shape"], None
    reasons = []
    geometry = None
    try:
        # the geometry MONAI's NibabelReader will use: it swaps a sform that disagrees with pixdim for the qform
        img = correct_nifti_header_if_necessary(img)
    except Exception as exc:  # never raise for a bad file
        return [f"inconsistent NIfTI geometry header ({_first_line(exc)})"], None
    affine = np.asarray(img.affine, dtype=np.float64)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:SPATIAL_DIMS, :SPATIAL_DIMS])) == 0:
        reasons.append("invalid affine (non-finite or zero voxel size)")
    else:
        geometry = (kind, shape, affine)
    if reference is not None and geometry is not None:
        ref_kind, ref_shape, ref_affine = reference
        if shape != ref_shape:
            reasons.append(f"shape {shape} differs from {ref_kind}'s {ref_shape}")
        max_diff = float(np.max(np.abs(affine - ref_affine)))
        # MONAI's LoadImage refuses to stack modalities whose affines are not np.allclose; a label is loaded apart
        stacked = kind != LABEL_SUFFIX and ref_kind != LABEL_SUFFIX
        if (stacked and not np.allclose(affine, ref_affine)) or max_diff > AFFINE_TOLERANCE:
            reasons.append(f"affine differs from {ref_kind}'s (largest difference {max_diff:.4g})")
    if read_voxels:
        data, reason = _read_voxels(img)
        if data is None:
            reasons.append(reason or "no voxel data")
        else:
            reasons += _label_problems(data, convention) if kind == LABEL_SUFFIX else _image_problems(data, kind)
    return reasons, geometry


def check_case(case: Case, modalities: Sequence[str] = MODALITIES, read_voxels: bool = True) -> list[Problem]:
    """
    Check one case's files; every problem is reported, none is raised.

    Header checks (always): missing modality; unreadable, empty, truncated or non-NIfTI file; an image that is not
    3D (a trailing singleton dimension such as 240x240x155x1 counts as 3D); shape or affine differing from the
    case's first readable file (images: ``np.allclose``, as MONAI requires to stack them; label: within
    :data:`AFFINE_TOLERANCE`), geometry read as MONAI's ``NibabelReader`` reads it. With `read_voxels`, also: truncated
    compressed data, non-finite voxels, an all-zero modality, and label values that are non-integral or outside the
    case's convention.

    Args:
        case: the case to check.
        modalities: canonical modalities the case must have; other image files are not checked.
        read_voxels: read the voxel data too. ``False`` reads nibabel headers only, which is cheap enough to run
            wherever cases are loaded, but finds a truncated ``.nii.gz`` only if it is cut inside the header.

    Returns:
        the problems found, in file order (modalities in the given order, then the label); empty if none.

    Raises:
        ValueError: for unknown modality names (a usage error, not a data problem).
    """
    mods = validate_modalities(modalities)
    problems = [
        Problem(case.case_id, case.directory / case.expected_file_name(m), f"missing {m} image")
        for m in case.missing_modalities(mods)
    ]
    files = [(m, case.images[m]) for m in mods if m in case.images]
    if case.label is not None:
        files.append((LABEL_SUFFIX, case.label))
    reference: _Geometry | None = None
    for kind, path in files:
        reasons, geometry = _check_file(path, kind, case.convention, reference, read_voxels)
        problems.extend(Problem(case.case_id, path, reason) for reason in reasons)
        if reference is None:
            reference = geometry  # later files are compared with the first readable one
    return problems


def check_dataset(
    root: str | os.PathLike,
    modalities: Sequence[str] = MODALITIES,
    read_voxels: bool = True,
    progress: bool = True,
) -> tuple[list[Case], list[Problem]]:
    """
    Find and check every case under `root`; a bad case never stops the check of the others.

    Args:
        root: dataset directory.
        modalities: canonical modalities every case must have.
        read_voxels: see :func:`check_case`.
        progress: show a tqdm progress bar, but only when stderr is a terminal.

    Returns:
        ``(cases, problems)``: all cases found (sorted by case id) and all problems, case by case.

    Raises:
        FileNotFoundError: when `root` does not exist.
        NotADirectoryError: when `root` is a file.
        ValueError: when `root` holds no BraTS case, a case id is duplicated, or a modality name is unknown.
    """
    cases = find_cases(root, modalities)
    problems: list[Problem] = []
    # a bar on a terminal; no log lines otherwise: the report itself is the check's output
    for case in show_progress(cases, desc="checking cases", unit="case", enabled=progress and sys.stderr.isatty()):
        problems.extend(check_case(case, modalities, read_voxels=read_voxels))
    return cases, problems


def run_check(dataset_dir: str | os.PathLike, modalities: Sequence[str] = MODALITIES) -> int:
    """
    Check a dataset fully (headers and voxels) and print the result, for ``python -m axunet_bundle check DIR``.

    Prints one line per problem to stdout, then the summary line ``"N cases checked, M with problems"``. When the
    directory cannot be used at all (missing, not a directory, no BraTS case, duplicated case ids), prints a single
    ``"error: ..."`` line to stderr instead.

    Args:
        dataset_dir: dataset directory.
        modalities: canonical modalities every case must have.

    Returns:
        exit code: :data:`EXIT_OK` (0) when clean, :data:`EXIT_PROBLEMS` (1) when any problem was found,
        :data:`EXIT_UNUSABLE` (2) when the directory cannot be used.
    """
    try:
        cases, problems = check_dataset(dataset_dir, modalities, read_voxels=True, progress=True)
    except (OSError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_UNUSABLE
    for problem in problems:
        print(problem)
    n_bad = len({p.case_id for p in problems})
    print(f"{len(cases)} cases checked, {n_bad} with problems")
    return EXIT_PROBLEMS if problems else EXIT_OK


def _meta_files(meta: Mapping | None) -> list[str]:
    if not meta or meta.get(ImageMetaKey.FILENAME_OR_OBJ) is None:
        return []
    return [str(f) for f in ensure_tuple(meta[ImageMetaKey.FILENAME_OR_OBJ])]


def _channel_file(files: list[str], channel: int, modality: str) -> str | None:
    """
    The file that `channel` was loaded from. MONAI ``LoadImage`` keeps only the first file of a stacked list in
    ``filename_or_obj``; the other channels' files are then found next to it by their BraTS names.
    """
    if channel < len(files):
        return files[channel]
    if not files:
        return None
    first = Path(files[0])
    parsed = parse_file_name(first)
    if parsed is not None:
        try:  # only reached when raising, so a directory listing is cheap
            siblings = sorted(first.parent.iterdir())
        except OSError:
            siblings = []
        for sibling in siblings:
            if parse_file_name(sibling) == (parsed[0], modality):
                return str(sibling)
    return files[0]


class ValidateCased(MapTransform):
    """
    Check data already loaded by a MONAI pipeline and raise a :class:`CaseError` naming the case and file.

    Meant to follow ``LoadImaged`` + ``EnsureChannelFirstd``. Each image channel must hold only finite values and
    not be all zero; the label, when present, must match the images' spatial shape and hold only finite values of
    its convention. The data pass through unchanged.

    Args:
        keys: keys of the channel-first images (channels in `modalities` order).
        label_key: key of the ``(1, *spatial)`` label map; skipped when ``None`` or absent (inference data).
        convention: label convention, a key of :data:`axunet_bundle.data.labels.LABEL_CONVENTIONS`.
        modalities: modality of each image channel, used to name the channel and find its file.
        case_id_key: key holding the case id (datalist items have ``"case_id"``); when absent the id is taken from
            the file name.
        allow_missing_keys: don't raise if an image key is missing.

    Raises:
        ValueError: for an unknown convention or modality.
    """

    def __init__(
        self,
        keys: KeysCollection,
        label_key: str | None = "label",
        convention: str = DEFAULT_CONVENTION,
        modalities: Sequence[str] = DEFAULT_MODALITIES,
        case_id_key: str = "case_id",
        allow_missing_keys: bool = False,
    ) -> None:
        super().__init__(keys, allow_missing_keys)
        self.label_key = label_key
        self.convention = validate_convention(convention)
        self.modalities = validate_modalities(modalities)
        self.case_id_key = case_id_key

    def _meta(self, d: Mapping, key: Hashable) -> Mapping | None:
        meta = getattr(d[key], "meta", None)
        return meta if meta is not None else d.get(f"{key}_meta_dict")

    def _case_id(self, d: Mapping, files: list[str]) -> str:
        if d.get(self.case_id_key) is not None:
            return str(d[self.case_id_key])
        if files:
            parsed = parse_file_name(files[0])
            return parsed[0] if parsed else Path(files[0]).name
        return "<unknown case>"

    def __call__(self, data: Mapping[Hashable, NdarrayOrTensor]) -> dict[Hashable, NdarrayOrTensor]:
        """
        Raises:
            CaseError: for the first problem found.
        """
        d = dict(data)
        spatial: tuple[int, ...] | None = None
        for key in self.key_iterator(d):
            files = _meta_files(self._meta(d, key))
            case_id = self._case_id(d, files)
            image = convert_to_numpy(d[key])
            spatial = tuple(image.shape[1:])
            for channel in range(image.shape[0]):
                modality = self.modalities[channel] if channel < len(self.modalities) else f"channel {channel}"
                reasons = _image_problems(image[channel], modality)
                if reasons:
                    raise CaseError(case_id, _channel_file(files, channel, modality), reasons[0])
        if self.label_key is not None and self.label_key in d:
            files = _meta_files(self._meta(d, self.label_key))
            case_id = self._case_id(d, files)
            label_file = files[0] if files else None
            label = convert_to_numpy(d[self.label_key])
            if label.ndim < 2 or label.shape[0] != 1:
                raise CaseError(case_id, label_file, f"label must have one channel, got shape {label.shape}")
            if spatial is not None and tuple(label.shape[1:]) != spatial:
                raise CaseError(case_id, label_file, f"label shape {label.shape[1:]} differs from image's {spatial}")
            reasons = _label_problems(label, self.convention)
            if reasons:
                raise CaseError(case_id, label_file, reasons[0])
        return d
