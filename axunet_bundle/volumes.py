# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
What a reader of a segmentation looks at first: the volume of each label and region in mL, and (with flip
test-time augmentation) how unsure the model was inside the tumour.

Columns (:func:`label_volumes`), named by the case's label convention and with their unit:

- one per label of the convention, ``<class>_label<value>_mL``: ``NCR_label1_mL``, ``ED_label2_mL``,
  ``ET_label4_mL`` in ``brats2021``; ``NETC_label1_mL``, ``SNFH_label2_mL``, ``ET_label3_mL`` (and
  ``RC_label4_mL`` in ``brats2024``) in the BraTS 2023+ names; ``ED_label1_mL``, ``NCR_label2_mL``, ``ET_label3_mL``
  in ``msd``;
- one per region, ``WT_region_mL``, ``TC_region_mL``, ``ET_region_mL``;
- with an uncertainty map, ``uncertainty_mean_in_WT``: the map's mean over the predicted WT (NaN for an empty WT).

The inference chain computes them per case (:class:`CaseVolumesd`) into ``data["result"]``, the dictionary MONAI
Label's ``BasicInferTask`` returns as the result's params, and :class:`VolumesCSVWriter` appends them to
``volumes.csv`` beside the segmentations as each case finishes.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from ignite.engine import Engine, Events
from monai.config import KeysCollection
from monai.config.type_definitions import NdarrayOrTensor
from monai.transforms import MapTransform
from monai.utils import convert_to_numpy

from .atomic import write_text_atomic
from .data.labels import LABEL_CONVENTIONS, region_labels, validate_convention
from .data.pipeline import CASE_ID_KEY, CONVENTION_KEY, item_convention
from .outputs import VOLUMES_CSV
from .transforms import case_id_from_meta

__all__ = [
    "RESULT_KEY",
    "UNCERTAINTY_SCORE",
    "CaseVolumesd",
    "VolumesCSVWriter",
    "append_volumes_row",
    "label_columns",
    "label_volumes",
    "uncertainty_score",
    "voxel_volume_ml",
]

#: the data key whose dictionary MONAI Label's ``BasicInferTask.writer`` returns as the infer result's params
RESULT_KEY = "result"
#: the per-case uncertainty score's column: mean of the uncertainty map over the predicted whole tumour
UNCERTAINTY_SCORE = "uncertainty_mean_in_WT"
#: the BraTS 2023+ names of the classes the older conventions call NCR and ED
_NAMES_2023 = {"NCR": "NETC", "ED": "SNFH"}
_CONVENTIONS_2023 = ("brats2023", "brats2024")
#: 1 mL = 1000 mm^3
MM3_PER_ML = 1000.0


def voxel_volume_ml(affine: NdarrayOrTensor) -> float:
    """The volume of one voxel in mL from a voxel-to-world affine in mm: ``|det(affine[:3, :3])| / 1000`` (the
    determinant, not the product of the spacings, so that sheared or oblique grids are measured right too)."""
    matrix = np.asarray(convert_to_numpy(affine), dtype=np.float64)[:3, :3]
    return float(abs(np.linalg.det(matrix))) / MM3_PER_ML


def label_columns(convention: str) -> dict[str, int]:
    """``{column: label value}`` of a convention's labels, e.g. ``{"NCR_label1_mL": 1, "ED_label2_mL": 2, ...}``."""
    classes = LABEL_CONVENTIONS[validate_convention(convention)]
    names = _NAMES_2023 if convention in _CONVENTIONS_2023 else {}
    ordered = sorted(classes.items(), key=lambda kv: kv[1])
    return {f"{names.get(name, name)}_label{value}_mL": value for name, value in ordered}


def label_volumes(label: NdarrayOrTensor, affine: NdarrayOrTensor, convention: str) -> dict[str, float]:
    """
    The volume of each label and region of a label map, in mL.

    Args:
        label: label map, 3D or channel-first ``(1, H, W, D)``, any integer or integral float dtype.
        affine: its 4x4 voxel-to-world affine in mm.
        convention: its label convention, a key of ``LABEL_CONVENTIONS``.

    Returns:
        ``{column: mL}``, the label columns of :func:`label_columns`, then ``WT_region_mL``, ``TC_region_mL``,
        ``ET_region_mL``: voxel counts times the voxel volume.

    Raises:
        ConfigurationError: for an unknown convention.
    """
    # own code: MONAI's label statistics (auto3dseg's LabelStats) give voxel counts and fractions, not volumes in mL
    data = np.asarray(convert_to_numpy(label)).astype(np.int64, copy=False).ravel()
    counts = np.bincount(data[data >= 0])
    voxel = voxel_volume_ml(affine)

    def count(values: Sequence[int]) -> int:
        return int(sum(counts[v] for v in values if v < counts.size))

    volumes = {column: count([value]) * voxel for column, value in label_columns(convention).items()}
    volumes.update({f"{r}_region_mL": count(v) * voxel for r, v in region_labels(convention).items()})
    return volumes


def uncertainty_score(label: NdarrayOrTensor, uncertainty: NdarrayOrTensor, convention: str) -> float:
    """
    A case's uncertainty score, ``uncertainty_mean_in_WT``: the mean of its uncertainty map over the predicted WT.

    Args:
        label: label map, 3D or ``(1, H, W, D)``.
        uncertainty: the uncertainty map on the same grid, the same shape.
        convention: the label map's convention.

    Returns:
        the mean (unitless, as the map), NaN for an empty WT.

    Raises:
        ValueError: for maps of different shapes.
    """
    label, uncertainty = np.asarray(convert_to_numpy(label)), np.asarray(convert_to_numpy(uncertainty))
    if label.shape != uncertainty.shape:
        raise ValueError(f"the uncertainty map's shape {uncertainty.shape} differs from the label map's {label.shape}")
    inside = uncertainty[np.isin(label, region_labels(convention)["WT"])]
    return float(inside.mean()) if inside.size else float("nan")


class CaseVolumesd(MapTransform):
    """
    Put a case's label and region volumes (:func:`label_volumes`, from the label map and its affine) and, when
    ``uncertainty_key`` is present, its uncertainty score into ``data["result"]`` (what MONAI Label returns as the
    result's params), with ``case_id`` and ``label_convention``.

    Args:
        keys: the key of the label map, a ``(1, H, W, D)`` MetaTensor on the input's grid (after ``Invertd``).
        convention: the label convention setting (a convention or ``"auto"``: each case's own).
        uncertainty_key: the key of the ``(1, H, W, D)`` uncertainty map on the same grid, when flip TTA made one.
    """

    def __init__(self, keys: KeysCollection, convention: str, uncertainty_key: str = "uncertainty") -> None:
        super().__init__(keys)
        self.convention = convention
        self.uncertainty_key = uncertainty_key

    def __call__(self, data: Mapping[Hashable, Any]) -> dict[Hashable, Any]:
        d = dict(data)
        for key in self.key_iterator(d):
            label = d[key]
            convention = item_convention(d, self.convention)
            result = {CASE_ID_KEY: case_id_from_meta(label.meta), CONVENTION_KEY: convention}
            result.update(label_volumes(label, label.affine, convention))
            if self.uncertainty_key in d:
                result[UNCERTAINTY_SCORE] = uncertainty_score(label, d[self.uncertainty_key], convention)
            d[RESULT_KEY] = {**d.get(RESULT_KEY, {}), **result}
        return d


def append_volumes_row(path: str | os.PathLike, row: Mapping[str, Any]) -> Path:
    """Add ``row`` to the CSV at ``path`` (created when missing), replacing an earlier row of the same case, and
    rewrite it atomically; columns are the union of the rows' in their first-seen order (cases of several
    conventions get each convention's columns, empty where a case has none). Returns ``path``."""
    path = Path(path)
    rows = list(csv.DictReader(path.open(newline="", encoding="utf-8"))) if path.is_file() else []
    rows = [r for r in rows if r.get(CASE_ID_KEY) != str(row[CASE_ID_KEY])] + [dict(row)]
    columns = list(dict.fromkeys(c for r in rows for c in r))
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, restval="")
    writer.writeheader()
    writer.writerows(rows)
    return write_text_atomic(path, buffer.getvalue())


class VolumesCSVWriter:
    """
    Engine handler: after each iteration, appends each case's ``data["result"]`` (:class:`CaseVolumesd`) as a row to
    ``<output_dir>/volumes.csv``, atomically, so the file always holds every finished case. An engine handler rather
    than a transform, so that MONAI Label, which runs the post-transforms but not the bundle's handlers, writes no
    file into the bundle.

    Args:
        output_dir: the segmentations' folder.
    """

    def __init__(self, output_dir: str | os.PathLike) -> None:
        self.path = Path(output_dir) / VOLUMES_CSV

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.ITERATION_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        items = engine.state.output if isinstance(engine.state.output, list) else [engine.state.output]
        for item in items:
            if isinstance(item, Mapping) and RESULT_KEY in item:
                append_volumes_row(self.path, item[RESULT_KEY])
