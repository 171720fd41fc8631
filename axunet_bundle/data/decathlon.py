# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
The Medical Segmentation Decathlon's ``Task01_BrainTumour`` (BraTS 2016-2017 data; also MONAI's
``DecathlonDataset``, MONAI Label's sample dataset and nnU-Net's Task001): a ``dataset.json``,
``imagesTr/BRATS_001.nii.gz`` (one 4D image per case), ``labelsTr/BRATS_001.nii.gz``, ``imagesTs/``.

The image channels are picked by the names ``dataset.json`` gives them (``"modality": {"0": "FLAIR", "1": "T1w",
"2": "t1gd", "3": "T2w"}``), never by position, and the labels are read in the convention its ``"labels"`` name
(``{"1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}``: the ``msd`` convention).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from ..errors import DatasetError
from .cases import LAYOUT_MSD, MODALITY_ALIASES, Case, nifti_stem
from .labels import LABEL_CONVENTIONS

__all__ = ["DATASET_JSON", "decathlon_cases", "find_dataset_json", "modality_channels", "label_convention"]

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
        case_id = nifti_stem(image_path.name) or image_path.name
        images = {m: image_path for m in channels} if image_path.is_file() else {}
        label_path = _relative(source, label) if isinstance(label, str) else None
        cases.append(Case(case_id, LAYOUT_MSD, images, label_path, image_path.parent, channels, convention))
    return cases
