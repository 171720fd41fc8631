# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""A one-page case report (A4 portrait, PNG and PDF): the case's T1CE and FLAIR on the axial, coronal and sagittal
planes through the segmented tumour's centre with the WT/TC/ET contours, the volume of each label and region in mL
(:func:`axunet_bundle.volumes.label_volumes`, the numbers ``volumes.csv`` holds), the uncertainty score when flip TTA
wrote a map, the model, its version and the weights' SHA-256, the label convention, and "Research use only; not for
diagnosis".
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
from matplotlib.lines import Line2D

from ..atomic import atomic_path
from ..data.labels import REGIONS, labels_to_regions
from ..volumes import label_columns, label_volumes, uncertainty_score
from .figures import CONTOUR_WIDTHS, REGION_COLOURS, PathLike, display_plane, draw_panel, grey_window, new_figure
from .overlays import VIEWS, _load_canonical, _orientation_letters

__all__ = ["A4_INCHES", "RESEARCH_ONLY", "CaseReport", "case_report"]

#: the page: A4 portrait, 210 x 297 mm
A4_INCHES = (210 / 25.4, 297 / 25.4)
#: printed on every page, under the title
RESEARCH_ONLY = "Research use only; not for diagnosis"
#: what an absent model detail reads as
NOT_GIVEN = "not given"
_MARGIN = 0.45  # inches, each side
_PANEL = 2.45  # inches, the square box of one image panel
_TITLE_SIZE, _TEXT_SIZE, _SMALL_SIZE = 15, 9.5, 8
_WARNING_COLOUR = "#b00000"
_PNG_DPI = 100  # A4 at 100 dpi, 827 x 1169 pixels: readable, and small enough for the docs
_PANEL_BACKGROUND = "black"


@dataclass(frozen=True)
class CaseReport:
    """What :func:`case_report` wrote and showed.

    Attributes:
        png: the PNG page.
        pdf: the PDF page.
        volumes: ``{column: mL}`` as shown, the columns of :func:`axunet_bundle.volumes.label_volumes`.
        uncertainty: the uncertainty score shown, or ``None`` without a map.
        position: the ``(x, y, z)`` voxel indices (RAS) of the planes shown.
    """

    png: Path
    pdf: Path
    volumes: dict[str, float]
    uncertainty: float | None
    position: tuple[int, int, int]


def _centre(wt: np.ndarray) -> tuple[int, int, int]:
    """The WT's centroid, rounded to a voxel; the volume's centre for an empty WT."""
    if not wt.any():
        return tuple(n // 2 for n in wt.shape)  # type: ignore[return-value]
    return tuple(int(round(c)) for c in np.argwhere(wt).mean(axis=0))  # type: ignore[return-value]


def _volume_rows(volumes: Mapping[str, float], convention: str) -> list[tuple[str, str]]:
    """Table rows ``(what, mL)``: the convention's labels (``NCR (label 1)``), then the regions; to 0.001 mL, one
    1 mm voxel."""
    rows = [
        (f"{column.split('_label')[0]} (label {value})", column) for column, value in label_columns(convention).items()
    ]
    rows += [(f"{region} (region)", f"{region}_region_mL") for region in REGIONS]
    return [(name, f"{volumes[column]:.3f}") for name, column in rows]


def case_report(
    image_files: Sequence[PathLike],
    modality_names: Sequence[str],
    seg_file: PathLike,
    output: PathLike,
    case_id: str,
    convention: str,
    model: Mapping[str, str],
    uncertainty_file: PathLike | None = None,
    radiological: bool = True,
    channels: Sequence[int] | None = None,
) -> CaseReport:
    """
    Draw a case's one-page report into ``<output>.png`` and ``<output>.pdf`` (A4 portrait, written atomically).

    Args:
        image_files: a NIfTI volume per modality to show (one row each, e.g. T1CE and FLAIR), on the seg's grid.
        modality_names: a name per file, e.g. ``("T1CE", "FLAIR")``.
        seg_file: the label map (NIfTI), in `convention`.
        output: the pages' path without extension; a ``.png``/``.pdf`` suffix is replaced.
        case_id: the case's id, the title.
        convention: the label map's convention (a key of ``LABEL_CONVENTIONS``).
        model: ``{"name", "version", "weights", "sha256"}`` text shown under "model"; absent keys read "not given".
        uncertainty_file: the flip-TTA uncertainty map beside the seg, for the uncertainty score
            (:func:`axunet_bundle.volumes.uncertainty_score`).
        radiological: the patient's right on the viewer's left, as :func:`overlay_case`.
        channels: for a multi-channel image (one file in `image_files`), the channel of each row.

    Returns:
        the :class:`CaseReport`: the files and the numbers shown.

    Raises:
        ValueError: files that are not 3D, or whose grids (reoriented to RAS) differ in shape.
    """
    seg_path = Path(seg_file)
    seg_raw = nib.load(seg_path)
    seg_voxels = np.rint(np.asanyarray(seg_raw.dataobj)).astype(np.int64)
    # the numbers volumes.csv holds: the same function, the label map as stored and its affine
    volumes = label_volumes(seg_voxels, seg_raw.affine, convention)
    score = None
    if uncertainty_file is not None:
        score = uncertainty_score(seg_voxels, np.asanyarray(nib.load(uncertainty_file).dataobj), convention)
    seg, _, spacing = _load_canonical(seg_path, "segmentation")
    regions = np.asarray(labels_to_regions(np.rint(seg)[None].astype(np.int64), convention)) > 0
    images = []
    sources = [(image_files[0], c) for c in channels] if channels is not None else [(f, None) for f in image_files]
    for (path, channel), name in zip(sources, modality_names):
        data, _, _ = _load_canonical(path, name, channels=channel is not None)
        if channel is not None and channel >= data.shape[-1]:
            raise ValueError(f"{Path(path).name} has {data.shape[-1]} channels, no channel {channel} ({name})")
        data = data if channel is None else data[..., channel]
        if data.shape != seg.shape:
            raise ValueError(f"{Path(path).name} {data.shape} and {seg_path.name} {seg.shape}: grids differ in shape")
        images.append((name, data.astype(np.float32, copy=False)))
    position = _centre(regions[0])

    width, height = A4_INCHES
    fig = new_figure(width, height, "white")
    top = height - _MARGIN
    fig.text(
        _MARGIN / width,
        (top - 0.15) / height,
        f"AXUNet case report: {case_id}",
        fontsize=_TITLE_SIZE,
        weight="bold",
        va="top",
    )
    fig.text(
        _MARGIN / width,
        (top - 0.55) / height,
        RESEARCH_ONLY,
        fontsize=_TEXT_SIZE + 1,
        weight="bold",
        color=_WARNING_COLOUR,
        va="top",
    )
    # image grid: a row per modality, a column per view
    grid_top = top - 0.95
    x0 = (width - len(VIEWS) * _PANEL) / 2
    cell = _PANEL + 0.3
    for row, (name, volume) in enumerate(images):
        window = grey_window(volume)
        for col, (view, axis) in enumerate(VIEWS):
            index = position[axis]
            plane_axes = [a for a in range(3) if a != axis]
            flip = radiological or view == "sagittal"
            masks = np.stack([display_plane(np.take(m, index, axis), flip) for m in regions])
            bottom = grid_top - (row + 1) * cell
            ax = fig.add_axes(
                ((x0 + col * _PANEL + 0.03) / width, bottom / height, (_PANEL - 0.06) / width, (_PANEL - 0.06) / height)
            )
            ax.set_facecolor(_PANEL_BACKGROUND)
            ax.set_anchor("N")  # panels of other aspect ratios keep their titles on one line
            aspect = spacing[plane_axes[1]] / spacing[plane_axes[0]]
            draw_panel(ax, display_plane(np.take(volume, index, axis), flip), masks, None, window, aspect)
            ax.set_title(f"{name}, {view} ({'xyz'[axis]} = {index})", fontsize=_SMALL_SIZE, pad=3)
            for x, letter, align in zip((0.02, 0.98), _orientation_letters(view, radiological), ("left", "right")):
                ax.text(
                    x, 0.5, letter, transform=ax.transAxes, ha=align, va="center", color="white", fontsize=_SMALL_SIZE
                )
    legend_y = grid_top - len(images) * cell - 0.2
    handles = [Line2D([], [], color=REGION_COLOURS[r], linewidth=CONTOUR_WIDTHS[r] + 1, label=r) for r in REGIONS]
    legend = fig.legend(
        handles=handles,
        loc="center",
        bbox_to_anchor=(0.5, legend_y / height),
        ncols=len(REGIONS),
        frameon=True,
        fontsize=_SMALL_SIZE,
        title="segmentation contours (planes through the WT's centre)",
        title_fontsize=_SMALL_SIZE,
    )
    legend.get_frame().set_facecolor("#404040")
    for text in legend.get_texts():
        text.set_color("white")
    legend.get_title().set_color("white")

    # volumes table (left) and the details (right)
    block_top = legend_y - 0.45
    rows = _volume_rows(volumes, convention)
    table_ax = fig.add_axes(
        (_MARGIN / width, (block_top - 0.3 * (len(rows) + 1)) / height, 3.0 / width, 0.3 * (len(rows) + 1) / height)
    )
    table_ax.set_axis_off()
    table = table_ax.table(
        cellText=rows,
        colLabels=["label / region", "volume (mL)"],
        loc="upper left",
        cellLoc="left",
        colWidths=[0.62, 0.38],
        bbox=(0, 0, 1, 1),
    )
    table.auto_set_font_size(False)
    table.set_fontsize(_TEXT_SIZE)
    for (r, _), table_cell in table.get_celld().items():
        if r == 0:
            table_cell.set_text_props(weight="bold")
            table_cell.set_facecolor("#e8e8e8")
    fig.text(_MARGIN / width, (block_top + 0.12) / height, "Volumes", fontsize=_TEXT_SIZE + 1, weight="bold")

    sha = model.get("sha256") or NOT_GIVEN
    details = [
        (
            "uncertainty score",
            (
                NOT_GIVEN + " (no uncertainty map: flip TTA off)"
                if score is None
                else f"{score:.3g} (mean uncertainty in WT)"
            ),
        ),
        (
            "label convention",
            f"{convention}: "
            + ", ".join(f"{c.split('_label')[0]} = {v}" for c, v in label_columns(convention).items()),
        ),
        ("regions", "WT whole tumour, TC core, ET enhancing"),
        ("segmentation", seg_path.name),
        ("voxel (RAS)", " x ".join(f"{s:.2f}" for s in spacing) + " mm"),
        ("model", model.get("name") or NOT_GIVEN),
        ("version", model.get("version") or NOT_GIVEN),
        ("weights", model.get("weights") or NOT_GIVEN),
        ("sha256", sha[:32] + "\n" + sha[32:] if len(sha) == 64 else sha),
    ]
    x_details = (_MARGIN + 3.2) / width
    fig.text(x_details, (block_top + 0.12) / height, "Details", fontsize=_TEXT_SIZE + 1, weight="bold")
    y = block_top - 0.05
    for key, value in details:
        fig.text(x_details, y / height, key, fontsize=_SMALL_SIZE, weight="bold", va="top")
        family = "monospace" if key == "sha256" else None
        fig.text(x_details + 1.25 / width, y / height, value, fontsize=_SMALL_SIZE, va="top", family=family, wrap=True)
        y -= 0.27 * (1 + value.count("\n"))
    fig.text(
        0.5,
        _MARGIN / 2 / height,
        f"{RESEARCH_ONLY}. Drawn by axunet report.",
        ha="center",
        fontsize=_SMALL_SIZE,
        color=_WARNING_COLOUR,
    )

    stem = Path(output)
    stem = stem.with_suffix("") if stem.suffix.lower() in (".png", ".pdf") else stem
    png, pdf = stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.pdf"
    for path, kind in ((png, "png"), (pdf, "pdf")):
        with atomic_path(path) as tmp:
            fig.savefig(tmp, format=kind, dpi=_PNG_DPI)
    return CaseReport(png, pdf, volumes, score, position)
