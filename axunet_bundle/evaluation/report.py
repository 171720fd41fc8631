# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
BraTS evaluation of label maps, as the challenges score submissions: each case's segmentation file against its
reference file, per region (WT, TC, ET), in two families of columns:

- the legacy BraTS (<= 2021) global Dice and HD95 (``legacy_dice_<region>``, ``legacy_hd95_<region>``; HD95 in mm,
  :mod:`axunet_bundle.evaluation.metrics`), with its rules for empty regions;
- what the BraTS 2023+ challenges report, from their own package ``brats-evaluation`` (lesion-wise Dice, HD95 and
  NSD, lesion counts and F1, global DSC, NSD and HD95 under the package's column names,
  :mod:`axunet_bundle.evaluation.challenge`), when it is installed.

and the volumes of the segmentation's and the reference's labels and regions in mL with their difference
(:func:`compare_volumes`).

Then the report: ``metrics.csv`` (one row per case), ``summary.json`` (mean, median and standard deviation per
column), the Dice box plot and, from the evaluation workflow, one overlay per case.

The evaluation workflow (``configs/evaluate.json``) writes its segmentations with the inference chain and scores
them here; ``axunet score`` scores label maps any tool wrote (:mod:`axunet_bundle.cli.score`). MONAI's
``MetricsSaver`` is not used: it saves metrics an engine computed, one file per metric with rows keyed by image path
and values rounded to 4 decimals, written in place; this report is one table of every metric per case, written
atomically, from files.
"""

from __future__ import annotations

import csv
import io
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import torch
from monai.transforms import LoadImage

from .. import outputs
from ..atomic import write_json_atomic, write_text_atomic
from ..data.datalist import CaseSelection
from ..data.integrity import label_problems
from ..data.labels import AUTO, REGIONS, convention_for_values, labels_to_regions, validate_convention
from ..data.pipeline import CASE_ID_KEY, CONVENTION_KEY, REFERENCE_KEY, item_convention
from ..errors import AxunetError, CaseError
from ..progress import progress
from ..volumes import label_volumes
from .challenge import challenge_columns, resolve_challenge, score_challenge
from .metrics import compute_brats_dice, compute_brats_hd95

__all__ = [
    "LEGACY_DICE",
    "LEGACY_HD95",
    "ReportExistsError",
    "check_report_absent",
    "evaluation_report",
    "read_label_map",
    "report_columns",
    "score_case",
    "compare_volumes",
    "score_label_maps",
    "summarize",
    "write_report",
]

logger = logging.getLogger(__name__)

#: the legacy BraTS (<= 2021) metrics, each a column per region: ``legacy_dice_wt`` ... ``legacy_hd95_et``
LEGACY_DICE = "legacy_dice"
LEGACY_HD95 = "legacy_hd95"
LEGACY_METRICS = (LEGACY_DICE, LEGACY_HD95)
#: the report's column of the case id (the evaluation item's ``case_id``)
CASE_ID = CASE_ID_KEY


class ReportExistsError(AxunetError, FileExistsError):
    """An earlier evaluation's report is in the output folder and overwriting was not asked for."""


def report_columns(challenge: bool = True) -> list[str]:
    """The per-case columns after ``case_id``: ``legacy_dice_wt`` ... ``legacy_hd95_et``, then (``challenge``) the
    challenge metrics' (:func:`~axunet_bundle.evaluation.challenge.challenge_columns`)."""
    legacy = [f"{metric}_{region.lower()}" for metric in LEGACY_METRICS for region in REGIONS]
    return legacy + (challenge_columns() if challenge else [])


def check_report_absent(output_dir: str | os.PathLike, overwrite: bool = False) -> None:
    """Stop before any case is evaluated when the report of an earlier evaluation would be overwritten.

    Raises:
        ReportExistsError: when ``metrics.csv`` or ``summary.json`` exists in ``output_dir`` and not ``overwrite``.
    """
    existing = [
        Path(output_dir) / n for n in (outputs.METRICS_CSV, outputs.SUMMARY_JSON) if (Path(output_dir) / n).exists()
    ]
    if existing and not overwrite:
        raise ReportExistsError(
            f"{existing[0]} exists: an earlier evaluation's results are not overwritten; "
            "pass --overwrite True or another --output_dir"
        )


def read_label_map(path: str | os.PathLike, case_id: str) -> tuple[np.ndarray, np.ndarray]:
    """A label map's voxels (3D, the file's dtype) and RAS affine, read by MONAI's reader for its format (NIfTI,
    NRRD, MetaImage), as the chains read it.

    Raises:
        CaseError: for a file that cannot be read or is not 3D.
    """
    try:
        image = LoadImage(image_only=True, dtype=None)(os.fspath(path))
        data = image.numpy()
    except Exception as err:  # any unreadable file is the case's problem, reported in one line
        reason = str(err).strip().splitlines()[-1] if str(err).strip() else ""
        raise CaseError(case_id, path, f"unreadable label map ({type(err).__name__}: {reason})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(case_id, path, f"label map of shape {data.shape} where a 3D volume is expected")
    return data, image.affine.numpy()


def score_label_maps(
    prediction: np.ndarray,
    reference: np.ndarray,
    convention: str,
    spacing: Sequence[float] | None = None,
    challenge: str | None = None,
    prediction_convention: str | None = None,
) -> dict[str, float]:
    """Score a segmentation against its reference, per region: the legacy Dice and HD95 and, with ``challenge``, what
    ``brats-evaluation`` reports.

    Args:
        prediction: 3D label map of the segmentation.
        reference: 3D label map of the reference, same shape.
        convention: the label convention of the reference (a key of ``LABEL_CONVENTIONS``).
        spacing: voxel spacing in mm per axis (default 1 mm isotropic).
        challenge: a ``brats-evaluation`` config (``"gli"``, ...) or ``None`` for the legacy metrics only.
        prediction_convention: the prediction's convention, when it differs from the reference's.

    Returns:
        ``{"legacy_dice_wt": ..., "legacy_hd95_et": ...}`` (:func:`report_columns`).
    """
    spacing = tuple(float(s) for s in spacing) if spacing is not None else (1.0,) * reference.ndim
    regions = [
        labels_to_regions(torch.as_tensor(np.asarray(m))[None], c)[None]
        for m, c in ((prediction, prediction_convention or convention), (reference, convention))
    ]
    legacy = {LEGACY_DICE: compute_brats_dice(*regions)[0], LEGACY_HD95: compute_brats_hd95(*regions, spacing)[0]}
    scores = {f"{m}_{r.lower()}": float(legacy[m][i]) for m in LEGACY_METRICS for i, r in enumerate(REGIONS)}
    if challenge is not None:
        scores.update(score_challenge(regions[0][0].numpy(), regions[1][0].numpy(), spacing, challenge))
    return scores


def score_case(
    item: Mapping[str, Any],
    case_id: str,
    segmentation: Path | None,
    convention: str,
    challenge: str | None,
    prediction_convention: str | None = None,
) -> tuple[dict[str, float], str]:
    """Read a case's segmentation (``None``: missing, scored as empty) and reference, check them in their conventions
    (the one label check of the bundle: an evaluation refuses what ``axunet check`` refuses), and score them on the
    reference's voxel spacing; returns the scores and the convention the reference was read in."""
    truth, truth_affine = read_label_map(item[REFERENCE_KEY], case_id)
    if "image" not in item and not item.get(CONVENTION_KEY):  # a label map alone: its values tell its dataset
        item = {**item, CONVENTION_KEY: convention_for_values(truth)}
    convention = item_convention(item, convention, truth)
    if segmentation is None:
        prediction, pred_affine = np.zeros_like(truth), truth_affine
    else:
        prediction, pred_affine = read_label_map(segmentation, case_id)
    checks = [(item[REFERENCE_KEY], truth, convention)]
    if segmentation is not None:
        checks.append((segmentation, prediction, prediction_convention or convention))
    for path, data, data_convention in checks:
        reasons = label_problems(data, data_convention)
        if reasons:
            raise CaseError(case_id, path, reasons[0])
    if prediction.shape != truth.shape:
        raise CaseError(case_id, segmentation, f"shape {prediction.shape} differs from the reference's {truth.shape}")
    if not np.allclose(pred_affine, truth_affine, atol=1e-3):
        raise CaseError(case_id, segmentation, "affine differs from the reference's: not on the same grid")
    spacing = nib.affines.voxel_sizes(truth_affine)
    scores = score_label_maps(prediction, truth, convention, spacing, challenge, prediction_convention)
    volumes = compare_volumes(prediction, truth, truth_affine, convention, prediction_convention)
    return {**scores, **volumes}, convention


def compare_volumes(
    prediction: np.ndarray,
    reference: np.ndarray,
    affine: np.ndarray,
    convention: str,
    prediction_convention: str | None = None,
) -> dict[str, float]:
    """The label and region volumes (:func:`~axunet_bundle.volumes.label_volumes`, mL) of a segmentation and its
    reference on the same grid: ``pred_<column>``, ``ref_<column>`` and, for columns both have, ``diff_<column>``
    (prediction minus reference), e.g. ``pred_WT_region_mL``, ``ref_WT_region_mL``, ``diff_WT_region_mL``."""
    pred = label_volumes(prediction, affine, prediction_convention or convention)
    ref = label_volumes(reference, affine, convention)
    volumes = {f"pred_{c}": v for c, v in pred.items()}
    volumes.update({f"ref_{c}": v for c, v in ref.items()})
    volumes.update({f"diff_{c}": pred[c] - ref[c] for c in ref if c in pred})
    return volumes


_STATISTICS = (np.mean, np.median, np.std)


def _statistics(values: np.ndarray) -> dict[str, Any]:
    """Mean, median and population std of the finite values, their count ``n``, and ``n_infinite`` (a lesion-wise
    HD95 without a matched lesion); NaN (a region empty in both, for the challenge metrics) are left out."""
    finite = values[np.isfinite(values)]
    stats: dict[str, Any] = {f.__name__: float(f(finite)) if finite.size else None for f in _STATISTICS}
    stats["n"] = int(finite.size)
    stats["n_infinite"] = int(np.isinf(values).sum())
    return stats


def summarize(rows: Sequence[Mapping[str, Any]], columns: Sequence[str] | None = None) -> dict[str, Any]:
    """``{"n_cases": N, <metric>: {<REGION>: {"mean", "median", "std", "n", "n_infinite"}}}`` over the rows, for the
    ``columns`` (default the legacy ones), each ``<metric>_<region>``; statistics of the finite values."""
    summary: dict[str, Any] = {"n_cases": len(rows)}
    for column in columns if columns is not None else report_columns(challenge=False):
        metric, region = column.rsplit("_", 1)
        values = np.asarray([row[column] for row in rows], dtype=float)
        summary.setdefault(metric, {})[region.upper()] = _statistics(values)
    return summary


def write_report(
    rows: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    columns: Sequence[str] | None = None,
    volume_columns: Sequence[str] = (),
) -> Path:
    """Write ``metrics.csv`` (``case_id`` + ``columns``, default the legacy ones, + ``volume_columns``; one row per
    case) and ``summary.json`` (of ``columns``) into ``output_dir``, atomically; returns the CSV's path."""
    columns = list(columns) if columns is not None else report_columns(challenge=False)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[CASE_ID, *columns, *volume_columns], extrasaction="ignore")
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_text_atomic(Path(output_dir) / outputs.METRICS_CSV, buffer.getvalue())
    write_json_atomic(Path(output_dir) / outputs.SUMMARY_JSON, summarize(rows, columns))
    return csv_path


def evaluation_report(
    cases: CaseSelection,
    output_dir: str | os.PathLike,
    convention: str,
    challenge: str | None = AUTO,
    output_ext: str = ".nii.gz",
) -> list[dict[str, Any]]:
    """Score every evaluated case's segmentation in ``output_dir`` against its reference and write the report there
    (a step of ``configs/evaluate.json``; ``axunet evaluate`` draws its pictures afterwards). A case whose
    segmentation is missing was left out earlier (and is reported with ``cases``); a case that cannot be scored is
    added to ``cases.left_out``.

    Args:
        cases: the evaluated cases; each item has ``image`` (files), ``reference`` (the label map) and ``case_id``.
        output_dir: where the segmentations are and the report goes.
        convention: the label convention setting: ``"auto"`` for each case's dataset's (its item's
            ``label_convention``, resolved with its reference), or a convention name.
        challenge: the ``brats-evaluation`` config, ``"auto"`` or ``"none"``
            (:func:`~axunet_bundle.evaluation.challenge.resolve_challenge`).
        output_ext: the segmentations' file-name ending.

    Returns:
        the report's rows.

    Raises:
        ConfigurationError: for an unknown convention or challenge.
    """
    convention = validate_convention(convention, allow_auto=True)
    challenge = resolve_challenge(challenge)
    output_dir = Path(output_dir)
    rows = []
    for item in progress(cases.items, desc="scoring", unit="case"):
        case_id = str(item[CASE_ID])  # the item's id names the written segmentation (case_name_formatter)
        segmentation = outputs.segmentation_path(output_dir, case_id, output_ext)
        if not segmentation.is_file():
            continue
        try:
            scores, _ = score_case(item, case_id, segmentation, convention, challenge)
            rows.append({CASE_ID: case_id, **scores})
        except CaseError as err:
            logger.warning("leaving out case %s", err)
            cases.left_out.append(err)
    columns = report_columns(challenge is not None)
    # volume columns follow the cases' conventions (RC only in BraTS 2024 references): the union, in first-seen order
    volume_columns = list(dict.fromkeys(c for row in rows for c in row if c not in columns and c != CASE_ID))
    write_report(rows, output_dir, columns, volume_columns)
    logger.info("scores of %d cases written to %s", len(rows), output_dir / outputs.METRICS_CSV)
    return rows
