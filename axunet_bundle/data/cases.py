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
Discovery of BraTS cases on disk, in every layout the bundle reads:

- per-modality files sharing a file-name prefix, the case id: ``BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``
  (BraTS 2018-2021, also ``BraTS20_Training_001_t1ce.nii``), ``BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``
  (BraTS 2023+); a case without a ``seg`` file is an inference case;
- the Medical Segmentation Decathlon's ``Task01_BrainTumour`` (BraTS 2016-2017 data; also MONAI's
  ``DecathlonDataset``, MONAI Label's sample dataset and nnU-Net's Task001): a ``dataset.json``,
  ``imagesTr/BRATS_001.nii.gz`` (one 4D image per case), ``labelsTr/BRATS_001.nii.gz``, ``imagesTs/``. The image
  channels are picked by the names ``dataset.json`` gives them (``"modality": {"0": "FLAIR", "1": "T1w", "2":
  "t1gd", "3": "T2w"}``), never by position, and the labels are read in the convention its ``"labels"`` name
  (``{"1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}``: the ``msd`` convention);
- one multi-channel NIfTI per case with no modality suffix (what MONAI Label sends, what converters write): its
  channels are the model's modalities in the model's order, and a label may sit in ``labels/`` or ``labels/final/``
  beside it (MONAI Label's datastore).

Other collections name their files the same way, ``<case id><_ or -><what the file holds><extension>``, or name a
case's folder and its files by what they hold alone (``CASE/t1ce.nrrd``, ``CASE/seg.nrrd``). What the file holds is
read in lower case without ``_``/``-`` (``T2-FLAIR`` = ``t2_flair`` = ``t2flair``), the longest known name at the end
of the file name winning (``UCSF-PDGM-0004_tumor_segmentation``: case ``UCSF-PDGM-0004``, its label):

- a modality, by :data:`MODALITY_ALIASES` (``T1GD`` of TCIA's UPenn-GBM, ``T1c`` of UCSF-PDGM, ``t1c`` of BraTS
  2023, ...);
- the label, by :data:`LABEL_NAMES` (``seg`` of BraTS, ``segm`` of UPenn-GBM, ``tumor_segmentation`` of UCSF-PDGM,
  ``label``, ``labels``, ``tumorMask``, ...), alone or with a word of :data:`REFERENCE_WORDS` (``_seg_final``); a file
  of the case with a word of :data:`LABEL_WORDS` that is not a label name (``_seg_old``, ``_mask``) is named as a
  problem: the label is never guessed;
- anything else sharing the case's id (diffusion, perfusion, susceptibility, ``_brain_mask``, ``_brain_segmentation``,
  a program's segmentation, :data:`AUTOMATED_WORDS`: ``_automated_approx_segm``, a modality the run does not use) is
  an *ignored* file of the case (:attr:`Case.ignored`): not a problem.

A file named ``<case id>_<what it holds>`` in another folder of the dataset than the case's images is the case's too,
as collections keep each kind of file in a folder of its own (TCIA's UPenn-GBM: ``images_structural/<case>/``,
``images_segm/<case>_segm.nii.gz``, ``automated_segm/``, ``images_DTI/``): the case's label when it has none beside
its images (a second one is named), else one of its ignored files or, by the rules above, a problem.

Files of every format of :data:`~axunet_bundle.data.formats.IMAGE_SUFFIXES` (NIfTI, NRRD, MetaImage) are read, mixed
within a case too. An image file that is none of these is a *stray*: :func:`discover` names it, so that a misnamed
label (the BraTS 2020 release keeps case 355's as ``W39_1998.09.19_Segm.nii``) is never silently ignored.
"""

from __future__ import annotations

import json
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any

import nibabel as nib
from monai.utils import ensure_tuple

from ..errors import CaseError, ConfigurationError, DatasetError
from .formats import IMAGE_SUFFIXES, ItkImage, image_stem, is_nifti
from .labels import DEFAULT_CONVENTION, LABEL_CONVENTIONS

__all__ = [
    "MODALITIES",
    "DEFAULT_MODALITIES",
    "LAYOUT_2021",
    "LAYOUT_2023",
    "LABEL_SUFFIX",
    "automated_segmentation",
    "MODALITY_ALIASES",
    "Case",
    "CaseError",
    "DatasetPathError",
    "Discovery",
    "case_id_from_path",
    "case_of_file",
    "check_case_id",
    "convention_for_names",
    "discover",
    "find_cases",
    "layout_of_file",
    "parse_file_name",
    "validate_modalities",
    "DATASET_JSON",
    "decathlon_cases",
    "find_dataset_json",
    "label_convention",
    "modality_channels",
]

#: Canonical modality names, in the BraTS 2021 order.
MODALITIES: tuple[str, ...] = ("t1", "t1ce", "t2", "flair")

#: Input channels of the model, in this order.
DEFAULT_MODALITIES: tuple[str, ...] = ("t1ce", "t2", "flair")

LAYOUT_2021 = "2021"
LAYOUT_2023 = "2023"
#: the Medical Segmentation Decathlon's Task01_BrainTumour (one 4D image per case, channels named by dataset.json)
LAYOUT_MSD = "msd"
#: one multi-channel image per case, its channels the model's modalities in the model's order
LAYOUT_MULTICHANNEL = "multichannel"
LAYOUTS = (LAYOUT_2021, LAYOUT_2023, LAYOUT_MSD, LAYOUT_MULTICHANNEL)
#: MONAI Label's local datastore keeps the labels of a study ``<studies>/<image id><ext>`` as
#: ``<studies>/labels/<tag>/<image id><ext>``; the ``final`` tag's is the reference (3D Slicer's *Submit Label*)
DATASTORE_LABELS, DATASTORE_REFERENCE_TAG = "labels", "final"
#: where a multi-channel image's label may lie, relative to its folder (MONAI Label's datastore)
LABEL_FOLDERS = (DATASTORE_LABELS, f"{DATASTORE_LABELS}/{DATASTORE_REFERENCE_TAG}")

LABEL_SUFFIX = "seg"
#: what follows the case id in a label file's name (lower case, without ``_``/``-``): the names public collections
#: give their tumour labels (BraTS ``seg``, UPenn-GBM ``segm``, UCSF-PDGM ``tumor_segmentation``, TCGA's
#: ``GlistrBoost_ManuallyCorrected``, MU-Glioma-Post ``tumorMask``, ...)
LABEL_NAMES = frozenset(
    (LABEL_SUFFIX, "segm", "segmentation", "label", "labels", "labelmap", "tumorseg", "tumorsegmentation")
    + ("tumoursegmentation", "tumorlabel", "tumorlabels", "tumormask", "tumourmask", "lesionmask", "glistrboost")
    + ("glistrboostmanuallycorrected",)
)
#: words that, before or after a label name, say a label is the final, manually corrected one (``_seg_final``,
#: ``_manual_segm``): it is the case's label
REFERENCE_WORDS = ("final", "manual", "corrected", "revised", "refined", "gt", "groundtruth")
#: every ending (lower case, without ``_``/``-``) that names a case's label: LABEL_NAMES, alone or with a
#: REFERENCE_WORDS word before or after
LABEL_ENDINGS = LABEL_NAMES | frozenset(
    ending for name in LABEL_NAMES for word in REFERENCE_WORDS for ending in (name + word, word + name)
)
#: parts of a name that say a file is a segmentation: a case's file with one, not named by LABEL_NAMES, is a problem
LABEL_WORDS = ("seg", "label", "mask")
#: parts of a name that say a segmentation is a program's, no reference (UPenn-GBM's ``automated_segm/`` folder of
#: ``_automated_approx_segm`` files): an ignored file
AUTOMATED_WORDS = ("automated", "auto", "approx", "pred")
#: parts of a name that say a segmentation or mask is of no tumour (brain masks, tissue maps): an ignored file
NON_TUMOUR_WORDS = ("brain", "parenchyma", "skull", "tissue", "csf", "head")

#: File-name suffix or channel name, in lower case with its punctuation removed (``"T2-FLAIR"`` -> ``"t2flair"``) ->
#: canonical modality name.
MODALITY_ALIASES: Mapping[str, str] = MappingProxyType(
    {
        "t1": "t1",
        "t1n": "t1",
        "t1w": "t1",
        "t1ce": "t1ce",
        "t1c": "t1ce",
        "t1gd": "t1ce",
        "t1gad": "t1ce",
        "t1post": "t1ce",
        "t2": "t2",
        "t2w": "t2",
        "flair": "flair",
        "t2f": "flair",
        "t2flair": "flair",
    }
)

# file-name suffix that each canonical modality has in the BraTS 2023+ naming (used for hints in messages)
_SUFFIX_2023: Mapping[str, str] = MappingProxyType({"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"})
_SUFFIXES_2023 = frozenset(_SUFFIX_2023.values())

_SEPARATOR_RE = re.compile(r"[_-]")
# BraTS 2023+ case ids: BraTS-<challenge>-<patient>-<timepoint>, e.g. BraTS-GLI-00000-000, BraTS-SSA-00002-000.
_ID_2023_RE = re.compile(r"^(?P<patient>BraTS-[A-Za-z]+-\d+)-(?P<timepoint>\d+)$", re.IGNORECASE)

_EXAMPLE_FILE = "..._t1ce.nii.gz (or .nii, .nrrd, .mha)"
#: why discovery names a file that no case uses (a stray), and a file of a case that may be its label
STRAY_REASON = (
    "an image file that is no modality or label of any case (ignored); a label must be named like <case id>_seg.nii.gz"
)
UNPLACED_REASON = (
    "may be a label, but its name is none of the label names (seg, segm, label, ...): name the case's label "
    "<case id>_seg.nii.gz, and move this file out of the dataset folder"
)
#: why discovery names a second label of a case, found in another folder than the label beside its images
SECOND_LABEL_REASON = "a second label of the case, which has {} beside its images: keep one"

# a case id names a folder or file inside an output directory, so it must not hold a path: no separator (either
# OS's), no NUL, and not a name that points at a directory itself
_PATH_SEPARATORS = ("/", "\\", "\0")
_DIRECTORY_NAMES = ("", ".", "..")


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


def _split_file_name(name: str) -> tuple[str | None, str, str] | None:
    """``(prefix, kind, normalised suffix)`` for a case file's name (the module's docstring says how it is read;
    ``prefix`` is ``None`` when the whole name says what the file holds), else ``None``."""
    stem = image_stem(name)
    if stem is None:
        return None
    for cut in (-1, *(m.start() for m in _SEPARATOR_RE.finditer(stem))):  # the longest suffix first
        suffix = _normalised(stem[cut + 1 :])
        kind = LABEL_SUFFIX if suffix in LABEL_ENDINGS else MODALITY_ALIASES.get(suffix)
        if kind is not None and cut != 0:
            return (stem[:cut] if cut > 0 else None), kind, suffix
    return None


@dataclass(frozen=True)
class Case:
    """
    One case found on disk.

    Args:
        case_id: the case's id: the file-name prefix its files share, or its image file's name.
        layout: one of :data:`LAYOUTS`.
        images: canonical modality name -> image file; modalities that were not found are absent. In a multi-channel
            layout every modality maps to the case's one image file.
        label: the segmentation file, or ``None`` for an inference case.
        directory: the directory holding the files.
        channels: modality -> channel index in its image file (``dataset.json``'s order); ``None``: one file per
            modality, or (:data:`LAYOUT_MULTICHANNEL`) the file's channels are the requested modalities in order.
        convention: the label convention of the case's dataset (its names, or its ``dataset.json``); default: from
            the layout.
        ignored: the case's files that the run does not use, ``(what the name says, file)``: other modalities
            (``("t1", path)``), other sequences and masks (``("dwi", path)``).
    """

    case_id: str
    layout: str
    images: Mapping[str, Path] = field(default_factory=dict, hash=False)
    label: Path | None = None
    directory: Path = Path(".")
    channels: Mapping[str, int] | None = field(default=None, hash=False)
    convention: str = ""
    ignored: tuple[tuple[str, Path], ...] = field(default=(), hash=False)

    def __post_init__(self) -> None:
        if self.layout not in LAYOUTS:
            raise ValueError(f"layout must be one of {LAYOUTS}, got {self.layout!r}")
        # Path-typed, read-only copies so that a frozen Case cannot be changed through its mapping
        object.__setattr__(self, "images", MappingProxyType({k: Path(v) for k, v in self.images.items()}))
        object.__setattr__(self, "label", None if self.label is None else Path(self.label))
        object.__setattr__(self, "directory", Path(self.directory))
        if self.channels is not None:
            object.__setattr__(self, "channels", MappingProxyType(dict(self.channels)))
        if not self.convention:
            object.__setattr__(self, "convention", "brats2023" if self.layout == LAYOUT_2023 else "brats2021")

    @property
    def multichannel(self) -> bool:
        """Whether the case's modalities are channels of one image file."""
        return self.layout in (LAYOUT_MSD, LAYOUT_MULTICHANNEL)

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
        if self.multichannel:
            return f"{self.case_id}.nii.gz"
        if self.layout == LAYOUT_2023:
            return f"{self.case_id}-{_SUFFIX_2023.get(kind, kind)}.nii.gz"
        return f"{self.case_id}_{kind}.nii.gz"

    def missing_modalities(self, modalities: Sequence[str] = MODALITIES) -> list[str]:
        """
        Modalities from `modalities` for which the case has no image file (or, in a multi-channel file whose
        channels are named, no channel).

        Args:
            modalities: canonical modality names.

        Returns:
            the missing names, in the order given.
        """
        mods = validate_modalities(modalities)
        if self.layout == LAYOUT_MULTICHANNEL:
            return [] if self.images else list(mods)  # the file's channel count is checked when it is read
        if self.channels is not None:
            return [m for m in mods if m not in self.channels or m not in self.images]
        return [m for m in mods if m not in self.images]

    def image_files(self, modalities: Sequence[str] = MODALITIES) -> list[str]:
        """
        The image files to load, in the order of `modalities` (for MONAI ``LoadImaged`` to stack as channels): one
        per modality, or the one file of a multi-channel case.

        Args:
            modalities: canonical modality names, in channel order.

        Raises:
            CaseError: when the case has no file (or named channel) for one of `modalities`.
        """
        missing = self.missing_modalities(modalities)
        if missing:
            what = "channel" if self.channels is not None else "image"
            raise CaseError(self.case_id, self.expected_file_name(missing[0]), f"missing {missing[0]} {what}")
        if self.multichannel:
            return [str(next(iter(self.images.values())))]
        return [str(self.images[m]) for m in modalities]

    def channel_indices(self, modalities: Sequence[str] = MODALITIES) -> list[int] | None:
        """The channels of the case's multi-channel file that hold `modalities`, in order (``dataset.json``'s
        names); ``None`` when the files are per modality or the file's channels are `modalities` in order."""
        if self.channels is None:
            return None
        return [self.channels[m] for m in validate_modalities(modalities)]


def _detect_layout(case_id: str, suffixes: Iterable[str]) -> str:
    if _ID_2023_RE.match(case_id):
        return LAYOUT_2023
    modality_suffixes = {s for s in suffixes if s != LABEL_SUFFIX}
    # files renamed away from "BraTS-GLI-..." ids but still named t1n/t1c/t2w/t2f come from BraTS 2023+
    if modality_suffixes and modality_suffixes <= _SUFFIXES_2023:
        return LAYOUT_2023
    return LAYOUT_2021


def layout_of_file(name: str | os.PathLike) -> str | None:
    """The BraTS naming of a per-modality file name (:data:`LAYOUT_2021` or :data:`LAYOUT_2023`), ``None`` when the
    name does not follow a BraTS naming."""
    parsed = _split_file_name(Path(name).name)
    return None if parsed is None else _detect_layout(parsed[0], [parsed[2]])


def case_id_from_path(path: str | os.PathLike) -> str:
    """The case id a file's name gives, the one helper that reads ids from names: the BraTS prefix
    (``BraTS2021_00000_t1ce.nii.gz`` -> ``BraTS2021_00000``), the folder's name for a file named by what it holds
    alone (``CASE/t1ce.nrrd`` -> ``CASE``), else the name without its image extension (``BRATS_001.nii.gz`` ->
    ``BRATS_001``), else the name. An id never holds a path."""
    path = Path(os.fspath(path))
    parsed = parse_file_name(path.name)
    if parsed is not None:
        return parsed[0] if parsed[0] is not None else path.absolute().parent.name
    return image_stem(path.name) or path.name


def convention_for_names(file_name: str | None) -> str:
    """The convention a BraTS file name implies: ``brats2023`` for BraTS 2023+ names (``BraTS-GLI-00000-000-t1c``
    or the ``t1n/t1c/t2w/t2f`` suffixes), else ``brats2021``. What ``"auto"`` falls back to for an item that does
    not say its convention (a datalist written by an older version, what MONAI Label sends)."""
    return "brats2023" if file_name and layout_of_file(file_name) == LAYOUT_2023 else DEFAULT_CONVENTION


def file_channels(path: Path) -> int:
    """Channels of an image from its header: 1 for a 3D volume (trailing singleton dimensions allowed), else
    the product of the dimensions after the third (``X, Y, Z, C``, or ITK's vector layout ``X, Y, Z, 1, C``);
    0 when the header cannot be read (the case check says why)."""
    try:
        shape = nib.load(path).shape if is_nifti(path) else ItkImage(path).shape  # the header only
    except Exception:  # noqa: BLE001 - an unreadable file is reported by the case check
        return 0
    return math.prod(shape[3:]) if len(shape) > 3 else 1


@dataclass
class Discovery:
    """What :func:`discover` found: the cases, and the image files it cannot place (``(case id or None, file,
    reason)``: the case whose folder holds the file, ``None`` when the folder holds no single case;
    :data:`STRAY_REASON` or :data:`UNPLACED_REASON`)."""

    cases: list[Case]
    strays: list[tuple[str | None, Path, str]] = field(default_factory=list)


def _label_beside(directory: Path, stem: str) -> Path | None:
    for folder in LABEL_FOLDERS:
        for suffix in IMAGE_SUFFIXES:
            candidate = directory / folder / f"{stem}{suffix}"
            if candidate.is_file():
                return candidate
    return None


def _owner(stem: str, prefixes: Sequence[str | None]) -> tuple[str | None, str] | None:
    """The case prefix a file's name starts with (the longest; ``None``: the folder's case, named by what its files
    hold), and the rest of the name; ``None`` when the name is no case's."""
    for prefix in sorted((p for p in prefixes if p is not None), key=len, reverse=True):
        if len(stem) > len(prefix) + 1 and stem.startswith(prefix) and _SEPARATOR_RE.match(stem, len(prefix)):
            return prefix, stem[len(prefix) + 1 :]
    return (None, stem) if None in prefixes else None


def _may_be_label(rest: str) -> bool:
    """Whether what follows a case id in a file's name (``seg_old``, ``automated_approx_segm``, ``brain_mask``) says a
    tumour segmentation that is no label name: neither a mask of no tumour nor a program's segmentation."""
    rest = _normalised(rest)
    return (
        any(w in rest for w in LABEL_WORDS)
        and not any(w in rest for w in NON_TUMOUR_WORDS)
        and not any(w in rest for w in AUTOMATED_WORDS)
    )


def _place_in_other_folders(found: Discovery) -> None:
    """The files no folder's cases took, named ``<case id>_<what it holds>`` after a case found in another folder
    (TCIA's UPenn-GBM keeps ``images_structural/<case>/``, ``images_segm/<case>_segm.nii.gz``,
    ``automated_segm/``, ``images_DTI/<case>/`` side by side): a label name is the case's label (unless one lies
    beside its images), any other name one of its ignored files, or a problem when it may be a label
    (:func:`_may_be_label`). Changes ``found`` in place."""
    by_id = {case.case_id: i for i, case in enumerate(found.cases) if not case.multichannel}
    extra: dict[int, list[tuple[str, Path]]] = {}
    strays = []
    for owner, path, reason in found.strays:
        stem = image_stem(path.name) or ""
        cuts = [m.start() for m in _SEPARATOR_RE.finditer(stem)]
        case_index = next((by_id[stem[:c]] for c in reversed(cuts) if stem[:c] in by_id), None)  # the longest id
        if reason != STRAY_REASON or case_index is None:
            strays.append((owner, path, reason))
            continue
        case, rest = found.cases[case_index], stem[len(found.cases[case_index].case_id) + 1 :]
        parsed = _split_file_name(path.name)
        if parsed is not None and parsed[0] == case.case_id and parsed[1] == LABEL_SUFFIX:
            if case.label is None:
                found.cases[case_index] = replace(case, label=path)
            else:
                strays.append((case.case_id, path, SECOND_LABEL_REASON.format(case.label.name)))
        elif _may_be_label(rest):
            strays.append((case.case_id, path, UNPLACED_REASON))
        else:
            extra.setdefault(case_index, []).append((rest.lower(), path))
    for index, files in extra.items():
        found.cases[index] = replace(found.cases[index], ignored=found.cases[index].ignored + tuple(files))
    found.strays = strays


def _place_datastore_labels(found: Discovery, directory: Path, file_names: Iterable[str]) -> list[str]:
    """Where ``directory`` is a label folder of MONAI Label's datastore (``<studies>/labels/<tag>/``, ``<studies>``
    holding cases): a file named as a case's study (laid out by ``axunet monailabel-studies``) or as its image id, the
    case id (3D Slicer's *Submit Label*), is, of the ``final`` tag, its label (a saved one before a laid-out one,
    which is then an ignored file; any other second one is named), of another tag one of its ignored files; a
    modality file's name of no study is a stray (a label whose study is gone). Changes ``found`` in place; returns
    the names left to read as any folder's."""
    if directory.parent.name != DATASTORE_LABELS:
        return list(file_names)
    studies = directory.parent.parent
    owners = [(i, case) for i, case in enumerate(found.cases) if case.directory == studies]
    if not owners:
        return list(file_names)
    saved = {case.case_id: i for i, case in owners}
    by_stem = {
        image_stem(f.name): i for i, case in owners for f in (*case.images.values(), *(p for _, p in case.ignored))
    }
    rest = []
    for name in sorted(file_names, key=lambda n: (image_stem(n) not in saved, n)):  # saved labels first
        path, stem, parsed = directory / name, image_stem(name), _split_file_name(name)
        index = saved.get(stem, by_stem.get(stem))
        case = found.cases[index] if index is not None else None
        if case is None and parsed is not None and parsed[1] != LABEL_SUFFIX and not name.startswith("."):
            found.strays.append((None, path, STRAY_REASON))
        elif case is None:
            rest.append(name)
        elif directory.name != DATASTORE_REFERENCE_TAG or (
            case.label is not None and image_stem(case.label.name) == case.case_id != stem  # superseded by a save
        ):
            found.cases[index] = replace(case, ignored=case.ignored + ((f"{DATASTORE_LABELS}/{directory.name}", path),))
        elif case.label is None or case.label == path:
            found.cases[index] = replace(case, label=path)
        else:
            found.strays.append((case.case_id, path, SECOND_LABEL_REASON.format(case.label.name)))
    return rest


def automated_segmentation(case: Case) -> Path | None:
    """A program's segmentation among the case's ignored files (UPenn-GBM's ``_automated_approx_segm``), ``None``
    when there is none: what tells an unlabelled case of a collection that labels a subset by hand."""
    return next((path for kind, path in case.ignored if any(w in _normalised(kind) for w in AUTOMATED_WORDS)), None)


def _cases_in_directory(
    directory: Path, file_names: Iterable[str], modalities: tuple[str, ...]
) -> tuple[list[Case], list[tuple[Path, str]]]:
    """The cases whose images lie in ``directory``, and the image files there that belong to none (yet), with why."""
    groups: dict[str | None, dict[str, list[tuple[str, Path]]]] = {}
    unparsed: list[Path] = []
    for name in sorted(file_names):
        if name.startswith(".") or image_stem(name) is None:
            continue  # hidden files (macOS "._BraTS..." resource forks), and no image
        parsed = _split_file_name(name)
        if parsed is None:
            unparsed.append(directory / name)
        else:
            groups.setdefault(parsed[0], {}).setdefault(parsed[1], []).append((parsed[2], directory / name))
    cases, strays = [], []
    for prefix in [p for p, kinds in groups.items() if set(kinds) == {LABEL_SUFFIX}]:  # a label of no case here:
        unparsed += [
            path for _, path in groups.pop(prefix)[LABEL_SUFFIX]
        ]  # a case's other file ("_brain_seg"), or a stray
    ignored: dict[str | None, list[tuple[str, Path]]] = {p: [] for p in groups}
    for path in unparsed:
        owner = _owner(image_stem(path.name) or "", list(groups))
        if owner is not None and _may_be_label(owner[1]):
            strays.append((path, UNPLACED_REASON))
        elif owner is not None:
            ignored[owner[0]].append((owner[1].lower(), path))
        elif file_channels(path) > 1:  # one multi-channel image per case, channels in the model's order
            stem = case_id_from_path(path)
            images = {m: path for m in modalities}
            label, convention = _label_beside(directory, stem), convention_for_names(path.name)
            cases.append(Case(stem, LAYOUT_MULTICHANNEL, images, label, directory, convention=convention))
        else:
            strays.append((path, STRAY_REASON))
    for prefix, kinds in groups.items():
        case_id = prefix if prefix is not None else directory.name
        for kind, files in kinds.items():
            if len(files) > 1 and (kind == LABEL_SUFFIX or kind in modalities):
                others = ", ".join(p.name for _, p in files[1:])
                raise CaseError(case_id, files[0][1], f"more than one {kind} file (also {others}): keep one")
        images = {k: files[0][1] for k, files in kinds.items() if k in modalities}
        label = kinds[LABEL_SUFFIX][0][1] if LABEL_SUFFIX in kinds else None
        unused = [(k, p) for k, files in kinds.items() if k != LABEL_SUFFIX and k not in modalities for _, p in files]
        layout = _detect_layout(case_id, [files[0][0] for files in kinds.values()])
        cases.append(Case(case_id, layout, images, label, directory, ignored=tuple(unused + ignored[prefix])))
    return cases, strays


def case_of_file(path: str | os.PathLike, modalities: Sequence[str] = MODALITIES) -> Case | None:
    """
    The case that a per-modality file belongs to, found by the discovery of the file's folder (no other folder is
    read): what lets one modality's file stand for its case, as MONAI Label's datastore sends one file per study.

    Args:
        path: one modality's file of a case (``BraTS2021_00000_flair.nii.gz``, ``CASE/t2w.nrrd``, ...).
        modalities: canonical modalities to collect into the case's :attr:`Case.images`.

    Returns:
        the case whose modality (or ignored modality) `path` is; ``None`` when the name is no modality file's (a
        label, a multi-channel image, a name the bundle does not read) or its folder cannot be listed.

    Raises:
        CaseError: when the case has two files for one modality (as :func:`discover`).
    """
    path = Path(path).absolute()
    parsed = _split_file_name(path.name)
    if parsed is None or parsed[1] == LABEL_SUFFIX:
        return None
    try:
        names = os.listdir(path.parent)
    except OSError:
        return None
    if parsed[0] is not None:  # the files of this case id only (a studies folder holds every case's)
        names = [n for n in names if n.startswith(parsed[0]) and _SEPARATOR_RE.match(n, len(parsed[0]))]
    cases, _ = _cases_in_directory(path.parent, names, validate_modalities(modalities))
    return next((c for c in cases if path in c.images.values() or path in (p for _, p in c.ignored)), None)


# the Medical Segmentation Decathlon's task folders

DATASET_JSON = "dataset.json"
#: sub-folders of a Decathlon task: the user may point at one of them
TASK_FOLDERS = ("imagesTr", "imagesTs", "labelsTr")
#: how a Decathlon label name says its tumour class, tried in order ("non-enhancing" before "enhancing"): parts of
#: the name, or whole words
_CLASS_NAMES = (
    ("RC", ("resection", "cavity"), ("rc",)),
    ("NCR", ("non-enhancing", "non enhancing", "nonenhancing", "necro"), ("ncr", "net", "netc")),
    ("ED", ("edema", "oedema"), ("ed", "snfh")),
    ("ET", ("enhancing",), ("et",)),
)
_BACKGROUND = ("background", "bg")


def find_dataset_json(root: Path) -> Path | None:
    """The ``dataset.json`` of a Decathlon task folder ``root``, or of the task whose ``imagesTr``/``imagesTs``/
    ``labelsTr`` folder ``root`` is; ``None`` when there is none (or it names no modalities: not a Decathlon
    task)."""
    for folder in (root, root.parent if root.name in TASK_FOLDERS else None):
        if folder is not None and (folder / DATASET_JSON).is_file():
            path = folder / DATASET_JSON
            try:
                spec = json.loads(path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:
                raise DatasetError(f"{path}: not a readable JSON file ({err})") from None
            if isinstance(spec, Mapping) and "modality" in spec:
                return path
    return None


def _normalised(name: str) -> str:
    return re.sub(r"[^a-z0-9]", "", name.lower())


def modality_channels(modality: Mapping[str, str], source: Path) -> dict[str, int]:
    """Canonical modality -> channel index, from ``dataset.json``'s ``"modality"`` (channel index -> name).

    Raises:
        DatasetError: for a channel index that is not a number, or two channels of the same modality.
    """
    channels: dict[str, int] = {}
    for index, name in modality.items():
        canonical = MODALITY_ALIASES.get(_normalised(str(name)))
        if canonical is None:
            continue  # a channel the bundle does not know (e.g. ADC): never used
        try:
            channel = int(index)
        except ValueError:
            raise DatasetError(f"{source}: modality channel {index!r} is not a channel number") from None
        if canonical in channels:
            raise DatasetError(f"{source}: channels {channels[canonical]} and {channel} are both {canonical}")
        channels[canonical] = channel
    return channels


def _label_class(name: str) -> str | None:
    """The tumour class a label name says (``"ED"`` for ``"edema"``), ``None`` for background, ``""`` for none."""
    text = name.strip().lower().replace("_", " ")
    if text in _BACKGROUND:
        return None
    words = set(re.split(r"[^a-z0-9]+", text))
    for cls, parts, whole_words in _CLASS_NAMES:
        if any(part in text for part in parts) or words & set(whole_words):
            return cls
    return ""


def label_convention(labels: Mapping[str, Any], source: Path) -> str:
    """The convention of :data:`~axunet_bundle.data.labels.LABEL_CONVENTIONS` that ``dataset.json``'s ``"labels"``
    describe (value -> name, or nnU-Net v2's name -> value).

    Raises:
        DatasetError: when a label name is not a tumour class, or the labels match no known convention.
    """
    by_value: dict[int, str] = {}
    for key, value in labels.items():
        number, name = (key, value) if str(key).strip().isdigit() else (value, key)
        by_value[int(number)] = str(name)
    classes: dict[str, int] = {}
    for value, name in sorted(by_value.items()):
        cls = _label_class(name)
        if cls is None:
            continue
        if not cls:
            raise DatasetError(f"{source}: label {value} {name!r} is not a tumour class the bundle knows")
        classes[cls] = value
    for convention, values in LABEL_CONVENTIONS.items():
        if dict(values) == classes:
            return convention
    found = ", ".join(f"{v} {c}" for c, v in sorted(classes.items(), key=lambda cv: cv[1]))
    raise DatasetError(f"{source}: labels ({found}) match no label convention the bundle knows")


def _relative(source: Path, entry: str) -> Path:
    return (source.parent / entry).resolve() if not Path(entry).is_absolute() else Path(entry)


def decathlon_cases(source: Path, root: Path) -> list[Case]:
    """The cases a Decathlon ``dataset.json`` lists: ``"training"`` (image and label) and ``"test"`` (image), those
    of the folder ``root`` only when it is one of the task's sub-folders.

    Args:
        source: the ``dataset.json``.
        root: the folder the user gave (the task folder, or its ``imagesTr``/``imagesTs``).

    Raises:
        DatasetError: for a ``dataset.json`` without usable ``"modality"``/``"labels"``/case lists.
    """
    spec = json.loads(source.read_text(encoding="utf-8"))
    modality, labels = spec.get("modality"), spec.get("labels")
    if not isinstance(modality, Mapping) or not isinstance(labels, Mapping):
        raise DatasetError(f'{source}: needs a "modality" and a "labels" mapping')
    channels = modality_channels(modality, source)
    convention = label_convention(labels, source)
    entries = [(e.get("image"), e.get("label")) for e in spec.get("training") or [] if isinstance(e, Mapping)]
    entries += [(e, None) for e in spec.get("test") or [] if isinstance(e, str)]
    cases = []
    for image, label in entries:
        if not isinstance(image, str):
            raise DatasetError(f"{source}: a listed case has no image path")
        image_path = _relative(source, image)
        if (
            root != source.parent
            and image_path.parent != root
            and (label is None or _relative(source, label).parent != root)
        ):
            continue
        case_id = case_id_from_path(image_path)
        images = {m: image_path for m in channels} if image_path.is_file() else {}
        label_path = _relative(source, label) if isinstance(label, str) else None
        cases.append(Case(case_id, LAYOUT_MSD, images, label_path, image_path.parent, channels, convention))
    return cases


def _check_duplicates(cases: Sequence[Case]) -> None:
    by_id: dict[str, list[Case]] = {}
    for case in cases:
        by_id.setdefault(case.case_id, []).append(case)
    duplicates = {cid: found for cid, found in by_id.items() if len(found) > 1}
    if duplicates:
        cid, found = next(iter(sorted(duplicates.items())))
        where = " and ".join(str(c.directory) for c in found)
        more = f" (and {len(duplicates) - 1} more duplicated ids)" if len(duplicates) > 1 else ""
        raise DatasetError(f"case id {cid} found in more than one directory: {where}{more}")


def discover(root: str | os.PathLike, modalities: Sequence[str] = MODALITIES) -> Discovery:
    """
    Find the cases under `root`, at any depth, and the image files that belong to none.

    Per-modality file names may use ``_`` or ``-`` before the modality suffix, any letter case, any extension of
    :data:`~axunet_bundle.data.formats.IMAGE_SUFFIXES`, any prefix (BraTS 2020 ``BraTS20_Training_001_t1ce.nii``,
    BraTS-SSA/PED/MEN, UPenn-GBM, ...), the modality aliases in :data:`MODALITY_ALIASES` and the label names in
    :data:`LABEL_NAMES` (the module's docstring gives the rules). A folder with a Decathlon ``dataset.json`` (or the
    ``imagesTr``/``imagesTs`` folder of one) is read as the module's docstring says. Hidden files are ignored.

    Args:
        root: dataset directory (or the directory of a single case).
        modalities: canonical modalities to collect into :attr:`Case.images`; image files of other modalities go to
            :attr:`Case.ignored`. A case is reported even if some of these are missing (see
            :meth:`Case.missing_modalities`).

    Returns:
        the cases sorted by case id (absolute paths) and the files it cannot place.

    Raises:
        DatasetPathError: when `root` does not exist or is a file.
        DatasetError: when no case is found under `root`, the same case id appears in more than one directory, or a
            ``dataset.json`` cannot be used.
        ConfigurationError: for unknown modality names.
        CaseError: when a case has two files for the same modality (e.g. both ``_t1ce`` and ``_t1c``).
    """
    mods = validate_modalities(modalities)
    root_path = Path(root).expanduser().absolute()
    if not root_path.exists():
        raise DatasetPathError(f"dataset directory {root_path} does not exist")
    if not root_path.is_dir():
        raise DatasetPathError(f"dataset path {root_path} is a file, not a directory")

    dataset_json = find_dataset_json(root_path)
    if dataset_json is not None:
        found = Discovery(decathlon_cases(dataset_json, root_path))
    else:
        found = Discovery([])
        seen: set[Path] = set()  # real paths walked: symlinked case folders are followed, a symlink loop is not
        for dir_path, dir_names, file_names in os.walk(root_path, followlinks=True):
            real = Path(dir_path).resolve()
            if real in seen:
                dir_names[:] = []
                continue
            seen.add(real)
            dir_names[:] = sorted(d for d in dir_names if not d.startswith("."))  # deterministic, no hidden dirs
            names = _place_datastore_labels(found, Path(dir_path), file_names)
            cases, strays = _cases_in_directory(Path(dir_path), names, mods)
            found.cases.extend(cases)
            owner = cases[0].case_id if len(cases) == 1 else None
            found.strays.extend((owner, path, reason) for path, reason in strays)
        _place_in_other_folders(found)
        labels = {case.label for case in found.cases if case.label is not None}
        found.strays = [stray for stray in found.strays if stray[1] not in labels]
    if not found.cases:
        raise DatasetError(f"no BraTS cases found under {root_path}: expected files like {_EXAMPLE_FILE}")
    _check_duplicates(found.cases)
    found.cases.sort(key=lambda c: c.case_id)
    return found


def find_cases(root: str | os.PathLike, modalities: Sequence[str] = MODALITIES) -> list[Case]:
    """The cases of :func:`discover`, sorted by case id, with absolute paths (same arguments and errors)."""
    return discover(root, modalities).cases
