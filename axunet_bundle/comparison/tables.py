# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The comparison's table: the per-case scores of the runs' evaluation reports, the paired Wilcoxon signed-rank tests
against the reference variant, and the table (Markdown, CSV) with its figure."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import write_text_atomic
from ..data.labels import REGIONS
from ..errors import ConfigurationError
from ..evaluation import CASE_ID, LEGACY_DICE, LEGACY_HD95, report_columns
from ..evaluation.challenge import LESIONWISE_DSC
from .variants import COMPARISON_CSV, COMPARISON_MD, COMPARISON_PNG, PER_CASE_CSV, WILCOXON_CSV, Run, Variant

#: below this many non-zero differences a two-sided exact Wilcoxon p-value cannot be below 0.05 (2 / 2**5 = 0.0625)
MIN_WILCOXON_N = 6
#: the families of the Markdown table, with their headings (every family is in the CSV files)
TABLE_FAMILIES = {
    LEGACY_DICE: "Dice",
    LEGACY_HD95: "HD95",
    LESIONWISE_DSC: "lesion-wise DSC",
    "all_instance_f1": "lesion F1",
}
_FEW = "†"


# ---------------------------------------------------------------------------------------------------------- scores
CaseKey = tuple[int, str]  # (fold, case id)


@dataclass
class VariantScores:
    """A variant's finished runs: per-case scores keyed by (fold, case id), training seconds per fold, costs."""

    variant: Variant
    folds: list[int]
    cases: dict[CaseKey, dict[str, float]]
    columns: list[str]
    training_seconds: list[float]
    devices: list[str]
    cost: Mapping[str, Any]

    def values(self, column: str) -> dict[CaseKey, float]:
        return {k: row[column] for k, row in self.cases.items() if column in row and math.isfinite(row[column])}


def read_case_scores(path: Path) -> tuple[list[str], dict[str, dict[str, float]]]:
    """The numeric metric columns of an evaluation report (``metrics.csv``; not its volume columns, which describe
    the cases rather than score the network) and its rows by case id."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    metrics = set(report_columns())
    header = [c for c in (rows[0] if rows else {}) if c in metrics]

    def number(cell: str | None) -> float | None:
        try:
            return float(cell) if cell not in (None, "") else math.nan
        except ValueError:
            return None

    numeric = [c for c in header if all(number(row[c]) is not None for row in rows)]
    return numeric, {row[CASE_ID]: {c: number(row[c]) for c in numeric} for row in rows}


def collect_scores(runs: Sequence[Run], costs: Mapping[str, Mapping[str, Any]]) -> dict[str, VariantScores]:
    """The finished runs' scores by variant name (variants without a finished run are left out)."""
    scores: dict[str, VariantScores] = {}
    for run in runs:
        if not run.finished:
            continue
        name = run.variant.name
        entry = scores.setdefault(name, VariantScores(run.variant, [], {}, [], [], [], costs.get(name, {})))
        columns, rows = read_case_scores(run.metrics)
        entry.folds.append(run.fold)
        entry.columns = list(dict.fromkeys([*entry.columns, *columns]))
        entry.cases.update({(run.fold, case_id): row for case_id, row in rows.items()})
        if run.training_record.is_file():
            record = json.loads(run.training_record.read_text(encoding="utf-8"))
            entry.training_seconds.append(float(record["seconds"]))
            entry.devices.append(str(record.get("device", "")))
    return scores


def metric_families(columns: Iterable[str]) -> dict[str, list[tuple[str, str]]]:
    """Metric columns grouped by family, in the evaluation report's order: ``{"legacy_dice": [("WT",
    "legacy_dice_wt"), ...], "legacy_hd95": [...]}``; a column without a region suffix is a family of its own (region
    ``""``)."""
    known = report_columns()
    ordered = sorted(dict.fromkeys(columns), key=lambda c: known.index(c) if c in known else len(known))
    families: dict[str, list[tuple[str, str]]] = {}
    for column in ordered:
        region = next((r for r in REGIONS if column.endswith(f"_{r.lower()}")), "")
        family = column[: -len(region) - 1] if region else column
        families.setdefault(family, []).append((region, column))
    return families


@dataclass(frozen=True)
class PairedTest:
    """A two-sided paired Wilcoxon signed-rank test of a variant against the reference on one column."""

    n: int  # cases scored by both
    n_nonzero: int  # of which with a non-zero difference (scipy's default drops the zeros)
    median_difference: float  # of variant - reference
    statistic: float | None
    p_value: float | None
    note: str


def paired_wilcoxon(variant: Mapping[CaseKey, float], reference: Mapping[CaseKey, float]) -> PairedTest:
    """``scipy.stats.wilcoxon(variant, reference)`` (two-sided, zero differences dropped) over the cases both
    scored, paired by (fold, case id); no test when there is no pair or every difference is zero."""
    from scipy.stats import wilcoxon

    keys = sorted(set(variant) & set(reference))
    x = np.asarray([variant[k] for k in keys], dtype=float)
    y = np.asarray([reference[k] for k in keys], dtype=float)
    n, nonzero = len(keys), int(np.count_nonzero(x - y))
    median = float(np.median(x - y)) if n else math.nan
    if not n:
        return PairedTest(0, 0, median, None, None, "no case scored by both")
    if not nonzero:
        return PairedTest(n, 0, median, None, None, f"all {n} differences zero: no test")
    result = wilcoxon(x, y)
    note = f"only {nonzero} non-zero differences: p cannot be below 0.05" if nonzero < MIN_WILCOXON_N else ""
    return PairedTest(n, nonzero, median, float(result.statistic), float(result.pvalue), note)


# ----------------------------------------------------------------------------------------------------------- table
def _number(value: float, scale: float) -> str:
    return f"{value:.3f}" if scale <= 1 else f"{value:.2f}"


def _duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"


def _label(family: str, region: str) -> str:
    return f"{TABLE_FAMILIES.get(family, family)} {region}".strip()


def _csv(header: Sequence[str], rows: Iterable[Mapping[str, Any]]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=list(header), lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


def _markdown_table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def write_tables(
    output_dir: str | os.PathLike,
    scores: Mapping[str, VariantScores],
    reference: str,
    title: str,
    context: Sequence[str],
) -> dict[str, Path]:
    """Write the comparison: ``comparison.md`` (``title``, the ``context`` lines, the table and the tests),
    ``comparison.csv`` (one row per variant), ``wilcoxon.csv`` (one row per variant and metric column),
    ``per_case.csv`` (every variant's per-case scores) and ``comparison_dice.png``; returns their paths by name.

    Raises:
        ConfigurationError: when no run is finished yet.
    """
    from ..visualize import comparison_boxplot

    if not scores:
        raise ConfigurationError(f"{output_dir}: no finished run to tabulate yet")
    out = Path(output_dir)
    families = metric_families(c for s in scores.values() for c in s.columns)
    columns = [column for members in families.values() for _, column in members]
    shown = {f: members for f, members in families.items() if f in TABLE_FAMILIES}  # the Markdown table's
    shown_columns = {column for members in shown.values() for _, column in members}
    rows, tests, markdown_rows = [], [], []
    for name, entry in scores.items():
        row: dict[str, Any] = {
            "variant": name,
            "network": entry.variant.network,
            "description": entry.variant.description,
            "folds": " ".join(map(str, sorted(entry.folds))),
            "n_cases": len(entry.cases),
        }
        cells = [name, entry.variant.description or entry.variant.network, str(len(entry.cases))]
        for column in columns:
            values = np.asarray(list(entry.values(column).values()), dtype=float)
            mean, std = (float(values.mean()), float(values.std())) if values.size else (math.nan, math.nan)
            row[f"{column}_mean"], row[f"{column}_std"] = mean, std
            if column not in shown_columns:
                continue
            scale = max(abs(mean), std) if values.size else 0
            cells.append(f"{_number(mean, scale)} ± {_number(std, scale)}" if values.size else "–")
        seconds = entry.training_seconds
        row.update(
            parameters=entry.cost.get("parameters", ""),
            gflop_per_slice=entry.cost.get("gflop_per_slice", ""),
            training_seconds_per_fold=float(np.mean(seconds)) if seconds else "",
            training_seconds_total=float(np.sum(seconds)) if seconds else "",
        )
        cells += [
            f"{row['parameters'] / 1e6:.2f}" if row["parameters"] != "" else "–",
            f"{row['gflop_per_slice']:.2f}" if row["gflop_per_slice"] != "" else "–",
            _duration(row["training_seconds_per_fold"]) if seconds else "–",
        ]
        rows.append(row)
        markdown_rows.append(cells)
        if name == reference or reference not in scores:
            continue
        for column in columns:
            test = paired_wilcoxon(entry.values(column), scores[reference].values(column))
            tests.append({"variant": name, "reference": reference, "column": column, **test.__dict__})

    written = {
        COMPARISON_CSV: write_text_atomic(out / COMPARISON_CSV, _csv(list(rows[0]), rows)),
        WILCOXON_CSV: write_text_atomic(
            out / WILCOXON_CSV, _csv(["variant", "reference", "column", *PairedTest.__dataclass_fields__], tests)
        ),
        PER_CASE_CSV: write_text_atomic(out / PER_CASE_CSV, _per_case_csv(scores, columns)),
    }
    header = ["variant", "model", "cases"] + [_label(f, r) for f, members in shown.items() for r, _ in members]
    header += ["parameters (M)", "GFLOP / slice", "training / fold"]
    lines = [f"# {title}", "", *context, "", *_markdown_table(header, markdown_rows), ""]
    lines += _markdown_tests(tests, shown, reference, scores)
    written[COMPARISON_MD] = write_text_atomic(out / COMPARISON_MD, "\n".join(lines) + "\n")
    dice = {
        name: {r: np.asarray(list(entry.values(f"{LEGACY_DICE}_{r.lower()}").values())) for r in REGIONS}
        for name, entry in scores.items()
    }
    written[COMPARISON_PNG] = comparison_boxplot(dice, out / COMPARISON_PNG, title=title)
    return written


def _per_case_csv(scores: Mapping[str, VariantScores], columns: Sequence[str]) -> str:
    rows = [
        {"variant": name, "fold": fold, CASE_ID: case_id, **{c: row.get(c, "") for c in columns}}
        for name, entry in scores.items()
        for (fold, case_id), row in sorted(entry.cases.items())
    ]
    return _csv(["variant", "fold", CASE_ID, *columns], rows)


def _markdown_tests(
    tests: Sequence[Mapping[str, Any]],
    families: Mapping[str, Sequence[tuple[str, str]]],
    reference: str,
    scores: Mapping[str, VariantScores],
) -> list[str]:
    if reference not in scores:
        return [f"No paired tests: the reference variant `{reference}` has no finished run."]
    if not tests:
        return [f"No paired tests: `{reference}` is the only variant with a finished run."]
    lines = [
        f"## Paired Wilcoxon signed-rank tests against `{reference}`",
        "",
        "Two-sided `scipy.stats.wilcoxon` on the per-case differences (variant − reference) over the cases both "
        "scored, paired by fold and case (zero differences dropped, scipy's default). Each cell: median difference "
        "Δ, p-value (W statistic, n cases scored by both). No correction for multiple comparisons.",
        "",
    ]
    by_key = {(t["variant"], t["column"]): t for t in tests}
    for family, members in families.items():
        rows = []
        for name in dict.fromkeys(t["variant"] for t in tests):
            cells = [name]
            for _, column in members:
                t = by_key[(name, column)]
                if t["p_value"] is None:
                    cells.append(t["note"])
                    continue
                delta, p, w = t["median_difference"], t["p_value"], t["statistic"]
                cells.append(f"Δ {delta:+.3g}, p = {p:.3g} (W {w:g}, n {t['n']}){_FEW if t['note'] else ''}")
            rows.append(cells)
        lines += [f"**{TABLE_FAMILIES.get(family, family)}**", ""]
        lines += _markdown_table(["variant", *(r or family for r, _ in members)], rows) + [""]
    if any(t["note"] and t["p_value"] is not None for t in tests):
        lines += [f"{_FEW} fewer than {MIN_WILCOXON_N} non-zero differences: a two-sided p cannot be below 0.05.", ""]
    return lines
