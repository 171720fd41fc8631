# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The names of everything the bundle writes, in one place: the code uses these constants (the configs spell their
paths out, ``models/model.pt``, so that a reader sees where each file lands; the comparison's own files are named in
:mod:`axunet_bundle.comparison.variants`)."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = [
    "ATTENTION_SUFFIX",
    "CHECKPOINT_PREFIX",
    "CURVES_PNG",
    "DICE_BOXPLOT_PNG",
    "EVAL_DIR",
    "METRICS_CSV",
    "MODELS_DIR",
    "MODEL_SETTINGS",
    "ONNX",
    "OVERLAYS_DIR",
    "OVERLAY_SUFFIX",
    "REPORT_SUFFIX",
    "RUNS_DIR",
    "SEGMENTATION_POSTFIX",
    "SEGMENTATION_EXTENSIONS",
    "SUMMARY_JSON",
    "TORCHSCRIPT",
    "UNCERTAINTY_POSTFIX",
    "VALIDATION_IMAGE_TAG",
    "VOLUMES_CSV",
    "WEIGHTS",
    "segmentation_path",
]

#: folders under ``bundle_root``: weights and checkpoints, TensorBoard logs, the evaluation's report
MODELS_DIR = "models"
RUNS_DIR = "runs"
EVAL_DIR = "eval"
#: the best weights, a plain state dict: where the model zoo and MONAI Label look (``models/model.pt``)
WEIGHTS = "model.pt"
#: what inference needs to reproduce the training (slice size, modalities, network ...), beside the weights
MODEL_SETTINGS = "model_settings.json"
#: resumable training checkpoints are ``checkpoint_epoch=<N>.pt``
CHECKPOINT_PREFIX = "checkpoint"
#: exports of the weights (``axunet export``)
TORCHSCRIPT = "model.ts"
ONNX = "model.onnx"
#: a case's label map is ``<case_id>_seg.nii.gz``, named like a BraTS reference segmentation
SEGMENTATION_POSTFIX = "seg"
#: the formats a label map can be written in (``output_ext``): NIfTI by default, NRRD (what 3D Slicer saves) or
#: MetaImage (single-file: an atomic rename moves all of it)
SEGMENTATION_EXTENSIONS = (".nii.gz", ".nii", ".nrrd", ".mha")
#: beside the label maps: each case's label and region volumes in mL (one row per case), and with flip TTA its
#: uncertainty map ``<case_id>_uncertainty.nii.gz``
VOLUMES_CSV = "volumes.csv"
UNCERTAINTY_POSTFIX = "uncertainty"
#: the evaluation report: per-case scores, their summary, the Dice box plot, one overlay per case
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
DICE_BOXPLOT_PNG = "dice_boxplot.png"
OVERLAYS_DIR = "overlays"
#: pictures of one case: ``<case_id>_overlay.png``, ``<case_id>_attention.png``
OVERLAY_SUFFIX = "_overlay.png"
ATTENTION_SUFFIX = "_attention.png"
#: a case's one-page report, ``<case_id>_report.png`` and ``.pdf`` (``axunet report``)
REPORT_SUFFIX = "_report"
#: the training's loss and Dice curves, drawn into its TensorBoard folder
CURVES_PNG = "training_curves.png"
#: TensorBoard tag of the validation overlay image
VALIDATION_IMAGE_TAG = "val_overlay"


def segmentation_path(output_dir: str | os.PathLike, case_id: str, output_ext: str = ".nii.gz") -> Path:
    """Where a case's label map is written: ``<output_dir>/<case_id>_seg<output_ext>`` (only the id's last path part
    is used, so no output leaves ``output_dir``)."""
    return Path(output_dir) / f"{Path(case_id).name}_{SEGMENTATION_POSTFIX}{output_ext}"
