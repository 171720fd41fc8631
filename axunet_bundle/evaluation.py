# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
BraTS evaluation of label maps, as the challenges score submissions: each case's segmentation file against its
reference file, per region (WT, TC, ET), with the legacy BraTS (<= 2021) rules for empty regions
(:mod:`axunet_bundle.metrics`); then the report: ``metrics.csv`` (one row per case), ``summary.json`` (mean, median
and standard deviation per column), the Dice box plot and one overlay per case.

The evaluation workflow (``configs/evaluate.json``) writes its segmentations with the inference chain and scores
them here. MONAI's ``MetricsSaver`` is not used: it saves metrics an engine computed, one file per metric with rows
keyed by image path and values rounded to 4 decimals, written in place; this report is one table of every metric
per case, written atomically, from files any tool could have written.
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

from . import outputs
from .atomic import write_json_atomic, write_text_atomic
from .data.cases import CaseError
from .data.datalist import CaseSelection
from .data.integrity import Problem, label_problems
from .data.labels import REGIONS, item_convention, labels_to_regions, validate_convention
from .data.pipeline import CHANNELS_KEY
from .errors import AxunetError
from .metrics import compute_brats_dice, compute_brats_hd95
from .progress import progress
from .transforms import case_id_from_path

__all__ = [
    "METRICS",
    "ReportExistsError",
    "check_report_absent",
    "evaluation_report",
    "read_label_map",
    "report_columns",
    "score_label_maps",
    "summarize",
    "write_report",
]

logger = logging.getLogger(__name__)

#: the metrics of the report, each per region: ``<metric>_<region>`` columns (``dice_wt`` ... ``hd95_et``)
METRICS = ("dice", "hd95")
#: the key of an evaluation item holding the reference label map's path (the engine never loads it)
REFERENCE_KEY = "reference"
CASE_ID = "case_id"


class ReportExistsError(AxunetError, FileExistsError):
    """An earlier evaluation's report is in the output folder and overwriting was not asked for."""


def report_columns() -> list[str]:
    """The per-case columns after ``case_id``: ``dice_wt, dice_tc, dice_et, hd95_wt, hd95_tc, hd95_et``."""
    return [f"{metric}_{region.lower()}" for metric in METRICS for region in REGIONS]


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
    """A label map's voxels (3D) and affine.

    Raises:
        CaseError: for a file that cannot be read or is not 3D.
    """
    try:
        image = nib.load(os.fspath(path))
        data = np.asanyarray(image.dataobj)
    except Exception as err:  # any unreadable file is the case's problem, reported in one line
        raise CaseError(case_id, path, f"unreadable label map ({type(err).__name__}: {err})") from None
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise CaseError(case_id, path, f"label map of shape {data.shape} where a 3D volume is expected")
    return data, np.asarray(image.affine)


def score_label_maps(prediction: np.ndarray, reference: np.ndarray, convention: str) -> dict[str, float]:
    """Dice and HD95 (voxel units, 1 mm in BraTS) of each region, legacy BraTS rules for empty regions.

    Args:
        prediction: 3D label map of the segmentation.
        reference: 3D label map of the reference, same shape.
        convention: the label convention of both (a key of ``LABEL_CONVENTIONS``).

    Returns:
        ``{"dice_wt": ..., "hd95_et": ...}`` (:func:`report_columns`).
    """
    regions = [
        labels_to_regions(torch.as_tensor(np.asarray(m))[None], convention)[None] for m in (prediction, reference)
    ]
    scores = {"dice": compute_brats_dice(*regions)[0], "hd95": compute_brats_hd95(*regions)[0]}
    return {f"{m}_{r.lower()}": float(scores[m][i]) for m in METRICS for i, r in enumerate(REGIONS)}


def _score_case(
    item: Mapping[str, Any], case_id: str, segmentation: Path, convention: str
) -> tuple[dict[str, float], str]:
    """Read a case's segmentation and reference, check them in the reference's convention (the one label check of the
    bundle: an evaluation refuses what ``axunet check`` refuses), and score them; returns the scores and the
    convention they were read in."""
    truth, truth_affine = read_label_map(item[REFERENCE_KEY], case_id)
    convention = item_convention(item, convention, truth)
    prediction, pred_affine = read_label_map(segmentation, case_id)
    for path, data in ((item[REFERENCE_KEY], truth), (segmentation, prediction)):
        reasons = label_problems(data, convention)
        if reasons:
            raise CaseError(case_id, path, reasons[0])
    if prediction.shape != truth.shape:
        raise CaseError(case_id, segmentation, f"shape {prediction.shape} differs from the reference's {truth.shape}")
    if not np.allclose(pred_affine, truth_affine, atol=1e-3):
        raise CaseError(case_id, segmentation, "affine differs from the reference's: not on the same grid")
    return score_label_maps(prediction, truth, convention), convention


def summarize(rows: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
    """``{"n_cases": N, <metric>: {<REGION>: {"mean", "median", "std"}}}`` over the rows (population std)."""
    summary: dict[str, Any] = {"n_cases": len(rows)}
    for metric in METRICS:
        summary[metric] = {}
        for region in REGIONS:
            values = np.asarray([row[f"{metric}_{region.lower()}"] for row in rows], dtype=float)
            stats = (np.mean, np.median, np.std) if values.size else ()
            summary[metric][region] = {f.__name__: float(f(values)) for f in stats}
    return summary


def write_report(rows: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike) -> Path:
    """Write ``metrics.csv`` (``case_id`` + :func:`report_columns`, one row per case) and ``summary.json`` into
    ``output_dir``, atomically; returns the CSV's path."""
    header = [CASE_ID, *report_columns()]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    csv_path = write_text_atomic(Path(output_dir) / outputs.METRICS_CSV, buffer.getvalue())
    write_json_atomic(Path(output_dir) / outputs.SUMMARY_JSON, summarize(rows))
    return csv_path


def evaluation_report(
    cases: CaseSelection,
    output_dir: str | os.PathLike,
    convention: str,
    overlays: bool = True,
    modalities: Sequence[str] | None = None,
) -> list[dict[str, Any]]:
    """Score every evaluated case's segmentation in ``output_dir`` against its reference and write the report and
    pictures there (the last step of ``configs/evaluate.json``). A case whose segmentation is missing was left out
    earlier (and is reported with ``cases``); a case that cannot be scored is added to ``cases.left_out``.

    Args:
        cases: the evaluated cases; each item has ``image`` (files), ``reference`` (the label map) and ``case_id``.
        output_dir: where the segmentations are and the report goes.
        convention: the label convention setting: ``"auto"`` for each case's dataset's (its item's
            ``label_convention``, resolved with its reference), or a convention name.
        overlays: also draw one overlay per case in ``output_dir/overlays/``.
        modalities: the image channels' modalities, in order, for the overlays' panel titles.

    Returns:
        the report's rows.
    """
    from .visualize import dice_boxplot, overlay_files  # matplotlib only when drawing

    convention = validate_convention(convention, allow_auto=True)
    output_dir = Path(output_dir)
    rows, scored = [], []
    for item in progress(cases.items, desc="scoring", unit="case"):
        written_as = case_id_from_path(item["image"][0])  # the writer's name for it (case_name_formatter)
        case_id = str(item.get(CASE_ID) or written_as)
        segmentation = outputs.segmentation_path(output_dir, written_as)
        if not segmentation.is_file():
            continue
        try:
            scores, case_convention = _score_case(item, case_id, segmentation, convention)
            rows.append({CASE_ID: case_id, **scores})
            scored.append((item, segmentation, case_convention))
        except CaseError as err:
            logger.warning("leaving out case %s", err)
            cases.left_out.append(Problem(err.case_id, err.file, err.reason))
    write_report(rows, output_dir)
    logger.info("evaluation of %d cases written to %s", len(rows), output_dir / outputs.METRICS_CSV)
    if rows:
        dice_boxplot(output_dir / outputs.METRICS_CSV, output_dir / outputs.DICE_BOXPLOT_PNG)
    if overlays:
        for item, segmentation, case_convention in progress(scored, desc="drawing overlays", unit="case"):
            case_id = case_id_from_path(item["image"][0])
            png = output_dir / outputs.OVERLAYS_DIR / f"{case_id}{outputs.OVERLAY_SUFFIX}"
            overlay_files(
                item["image"],
                segmentation,
                png,
                label_file=item[REFERENCE_KEY],
                convention=case_convention,
                modality_names=[m.upper() for m in modalities] if modalities is not None else None,
                channels=item.get(CHANNELS_KEY),
            )
    return rows
