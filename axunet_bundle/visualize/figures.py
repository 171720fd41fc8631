# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""What every picture shares: colours, sizes, atomic PNG writing and a greyscale panel with region contours.

Figures are drawn with matplotlib's Agg renderer on a private :class:`~matplotlib.figure.Figure`, so nothing here
touches pyplot's global state or the user's chosen backend, and it works without a display. Every PNG is written
atomically (a temporary file in the same folder, then :func:`os.replace`). Sizes are in inches at
:data:`FIGURE_DPI` and chosen to be exact binary fractions, so that a figure has exactly ``inches * FIGURE_DPI``
pixels (matplotlib truncates fractional pixel sizes).
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from monai.config import NdarrayOrTensor
from monai.utils import convert_to_numpy

from ..atomic import atomic_path
from ..data.labels import REGIONS

__all__ = [
    "REGION_COLOURS",
    "FIGURE_DPI",
    "GREY_MAP",
    "GROUND_TRUTH_STYLE",
    "PREDICTION_STYLE",
    "CONTOUR_WIDTHS",
    "PANEL_FONT_SIZE",
    "LEGEND_FONT_SIZE",
    "MASK_THRESHOLD",
    "ANNOTATION_FONT_SIZE",
    "save_png",
    "new_figure",
    "to_numpy",
    "display_plane",
    "grey_window",
    "draw_panel",
    "strip_nifti",
]

PathLike = str | os.PathLike
#: Contour and marker colour of each region: yellow, red, sky blue.
REGION_COLOURS: Mapping[str, str] = MappingProxyType({"WT": "#ffff00", "TC": "#ff0000", "ET": "#00bfff"})
FIGURE_DPI = 100
GREY_MAP = "gray"
GROUND_TRUTH_STYLE = "solid"
PREDICTION_STYLE = "dashed"
# points; outer regions get wider lines drawn first, so that where regions share an edge (e.g. TC = ET, no
# necrosis) each still shows as a stripe around the inner region's line
CONTOUR_WIDTHS: Mapping[str, float] = MappingProxyType({"WT": 2.6, "TC": 1.8, "ET": 1.0})
PANEL_FONT_SIZE = 8
LEGEND_FONT_SIZE = 8
_INTENSITY_PERCENTILES = (0.5, 99.5)  # grey-level window of each modality (over its non-zero voxels)
MASK_THRESHOLD = 0.5  # region masks or probabilities >= this are inside
_CONTOUR_LEVEL = 0.5  # iso-line of a 0/1 mask: lies on the pixel edges
ANNOTATION_FONT_SIZE = 9


def save_png(fig: Figure, output_png: PathLike) -> Path:
    """Write `fig` as a PNG at `output_png` atomically."""
    path = Path(output_png)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=FIGURE_DPI, facecolor=fig.get_facecolor())
    return path


def new_figure(width: float, height: float, facecolor: str = "white", layout: str | None = None) -> Figure:
    """A figure of `width` x `height` inches drawn by Agg, independent of pyplot."""
    fig = Figure(figsize=(width, height), dpi=FIGURE_DPI, facecolor=facecolor, layout=layout)
    FigureCanvasAgg(fig)
    return fig


def to_numpy(data: NdarrayOrTensor, what: str) -> np.ndarray:
    try:
        return np.asarray(convert_to_numpy(data))
    except Exception as exc:  # e.g. a ragged list
        raise ValueError(f"{what} must be a numpy array or torch tensor: {exc}") from exc


def display_plane(plane: np.ndarray, flip: bool) -> np.ndarray:
    """
    A plane cut from a RAS volume, ``(a, b)`` with `a` and `b` in volume axis order, as an image: `b` (anterior or
    superior) points up and `a` (right or anterior) to the viewer's right, or to the viewer's left when `flip`.
    """
    out = np.rot90(plane)
    return np.fliplr(out) if flip else out


def grey_window(volume: np.ndarray) -> tuple[float, float]:
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
        linewidths=CONTOUR_WIDTHS[region],
        linestyles=style,
    )


def draw_panel(
    ax: Axes,
    plane: np.ndarray,
    ground_truth: np.ndarray | None,
    prediction: np.ndarray | None,
    window: tuple[float, float],
    aspect: float | str,
) -> None:
    """Greyscale `plane` with region contours: ground truth solid, prediction dashed (masks ``(3, rows, cols)``)."""
    rows, cols = plane.shape
    ax.imshow(plane, cmap=GREY_MAP, vmin=window[0], vmax=window[1], aspect=aspect)
    for masks, style in ((ground_truth, GROUND_TRUTH_STYLE), (prediction, PREDICTION_STYLE)):
        if masks is None:
            continue
        for region, mask in zip(REGIONS, masks):
            if mask.any():
                _contour(ax, mask, region, style)
    ax.set_xlim(-0.5, cols - 0.5)
    ax.set_ylim(rows - 0.5, -0.5)
    ax.set_axis_off()


def strip_nifti(name: str) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", name, flags=re.IGNORECASE)
