# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Segmentation overlays: a case's modalities with the WT/TC/ET contours of the ground truth (solid) and of a
prediction (dashed), on the axial, coronal and sagittal slices with the most tumour.

Slices are shown in the radiological convention by default: axial and coronal views have the patient's right on the
viewer's left, sagittal views have anterior on the left, superior and anterior are up.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import nibabel as nib
import numpy as np
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from monai.config import NdarrayOrTensor

from ..data.cases import parse_file_name
from ..data.labels import (
    DEFAULT_CONVENTION,
    LABEL_CONVENTIONS,
    REGIONS,
    invalid_label_values,
    label_values,
    labels_to_regions,
)
from .figures import (
    CONTOUR_WIDTHS,
    FIGURE_DPI,
    GROUND_TRUTH_STYLE,
    LEGEND_FONT_SIZE,
    MASK_THRESHOLD,
    PANEL_FONT_SIZE,
    PREDICTION_STYLE,
    REGION_COLOURS,
    PathLike,
    display_plane,
    draw_panel,
    grey_window,
    new_figure,
    save_png,
    strip_nifti,
    to_numpy,
)

__all__ = [
    "VIEWS",
    "PANEL_INCHES",
    "PANEL_TITLE_INCHES",
    "PANEL_MARGIN_INCHES",
    "TITLE_INCHES",
    "LEGEND_INCHES",
    "MIN_OVERLAY_WIDTH_INCHES",
    "RENDER_PIXELS_PER_VOXEL",
    "TENSORBOARD_PIXELS_PER_VOXEL",
    "render_panel",
    "most_tumour_slices",
    "axial_overlay",
    "overlay_case",
    "overlay_files",
]

#: Overlay rows: view name and the volume axis the view slices through (volumes are ``(x, y, z)``, RAS).
VIEWS: tuple[tuple[str, int], ...] = (("axial", 2), ("coronal", 1), ("sagittal", 0))
_AXIS_NAMES = ("x", "y", "z")
PANEL_INCHES = 3.0  # side of the square box an overlay panel's image is fitted into
PANEL_TITLE_INCHES = 0.25  # band above each overlay panel for its title
PANEL_MARGIN_INCHES = 0.0625  # gap around each overlay panel's box
TITLE_INCHES = 0.5  # band at the top of an overlay for the figure title
LEGEND_INCHES = 0.5  # band at the bottom of an overlay for the legend
MIN_OVERLAY_WIDTH_INCHES = 4.0  # room for the legend when there are few modalities; panels are centred
RENDER_PIXELS_PER_VOXEL = 4  # default magnification of render_panel
TENSORBOARD_PIXELS_PER_VOXEL = 2  # axial_overlay: 224 x 224 slices give 448-pixel panels, small event files
_PIXEL_GUARD = 0.5  # added to pixel sizes converted to inches, so that float round-off cannot truncate a pixel
_BACKGROUND = "black"  # image figures
_TEXT_COLOUR = "white"
_LEGEND_HANDLE_LENGTH = 3.0  # long enough to show dashes
_LEGEND_COLUMNS = 3  # one per region: regions on the first legend row, line styles on the second
_TITLE_FONT_SIZE = 11
_PANEL_TEXT: Mapping[str, Any] = MappingProxyType({"color": _TEXT_COLOUR, "fontsize": PANEL_FONT_SIZE})
_ORIENTATION_INSET = 0.02  # axes fraction of the orientation letters from the panel edge


def _check_masks2d(masks: NdarrayOrTensor | None, shape: tuple[int, ...], what: str) -> np.ndarray | None:
    if masks is None:
        return None
    data = to_numpy(masks, what)
    if data.shape != (len(REGIONS), *shape):
        raise ValueError(f"{what} must be ({len(REGIONS)}, {shape[0]}, {shape[1]}) WT/TC/ET masks, got {data.shape}")
    return data >= MASK_THRESHOLD


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
    plane = to_numpy(slice2d, "slice2d").astype(np.float32)
    if plane.ndim != 2:
        raise ValueError(f"slice2d must be 2D (rows, cols), got shape {plane.shape}")
    if int(pixels_per_voxel) != pixels_per_voxel or pixels_per_voxel < 1:
        raise ValueError(f"pixels_per_voxel must be a positive integer, got {pixels_per_voxel}")
    gt = _check_masks2d(ground_truth, plane.shape, "ground_truth")
    pred = _check_masks2d(prediction, plane.shape, "prediction")
    height, width = (n * int(pixels_per_voxel) for n in plane.shape)
    fig = new_figure((width + _PIXEL_GUARD) / FIGURE_DPI, (height + _PIXEL_GUARD) / FIGURE_DPI, _BACKGROUND)
    ax = fig.add_axes((0.0, 0.0, 1.0, 1.0))
    draw_panel(ax, plane, gt, pred, grey_window(plane) if window is None else window, aspect="auto")
    fig.canvas.draw()
    rgba = np.asarray(fig.canvas.buffer_rgba())
    return rgba[:height, :width, :3].copy()


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
    data = to_numpy(mask, "mask") != 0
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
    arr = to_numpy(data, what)
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
        return labels_to_regions(arr, convention) >= MASK_THRESHOLD
    if arr.shape == (len(REGIONS), *shape):
        return arr >= MASK_THRESHOLD
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
    :class:`axunet_bundle.visualize.ValidationOverlayHandler`).

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
    volumes = to_numpy(image, "image").astype(np.float32, copy=False)
    if volumes.ndim != 4:
        raise ValueError(f"image must be 4D (channels, x, y, z), got shape {volumes.shape}")
    shape = volumes.shape[1:]
    gt = _regions_3d(label, shape, convention, "label")
    pr = _regions_3d(pred, shape, convention, "pred")
    z = int(_tumour_position(gt, pr, shape)[2])
    gt_plane = None if gt is None else np.stack([display_plane(m[:, :, z], radiological) for m in gt])
    pr_plane = None if pr is None else np.stack([display_plane(m[:, :, z], radiological) for m in pr])
    panels = [
        render_panel(
            display_plane(v[:, :, z], radiological), gt_plane, pr_plane, pixels_per_voxel, window=grey_window(v)
        )
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
    volumes = to_numpy(image, "image").astype(np.float32, copy=False)
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
    fig = new_figure(width, height, _BACKGROUND)
    windows = [grey_window(v) for v in volumes]

    for row, (view, axis) in enumerate(VIEWS):
        index = position[axis]
        plane_axes = [a for a in range(len(shape)) if a != axis]
        flip = radiological or view == "sagittal"
        aspect = voxel[plane_axes[1]] / voxel[plane_axes[0]]  # displayed rows come from the plane's second axis
        gt_planes = None if gt is None else np.stack([display_plane(np.take(m, index, axis), flip) for m in gt])
        pr_planes = None if pr is None else np.stack([display_plane(np.take(m, index, axis), flip) for m in pr])
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
            plane = display_plane(np.take(volumes[col], index, axis), flip)
            draw_panel(ax, plane, gt_planes, pr_planes, windows[col], aspect)
            ax.set_title(f"{names[col]}  {view} {_AXIS_NAMES[axis]}={index}", **_PANEL_TEXT)
            for x, text, align in letters:
                ax.text(x, 0.5, text, transform=ax.transAxes, ha=align, va="center", **_PANEL_TEXT)

    if title:
        y = 1 - TITLE_INCHES / 2 / height
        fig.text(0.5, y, title, ha="center", va="center", color=_TEXT_COLOUR, fontsize=_TITLE_FONT_SIZE)
    _overlay_legend(fig, with_truth=gt is not None, with_prediction=pr is not None, y=LEGEND_INCHES / 2 / height)
    return save_png(fig, output_png)


def _overlay_legend(fig: Figure, with_truth: bool, with_prediction: bool, y: float) -> None:
    """Regions on the first row, line styles on the second (legend entries fill columns first)."""
    if not (with_truth or with_prediction):
        return
    styles = [(with_truth, GROUND_TRUTH_STYLE, "ground truth"), (with_prediction, PREDICTION_STYLE, "prediction")]
    styles = [Line2D([], [], color=_TEXT_COLOUR, linestyle=s, label=name) for present, s, name in styles if present]
    handles = []
    for i, region in enumerate(REGIONS):
        handles.append(Line2D([], [], color=REGION_COLOURS[region], linewidth=CONTOUR_WIDTHS[region], label=region))
        if i < len(styles):
            handles.append(styles[i])
    fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=(0.5, y),
        ncols=_LEGEND_COLUMNS,
        frameon=False,
        labelcolor=_TEXT_COLOUR,
        fontsize=LEGEND_FONT_SIZE,
        handlelength=_LEGEND_HANDLE_LENGTH,
    )


def _load_canonical(
    path: PathLike, what: str, channels: bool = False
) -> tuple[np.ndarray, np.ndarray, tuple[float, float, float]]:
    """Voxels, affine and voxel size of a NIfTI file reoriented to RAS (``nibabel.as_closest_canonical``): a 3D
    volume, or with ``channels`` ``(X, Y, Z, C)`` (a 3D volume has one channel; ``X, Y, Z, 1, C`` is ITK's layout)."""
    img = nib.as_closest_canonical(nib.load(os.fspath(path)))
    data = np.asanyarray(img.dataobj)
    if channels:
        data = data.reshape(*data.shape[:3], -1)
    while data.ndim > 3 + channels and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3 + channels:
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
    channels: Sequence[int] | None = None,
) -> Path:
    """
    :func:`overlay_case` for NIfTI files: one file per modality (or one multi-channel file), a predicted label map
    and optionally the truth.

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
        channels: for a multi-channel image file, the channels to show, in order (default: all of them).

    Returns:
        the path of the PNG.

    Raises:
        ValueError: when the files' voxel grids differ in shape, a file is not a 3D volume, or as for
            :func:`overlay_case`.
    """
    files = [Path(f) for f in image_files]
    if not files:
        raise ValueError("at least one image file is needed")
    loaded, names = [], []
    for f in files:  # every channel of every image file is one panel column
        volumes, affine, zooms = _load_canonical(f, "image", channels=True)
        picked = list(channels if channels is not None else range(volumes.shape[-1]))
        loaded += [(f, "image", (volumes[..., c], affine, zooms)) for c in picked]
        parsed_name = parse_file_name(f)
        name = parsed_name[1].upper() if parsed_name else strip_nifti(f.name)
        names += [name] if len(picked) == 1 else [f"{name} channel {c}" for c in picked]
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

    if modality_names is None:
        modality_names = names
    if title is None:
        parsed = parse_file_name(files[0])
        title = parsed[0] if parsed else strip_nifti(files[0].name)
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
