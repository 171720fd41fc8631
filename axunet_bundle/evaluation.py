# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
BraTS evaluation of label maps, as the challenges score submissions: each case's segmentation file against its
reference file, per region (WT, TC, ET), in two families of columns:

- the legacy BraTS (<= 2021) global Dice and HD95 (``legacy_dice_<region>``, ``legacy_hd95_<region>``; HD95 in mm,
  :mod:`axunet_bundle.metrics`), with its rules for empty regions;
- what the BraTS 2023+ challenges report, from their own package ``brats-evaluation`` (lesion-wise Dice, HD95 and
  NSD, lesion counts and F1, global DSC, NSD and HD95 under the package's column names,
  :mod:`axunet_bundle.challenge_metrics`), when it is installed.

Then the report: ``metrics.csv`` (one row per case), ``summary.json`` (mean, median and standard deviation per
column), the Dice box plot and, from the evaluation workflow, one overlay per case.

The evaluation workflow (``configs/evaluate.json``) writes its segmentations with the inference chain and scores
them here; ``axunet score`` scores label maps any tool wrote (:func:`score_folders`). MONAI's ``MetricsSaver`` is not
used: it saves metrics an engine computed, one file per metric with rows keyed by image path and values rounded to 4
decimals, written in place; this report is one table of every metric per case, written atomically, from files.
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
from .challenge_metrics import challenge_columns, resolve_challenge, score_challenge
from .data.cases import LABEL_SUFFIX, CaseError, DatasetPathError, discover, nifti_stem, parse_file_name
from .data.datalist import CaseSelection
from .data.integrity import Problem, label_problems
from .data.labels import (
    AUTO,
    CONVENTION_KEY,
    REGIONS,
    convention_for_values,
    item_convention,
    labels_to_regions,
    validate_convention,
)
from .errors import AxunetError, DatasetError
from .metrics import compute_brats_dice, compute_brats_hd95
from .progress import progress
from .transforms import case_id_from_path

__all__ = [
    "LEGACY_DICE",
    "LEGACY_HD95",
    "ReportExistsError",
    "check_report_absent",
    "evaluation_report",
    "label_map_files",
    "read_label_map",
    "report_columns",
    "score_folders",
    "score_label_maps",
    "summarize",
    "write_report",
]

logger = logging.getLogger(__name__)

#: the legacy BraTS (<= 2021) metrics, each a column per region: ``legacy_dice_wt`` ... ``legacy_hd95_et``
LEGACY_DICE = "legacy_dice"
LEGACY_HD95 = "legacy_hd95"
LEGACY_METRICS = (LEGACY_DICE, LEGACY_HD95)
#: the key of an evaluation item holding the reference label map's path (the engine never loads it)
REFERENCE_KEY = "reference"
CASE_ID = "case_id"
#: label-map file names end so in BraTS (``..._seg.nii.gz``, ``...-seg.nii.gz``) and in the bundle's outputs
_SEG_ENDINGS = (f"_{outputs.SEGMENTATION_POSTFIX}", f"-{outputs.SEGMENTATION_POSTFIX}")


class ReportExistsError(AxunetError, FileExistsError):
    """An earlier evaluation's report is in the output folder and overwriting was not asked for."""


def report_columns(challenge: bool = True) -> list[str]:
    """The per-case columns after ``case_id``: ``legacy_dice_wt`` ... ``legacy_hd95_et``, then (``challenge``) the
    challenge metrics' (:func:`~axunet_bundle.challenge_metrics.challenge_columns`)."""
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


def _score_case(
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
    return scores, convention


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
    rows: Sequence[Mapping[str, Any]], output_dir: str | os.PathLike, columns: Sequence[str] | None = None
) -> Path:
    """Write ``metrics.csv`` (``case_id`` + ``columns``, default the legacy ones; one row per case) and
    ``summary.json`` into ``output_dir``, atomically; returns the CSV's path."""
    columns = list(columns) if columns is not None else report_columns(challenge=False)
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=[CASE_ID, *columns], extrasaction="ignore")
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
            (:func:`~axunet_bundle.challenge_metrics.resolve_challenge`).

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
        written_as = case_id_from_path(item["image"][0])  # the writer's name for it (case_name_formatter)
        case_id = str(item.get(CASE_ID) or written_as)
        segmentation = outputs.segmentation_path(output_dir, written_as)
        if not segmentation.is_file():
            continue
        try:
            scores, _ = _score_case(item, case_id, segmentation, convention, challenge)
            rows.append({CASE_ID: case_id, **scores})
        except CaseError as err:
            logger.warning("leaving out case %s", err)
            cases.left_out.append(Problem(err.case_id, err.file, err.reason))
    write_report(rows, output_dir, report_columns(challenge is not None))
    logger.info("scores of %d cases written to %s", len(rows), output_dir / outputs.METRICS_CSV)
    return rows


def _label_map_id(path: Path) -> str | None:
    """``BraTS2021_00000_seg.nii.gz``, ``BraTS-GLI-00000-000-seg.nii.gz``, ``BRATS_001.nii.gz`` -> the case id;
    ``None`` for what is no label map: not NIfTI, hidden, or named as a BraTS image (``..._t1ce.nii.gz``)."""
    stem = nifti_stem(path.name)
    parsed = parse_file_name(path.name)
    if stem is None or path.name.startswith(".") or (parsed is not None and parsed[1] != LABEL_SUFFIX):
        return None
    for ending in _SEG_ENDINGS:
        if stem.lower().endswith(ending) and len(stem) > len(ending):
            return stem[: -len(ending)]
    return stem


def label_map_files(folder: str | os.PathLike) -> dict[str, tuple[Path, str | None]]:
    """The label maps under ``folder`` by case id, each with its dataset's label convention when the names tell it.

    A dataset the bundle reads (BraTS case folders, a Decathlon task with its ``dataset.json``) gives its labelled
    cases' segmentations; any other folder gives every NIfTI file at any depth but BraTS-named images, its case id
    the file name without ``.nii[.gz]`` and a ``_seg`` / ``-seg`` ending (nnU-Net's ``labelsTr``, the bundle's
    ``<case_id>_seg.nii.gz``).

    Raises:
        DatasetPathError: when ``folder`` is not a directory.
        DatasetError: when it holds no label map, or two for one case id, or one case id in two folders.
        CaseError: for a case with two files of one kind.
    """
    root = Path(folder)
    try:
        cases = discover(root).cases
    except DatasetPathError:
        raise
    except DatasetError:
        cases = []  # not a dataset: a folder of label maps
    if any(case.images for case in cases):  # label maps alone (a folder of predictions) are read as files below
        found = {case.case_id: (case.label, case.convention) for case in cases if case.label is not None}
        if found:
            return found
    found = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        case_id = _label_map_id(path)
        if case_id is None:
            continue
        if case_id in found:
            raise DatasetError(f"two label maps for case {case_id} under {root}: {found[case_id][0]} and {path}")
        found[case_id] = (path, None)
    if not found:
        raise DatasetError(f"no label maps (.nii.gz, .nii) under {root}")
    return found


def score_folders(
    prediction_dir: str | os.PathLike,
    reference_dir: str | os.PathLike,
    output_dir: str | os.PathLike | None = None,
    convention: str = AUTO,
    prediction_convention: str | None = None,
    challenge: str | None = AUTO,
    overwrite: bool = False,
) -> list[dict[str, Any]]:
    """Score the label maps of ``prediction_dir`` against those of ``reference_dir``, matched by case id
    (:func:`label_map_files`), and write the report (as :func:`evaluation_report`) to
    ``output_dir`` (default ``prediction_dir``). A reference without a prediction is scored as an empty prediction,
    with a warning; a prediction without a reference is skipped, with a warning.

    Args:
        prediction_dir: the segmentations, from any tool.
        reference_dir: the references: a dataset folder or a folder of label maps.
        output_dir: where ``metrics.csv`` and ``summary.json`` go.
        convention: the references' label convention, or ``"auto"``: a dataset's own, else what the labels hold
            (3: BraTS 2023+, with 4 too: 2024 post-treatment; otherwise BraTS 2021). Decathlon labels need their
            task folder or ``"msd"``.
        prediction_convention: the predictions' convention, when it is not the references'.
        challenge: the ``brats-evaluation`` config, ``"auto"`` or ``"none"``.
        overwrite: replace an earlier report in ``output_dir``.

    Returns:
        the report's rows.

    Raises:
        DatasetError: for a folder without label maps, or no prediction matching a reference.
        ConfigurationError: for an unknown convention or challenge.
        ReportExistsError: when a report is in ``output_dir`` and not ``overwrite``.
        LeftOutCasesError: after the report, when some cases could not be scored (each logged with its reason).
    """
    convention = validate_convention(convention, allow_auto=True)
    if prediction_convention is not None:
        prediction_convention = validate_convention(prediction_convention)
    challenge = resolve_challenge(challenge)
    output_dir = Path(output_dir if output_dir is not None else prediction_dir)
    check_report_absent(output_dir, overwrite)
    predictions, references = label_map_files(prediction_dir), label_map_files(reference_dir)
    if not set(predictions) & set(references):
        raise DatasetError(
            f"no prediction in {prediction_dir} matches a reference in {reference_dir} by case id "
            f"(predictions e.g. {next(iter(predictions))}, references e.g. {next(iter(references))})"
        )
    for case_id in sorted(set(predictions) - set(references)):
        logger.warning("prediction %s has no reference: not scored", predictions[case_id][0])
    cases = CaseSelection()
    rows = []
    for case_id, (reference, dataset_convention) in progress(sorted(references.items()), desc="scoring", unit="case"):
        segmentation = predictions.get(case_id, (None,))[0]
        if segmentation is None:
            logger.warning("case %s has no prediction in %s: scored as an empty segmentation", case_id, prediction_dir)
        item = {CASE_ID: case_id, REFERENCE_KEY: reference, CONVENTION_KEY: dataset_convention}
        try:
            scores, _ = _score_case(item, case_id, segmentation, convention, challenge, prediction_convention)
            rows.append({CASE_ID: case_id, **scores})
            cases.items.append(item)
        except CaseError as err:
            logger.warning("leaving out case %s", err)
            cases.left_out.append(Problem(err.case_id, err.file, err.reason))
    write_report(rows, output_dir, report_columns(challenge is not None))
    logger.info("scores of %d cases written to %s", len(rows), output_dir / outputs.METRICS_CSV)
    cases.report()
    return rows
