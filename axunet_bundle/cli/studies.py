# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``axunet monailabel-studies``: a dataset's cases, in any layout the bundle reads, as one flat MONAI Label studies
folder, and the ``monailabel start_server`` command that serves it.

MONAI Label's local datastore lists the files of its studies folder that match ``MONAI_LABEL_DATASTORE_FILE_EXT``
and names each by the file name less the matched pattern's tail (``BraTS2021_00000_t1ce.nii.gz`` under
``*_t1ce.nii.gz`` is image ``BraTS2021_00000``); a label is ``labels/final/<image id><ext>``. So each case gets its
model modalities' files side by side, named ``<case id>_<modality>`` (BraTS 2023+ cases: ``<case id>-<t1c|t2w|t2f>``,
so that their label convention still follows from the names), the pattern matches the shown modality's files only
(one image per case) and the bundle reads the other modalities from beside the one it is given
(:class:`~axunet_bundle.data.pipeline.LoadCased`). Per-modality files are links (copies where the file system has
none); a multi-channel image (a Decathlon case) is split into one NIfTI per modality, the only way 3D Slicer shows
it as a volume, and a Decathlon label is written in the BraTS 2021 values the bundle's MONAI Label labels name.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np

from ..data.cases import (
    DATASTORE_LABELS,
    DATASTORE_REFERENCE_TAG,
    DEFAULT_MODALITIES,
    Case,
    convention_for_names,
    discover,
    validate_modalities,
)
from ..data.formats import ItkImage, image_stem, is_nifti
from ..data.integrity import same_grid
from ..data.labels import labels_to_regions, regions_to_labels
from ..errors import CaseError, ConfigurationError, DatasetError
from ..settings import AUTO_GRID, resolve_grid_modality
from .data import split_names
from .zoo_bundle import BUNDLE_NAME

__all__ = ["LABELS_FINAL", "StudiesFolder", "lay_out_studies", "monailabel_studies", "start_server_command"]

#: where MONAI Label's local datastore keeps the finished labels, relative to the studies folder
LABELS_FINAL = f"{DATASTORE_LABELS}/{DATASTORE_REFERENCE_TAG}"
#: the ``monailabel start_server`` settings the bundle needs besides the app and studies: the one bundle to serve;
#: no preloading; the sample app's SAM2 model off (it downloads its weights); the zoo source that lists local bundles
#: first (the default, monaihosting, asks the online model zoo first)
SERVER_CONF = (("models", BUNDLE_NAME), ("preload", "false"), ("sam2", "false"), ("zoo_source", "ngc"))


@dataclass
class StudiesFolder:
    """What :func:`lay_out_studies` made: the studies folder, MONAI Label's image ids (the case ids), the
    datastore's file patterns, the counts of links, copies, written files and labels, and the cases left out."""

    root: Path
    ids: list[str] = field(default_factory=list)
    patterns: set[str] = field(default_factory=set)
    counts: dict[str, int] = field(
        default_factory=lambda: {"linked": 0, "copied": 0, "written": 0, "labels": 0, "kept labels": 0}
    )
    skipped: list[CaseError] = field(default_factory=list)


def _extension(path: Path) -> str:
    stem = image_stem(path.name)
    return path.name[len(stem) :] if stem is not None else "".join(path.suffixes)


def _file_name(case: Case, modality: str, ext: str) -> str:
    """``<case id>_<modality><ext>``, or the BraTS 2023+ names (``-t1c``, ``-t2w``, ``-t2f``) for such a case."""
    name = case.expected_file_name(modality)
    return name[: -len(".nii.gz")] + ext


def _place(source: Path, target: Path, found: StudiesFolder) -> None:
    """``target`` a link to ``source`` (absolute), a copy where links fail; an existing link to it is kept.

    Raises:
        DatasetError: when ``target`` exists and is something else (the folder is another dataset's).
    """
    source = source.resolve()
    if target.is_symlink() or target.exists():
        if target.resolve() == source:
            return
        raise DatasetError(f"{target} exists and is not {source}: give an empty or new studies folder")
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        target.symlink_to(source)
        found.counts["linked"] += 1
    except OSError:  # no symlinks (Windows without the privilege, some network file systems)
        shutil.copy2(source, target)
        found.counts["copied"] += 1


def _header(path: Path) -> tuple[tuple[int, ...], np.ndarray]:
    image = nib.load(path) if is_nifti(path) else ItkImage(path)
    return tuple(image.shape[:3]), np.asarray(image.affine)


def _saved_labels(labels: Path) -> set[str]:
    """The image ids MONAI Label holds a label it saved for (from 3D Slicer: ``<image id><ext>``)."""
    return {image_stem(p.name) for p in labels.iterdir()} if labels.is_dir() else set()


def _split_case(case: Case, modalities: tuple[str, ...], study: str, out: Path, found: StudiesFolder) -> str:
    """A multi-channel case written as one 3D NIfTI per modality, ``<case id>_<modality>.nii.gz`` (the channels
    ``dataset.json`` names, else the model's order); returns the study file's name."""
    image = nib.load(case.images[modalities[0]])
    data = np.asarray(image.dataobj)
    data = data.reshape(*data.shape[:3], -1)  # X, Y, Z, C (ITK's vector layout X, Y, Z, 1, C too)
    channels = case.channel_indices(modalities) or list(range(len(modalities)))
    if max(channels) >= data.shape[-1]:
        raise CaseError(case.case_id, case.images[modalities[0]], f"{data.shape[-1]} channels, {modalities} expected")
    for modality, index in zip(modalities, channels):
        target = out / f"{case.case_id}_{modality}.nii.gz"
        if not target.exists():
            nib.save(nib.Nifti1Image(data[..., index], image.affine, image.header), target)
            found.counts["written"] += 1
    return f"{case.case_id}_{study}.nii.gz"


def _label(case: Case, study_name: str, labels: Path, found: StudiesFolder) -> str:
    """The case's label as ``labels/final/<study file's stem><ext>``: a link, read as in the dataset where the
    study keeps the case's names; a split case's label in other values than its new names imply (a Decathlon label:
    1 edema, 2 non-enhancing, 3 enhancing, beside files named as BraTS 2021's) is a NIfTI copy in those values.
    Returns its name."""
    convention = convention_for_names(study_name)
    target = labels / f"{image_stem(study_name)}{_extension(case.label)}"
    if not case.multichannel or case.convention == convention:
        _place(case.label, target, found)
    else:
        label = nib.load(case.label)
        regions = labels_to_regions(np.asarray(label.dataobj)[None], case.convention)
        values = regions_to_labels(regions, convention)[0].astype(np.uint8)
        target = labels / f"{image_stem(study_name)}.nii.gz"
        if not target.exists():
            labels.mkdir(parents=True, exist_ok=True)
            nib.save(nib.Nifti1Image(values, label.affine), target)
            found.counts["written"] += 1
    found.counts["labels"] += 1
    return target.name


def lay_out_studies(
    dataset_dir: str | os.PathLike,
    output_dir: str | os.PathLike,
    study_modality: str = "t1ce",
    modalities: Sequence[str] = DEFAULT_MODALITIES,
) -> StudiesFolder:
    """
    Lay out a flat MONAI Label studies folder for the cases of ``dataset_dir`` (any layout :func:`discover` reads):
    per case, its ``modalities`` as ``<case id>_<modality><ext>`` links to its files (multi-channel images split
    into 3D NIfTI files), and its label, if any, as ``labels/final/<case id>_<study_modality><ext>``. A label MONAI
    Label already holds for the case (a correction saved from 3D Slicer) is kept. Cases missing a modality are
    left out, each with its one-line :class:`CaseError` in :attr:`StudiesFolder.skipped`.

    Args:
        dataset_dir: the dataset folder.
        output_dir: the studies folder (created; may hold an earlier run's links and MONAI Label's files).
        study_modality: the modality MONAI Label lists and 3D Slicer shows, one of ``modalities``. Its grid must be
            that of the bundle's ``grid_modality`` (T1CE where read), which its label maps are written on, so that
            a label drawn on it trains.
        modalities: the model's modalities, in channel order.

    Returns:
        the folder, its image ids and the ``MONAI_LABEL_DATASTORE_FILE_EXT`` patterns that list one image per case.

    Raises:
        ConfigurationError: for a study modality not among ``modalities``.
        DatasetError: no case, or a file in the way in ``output_dir``.
        CaseError: a case whose study modality lies on another grid than the grid modality's.
    """
    mods = validate_modalities(modalities)
    if study_modality not in mods:
        raise ConfigurationError(f"study modality {study_modality!r} is not one of the model's: {', '.join(mods)}")
    grid = resolve_grid_modality(AUTO_GRID, mods)  # the bundle's default: its label maps lie on this grid
    out = Path(output_dir).absolute()
    labels = out / LABELS_FINAL
    found = StudiesFolder(out)
    saved = _saved_labels(labels)  # before this run lays out any
    for case in discover(dataset_dir, mods).cases:
        missing = case.missing_modalities(mods)
        if missing:
            found.skipped.append(
                CaseError(case.case_id, case.directory / case.expected_file_name(missing[0]), f"missing {missing[0]}")
            )
            continue
        out.mkdir(parents=True, exist_ok=True)
        if case.multichannel:
            study_name = _split_case(case, mods, study_modality, out, found)
        else:
            if study_modality != grid:
                shape, affine = _header(case.images[study_modality])
                if not same_grid(shape, affine, *_header(case.images[grid])):
                    raise CaseError(
                        case.case_id,
                        case.images[study_modality],
                        f"lies on another grid than {grid}, the grid of the label maps: show {grid} instead",
                    )
            for modality in mods:
                source = case.images[modality]
                _place(source, out / _file_name(case, modality, _extension(source)), found)
            study_name = _file_name(case, study_modality, _extension(case.images[study_modality]))
        # "_t1ce.nii.gz": MONAI Label's image id is the file's name without the pattern's tail, the case id
        found.patterns.add(f"*{study_name[len(case.case_id) :]}")
        found.ids.append(case.case_id)
        if case.label is not None:
            if case.case_id in saved:
                found.counts["kept labels"] += 1
            else:
                found.patterns.add(f"*{_label(case, study_name, labels, found)[len(case.case_id) :]}")
    if not found.ids:
        raise DatasetError(f"{dataset_dir}: no case has all of {', '.join(mods)}: nothing to serve")
    return found


def start_server_command(studies: Path, patterns: Sequence[str], app: str = "apps/monaibundle") -> str:
    """The shell line that serves ``studies`` with the bundle: ``MONAI_LABEL_DATASTORE_FILE_EXT`` (a JSON list) and
    ``monailabel start_server`` with the app, the studies and :data:`SERVER_CONF`."""
    conf = " ".join(f"--conf {key} {value}" for key, value in SERVER_CONF)
    return (
        f"MONAI_LABEL_DATASTORE_FILE_EXT={shlex.quote(json.dumps(sorted(patterns)))} "
        f"monailabel start_server --app {shlex.quote(app)} --studies {shlex.quote(str(studies))} {conf}"
    )


def monailabel_studies(
    dataset_dir: str, output_dir: str, study_modality: str = "t1ce", modalities: str = "t1ce,t2,flair"
) -> None:
    """Lay out a flat MONAI Label studies folder of links to a dataset's cases (any layout the bundle reads; a
    multi-channel image is split into one NIfTI per modality), its labels in labels/final/ under the names MONAI Label
    expects, and print the monailabel start_server command that serves it with the bundle.

    Args:
        dataset_dir: the dataset folder (BraTS 2018-2025 names, other collections, a Decathlon Task01 folder, ...).
        output_dir: the studies folder to lay out (new, or an earlier run's: MONAI Label's saved labels are kept).
        study_modality: the modality MONAI Label lists and 3D Slicer shows, one per case; its grid must be the
            grid modality's (T1CE where read: the grid the label maps are written on).
        modalities: comma-separated model modalities, in channel order (default: the model's).

    Example:
        axunet monailabel-studies /data/BraTS2021 studies
    """
    found = lay_out_studies(dataset_dir, output_dir, study_modality, split_names(modalities))
    for problem in found.skipped:
        print(f"left out: {problem}")
    counts = ", ".join(f"{n} {what}" for what, n in found.counts.items() if n)
    print(f"{found.root}: {len(found.ids)} studies ({counts}); one image per case: {study_modality}")
    print(
        "serve it: put the bundle folder (axunet bundle OUT; unzip its zip) at <app>/model/"
        f"{BUNDLE_NAME}, the app being MONAI Label's monaibundle sample (monailabel apps --download --name "
        "monaibundle --output apps), then run:"
    )
    print(start_server_command(found.root, sorted(found.patterns)))
