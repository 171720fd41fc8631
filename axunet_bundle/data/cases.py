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
Discovery of BraTS cases on disk.

A *case* is the set of NIfTI files in one directory that share a file-name prefix, e.g.
``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz`` (BraTS 2021 naming) or
``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz`` (BraTS 2023+ naming).
The prefix is the case id. A case without a ``seg`` file is an inference case.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType

from monai.utils import ensure_tuple

from ..errors import AxunetError, ConfigurationError, DatasetError

__all__ = [
    "MODALITIES",
    "DEFAULT_MODALITIES",
    "LAYOUT_2021",
    "LAYOUT_2023",
    "LABEL_SUFFIX",
    "MODALITY_ALIASES",
    "Case",
    "CaseError",
    "DatasetPathError",
    "check_case_id",
    "find_cases",
    "parse_file_name",
    "validate_modalities",
]

MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")
"""Canonical modality names, in the BraTS 2021 order."""

DEFAULT_MODALITIES: tuple[str, ...] = ("t1ce", "t2", "flair")
"""Input channels of the model, in this order."""

LAYOUT_2021 = "2021"
LAYOUT_2023 = "2023"

LABEL_SUFFIX = "seg"

MODALITY_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "t1": "t1",
        "t1n": "t1",
        "t1w": "t1",
        "t1ce": "t1ce",
        "t1c": "t1ce",
        "t1gd": "t1ce",
        "t2": "t2",
        "t2w": "t2",
        "flair": "flair",
        "t2f": "flair",
    }
)
"""Lower-case file-name suffix -> canonical modality name."""

# file-name suffix that each canonical modality has in the BraTS 2023+ naming (used for hints in messages)
_SUFFIX_2023: Mapping[str, str] = MappingProxyType({"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"})
_SUFFIXES_2023 = frozenset(_SUFFIX_2023.values())

# Greedy prefix: the modality is always the last token, so "BraTS20_Training_001_t1ce" splits at the last "_".
_FILE_RE = re.compile(
    r"^(?P<prefix>.+)[_-](?P<suffix>"
    + "|".join(sorted([*MODALITY_ALIASES, LABEL_SUFFIX], key=len, reverse=True))
    + r")"
    r"\.nii(?:\.gz)?$",
    re.IGNORECASE,
)
# BraTS 2023+ case ids: BraTS-<challenge>-<patient>-<timepoint>, e.g. BraTS-GLI-00000-000, BraTS-SSA-00002-000.
_ID_2023_RE = re.compile(r"^(?P<patient>BraTS-[A-Za-z]+-\d+)-(?P<timepoint>\d+)$", re.IGNORECASE)

_EXAMPLE_FILE = "..._t1ce.nii.gz"

# a case id names a folder or file inside an output directory, so it must not hold a path: no separator (either
# OS's), no NUL, and not a name that points at a directory itself
_PATH_SEPARATORS = ("/", "\\", "\0")
_DIRECTORY_NAMES = ("", ".", "..")


class CaseError(AxunetError, ValueError):
    """
    A problem with one file of one case.

    ``str()`` is a single line ``"<case_id>: <file name>: <reason>"`` so that it can be printed as-is in logs.

    Args:
        case_id: id of the case (the shared file-name prefix).
        file: the file concerned (only its name is shown), or ``None`` when no single file is to blame.
        reason: what is wrong, in a few words.
    """

    def __init__(self, case_id: str, file: str | os.PathLike | None, reason: str) -> None:
        self.case_id = case_id
        self.file = file
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [self.case_id] + ([Path(self.file).name] if self.file is not None else []) + [self.reason]
        return ": ".join(str(p) for p in parts)

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        # keeps the exception picklable (e.g. raised in a DataLoader worker process)
        return type(self), (self.case_id, self.file, self.reason)


class DatasetPathError(DatasetError, OSError):
    """The dataset folder does not exist, or is a file."""


def check_case_id(case_id: object) -> str:
    """
    Check that a case id (e.g. from a datalist file) is a plain name, so that outputs named after it stay inside
    their output directory. Ids found on disk always are (they come from file names); a datalist can hold anything.

    The rule: a non-empty string without ``/``, ``\\`` or NUL that is not ``.`` or ``..``. Nothing is rewritten,
    as sanitising could give two cases the same output.

    Args:
        case_id: the id to check.

    Returns:
        the id as a string.

    Raises:
        CaseError: naming the id, when it could point outside a directory.
    """
    text = str(case_id)
    if text in _DIRECTORY_NAMES or any(sep in text for sep in _PATH_SEPARATORS):
        raise CaseError(
            repr(text), None, "case id is not a plain name (it must not be empty, '.', '..' or contain / or \\)"
        )
    return text


def validate_modalities(modalities: str | Iterable[str]) -> tuple[str, ...]:
    """
    Check that `modalities` are canonical modality names without repeats.

    Args:
        modalities: one name or a sequence of names from :data:`MODALITIES`.

    Returns:
        the names as a tuple, in the given order.

    Raises:
        ConfigurationError: when a name is not canonical, is repeated, or no name is given.
    """
    mods = tuple(ensure_tuple(modalities))
    if not mods:
        raise ConfigurationError(f"at least one modality is needed, choose from {', '.join(MODALITIES)}")
    unknown = [m for m in mods if m not in MODALITIES]
    if unknown:
        raise ConfigurationError(
            f"unknown modality {', '.join(map(repr, unknown))}: valid modalities are {', '.join(MODALITIES)}"
        )
    if len(set(mods)) != len(mods):
        raise ConfigurationError(f"modalities must not repeat, got {', '.join(mods)}")
    return mods


def parse_file_name(name: str | os.PathLike) -> tuple[str, str] | None:
    """
    Split a BraTS-style file name into its case prefix and what the file holds.

    Args:
        name: a file name or path, e.g. ``BraTS2021_00000_t1ce.nii.gz`` or ``BraTS-GLI-00000-000-t2f.nii``.

    Returns:
        ``(prefix, kind)`` where `kind` is a canonical modality name or ``"seg"``; ``None`` when the name does not
        follow the BraTS naming.
    """
    parsed = _split_file_name(Path(name).name)
    return None if parsed is None else parsed[:2]


def _split_file_name(name: str) -> tuple[str, str, str] | None:
    """``(prefix, kind, lower-case suffix as written)`` for a BraTS-style file name, else ``None``."""
    match = _FILE_RE.match(name)
    if match is None:
        return None
    suffix = match["suffix"].lower()
    return match["prefix"], (LABEL_SUFFIX if suffix == LABEL_SUFFIX else MODALITY_ALIASES[suffix]), suffix


@dataclass(frozen=True)
class Case:
    """
    One BraTS case found on disk.

    Args:
        case_id: the file-name prefix shared by the case's files.
        layout: naming style, ``"2021"`` or ``"2023"``; 2023 naming means labels follow the ``brats2023`` convention.
        images: canonical modality name -> image file; modalities that were not found are absent.
        label: the segmentation file, or ``None`` for an inference case.
        directory: the directory holding the files.
    """

    case_id: str
    layout: str
    images: Mapping[str, Path] = field(default_factory=dict, hash=False)
    label: Path | None = None
    directory: Path = Path(".")

    def __post_init__(self) -> None:
        if self.layout not in (LAYOUT_2021, LAYOUT_2023):
            raise ValueError(f"layout must be {LAYOUT_2021!r} or {LAYOUT_2023!r}, got {self.layout!r}")
        # Path-typed, read-only copies so that a frozen Case cannot be changed through its mapping
        object.__setattr__(self, "images", MappingProxyType({k: Path(v) for k, v in self.images.items()}))
        object.__setattr__(self, "label", None if self.label is None else Path(self.label))
        object.__setattr__(self, "directory", Path(self.directory))

    @property
    def convention(self) -> str:
        """Label convention of the case's segmentation: ``"brats2021"`` or ``"brats2023"``."""
        return "brats2023" if self.layout == LAYOUT_2023 else "brats2021"

    @property
    def patient_id(self) -> str:
        """
        Id of the patient: for BraTS 2023+ ids the case id without its trailing timepoint
        (``BraTS-GLI-00000-000`` -> ``BraTS-GLI-00000``), otherwise the case id.
        """
        match = _ID_2023_RE.match(self.case_id)
        return match["patient"] if match else self.case_id

    @property
    def has_label(self) -> bool:
        """Whether the case has a segmentation (``False`` for an inference case)."""
        return self.label is not None

    def expected_file_name(self, kind: str) -> str:
        """
        The file name that `kind` (a canonical modality or ``"seg"``) would have in this case's naming style.

        Used to name a missing file in messages.
        """
        if self.layout == LAYOUT_2023:
            return f"{self.case_id}-{_SUFFIX_2023.get(kind, kind)}.nii.gz"
        return f"{self.case_id}_{kind}.nii.gz"

    def missing_modalities(self, modalities: Sequence[str] = MODALITIES) -> list[str]:
        """
        Modalities from `modalities` for which the case has no image file.

        Args:
            modalities: canonical modality names.

        Returns:
            the missing names, in the order given.
        """
        return [m for m in validate_modalities(modalities) if m not in self.images]

    def image_files(self, modalities: Sequence[str] = MODALITIES) -> list[str]:
        """
        Image file paths in the order of `modalities` (e.g. for MONAI ``LoadImaged`` to stack as channels).

        Args:
            modalities: canonical modality names, in channel order.

        Returns:
            one path string per modality.

        Raises:
            CaseError: when the case has no file for one of `modalities`.
        """
        missing = self.missing_modalities(modalities)
        if missing:
            raise CaseError(self.case_id, self.expected_file_name(missing[0]), f"missing {missing[0]} image")
        return [str(self.images[m]) for m in modalities]


def _detect_layout(case_id: str, suffixes: Iterable[str]) -> str:
    if _ID_2023_RE.match(case_id):
        return LAYOUT_2023
    modality_suffixes = {s for s in suffixes if s != LABEL_SUFFIX}
    # files renamed away from "BraTS-GLI-..." ids but still named t1n/t1c/t2w/t2f come from BraTS 2023+
    if modality_suffixes and modality_suffixes <= _SUFFIXES_2023:
        return LAYOUT_2023
    return LAYOUT_2021


def _cases_in_directory(directory: Path, file_names: Iterable[str], modalities: tuple[str, ...]) -> list[Case]:
    groups: dict[str, dict[str, list[tuple[str, Path]]]] = {}
    for name in sorted(file_names):
        if name.startswith("."):
            continue  # hidden files, e.g. macOS "._BraTS..." resource forks next to the real files
        parsed = _split_file_name(name)
        if parsed is None:
            continue
        prefix, kind, suffix = parsed
        if kind != LABEL_SUFFIX and kind not in modalities:
            continue
        groups.setdefault(prefix, {}).setdefault(kind, []).append((suffix, directory / name))

    cases = []
    for prefix, kinds in groups.items():
        for kind, files in kinds.items():
            if len(files) > 1:
                others = ", ".join(p.name for _, p in files[1:])
                raise CaseError(prefix, files[0][1], f"more than one {kind} file (also {others}): keep one")
        images = {k: files[0][1] for k, files in kinds.items() if k != LABEL_SUFFIX}
        label = kinds[LABEL_SUFFIX][0][1] if LABEL_SUFFIX in kinds else None
        layout = _detect_layout(prefix, [files[0][0] for files in kinds.values()])
        cases.append(Case(case_id=prefix, layout=layout, images=images, label=label, directory=directory))
    return cases


def find_cases(root: str | os.PathLike, modalities: Sequence[str] = MODALITIES) -> list[Case]:
    """
    Find the BraTS cases under `root`, at any depth.

    File names may use ``_`` or ``-`` before the modality suffix, any letter case, ``.nii`` or ``.nii.gz``, any
    prefix (BraTS 2020 ``BraTS20_Training_001_t1ce.nii.gz``, BraTS-SSA/PED/MEN, ...) and the common modality
    aliases in :data:`MODALITY_ALIASES`. Hidden files are ignored.

    Args:
        root: dataset directory (or the directory of a single case).
        modalities: canonical modalities to collect into :attr:`Case.images`; image files of other modalities are
            ignored. A case is reported even if some of these are missing (see :meth:`Case.missing_modalities`).

    Returns:
        the cases sorted by case id, with absolute paths.

    Raises:
        DatasetPathError: when `root` does not exist or is a file.
        DatasetError: when no BraTS case is found under `root`, or the same case id appears in more than one
            directory.
        ConfigurationError: for unknown modality names.
        CaseError: when a case has two files for the same modality (e.g. both ``_t1ce`` and ``_t1c``).
    """
    mods = validate_modalities(modalities)
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise DatasetPathError(f"dataset directory {root_path} does not exist")
    if not root_path.is_dir():
        raise DatasetPathError(f"dataset path {root_path} is a file, not a directory")

    cases: list[Case] = []
    for dir_path, dir_names, file_names in os.walk(root_path):
        dir_names[:] = sorted(d for d in dir_names if not d.startswith("."))  # deterministic walk, no hidden dirs
        cases.extend(_cases_in_directory(Path(dir_path), file_names, mods))
    if not cases:
        raise DatasetError(f"no BraTS cases found under {root_path}: expected files like {_EXAMPLE_FILE}")

    by_id: dict[str, list[Case]] = {}
    for case in cases:
        by_id.setdefault(case.case_id, []).append(case)
    duplicates = {cid: found for cid, found in by_id.items() if len(found) > 1}
    if duplicates:
        cid, found = next(iter(sorted(duplicates.items())))
        where = " and ".join(str(c.directory) for c in found)
        more = f" (and {len(duplicates) - 1} more duplicated ids)" if len(duplicates) > 1 else ""
        raise DatasetError(f"case id {cid} found in more than one directory: {where}{more}")
    return sorted(cases, key=lambda c: c.case_id)
