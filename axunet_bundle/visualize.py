# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
Pictures for users: segmentation overlays, per-case Dice box plots, training curves and attention maps.

Every function writes one PNG (atomically: a temporary file in the same folder, then :func:`os.replace`) and returns
its path. Figures are drawn with matplotlib's Agg renderer on a private :class:`~matplotlib.figure.Figure`, so
nothing here touches pyplot's global state or the user's chosen backend, and it works without a display.

Colours are fixed: WT (whole tumour) yellow, TC (tumour core) red, ET (enhancing tumour) sky blue
(:data:`REGION_COLOURS`). In overlays the ground truth is drawn with solid lines and the prediction with dashed lines.
Slices are shown in the radiological convention by default: axial and coronal views have the patient's right on the
viewer's left, sagittal views have anterior on the left, superior and anterior are up.
"""

from __future__ import annotations

import csv
import math
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any

import nibabel as nib
import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from monai.config import NdarrayOrTensor
from monai.utils import convert_to_numpy
from torch import nn

from .atomic import atomic_path
from .data.cases import parse_file_name
from .data.labels import (
    DEFAULT_CONVENTION,
    LABEL_CONVENTIONS,
    REGIONS,
    invalid_label_values,
    label_values,
    labels_to_regions,
)
from .networks.attention import DualAttention
from .networks.axunet import ALL_LEVELS

__all__ = [
    "REGION_COLOURS",
    "REGION_NAMES",
    "VIEWS",
    "DICE_COLUMNS",
    "FIGURE_DPI",
    "PANEL_INCHES",
    "PANEL_TITLE_INCHES",
    "PANEL_MARGIN_INCHES",
    "TITLE_INCHES",
    "LEGEND_INCHES",
    "MIN_OVERLAY_WIDTH_INCHES",
    "BOXPLOT_INCHES",
    "CURVES_WIDTH_INCHES",
    "CURVES_PANEL_INCHES",
    "ATTENTION_COLUMN_INCHES",
    "ATTENTION_ROW_INCHES",
    "ATTENTION_TITLE_INCHES",
    "RENDER_PIXELS_PER_VOXEL",
    "TENSORBOARD_PIXELS_PER_VOXEL",
    "render_panel",
    "most_tumour_slices",
    "overlay_case",
    "axial_overlay",
    "overlay_files",
    "read_dice_table",
    "dice_boxplot",
    "read_scalars",
    "training_curves",
    "AttentionActivity",
    "attention_activity",
    "attention_maps",
    "evaluation_pictures",
    "DICE_BOXPLOT_PNG",
    "OVERLAYS_DIR",
]

ScalarLog = Mapping[str, Sequence[tuple[float, float]]]
PathLike = str | os.PathLike

# ---------------------------------------------------------------------------------------------------------------------
# Look and layout. Sizes are in inches at FIGURE_DPI and chosen to be exact binary fractions, so that every figure has
# exactly ``inches * FIGURE_DPI`` pixels (matplotlib truncates fractional pixel sizes).

REGION_COLOURS: Mapping[str, str] = MappingProxyType({"WT": "#ffff00", "TC": "#ff0000", "ET": "#00bfff"})
"""Contour and marker colour of each region: yellow, red, sky blue."""
REGION_NAMES: Mapping[str, str] = MappingProxyType(
    {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing tumour"}
)
VIEWS: tuple[tuple[str, int], ...] = (("axial", 2), ("coronal", 1), ("sagittal", 0))
"""Overlay rows: view name and the volume axis the view slices through (volumes are ``(x, y, z)``, RAS)."""
_AXIS_NAMES = ("x", "y", "z")
DICE_COLUMNS: Mapping[str, str] = MappingProxyType({"WT": "dice_wt", "TC": "dice_tc", "ET": "dice_et"})
"""Region -> column of a per-case Dice table."""

FIGURE_DPI = 100
PANEL_INCHES = 3.0  # side of the square box an overlay panel's image is fitted into
PANEL_TITLE_INCHES = 0.25  # band above each overlay panel for its title
PANEL_MARGIN_INCHES = 0.0625  # gap around each overlay panel's box
TITLE_INCHES = 0.5  # band at the top of an overlay for the figure title
LEGEND_INCHES = 0.5  # band at the bottom of an overlay for the legend
MIN_OVERLAY_WIDTH_INCHES = 4.0  # room for the legend when there are few modalities; panels are centred
BOXPLOT_INCHES = (6.0, 4.5)
CURVES_WIDTH_INCHES = 8.0
CURVES_PANEL_INCHES = 3.0  # height of each training-curves panel
ATTENTION_COLUMN_INCHES = 3.5  # image plus colour bar
ATTENTION_ROW_INCHES = 3.0
ATTENTION_TITLE_INCHES = 0.5
RENDER_PIXELS_PER_VOXEL = 4  # default magnification of render_panel
#: what an evaluation draws in its output folder: the Dice box plot and a folder of per-case overlays
DICE_BOXPLOT_PNG = "dice_boxplot.png"
OVERLAYS_DIR = "overlays"
TENSORBOARD_PIXELS_PER_VOXEL = 2  # axial_overlay: 224 x 224 slices give 448-pixel panels, small event files
_PIXEL_GUARD = 0.5  # added to pixel sizes converted to inches, so that float round-off cannot truncate a pixel

_BACKGROUND = "black"  # image figures
_TEXT_COLOUR = "white"
_GREY_MAP = "gray"
_ACTIVITY_MAP = "inferno"
_GROUND_TRUTH_STYLE = "solid"
_PREDICTION_STYLE = "dashed"
# points; outer regions get wider lines drawn first, so that where regions share an edge (e.g. TC = ET, no
# necrosis) each still shows as a stripe around the inner region's line
_CONTOUR_WIDTHS: Mapping[str, float] = MappingProxyType({"WT": 2.6, "TC": 1.8, "ET": 1.0})
_LEGEND_HANDLE_LENGTH = 3.0  # long enough to show dashes
_LEGEND_COLUMNS = 3  # one per region: regions on the first legend row, line styles on the second
_TITLE_FONT_SIZE = 11
_PANEL_FONT_SIZE = 8
_LEGEND_FONT_SIZE = 8
_PANEL_TEXT: Mapping[str, Any] = MappingProxyType({"color": _TEXT_COLOUR, "fontsize": _PANEL_FONT_SIZE})
_ORIENTATION_INSET = 0.02  # axes fraction of the orientation letters from the panel edge

_INTENSITY_PERCENTILES = (0.5, 99.5)  # grey-level window of each modality (over its non-zero voxels)
_MASK_THRESHOLD = 0.5  # region masks or probabilities >= this are inside
_CONTOUR_LEVEL = 0.5  # iso-line of a 0/1 mask: lies on the pixel edges

_JITTER_HALF_WIDTH = 0.15  # box-plot points are spread over +-this around their box
_JITTER_SEED = 0  # the same table always gives the same picture
_BOX_WIDTH = 0.5
_POINT_SIZE = 16
_MEAN_MARKER = "D"
_MEAN_MARKER_SIZE = 40
_DICE_LIMITS = (-0.02, 1.05)
_POINT_EDGE = "0.2"
_POINT_EDGE_WIDTH = 0.5
_BOX_ALPHA = 0.35
_ANNOTATION_FONT_SIZE = 9

_SMOOTHING_WINDOW = 20  # moving average over this many logged losses, once there are at least twice as many
_RAW_ALPHA = 0.3
_VALIDATION_PREFIX = "val"
_LOSS_WORD = "loss"
_EVENTS_MARKER = "tfevents"

_ATTENTION_COLUMNS = 3  # input, PAM, CAM
_UNIFORM_RELATIVE_RANGE = 1e-5  # well above float32 round-off (~1e-7), well below real structure
_TINY = 1e-30
_COLORBAR_FRACTION = 0.046  # makes a colour bar as tall as a square image next to it
_COLORBAR_PAD = 0.02


# ---------------------------------------------------------------------------------------------------------------------
# Helpers


def _save_png(fig: Figure, output_png: PathLike) -> Path:
    """Write `fig` as a PNG at `output_png` atomically."""
    path = Path(output_png)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI, facecolor=fig.get_facecolor())
    return path


def _new_figure(width: float, height: float, facecolor: str = "white", layout: str | None = None) -> Figure:
    """A figure of `width` x `height` inches drawn by Agg, independent of pyplot."""
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI, facecolor=facecolor, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def _to_numpy(data: NdarrayOrTensor, what: str) -> np.ndarray:
    try:
        return np.asarray(convert_to_numpy(data))
    except Exception as exc:  # e.g. a ragged list
        raise ValueError(f"{what} must be a numpy array or torch tensor: {exc}") from exc


def _display(plane: np.ndarray, flip: bool) -> np.ndarray:
    """
    A plane cut from a RAS volume, ``(a, b)`` with `a` and `b` in volume axis order, as an image: `b` (anterior or
    superior) points up and `a` (right or anterior) to the viewer's right, or to the viewer's left when `flip`.
    """
    out = np.rot90(plane)
    return np.fliplr(out) if flip else out


def _window(volume: np.ndarray) -> tuple[float, float]:
    """Grey-level window: percentiles of the non-zero voxels (the brain in skull-stripped data)."""
    values = volume[np.isfinite(volume)]
    nonzero = values[values != 0]
    values = nonzero if nonzero.size else values
    if not values.size:
        return 0.0, 1.0
    low, high = (float(v) for v in np.percentile(values, _INTENSITY_PERCENTILES))
    return (low, high) if high > low else (low, low + 1.0)


def _contour(ax: Axes, mask: np.ndarray, region: str, style: str) -> None:
    """Outline a 2D 0/1 mask along its pixel edges; a zero border keeps masks that touch the image edge closed."""
    rows, cols = mask.shape
    padded = np.pad(mask.astype(np.float32), 1)
    ax.contour(
        np.arange(-1, cols + 1),
        np.arange(-1, rows + 1),
        padded,
        levels=[_CONTOUR_LEVEL],
        colors=[REGION_COLOURS[region]],
        linewidths=_CONTOUR_WIDTHS[region],
        linestyles=style,
    )


def _draw_panel(
    ax: Axes,
    plane: np.ndarray,
    ground_truth: np.ndarray | None,
    prediction: np.ndarray | None,
    window: tuple[float, float],
    aspect: float | str,
) -> None:
    """Greyscale `plane` with region contours: ground truth solid, prediction dashed (masks ``(3, rows, cols)``)."""
    rows, cols = plane.shape
    ax.imshow(plane, cmap=_GREY_MAP, vmin=window[0], vmax=window[1], aspect=aspect)
    for masks, style in ((ground_truth, _GROUND_TRUTH_STYLE), (prediction, _PREDICTION_STYLE)):
        if masks is None:
            continue
        for region, mask in zip(REGIONS, masks):
            if mask.any():
                _contour(ax, mask, region, style)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_axis_off()


def _check_masks2d(masks: NdarrayOrTensor | None, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    if masks is None:
        return None
    data = _to_numpy(masks, what)
    if data.shape != (len(REGIONS), *shape):
        raise ValueError(f"{what} must be ({len(REGIONS)}, {shape[0]}, {shape[1]}) WT/TC/ET masks, got {data.shape}")
    return data >= _MASK_THRESHOLD


def render_panel(
    slice2d: NdarrayOrTensor,
    ground_truth: NdarrayOrTensor | None = None,
    prediction: NdarrayOrTensor | None = None,
    pixels_per_voxel: int = RENDER_PIXELS_PER_VOXEL,
    window: tuple[float, float] | None = None,
) -> np.ndarray:
    """
    Render one overlay panel, exactly as :func:`overlay_case` draws it, into an RGB array.

    The slice is drawn as given (row 0 at the top, no rotation) and fills the whole array: voxel ``(r, c)`` covers
    pixels ``r * pixels_per_voxel ... (r + 1) * pixels_per_voxel - 1`` (and likewise for columns), and a region's
    contour runs along the outer edges of its voxels.

    Args:
        slice2d: ``(rows, cols)`` image.
        ground_truth: ``(3, rows, cols)`` WT/TC/ET masks (or probabilities, thresholded at 0.5), drawn solid.
        prediction: like `ground_truth`, drawn dashed.
        pixels_per_voxel: magnification.
        window: grey-level ``(min, max)``; by default percentiles of the slice's non-zero pixels.

    Returns:
        ``(rows * pixels_per_voxel, cols * pixels_per_voxel, 3)`` uint8 RGB image.

    Raises:
        ValueError: for a slice that is not 2D, masks of another shape, or a magnification below 1.
    """
    plane = _to_numpy(slice2d, "slice2d").astype(np.float32)
    if plane.ndim != 2:
        raise ValueError(f"slice2d must be 2D (rows, cols), got shape {plane.shape}")
    if int(pixels_per_voxel) != pixels_per_voxel or pixels_per_voxel < 1:
        raise ValueError(f"pixels_per_voxel must be a positive integer, got {pixels_per_voxel}")
    gt = _check_masks2d(ground_truth, plane.shape, "ground_truth")
    pred = _check_masks2d(prediction, plane.shape, "prediction")
    height, width = (n * int(pixels_per_voxel) for n in plane.shape)
    fig = _new_figure((width + _PIXEL_GUARD) / FIGURE_DPI, (height + _PIXEL_GUARD) / FIGURE_DPI, _BACKGROUND)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    _draw_panel(ax, plane, gt, pred, _window(plane) if window is None else window, aspect="auto")
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return rgba[:height, :width, :3].copy()


# ---------------------------------------------------------------------------------------------------------------------
# Overlays


def most_tumour_slices(mask: NdarrayOrTensor) -> tuple[int, int, int] | None:
    """
    For each axis of a 3D mask, the slice through it with the largest tumour cross-section.

    Among equally large slices the one nearest the tumour's centroid is taken.

    Args:
        mask: ``(x, y, z)`` mask; non-zero is tumour.

    Returns:
        ``(x, y, z)`` slice indices: the sagittal, coronal and axial slices to show; ``None`` for an empty mask.

    Raises:
        ValueError: for a mask that is not 3D.
    """
    data = _to_numpy(mask, "mask") != 0
    if data.ndim != 3:
        raise ValueError(f"mask must be 3D (x, y, z), got shape {data.shape}")
    if not data.any():
        return None
    centroid = np.argwhere(data).mean(axis=0)
    picked = []
    for axis in range(data.ndim):
        area = data.sum(axis=tuple(a for a in range(data.ndim) if a != axis))
        candidates = np.flatnonzero(area == area.max())
        picked.append(int(candidates[np.argmin(np.abs(candidates - centroid[axis]))]))
    return picked[0], picked[1], picked[2]


def _regions_3d(data: NdarrayOrTensor | None, shape: tuple[int, ...], convention: str, what: str) -> np.ndarray | None:
    """``(3, x, y, z)`` boolean WT/TC/ET masks from a label map ``(x, y, z)``/``(1, x, y, z)`` or region masks."""
    if data is None:
        return None
    arr = _to_numpy(data, what)
    if arr.shape == shape:
        arr = arr[None]
    if arr.shape == (1, *shape):
        bad = invalid_label_values(arr, convention)
        if bad:
            fits = [c for c in LABEL_CONVENTIONS if c != convention and not invalid_label_values(arr, c)]
            hint = f"; it fits convention={fits[0]!r}" if fits else ""
            raise ValueError(
                f"{what} holds values {bad} that are not labels of the {convention!r} convention "
                f"{label_values(convention)}{hint}"
            )
        return labels_to_regions(arr, convention) >= _MASK_THRESHOLD
    if arr.shape == (len(REGIONS), *shape):
        return arr >= _MASK_THRESHOLD
    raise ValueError(
        f"{what} must be a label map {shape} or (1, *{shape}), or ({len(REGIONS)}, *{shape}) WT/TC/ET masks, "
        f"got shape {arr.shape}"
    )


def _tumour_position(gt: np.ndarray | None, pr: np.ndarray | None, shape: tuple[int, ...]) -> tuple[int, ...]:
    """Slices through the largest ground-truth WT cross-section, else the predicted WT's, else the volume centre."""
    reference = next((m[0] for m in (gt, pr) if m is not None and m[0].any()), None)
    position = most_tumour_slices(reference) if reference is not None else None
    return tuple(n // 2 for n in shape) if position is None else position


def axial_overlay(
    image: NdarrayOrTensor,
    label: NdarrayOrTensor | None = None,
    pred: NdarrayOrTensor | None = None,
    pixels_per_voxel: int = TENSORBOARD_PIXELS_PER_VOXEL,
    convention: str = DEFAULT_CONVENTION,
    radiological: bool = True,
) -> tuple[np.ndarray, int]:
    """
    The axial panels of :func:`overlay_case` as one RGB array, without titles or legend: each modality side by side
    on the axial slice with the most tumour (ground truth first, else prediction), ground truth solid, prediction
    dashed. Cheap enough to log at every validation (e.g. to TensorBoard, see
    :class:`axunet_bundle.handlers.ValidationOverlayHandler`).

    Args:
        image: ``(C, x, y, z)`` volumes in RAS orientation.
        label: ground truth, in the forms :func:`overlay_case` takes (label map or WT/TC/ET masks).
        pred: prediction, likewise.
        pixels_per_voxel: magnification of each panel.
        convention: label convention of label maps.
        radiological: show the patient's right on the viewer's left.

    Returns:
        ``(y * pixels_per_voxel, C * x * pixels_per_voxel, 3)`` uint8 RGB image and the axial slice index ``z``.

    Raises:
        ValueError: for an image that is not 4D, or masks of another shape.
    """
    volumes = _to_numpy(image, "image").astype(np.float32, copy=False)
    if volumes.ndim != 4:
        raise ValueError(f"image must be 4D (channels, x, y, z), got shape {volumes.shape}")
    shape = volumes.shape[1:]
    gt = _regions_3d(label, shape, convention, "label")
    pr = _regions_3d(pred, shape, convention, "pred")
    z = int(_tumour_position(gt, pr, shape)[2])
    gt_plane = None if gt is None else np.stack([_display(m[:, :, z], radiological) for m in gt])
    pr_plane = None if pr is None else np.stack([_display(m[:, :, z], radiological) for m in pr])
    panels = [
        render_panel(_display(v[:, :, z], radiological), gt_plane, pr_plane, pixels_per_voxel, window=_window(v))
        for v in volumes
    ]
    return np.concatenate(panels, axis=1), z


def _orientation_letters(view: str, radiological: bool) -> tuple[str, str]:
    if view == "sagittal":
        return "A", "P"
    return ("R", "L") if radiological else ("L", "R")


def overlay_case(
    image: NdarrayOrTensor,
    output_png: PathLike,
    modality_names: Sequence[str] | None = None,
    pred: NdarrayOrTensor | None = None,
    label: NdarrayOrTensor | None = None,
    convention: str = DEFAULT_CONVENTION,
    spacing: Sequence[float] | None = None,
    title: str | None = None,
    radiological: bool = True,
) -> Path:
    """
    Draw a case's modalities with the tumour regions outlined, in three views, into one PNG.

    Rows are the views of :data:`VIEWS` (axial, coronal, sagittal), columns the modalities. The slices are those
    through the largest tumour cross-section (see :func:`most_tumour_slices`) of the ground-truth whole tumour, or of
    the predicted one when there is no ground truth or it is empty, else the volume's centre. Each panel shows the
    modality in grey (window: 0.5-99.5 percentiles of its non-zero voxels) with WT/TC/ET outlines in
    :data:`REGION_COLOURS`: ground truth solid, prediction dashed; a legend is at the bottom.

    The figure is ``max(n_modalities * PANEL_INCHES, MIN_OVERLAY_WIDTH_INCHES)`` wide and
    ``TITLE_INCHES + 3 * (PANEL_INCHES + PANEL_TITLE_INCHES) + LEGEND_INCHES`` high, at :data:`FIGURE_DPI`.

    Args:
        image: ``(C, x, y, z)`` volumes in RAS orientation (x to the patient's right, y anterior, z superior), e.g.
            after MONAI ``Orientation("RAS")`` or ``nibabel.as_closest_canonical``.
        output_png: where to write the PNG (parent folders are created).
        modality_names: a name per channel, e.g. ``("T1CE", "T2", "FLAIR")``; default ``channel 0`` ....
        pred: prediction: a label map ``(x, y, z)`` or ``(1, x, y, z)`` in `convention`, or ``(3, x, y, z)`` WT/TC/ET
            masks or probabilities (thresholded at 0.5).
        label: ground truth, in the same forms as `pred`.
        convention: label convention of label maps, ``"brats2021"`` (ET = 4) or ``"brats2023"`` (ET = 3).
        spacing: voxel size ``(x, y, z)`` in mm, for the panels' aspect ratio; default isotropic.
        title: figure title, e.g. the case id.
        radiological: show the patient's right on the viewer's left (the radiological convention); ``False`` for
            the neurological convention.

    Returns:
        the path of the PNG.

    Raises:
        ValueError: for an image that is not 4D, names or spacing that do not match it, masks of another shape, or
            label values outside `convention`.
    """
    volumes = _to_numpy(image, "image").astype(np.float32, copy=False)
    if volumes.ndim != 4:
        raise ValueError(f"image must be 4D (channels, x, y, z), got shape {volumes.shape}")
    n_channels, shape = volumes.shape[0], volumes.shape[1:]
    names = [f"channel {i}" for i in range(n_channels)] if modality_names is None else list(modality_names)
    if len(names) != n_channels:
        raise ValueError(f"{len(names)} modality names for an image with {n_channels} channel(s)")
    voxel = (1.0, 1.0, 1.0) if spacing is None else tuple(float(s) for s in spacing)
    if len(voxel) != len(shape) or not all(s > 0 for s in voxel):
        raise ValueError(f"spacing must be 3 positive numbers (x, y, z), got {spacing}")
    gt = _regions_3d(label, shape, convention, "label")
    pr = _regions_3d(pred, shape, convention, "pred")

    position = _tumour_position(gt, pr, shape)

    n_rows, n_cols = len(VIEWS), n_channels
    width = max(n_cols * PANEL_INCHES, MIN_OVERLAY_WIDTH_INCHES)
    cell_height = PANEL_INCHES + PANEL_TITLE_INCHES
    height = TITLE_INCHES + n_rows * cell_height + LEGEND_INCHES
    x0 = (width - n_cols * PANEL_INCHES) / 2
    fig = _new_figure(width, height, _BACKGROUND)
    windows = [_window(v) for v in volumes]

    for row, (view, axis) in enumerate(VIEWS):
        index = position[axis]
        plane_axes = [a for a in range(len(shape)) if a != axis]
        flip = radiological or view == "sagittal"
        aspect = voxel[plane_axes[1]] / voxel[plane_axes[0]]  # displayed rows come from the plane's second axis
        gt_planes = None if gt is None else np.stack([_display(np.take(m, index, axis), flip) for m in gt])
        pr_planes = None if pr is None else np.stack([_display(np.take(m, index, axis), flip) for m in pr])
        left_letter, right_letter = _orientation_letters(view, radiological)
        letters = ((_ORIENTATION_INSET, left_letter, "left"), (1 - _ORIENTATION_INSET, right_letter, "right"))
        for col in range(n_cols):
            box = (
                (x0 + col * PANEL_INCHES + PANEL_MARGIN_INCHES) / width,
                (LEGEND_INCHES + (n_rows - 1 - row) * cell_height + PANEL_MARGIN_INCHES) / height,
                (PANEL_INCHES - 2 * PANEL_MARGIN_INCHES) / width,
                (PANEL_INCHES - 2 * PANEL_MARGIN_INCHES) / height,
            )
            ax = fig.add_axes(box)
            plane = _display(np.take(volumes[col], index, axis), flip)
            _draw_panel(ax, plane, gt_planes, pr_planes, windows[col], aspect)
            ax.set_title(f"{names[col]}  {view} {_AXIS_NAMES[axis]}={index}", **_PANEL_TEXT)
            for x, text, align in letters:
                ax.text(x, 0.5, text, transform=ax.transAxes, ha=align, va="center", **_PANEL_TEXT)

    if title:
        y = 1 - TITLE_INCHES / 2 / height
        fig.text(0.5, y, title, ha="center", va="center", color=_TEXT_COLOUR, fontsize=_TITLE_FONT_SIZE)
    _overlay_legend(fig, with_truth=gt is not None, with_prediction=pr is not None, y=LEGEND_INCHES / 2 / height)
    return _save_png(fig, output_png)


def _overlay_legend(fig: Figure, with_truth: bool, with_prediction: bool, y: float) -> None:
    """Regions on the first row, line styles on the second (legend entries fill columns first)."""
    if not (with_truth or with_prediction):
        return
    styles = [(with_truth, _GROUND_TRUTH_STYLE, "ground truth"), (with_prediction, _PREDICTION_STYLE, "prediction")]
    styles = [Line2D([], [], color=_TEXT_COLOUR, linestyle=s, label=name) for present, s, name in styles if present]
    handles = []
    for i, region in enumerate(REGIONS):
        handles.append(Line2D([], [], color=REGION_COLOURS[region], linewidth=_CONTOUR_WIDTHS[region], label=region))
        if i < len(styles):
            handles.append(styles[i])
    fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=(0.5, y),
        ncols=_LEGEND_COLUMNS,
        frameon=False,
        labelcolor=_TEXT_COLOUR,
        fontsize=_LEGEND_FONT_SIZE,
        handlelength=_LEGEND_HANDLE_LENGTH,
    )


def _load_canonical(path: PathLike, what: str) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Voxels (3D), affine and voxel size of a NIfTI file reoriented to RAS (``nibabel.as_closest_canonical``)."""
    img = nib.as_closest_canonical(nib.load(os.fspath(path)))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise ValueError(f"{what} {os.fspath(path)} must hold a 3D volume, got shape {data.shape}")
    zooms = tuple(float(z) for z in nib.affines.voxel_sizes(img.affine)[:3])
    return data, img.affine, zooms  # type: ignore[return-value]


def _label_voxels(data: np.ndarray) -> np.ndarray:
    return np.rint(data).astype(np.int16) if np.issubdtype(data.dtype, np.floating) else data


def overlay_files(
    image_files: Sequence[PathLike],
    seg_file: PathLike | None,
    output_png: PathLike,
    label_file: PathLike | None = None,
    convention: str = DEFAULT_CONVENTION,
    modality_names: Sequence[str] | None = None,
    title: str | None = None,
    radiological: bool = True,
) -> Path:
    """
    :func:`overlay_case` for NIfTI files: one file per modality, a predicted label map and optionally the truth.

    All files are reoriented to RAS with ``nibabel.as_closest_canonical``; the voxel size of the first image sets the
    panels' aspect ratio.

    Args:
        image_files: one NIfTI volume per modality, e.g. the case's T1CE, T2 and FLAIR.
        seg_file: predicted label map (what the bundle's inference writes), or ``None`` to show only `label_file`.
        output_png: where to write the PNG.
        label_file: ground-truth label map, drawn solid.
        convention: label convention of both label maps, ``"brats2021"`` or ``"brats2023"``.
        modality_names: a name per image file; default from BraTS file names (e.g. ``..._t1ce.nii.gz`` -> ``T1CE``),
            else the file name.
        title: figure title; default the case id from the first image's BraTS file name, else its file name.
        radiological: see :func:`overlay_case`.

    Returns:
        the path of the PNG.

    Raises:
        ValueError: when the files' voxel grids differ in shape, a file is not a 3D volume, or as for
            :func:`overlay_case`.
    """
    files = [Path(f) for f in image_files]
    if not files:
        raise ValueError("at least one image file is needed")
    loaded = [(f, "image", _load_canonical(f, "image")) for f in files]
    for path, what in ((seg_file, "segmentation"), (label_file, "label")):
        if path is not None:
            loaded.append((Path(path), what, _load_canonical(path, what)))
    shapes = {data.shape for _, _, (data, _, _) in loaded}
    if len(shapes) > 1:
        listing = ", ".join(f"{f.name} {data.shape}" for f, _, (data, _, _) in loaded)
        raise ValueError(f"the files' voxel grids differ in shape (after reorientation to RAS): {listing}")
    reference_affine = loaded[0][2][1]
    misaligned = [f.name for f, _, (_, affine, _) in loaded[1:] if not np.allclose(affine, reference_affine, atol=1e-3)]
    if misaligned:
        warnings.warn(
            f"{', '.join(misaligned)}: affine differs from {files[0].name}'s; the overlay assumes the same voxel grid",
            stacklevel=2,
        )

    parsed = [parse_file_name(f) for f in files]
    if modality_names is None:
        modality_names = [p[1].upper() if p else _strip_nifti(f.name) for p, f in zip(parsed, files)]
    if title is None:
        title = parsed[0][0] if parsed[0] else _strip_nifti(files[0].name)
    image = np.stack([data.astype(np.float32, copy=False) for _, what, (data, _, _) in loaded if what == "image"])
    segmentations = {what: _label_voxels(data) for _, what, (data, _, _) in loaded if what != "image"}
    return overlay_case(
        image,
        output_png,
        modality_names=modality_names,
        pred=segmentations.get("segmentation"),
        label=segmentations.get("label"),
        convention=convention,
        spacing=loaded[0][2][2],
        title=title,
        radiological=radiological,
    )


def _strip_nifti(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)


# ---------------------------------------------------------------------------------------------------------------------
# Dice box plot


def read_dice_table(per_case: PathLike | Sequence[Mapping[str, Any]]) -> dict[str, np.ndarray]:
    """
    Per-case Dice per region from a CSV file or a list of row mappings.

    The table needs the columns of :data:`DICE_COLUMNS` (``dice_wt``, ``dice_tc``, ``dice_et``); other columns (e.g.
    a case id) are ignored. Empty cells and ``nan`` are missing values.

    Returns:
        region -> float array with one value per row (NaN where missing).

    Raises:
        ValueError: for no rows, missing columns, or values that are not numbers in [0, 1].
    """
    if isinstance(per_case, (str, os.PathLike)):
        with open(per_case, newline="", encoding="utf-8-sig") as f:  # utf-8-sig: spreadsheet BOMs
            rows = [{(k or "").strip(): v for k, v in row.items()} for row in csv.DictReader(f)]
        source = os.fspath(per_case)
    else:
        rows = [dict(row) for row in per_case]
        source = "per_case"
    if not rows:
        raise ValueError(f"{source}: no cases")
    missing = sorted({c for c in DICE_COLUMNS.values() if any(c not in row for row in rows)})
    if missing:
        raise ValueError(f"{source}: missing column(s) {', '.join(missing)}; found {', '.join(map(str, rows[0]))}")
    table = {}
    for region, column in DICE_COLUMNS.items():
        values = []
        for i, row in enumerate(rows):
            cell = row[column]
            try:
                value = math.nan if cell is None or (isinstance(cell, str) and not cell.strip()) else float(cell)
            except (TypeError, ValueError):
                raise ValueError(f"{source}: row {i + 1}: {column} = {cell!r} is not a number") from None
            if not math.isnan(value) and not 0.0 <= value <= 1.0:
                raise ValueError(f"{source}: row {i + 1}: {column} = {value} is not a Dice score in [0, 1]")
            values.append(value)
        table[region] = np.asarray(values, dtype=np.float64)
    return table


def dice_boxplot(
    per_case: PathLike | Sequence[Mapping[str, Any]], output_png: PathLike, title: str | None = None
) -> Path:
    """
    Box plot of per-case Dice for WT, TC and ET, with every case as a (jittered) point and the mean marked.

    Boxes show the quartiles and median, whiskers 1.5 IQR; the mean is a diamond with its value written beside it.
    Missing values are left out of their region (its axis label then gives its count). The figure is
    :data:`BOXPLOT_INCHES` at :data:`FIGURE_DPI`.

    Args:
        per_case: a CSV file or a list of mappings (e.g. ``DataFrame.to_dict("records")``) with the columns
            ``dice_wt``, ``dice_tc`` and ``dice_et``, one row per case.
        output_png: where to write the PNG.
        title: figure title; default ``"Per-case Dice (n = <rows> cases)"``.

    Returns:
        the path of the PNG.

    Raises:
        ValueError: see :func:`read_dice_table`.
    """
    table = read_dice_table(per_case)
    n_cases = len(next(iter(table.values())))
    rng = np.random.default_rng(_JITTER_SEED)
    fig = _new_figure(*BOXPLOT_INCHES, layout="constrained")
    ax = fig.add_subplot()
    tick_labels = []
    for position, region in enumerate(REGIONS, start=1):
        values = table[region][~np.isnan(table[region])]
        count = f"\n(n = {values.size})" if values.size != n_cases else ""
        tick_labels.append(f"{region}\n{REGION_NAMES[region]}{count}")
        if not values.size:
            continue
        ax.boxplot(
            values,
            positions=[position],
            widths=_BOX_WIDTH,
            showfliers=False,
            patch_artist=True,
            boxprops={"facecolor": REGION_COLOURS[region], "alpha": _BOX_ALPHA},
            medianprops={"color": "black"},
        )
        jitter = rng.uniform(-_JITTER_HALF_WIDTH, _JITTER_HALF_WIDTH, values.size)
        ax.scatter(
            position + jitter,
            values,
            s=_POINT_SIZE,
            color=REGION_COLOURS[region],
            edgecolors=_POINT_EDGE,
            linewidths=_POINT_EDGE_WIDTH,
            zorder=3,
        )
        mean = float(values.mean())
        ax.scatter(
            [position], [mean], marker=_MEAN_MARKER, s=_MEAN_MARKER_SIZE, color="white", edgecolors="black", zorder=4
        )
        ax.annotate(
            f"{mean:.3f}",
            (position + _BOX_WIDTH / 2, mean),
            xytext=(4, 0),
            textcoords="offset points",
            va="center",
            fontsize=_ANNOTATION_FONT_SIZE,
        )
    ax.set_xticks(range(1, len(REGIONS) + 1), tick_labels)
    ax.set_xlim(0.5, len(REGIONS) + 0.5)
    ax.set_ylim(*_DICE_LIMITS)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(
        handles=[
            Line2D([], [], marker=_MEAN_MARKER, linestyle="", color="white", markeredgecolor="black", label="mean"),
            Line2D([], [], color="black", label="median"),
        ],
        loc="lower left",
        fontsize=_LEGEND_FONT_SIZE,
    )
    ax.set_title(title or f"Per-case Dice (n = {n_cases} cases)")
    return _save_png(fig, output_png)


# ---------------------------------------------------------------------------------------------------------------------
# Training curves


def read_scalars(log_dir: PathLike) -> dict[str, list[tuple[int, float]]]:
    """
    All scalars of the TensorBoard event files in `log_dir` and its sub-folders.

    Tags from a sub-folder are prefixed with its relative path (e.g. ``run2/train_loss``). A step logged more than
    once (e.g. after resuming) keeps its last value.

    Args:
        log_dir: a folder holding event files (``events.out.tfevents.*``), or one event file.

    Returns:
        tag -> ``[(step, value), ...]`` in step order.

    Raises:
        FileNotFoundError: when `log_dir` does not exist or holds no event files.
        ValueError: when the event files hold no scalars.
    """
    from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

    root = Path(log_dir)
    if not root.exists():
        raise FileNotFoundError(f"{root}: no such folder or event file")
    if root.is_file():
        sources = [(root, "")]
    else:
        folders = sorted({Path(d) for d, _, names in os.walk(root) if any(_EVENTS_MARKER in n for n in names)})
        sources = [(d, "" if d == root else d.relative_to(root).as_posix()) for d in folders]
    if not sources:
        raise FileNotFoundError(f"{root}: no TensorBoard event files (events.out.tfevents.*) in it or its sub-folders")
    scalars: dict[str, list[tuple[int, float]]] = {}
    for source, prefix in sources:
        accumulator = EventAccumulator(os.fspath(source), size_guidance={SCALARS: 0})  # 0: keep every event
        accumulator.Reload()
        for tag in accumulator.Tags()[SCALARS]:
            last: dict[int, tuple[float, float]] = {}
            for event in accumulator.Scalars(tag):
                if event.step not in last or event.wall_time >= last[event.step][0]:
                    last[event.step] = (event.wall_time, float(event.value))
            scalars[f"{prefix}/{tag}" if prefix else tag] = [(s, last[s][1]) for s in sorted(last)]
    if not scalars:
        raise ValueError(f"{root}: the event files hold no scalars")
    return scalars


def _is_validation(tag: str) -> bool:
    return any(part.lower().startswith(_VALIDATION_PREFIX) for part in tag.split("/"))


def _is_loss(tag: str) -> bool:
    return _LOSS_WORD in tag.lower()


def training_curves(log_dir: PathLike | ScalarLog, output_png: PathLike, title: str | None = None) -> Path:
    """
    Plot every scalar logged during training.

    Panels, from the top, each present only if it has tags:

    - training losses (tags containing ``loss`` that are not validation tags) against the logged step (the
      iteration for the bundle's ``train_loss``), raw values faint with a moving average once there are enough;
    - validation scalars (tags with a path part starting with ``val``, e.g. ``val_mean_dice``) against the epoch,
      the best value (highest, lowest for losses) starred and given in the legend;
    - any other scalar (e.g. ``train_mean_dice``, a learning rate) against its logged step.

    The figure is :data:`CURVES_WIDTH_INCHES` wide and :data:`CURVES_PANEL_INCHES` high per panel, at
    :data:`FIGURE_DPI`.

    Args:
        log_dir: a TensorBoard log folder or event file (see :func:`read_scalars`), or scalars as a mapping
            ``{tag: [(step, value), ...]}``.
        output_png: where to write the PNG.
        title: figure title.

    Returns:
        the path of the PNG.

    Raises:
        FileNotFoundError: when a log folder holds no event files.
        ValueError: when there are no scalars.
    """
    scalars = dict(log_dir) if isinstance(log_dir, Mapping) else read_scalars(log_dir)
    scalars = {tag: sorted((float(s), float(v)) for s, v in points) for tag, points in scalars.items() if points}
    if not scalars:
        raise ValueError("no scalars to plot")
    groups = {"loss": [], "validation": [], "other": []}
    for tag in sorted(scalars):
        key = "validation" if _is_validation(tag) else "loss" if _is_loss(tag) else "other"
        groups[key].append(tag)
    panels = [(key, tags) for key, tags in groups.items() if tags]
    fig = _new_figure(CURVES_WIDTH_INCHES, CURVES_PANEL_INCHES * len(panels), layout="constrained")
    axes = fig.subplots(len(panels), 1, squeeze=False)[:, 0]
    for ax, (key, tags) in zip(axes, panels):
        for tag in tags:
            steps, values = (np.asarray(a) for a in zip(*scalars[tag]))
            if key == "loss":
                _plot_loss(ax, tag, steps, values)
            elif key == "validation":
                best = int(np.argmin(values) if _is_loss(tag) else np.argmax(values))
                (line,) = ax.plot(
                    steps, values, marker="o", markersize=3, label=f"{tag} (best {values[best]:.4g} @ {steps[best]:g})"
                )
                ax.plot(steps[best], values[best], marker="*", markersize=12, color=line.get_color(), linestyle="")
            else:
                ax.plot(steps, values, marker="o" if len(steps) < _SMOOTHING_WINDOW else None, markersize=3, label=tag)
        xlabel, panel_title = {
            "loss": ("step (iteration)", "Training loss"),
            "validation": ("epoch", "Validation"),
            "other": ("step (as logged)", "Other scalars"),
        }[key]
        ax.set_xlabel(xlabel)
        ax.set_title(panel_title)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=_LEGEND_FONT_SIZE)
    if title:
        fig.suptitle(title)
    return _save_png(fig, output_png)


def _plot_loss(ax: Axes, tag: str, steps: np.ndarray, values: np.ndarray) -> None:
    if len(values) < 2 * _SMOOTHING_WINDOW:
        ax.plot(steps, values, label=tag)
        return
    (raw,) = ax.plot(steps, values, alpha=_RAW_ALPHA)
    smooth = np.convolve(values, np.full(_SMOOTHING_WINDOW, 1.0 / _SMOOTHING_WINDOW), mode="valid")
    ax.plot(steps[_SMOOTHING_WINDOW - 1 :], smooth, color=raw.get_color(), label=f"{tag} (mean of {_SMOOTHING_WINDOW})")


# ---------------------------------------------------------------------------------------------------------------------
# Attention maps


@dataclass(frozen=True)
class AttentionActivity:
    """
    Activity of one :class:`~axunet_bundle.networks.attention.DualAttention` block for one input slice.

    Args:
        name: the block's module name, e.g. ``attention.0``.
        level: a readable name: ``level 1`` ... ``level 4`` for AXUNet's skip levels (fine to coarse), else `name`.
        feature_shape: ``(C, h, w)`` of the block's input feature map.
        pam: per-pixel L2 norm over channels of ``pam.attend(x)``, resized to the slice size; ``None`` without PAM.
        cam: the same for ``cam.attend(x)``; ``None`` without CAM.
        pam_gamma: the PAM's learnt ``gamma`` (how much of its map the block adds), ``None`` without PAM.
        cam_gamma: the CAM's ``gamma``, ``None`` without CAM.
    """

    name: str
    level: str
    feature_shape: tuple[int, ...]
    pam: np.ndarray | None
    cam: np.ndarray | None
    pam_gamma: float | None
    cam_gamma: float | None


def _level_name(module_name: str) -> str:
    """``attention.0`` (AXUNet's ModuleList of skip levels, possibly wrapped) -> ``level 1``."""
    match = re.search(r"(?:^|\.)attention\.(\d+)$", module_name)
    if match and int(match[1]) < len(ALL_LEVELS):
        return f"level {ALL_LEVELS[int(match[1])]}"
    return module_name


def _activity(branch: nn.Module | None, features: torch.Tensor, size: tuple[int, int]) -> np.ndarray | None:
    """Per-pixel L2 norm over channels of the branch's attended map (before gamma), resized to `size`."""
    if branch is None:
        return None
    norm = torch.linalg.vector_norm(branch.attend(features).float(), dim=1, keepdim=True)  # (B, 1, h, w)
    return F.interpolate(norm, size=size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()


def _check_slice(image_slice: NdarrayOrTensor) -> torch.Tensor:
    data = torch.as_tensor(_to_numpy(image_slice, "image_slice"), dtype=torch.float32)
    if data.ndim != 3:
        raise ValueError(f"image_slice must be 3D (channels, x, y), got shape {tuple(data.shape)}")
    return data


def _run_attention(network: nn.Module, data: torch.Tensor) -> tuple[list[AttentionActivity], torch.Tensor]:
    """Run one ``(C, H, W)`` slice with hooks on the DualAttention blocks: their activities and the logits."""
    blocks = [(name, m) for name, m in network.named_modules() if isinstance(m, DualAttention)]
    if not blocks:
        raise ValueError("the network has no DualAttention blocks (e.g. an AXUNet built with attention_levels=())")
    parameter = next(network.parameters(), None)
    device = parameter.device if parameter is not None else torch.device("cpu")
    features: dict[str, torch.Tensor] = {}

    def capture(name: str):
        def hook(module: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> None:
            features[name] = inputs[0].detach()

        return hook

    handles = [m.register_forward_hook(capture(name)) for name, m in blocks]
    was_training = network.training
    size = (int(data.shape[1]), int(data.shape[2]))
    try:
        network.eval()
        with torch.no_grad():
            logits = network(data[None].to(device))
            activities = [
                AttentionActivity(
                    name=name,
                    level=_level_name(name),
                    feature_shape=tuple(features[name].shape[1:]),
                    pam=_activity(block.pam, features[name], size),
                    cam=_activity(block.cam, features[name], size),
                    pam_gamma=None if block.pam is None else float(block.pam.gamma.item()),
                    cam_gamma=None if block.cam is None else float(block.cam.gamma.item()),
                )
                for name, block in blocks
                if name in features  # a block the forward pass did not use has nothing to show
            ]
    finally:
        for handle in handles:
            handle.remove()
        network.train(was_training)
    return activities, logits


def attention_activity(network: nn.Module, image_slice: NdarrayOrTensor) -> list[AttentionActivity]:
    """
    PAM and CAM activity of every DualAttention block of `network` for one slice, as :func:`attention_maps` draws.

    Args:
        network: an AXUNet (or any module holding ``DualAttention`` blocks); run in eval mode without gradients, its
            training mode is restored after.
        image_slice: ``(C, H, W)`` slice, preprocessed as for the network.

    Returns:
        one :class:`AttentionActivity` per block, in module order (AXUNet: fine to coarse).

    Raises:
        ValueError: for a slice that is not 3D or a network without ``DualAttention`` blocks.
    """
    return _run_attention(network, _check_slice(image_slice))[0]


def _activity_limits(activity: np.ndarray) -> tuple[float, float, bool]:
    """Colour limits of an activity map; a map whose relative range is at float round-off level is shown flat."""
    low, high = float(activity.min()), float(activity.max())
    scale = max(abs(low), abs(high), _TINY)
    if high - low > _UNIFORM_RELATIVE_RANGE * scale:
        return low, high, False
    centre, half = (low + high) / 2, _UNIFORM_RELATIVE_RANGE * scale / 2
    return centre - half, centre + half, True


def attention_maps(
    network: nn.Module,
    image_slice: NdarrayOrTensor,
    output_png: PathLike,
    modality_names: Sequence[str] | None = None,
    channel: int = 0,
    show_prediction: bool = False,
    radiological: bool = True,
    title: str | None = None,
) -> Path:
    """
    Show where AXUNet's attention blocks are active for one input slice.

    The slice runs through `network` in eval mode without gradients while forward hooks on every
    :class:`~axunet_bundle.networks.attention.DualAttention` capture its input feature map ``x`` (see
    :func:`attention_activity`). One row per block (AXUNet's skip levels, fine to coarse), three columns:

    (a) the input channel `channel`, with the network's thresholded prediction outlined (dashed) if `show_prediction`;
    (b) PAM activity: the per-pixel L2 norm over channels of the position-attention map ``O = pam.attend(x)``;
    (c) CAM activity: the same for the channel-attention map ``A x = cam.attend(x)``.

    The maps are taken before the learnt ``gamma`` scaling, so they are meaningful for an untrained network too
    (where ``gamma = 0`` and the blocks do not change the output); the titles give the ``gamma`` values, i.e. how much
    of the map each block adds to its input. Maps are bilinearly resized from the feature-map size to the slice size
    and drawn with their own colour bar; a map that is constant up to float round-off is drawn flat and marked
    "uniform" (an untrained PAM averages over all pixels and is nearly so). The figure is
    ``3 * ATTENTION_COLUMN_INCHES`` wide and ``n_blocks * ATTENTION_ROW_INCHES + ATTENTION_TITLE_INCHES`` high, at
    :data:`FIGURE_DPI`.

    Args:
        network: an AXUNet (or any module holding ``DualAttention`` blocks); its training mode is restored after.
        image_slice: ``(C, x, y)`` axial slice, preprocessed as for the network (same channels and normalisation).
        output_png: where to write the PNG.
        modality_names: a name per channel, for the titles.
        channel: the input channel shown in column (a).
        show_prediction: outline the prediction (sigmoid >= 0.5 per WT/TC/ET channel) in column (a); off by default
            because an untrained network's prediction is noise.
        radiological: orientation of the slice as in :func:`overlay_case`; ``x`` is assumed to point to the patient's
            right and ``y`` anterior (RAS, as the bundle's preprocessing gives).
        title: figure title.

    Returns:
        the path of the PNG.

    Raises:
        ValueError: for a slice that is not 3D, a bad `channel` or `modality_names`, or a network without
            ``DualAttention`` blocks.
    """
    data = _check_slice(image_slice)
    names = [f"channel {i}" for i in range(data.shape[0])] if modality_names is None else list(modality_names)
    if len(names) != data.shape[0]:
        raise ValueError(f"{len(names)} modality names for a slice with {data.shape[0]} channel(s)")
    if not 0 <= channel < data.shape[0]:
        raise ValueError(f"channel must be in [0, {data.shape[0]}), got {channel}")
    activities, logits = _run_attention(network, data)

    prediction = None
    if show_prediction and logits.shape[1] == len(REGIONS):
        masks = (torch.sigmoid(logits[0].float()) >= _MASK_THRESHOLD).cpu().numpy()
        prediction = np.stack([_display(m, radiological) for m in masks])
    image = _display(data[channel].numpy(), radiological)
    window = _window(image)

    fig = _new_figure(
        _ATTENTION_COLUMNS * ATTENTION_COLUMN_INCHES,
        len(activities) * ATTENTION_ROW_INCHES + ATTENTION_TITLE_INCHES,
        layout="constrained",
    )
    axes = fig.subplots(len(activities), _ATTENTION_COLUMNS, squeeze=False)
    for act, (ax_image, ax_pam, ax_cam) in zip(activities, axes):
        _draw_panel(ax_image, image, None, prediction, window, aspect="equal")
        shape = "x".join(str(n) for n in act.feature_shape[1:])
        ax_image.set_title(
            f"{act.level} ({act.feature_shape[0]} ch, {shape}): {names[channel]}", fontsize=_ANNOTATION_FONT_SIZE
        )
        for ax, activity, gamma, label in (
            (ax_pam, act.pam, act.pam_gamma, "PAM"),
            (ax_cam, act.cam, act.cam_gamma, "CAM"),
        ):
            ax.set_axis_off()
            if activity is None:
                ax.text(0.5, 0.5, f"no {label}", ha="center", va="center", transform=ax.transAxes)
                continue
            low, high, uniform = _activity_limits(activity)
            shown = ax.imshow(_display(activity, radiological), cmap=_ACTIVITY_MAP, vmin=low, vmax=high)
            colorbar = fig.colorbar(shown, ax=ax, fraction=_COLORBAR_FRACTION, pad=_COLORBAR_PAD)
            colorbar.formatter.set_useOffset(False)
            ax.set_title(
                f"{label} ||attend(x)|| (gamma {gamma:.3g}){', uniform' if uniform else ''}",
                fontsize=_ANNOTATION_FONT_SIZE,
            )
    fig.suptitle(title or "Attention activity per pixel, before gamma")
    return _save_png(fig, output_png)


def evaluation_pictures(
    items: Sequence[Mapping[str, Any]],
    output_dir: PathLike,
    convention: str = DEFAULT_CONVENTION,
    overlays: bool = True,
) -> list[Path]:
    """
    The pictures of an evaluation (run by ``configs/evaluate.json`` after the evaluator): a Dice box plot of
    ``metrics.csv`` and, with `overlays`, one overlay per case (its label solid, its segmentation dashed) in
    ``output_dir/overlays/``. A case without a segmentation (left out as bad) gets no overlay.

    Args:
        items: the evaluated cases, ``{"image": [files], "label": file}`` each (the segmentation's name comes from the
            first image file, as the inference writer's does).
        output_dir: the evaluation's output folder (segmentations and ``metrics.csv``).
        convention: label convention of the files.
        overlays: also draw the per-case overlays.

    Returns:
        the PNGs written.
    """
    from .data.datalist import segmentation_path
    from .handlers import METRICS_CSV
    from .progress import progress
    from .transforms import case_id_from_path

    output_dir = Path(output_dir)
    written = []
    if (output_dir / METRICS_CSV).exists():
        written.append(dice_boxplot(output_dir / METRICS_CSV, output_dir / DICE_BOXPLOT_PNG))
    if overlays:
        for item in progress(items, desc="drawing overlays", unit="case"):
            case_id = case_id_from_path(item["image"][0])  # as the writer names the segmentation (case_name_formatter)
            seg = segmentation_path(output_dir, case_id)
            if seg.exists():
                png = output_dir / OVERLAYS_DIR / f"{case_id}_overlay.png"
                written.append(overlay_files(item["image"], seg, png, label_file=item["label"], convention=convention))
    return written
