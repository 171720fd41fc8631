# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Plots of numbers: the per-case Dice box plots of an evaluation and the training's loss and Dice curves (read from
its TensorBoard event files)."""

from __future__ import annotations

import csv
import math
import os
import textwrap
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.lines import Line2D

from ..data.labels import REGIONS
from .figures import ANNOTATION_FONT_SIZE, LEGEND_FONT_SIZE, REGION_COLOURS, PathLike, new_figure, save_png

__all__ = [
    "REGION_NAMES",
    "BOXPLOT_INCHES",
    "COMPARISON_BOX_INCHES",
    "COMPARISON_PANEL_INCHES",
    "CURVES_WIDTH_INCHES",
    "CURVES_PANEL_INCHES",
    "read_dice_table",
    "dice_boxplot",
    "comparison_boxplot",
    "read_scalars",
    "training_curves",
]

ScalarLog = Mapping[str, Sequence[tuple[float, float]]]
REGION_NAMES: Mapping[str, str] = MappingProxyType(
    {"WT": "whole tumour", "TC": "tumour core", "ET": "enhancing tumour"}
)
BOXPLOT_INCHES = (6.0, 4.5)
COMPARISON_BOX_INCHES = 1.25  # width per model of the comparison box plots
COMPARISON_MARGIN_INCHES = 1.0
COMPARISON_PANEL_INCHES = 3.0  # height per region
CURVES_WIDTH_INCHES = 8.0
CURVES_PANEL_INCHES = 3.0  # height of each training-curves panel
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
_SMOOTHING_WINDOW = 20  # moving average over this many logged losses, once there are at least twice as many
_RAW_ALPHA = 0.3
_TITLE_CHARACTERS_PER_INCH = 9  # a figure title wraps at about this many characters per inch of figure width
_VALIDATION_PREFIX = "val"
_LOSS_WORD = "loss"
_EVENTS_MARKER = "tfevents"


def read_dice_table(
    per_case: PathLike | Sequence[Mapping[str, Any]], families: Mapping[str, str]
) -> dict[str, dict[str, np.ndarray]]:
    """
    Per-case Dice per family and region from a CSV file or a list of row mappings.

    A family ``f`` is the columns ``f_wt``, ``f_tc`` and ``f_et`` (e.g. ``legacy_dice_wt``); families the table lacks
    are left out, other columns (e.g. a case id) are ignored. Empty cells and ``nan`` are missing values.

    Args:
        per_case: a CSV file or a list of mappings, one row per case.
        families: the families to read (column prefix -> anything, e.g. a panel title), in order.

    Returns:
        family -> region -> float array with one value per row (NaN where missing).

    Raises:
        ValueError: for no rows, none of the families, or values that are not numbers in [0, 1].
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
    columns = {f: {r: f"{f}_{r.lower()}" for r in REGIONS} for f in families}
    present = {f: c for f, c in columns.items() if all(name in rows[0] for name in c.values())}
    if not present:
        wanted = ", ".join(f"{f}_wt/tc/et" for f in families)
        raise ValueError(f"{source}: none of the columns {wanted}; found {', '.join(map(str, rows[0]))}")
    table: dict[str, dict[str, np.ndarray]] = {}
    for family, by_region in present.items():
        table[family] = {}
        for region, column in by_region.items():
            values = []
            for i, row in enumerate(rows):
                cell = row.get(column)
                try:
                    value = math.nan if cell is None or (isinstance(cell, str) and not cell.strip()) else float(cell)
                except (TypeError, ValueError):
                    raise ValueError(f"{source}: row {i + 1}: {column} = {cell!r} is not a number") from None
                if not math.isnan(value) and not 0.0 <= value <= 1.0:
                    raise ValueError(f"{source}: row {i + 1}: {column} = {value} is not a Dice score in [0, 1]")
                values.append(value)
            table[family][region] = np.asarray(values, dtype=np.float64)
    return table


def dice_boxplot(
    per_case: PathLike | Sequence[Mapping[str, Any]],
    output_png: PathLike,
    families: Mapping[str, str],
    title: str | None = None,
) -> Path:
    """
    Box plots of per-case Dice for WT, TC and ET, one panel per Dice family side by side (e.g. the legacy Dice, the
    challenges' global and lesion-wise DSC), every case a (jittered) point and the mean marked.

    Boxes show the quartiles and median, whiskers 1.5 IQR; the mean is a diamond with its value written beside it.
    Missing values are left out of their region (its axis label then gives its count). Each panel is
    :data:`BOXPLOT_INCHES` at :data:`FIGURE_DPI`.

    Args:
        per_case: a CSV file or a list of mappings (e.g. ``DataFrame.to_dict("records")``), one row per case, with
            the columns ``<family>_wt``, ``<family>_tc`` and ``<family>_et`` of one or more ``families``.
        output_png: where to write the PNG.
        families: column prefix -> panel title, in panel order; the table's families are drawn.
        title: figure title; default ``"Per-case Dice (n = <rows> cases)"``.

    Returns:
        the path of the PNG.

    Raises:
        ValueError: see :func:`read_dice_table`.
    """
    table = read_dice_table(per_case, families)
    n_cases = len(next(iter(next(iter(table.values())).values())))
    rng = np.random.default_rng(_JITTER_SEED)
    fig = new_figure(BOXPLOT_INCHES[0] * len(table), BOXPLOT_INCHES[1], layout="constrained")
    axes = fig.subplots(1, len(table), squeeze=False)[0]
    for panel, (ax, (family, by_region)) in enumerate(zip(axes, table.items())):
        tick_labels = []
        for position, region in enumerate(REGIONS, start=1):
            values = by_region[region][~np.isnan(by_region[region])]
            count = f"\n(n = {values.size})" if values.size != n_cases else ""
            tick_labels.append(f"{region}\n{REGION_NAMES[region]}{count}")
            _box_with_points(ax, position, values, REGION_COLOURS[region], rng)
        ax.set_xticks(range(1, len(REGIONS) + 1), tick_labels)
        _dice_axis(ax, len(REGIONS), legend=panel == 0)
        if len(table) > 1:
            ax.set_title(families[family])
    title = title or f"Per-case Dice (n = {n_cases} cases)"
    if len(table) > 1:
        fig.suptitle(title)
    else:
        axes[0].set_title(f"{title}: {families[next(iter(table))]}")
    return save_png(fig, output_png)


def _box_with_points(ax: Axes, position: float, values: np.ndarray, colour: str, rng: np.random.Generator) -> None:
    """A box (quartiles, median, 1.5 IQR whiskers) of ``values`` with every value as a jittered point and the mean
    as a diamond with its value beside it; nothing for no values."""
    if not values.size:
        return
    ax.boxplot(
        values,
        positions=[position],
        widths=_BOX_WIDTH,
        showfliers=False,
        patch_artist=True,
        boxprops={"facecolor": colour, "alpha": _BOX_ALPHA},
        medianprops={"color": "black"},
    )
    jitter = rng.uniform(-_JITTER_HALF_WIDTH, _JITTER_HALF_WIDTH, values.size)
    ax.scatter(
        position + jitter,
        values,
        s=_POINT_SIZE,
        color=colour,
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
        fontsize=ANNOTATION_FONT_SIZE,
    )


def _dice_axis(ax: Axes, boxes: int, legend: bool = True) -> None:
    """The Dice axis of a box plot of ``boxes`` boxes at 1 ... boxes, with the mean and median legend."""
    ax.set_xlim(0.5, boxes + 0.5)
    ax.set_ylim(*_DICE_LIMITS)
    ax.set_ylabel("Dice")
    ax.grid(axis="y", alpha=0.3)
    if not legend:
        return
    ax.legend(
        handles=[
            Line2D([], [], marker=_MEAN_MARKER, linestyle="", color="white", markeredgecolor="black", label="mean"),
            Line2D([], [], color="black", label="median"),
        ],
        loc="lower left",
        fontsize=LEGEND_FONT_SIZE,
    )


def comparison_boxplot(
    dice: Mapping[str, Mapping[str, Sequence[float]]], output_png: PathLike, title: str | None = None
) -> Path:
    """
    Per-case Dice of several models side by side: one panel per region (WT, TC, ET, from the top), one box per
    model in the order given, drawn as in :func:`dice_boxplot` (every case a point, the mean a diamond with its
    value). The figure is :data:`COMPARISON_BOX_INCHES` wide per model (at least :data:`BOXPLOT_INCHES` wide) and
    :data:`COMPARISON_PANEL_INCHES` high per region, at :data:`FIGURE_DPI`; a long title wraps.

    Args:
        dice: model name -> region (``"WT"``, ``"TC"``, ``"ET"``) -> per-case Dice; NaN and missing are left out.
        output_png: where to write the PNG.
        title: figure title.

    Returns:
        the path of the PNG.

    Raises:
        ValueError: for no models.
    """
    if not dice:
        raise ValueError("no models to plot")
    names = list(dice)
    width = max(BOXPLOT_INCHES[0], COMPARISON_MARGIN_INCHES + COMPARISON_BOX_INCHES * len(names))
    fig = new_figure(width, COMPARISON_PANEL_INCHES * len(REGIONS), layout="constrained")
    rng = np.random.default_rng(_JITTER_SEED)
    for row, (ax, region) in enumerate(zip(fig.subplots(len(REGIONS), 1, squeeze=False)[:, 0], REGIONS)):
        labels = []
        for position, name in enumerate(names, start=1):
            values = np.asarray(dice[name].get(region, []), dtype=np.float64)
            values = values[~np.isnan(values)]
            _box_with_points(ax, position, values, REGION_COLOURS[region], rng)
            labels.append(f"{name}\n(n = {values.size})")
        ax.set_xticks(range(1, len(names) + 1), labels, fontsize=LEGEND_FONT_SIZE)
        _dice_axis(ax, len(names), legend=row == 0)
        ax.set_title(f"{region} ({REGION_NAMES[region]})")
    if title:
        fig.suptitle(textwrap.fill(title, int(width * _TITLE_CHARACTERS_PER_INCH), break_on_hyphens=False))
    return save_png(fig, output_png)


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
    fig = new_figure(CURVES_WIDTH_INCHES, CURVES_PANEL_INCHES * len(panels), layout="constrained")
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
        ax.legend(fontsize=LEGEND_FONT_SIZE)
    if title:
        fig.suptitle(title)
    return save_png(fig, output_png)


def _plot_loss(ax: Axes, tag: str, steps: np.ndarray, values: np.ndarray) -> None:
    if len(values) < 2 * _SMOOTHING_WINDOW:
        ax.plot(steps, values, label=tag)
        return
    (raw,) = ax.plot(steps, values, alpha=_RAW_ALPHA)
    smooth = np.convolve(values, np.full(_SMOOTHING_WINDOW, 1.0 / _SMOOTHING_WINDOW), mode="valid")
    ax.plot(steps[_SMOOTHING_WINDOW - 1 :], smooth, color=raw.get_color(), label=f"{tag} (mean of {_SMOOTHING_WINDOW})")
