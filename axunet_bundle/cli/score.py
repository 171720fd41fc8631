# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``axunet score``: the evaluation's report for label maps that already exist, from any tool."""

from __future__ import annotations

from pathlib import Path

__all__ = ["score"]


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
    """
    from .. import outputs
    from ..evaluation import score_folders
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
    finally:  # the scored cases' box plot, also when some cases could not be scored
        report_boxplot(out)
    print(
        f"scored {len(rows)} cases: {out / outputs.METRICS_CSV}; summary: {out / outputs.SUMMARY_JSON}; "
        f"box plot: {out / outputs.DICE_BOXPLOT_PNG}"
    )
