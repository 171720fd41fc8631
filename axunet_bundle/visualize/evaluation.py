# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The pictures of an evaluation, drawn by ``axunet evaluate`` and ``axunet score`` after the report is written: the
per-case Dice box plots and one overlay per scored case."""

from __future__ import annotations

import csv
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType

import nibabel as nib

from .. import outputs
from ..data.datalist import CaseSelection
from ..data.pipeline import CHANNELS_KEY, item_convention
from ..evaluation import CASE_ID, LEGACY_DICE, REFERENCE_KEY
from ..evaluation.challenge import GLOBAL_DSC, LESIONWISE_DSC
from ..progress import progress
from .overlays import overlay_files
from .plots import dice_boxplot

__all__ = ["BOXPLOT_FAMILIES", "evaluation_pictures", "report_boxplot"]

logger = logging.getLogger(__name__)

#: the Dice families of the box plot (column prefix -> panel title), those in the report drawn side by side
BOXPLOT_FAMILIES: Mapping[str, str] = MappingProxyType(
    {
        LEGACY_DICE: "legacy Dice (BraTS ≤ 2021)",
        GLOBAL_DSC: "global DSC (brats-evaluation)",
        LESIONWISE_DSC: "lesion-wise DSC, matched lesions",
    }
)


def _scored_cases(output_dir: Path) -> list[str]:
    report = output_dir / outputs.METRICS_CSV
    if not report.is_file():
        return []
    with open(report, newline="", encoding="utf-8") as f:
        return [row[CASE_ID] for row in csv.DictReader(f)]


def report_boxplot(output_dir: str | os.PathLike) -> Path | None:
    """Draw ``dice_boxplot.png`` from the report (``metrics.csv``) in ``output_dir``: one panel per Dice family it
    holds. Returns the PNG, or ``None`` when the report holds no case."""
    output_dir = Path(output_dir)
    if not _scored_cases(output_dir):
        return None
    return dice_boxplot(output_dir / outputs.METRICS_CSV, output_dir / outputs.DICE_BOXPLOT_PNG, BOXPLOT_FAMILIES)


def evaluation_pictures(
    cases: CaseSelection,
    output_dir: str | os.PathLike,
    convention: str,
    modalities: Sequence[str] | None = None,
    overlays: bool = True,
    output_ext: str = ".nii.gz",
) -> None:
    """The Dice box plots of the report in ``output_dir`` and, in ``output_dir/overlays/``, one overlay per scored case
    of ``cases`` (its modalities with the reference's contours solid and the segmentation's dashed).

    Args:
        cases: the evaluated cases (``configs/evaluate.json``'s ``cases``): ``image`` files, ``reference`` label map.
        output_dir: the evaluation's folder (segmentations and report).
        convention: the label convention setting (``"auto"``: each case's dataset's, resolved with its reference).
        modalities: the image channels' modalities, in order, for the panel titles.
        overlays: draw the overlays (the box plots are always drawn).
        output_ext: the segmentations' file-name ending.
    """
    output_dir = Path(output_dir)
    report_boxplot(output_dir)
    if not overlays:
        return
    scored = set(_scored_cases(output_dir))
    names = [m.upper() for m in modalities] if modalities is not None else None
    items = [item for item in cases.items if str(item[CASE_ID]) in scored]
    for item in progress(items, desc="drawing overlays", unit="case"):
        written_as = str(item[CASE_ID])  # the id names the written segmentation
        reference = nib.load(item[REFERENCE_KEY]).get_fdata(dtype="float32")  # its values tell 2023 from 2024 labels
        overlay_files(
            item["image"],
            outputs.segmentation_path(output_dir, written_as, output_ext),
            output_dir / outputs.OVERLAYS_DIR / f"{written_as}{outputs.OVERLAY_SUFFIX}",
            label_file=item[REFERENCE_KEY],
            convention=item_convention(item, convention, reference),
            modality_names=names,
            channels=item.get(CHANNELS_KEY),
        )
