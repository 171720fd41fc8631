# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
Pictures for users, drawn by the command line (the model-zoo bundle carries none of it): segmentation overlays
(:mod:`.overlays`), the per-case Dice box plot, the comparison's Dice box plots and the training curves (:mod:`.plots`),
attention maps (:mod:`.attention`), the evaluation's pictures (:mod:`.evaluation`) and the training's as ignite
handlers (:mod:`.handlers`, added by ``axunet train``); :mod:`.figures` holds what they share.

Every function writes one PNG (atomically) and returns its path. Colours are fixed: WT (whole tumour) yellow, TC
(tumour core) red, ET (enhancing tumour) sky blue (:data:`REGION_COLOURS`). In overlays the ground truth is drawn
with solid lines and the prediction with dashed lines.
"""

from .attention import (
    ATTENTION_COLUMN_INCHES,
    ATTENTION_ROW_INCHES,
    ATTENTION_TITLE_INCHES,
    AttentionActivity,
    attention_activity,
    attention_maps,
)
from .evaluation import BOXPLOT_FAMILIES, evaluation_pictures, report_boxplot
from .figures import FIGURE_DPI, REGION_COLOURS
from .handlers import TrainingCurvesWriter, ValidationOverlayHandler
from .overlays import (
    LEGEND_INCHES,
    MIN_OVERLAY_WIDTH_INCHES,
    PANEL_INCHES,
    PANEL_MARGIN_INCHES,
    PANEL_TITLE_INCHES,
    RENDER_PIXELS_PER_VOXEL,
    TENSORBOARD_PIXELS_PER_VOXEL,
    TITLE_INCHES,
    VIEWS,
    axial_overlay,
    most_tumour_slices,
    overlay_case,
    overlay_files,
    render_panel,
)
from .plots import (
    BOXPLOT_INCHES,
    COMPARISON_BOX_INCHES,
    COMPARISON_PANEL_INCHES,
    CURVES_PANEL_INCHES,
    CURVES_WIDTH_INCHES,
    REGION_NAMES,
    comparison_boxplot,
    dice_boxplot,
    read_dice_table,
    read_scalars,
    training_curves,
)

__all__ = [
    "ATTENTION_COLUMN_INCHES",
    "ATTENTION_ROW_INCHES",
    "ATTENTION_TITLE_INCHES",
    "AttentionActivity",
    "BOXPLOT_FAMILIES",
    "BOXPLOT_INCHES",
    "COMPARISON_BOX_INCHES",
    "COMPARISON_PANEL_INCHES",
    "CURVES_PANEL_INCHES",
    "CURVES_WIDTH_INCHES",
    "FIGURE_DPI",
    "LEGEND_INCHES",
    "MIN_OVERLAY_WIDTH_INCHES",
    "PANEL_INCHES",
    "PANEL_MARGIN_INCHES",
    "PANEL_TITLE_INCHES",
    "REGION_COLOURS",
    "REGION_NAMES",
    "RENDER_PIXELS_PER_VOXEL",
    "TENSORBOARD_PIXELS_PER_VOXEL",
    "TITLE_INCHES",
    "TrainingCurvesWriter",
    "VIEWS",
    "ValidationOverlayHandler",
    "attention_activity",
    "attention_maps",
    "axial_overlay",
    "comparison_boxplot",
    "dice_boxplot",
    "evaluation_pictures",
    "most_tumour_slices",
    "overlay_case",
    "overlay_files",
    "read_dice_table",
    "read_scalars",
    "render_panel",
    "report_boxplot",
    "training_curves",
]
