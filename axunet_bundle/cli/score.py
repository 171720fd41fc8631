# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``axunet score``: the evaluation's report for label maps that already exist, from any tool, matched to their
references by case id (the folder matching only the command line needs; the scoring is the runtime's
:mod:`axunet_bundle.evaluation`)."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .. import outputs
from ..data.cases import LABEL_SUFFIX, DatasetPathError, case_id_from_path, discover, parse_file_name
from ..data.datalist import CaseSelection
from ..data.formats import image_stem
from ..data.labels import AUTO, validate_convention
from ..data.pipeline import CONVENTION_KEY
from ..errors import CaseError, DatasetError, LeftOutCasesError
from ..evaluation.challenge import resolve_challenge
from ..evaluation.report import CASE_ID, REFERENCE_KEY, check_report_absent, report_columns, score_case, write_report
from ..progress import progress

__all__ = ["label_map_files", "score", "score_folders"]

logger = logging.getLogger(__name__)


def score(
    prediction_dir: str,
    reference_dir: str,
    output_dir: str | None = None,
    label_convention: str = "auto",
    prediction_convention: str | None = None,
    challenge: str = "auto",
    overwrite: bool = False,
) -> None:
    """Score the segmentations in PREDICTION_DIR against the references in REFERENCE_DIR, matched by case id (as
    nnU-Net's evaluate_folder): the report `evaluate` writes (metrics.csv: legacy Dice and HD95 and the BraTS 2023+
    challenge metrics of brats-evaluation per case and region; summary.json; dice_boxplot.png), in OUTPUT_DIR
    (default PREDICTION_DIR). A reference without a prediction is scored as an empty segmentation.

    Args:
        prediction_dir: label maps named <case_id>.nii.gz or <case_id>_seg.nii.gz, at any depth.
        reference_dir: a dataset folder (BraTS case folders, a Decathlon task) or a folder of label maps.
        output_dir: where the report goes.
        label_convention: the references' labels: auto (a dataset's own; a label map holding 3 is BraTS 2023+,
            else BraTS 2021), brats2021, brats2023, brats2024 or msd.
        prediction_convention: the predictions' labels, when not the references'.
        challenge: the brats-evaluation config: auto (gli when installed), gli, ped, mets, MenPre, GoAT or none.
        overwrite: replace an earlier report in OUTPUT_DIR.

    Example:
        axunet score segs/ /data/BraTS2021 --output_dir scores
    """
    from ..visualize import report_boxplot

    out = Path(output_dir if output_dir is not None else prediction_dir)
    try:
        rows = score_folders(
            prediction_dir,
            reference_dir,
            out,
            convention=label_convention,
            prediction_convention=prediction_convention,
            challenge=challenge,
            overwrite=overwrite,
        )
    except LeftOutCasesError:  # the report of the scored cases was written: draw it, then name the others
        report_boxplot(out)
        raise
    report_boxplot(out)
    print(
        f"scored {len(rows)} cases: {out / outputs.METRICS_CSV}; summary: {out / outputs.SUMMARY_JSON}; "
        f"box plot: {out / outputs.DICE_BOXPLOT_PNG}"
    )


def _label_map_id(path: Path) -> str | None:
    """``BraTS2021_00000_seg.nii.gz``, ``BraTS-GLI-00000-000-seg.nii.gz``, ``BRATS_001.nii.gz`` -> the case id;
    ``None`` for what is no label map: not NIfTI, hidden, or named as a BraTS image (``..._t1ce.nii.gz``)."""
    parsed = parse_file_name(path.name)
    if image_stem(path.name) is None or path.name.startswith(".") or (parsed is not None and parsed[1] != LABEL_SUFFIX):
        return None
    return case_id_from_path(path)


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
    (:func:`label_map_files`), and write the report (as
    :func:`~axunet_bundle.evaluation.report.evaluation_report`) to
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
            scores, _ = score_case(item, case_id, segmentation, convention, challenge, prediction_convention)
            rows.append({CASE_ID: case_id, **scores})
            cases.items.append(item)
        except CaseError as err:
            logger.warning("leaving out case %s", err)
            cases.left_out.append(err)
    write_report(rows, output_dir, report_columns(challenge is not None))
    logger.info("scores of %d cases written to %s", len(rows), output_dir / outputs.METRICS_CSV)
    cases.report()
    return rows
