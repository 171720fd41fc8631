# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The paper's comparison: AXUNet, its baselines and ablations ("variants"), each trained and evaluated by the
bundle's own workflows on the same patient-level folds, and the table of their per-case scores.

This module holds everything but running the workflows (``axunet compare``, :mod:`axunet_bundle.cli.compare`, does
that): the variants file, the output folder's layout and which of its runs are finished, the network costs, the
per-case scores of the runs' evaluation reports, the paired Wilcoxon signed-rank tests and the table (Markdown and
CSV) with its figure. Layout of a comparison folder ``OUT``::

    OUT/comparison.json               the shared settings (a resumed comparison must match them)
    OUT/datalist_fold<k>.json         fold k's patient-level split, the same for every variant
    OUT/<variant>/variant.json        the variant's network, arguments, overrides and costs
    OUT/<variant>/fold<k>/            models/ runs/ eval/ of fold k's training and evaluation, training.json
    OUT/comparison.md|.csv, wilcoxon.csv, per_case.csv, comparison_dice.png   the table

A run (variant, fold) is finished when its ``eval/metrics.csv`` exists: the evaluation writes it atomically, last.
"""

from __future__ import annotations

import csv
import inspect
import io
import json
import logging
import math
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from . import outputs
from .atomic import write_json_atomic, write_text_atomic
from .data.labels import REGIONS
from .errors import ConfigurationError
from .evaluation import CASE_ID, report_columns

__all__ = [
    "DEFAULT_REFERENCE",
    "NETWORK_TARGET",
    "SHARED_IDS",
    "PairedTest",
    "Run",
    "Variant",
    "VariantScores",
    "check_record",
    "collect_scores",
    "describe_dataset",
    "load_variants",
    "metric_families",
    "network_cost",
    "paired_wilcoxon",
    "plan_runs",
    "write_tables",
]

logger = logging.getLogger(__name__)

#: the variant the others are tested against, when the variants include it
DEFAULT_REFERENCE = "axunet"
#: what a variant's ``network_def`` instantiates
NETWORK_TARGET = "axunet_bundle.networks.build_network"
#: bundle ids the comparison sets itself, the same for every variant: data, folds, epochs, seed, where runs go
RESERVED_IDS = frozenset(
    {
        "bundle_root",
        "dataset_dir",
        "datalist",
        "datalist_split",
        "folds",
        "fold",
        "seed",
        "epochs",
        "resume",
        "ckpt_dir",
        "ckpt_path",
        "output_dir",
        "overwrite",
        "network_def",
        "network",
        "pretrained",
        "pretrained_path",
    }
)
#: ids of the preprocessing: they may be given for all variants, never for one
PREPROCESSING_IDS = frozenset(
    {"modalities", "label_convention", "roi_size", "tumour_slice_ratio", "slice_cache_dir", "volume_transforms"}
)
SHARED_IDS = RESERVED_IDS | PREPROCESSING_IDS
#: ids that change how fast a run goes, not what it computes: a resumed comparison may change them
EXECUTION_IDS = frozenset({"num_workers", "device", "val_cache_rate", "sw_batch_size", "overlays"})
VARIANT_KEYS = ("network", "network_args", "overrides", "description")
#: network arguments a variant may not give: the same for all (``pretrained`` is the comparison's own option)
SHARED_ARGS = ("pretrained", "in_channels", "out_channels")
#: a local encoder weights file fits one backbone only: a variant's ``network_args`` give it, for training only
WEIGHTS_FILE_ARG = "pretrained_path"
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
#: below this many non-zero differences a two-sided exact Wilcoxon p-value cannot be below 0.05 (2 / 2**5 = 0.0625)
MIN_WILCOXON_N = 6
_DISPLAY = {"dice": "Dice", "hd95": "HD95"}
_FEW = "†"


# ------------------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One entry of the variants file: a network of :data:`~axunet_bundle.networks.NETWORKS` with its arguments
    and the bundle ids it changes (e.g. ``learning_rate``); everything else is shared by all variants."""

    name: str
    network: str
    network_args: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def spec(self) -> dict[str, Any]:
        """What its runs depend on: a resumed comparison refuses a variant of the same name with another spec."""
        spec = {"network": self.network, "network_args": self.network_args, "overrides": self.overrides}
        return json.loads(json.dumps(spec))

    def network_def(self, training: bool) -> dict[str, Any]:
        """The bundle's ``network_def`` for this variant. The training's takes ``@pretrained`` where the network has
        a timm encoder (and the variant's ``pretrained_path``); the evaluation's loads no encoder weights (the
        trained weights replace them)."""
        from .networks import NETWORKS

        args = {k: v for k, v in self.network_args.items() if training or k != WEIGHTS_FILE_ARG}
        definition = {
            "_target_": NETWORK_TARGET,
            "name": self.network,
            "in_channels": "$len(@modalities)",
            "out_channels": len(REGIONS),
            **args,
        }
        parameters = inspect.signature(NETWORKS[self.network]).parameters.values()
        takes_weights = any(p.kind is p.VAR_KEYWORD or p.name == "pretrained" for p in parameters)
        if training and takes_weights:
            definition["pretrained"] = "@pretrained"
        return definition


def _error(where: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {message}")


def load_variants(
    path: str | os.PathLike,
    known_id: Callable[[str], bool],
    only: Sequence[str] | None = None,
) -> list[Variant]:
    """The variants of a variants file (a JSON object ``{name: {"network": ..., "network_args": {...},
    "overrides": {...}, "description": ...}}``, in file order), or only those named in ``only`` (in that order).

    Args:
        path: the JSON file.
        known_id: whether a bundle id exists in the training or evaluation configs (overrides are checked with it).
        only: variant names to keep.

    Raises:
        ConfigurationError: for a missing or malformed file, an unknown network, key or override id, an override of
            a shared id, a variant name that cannot be a folder name, or an unknown name in ``only``.
    """
    from .networks import NETWORKS

    file = Path(path)
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"variants file not found: {file}") from None
    except (OSError, ValueError) as err:
        raise ConfigurationError(f"variants file {file} is not readable JSON ({err})") from None
    if not isinstance(entries, dict) or not entries:
        raise _error(str(file), 'a JSON object of variants is expected: {"name": {"network": ...}, ...}')
    variants = []
    for name, entry in entries.items():
        where = f"{file}: variant {name!r}"
        if not _VARIANT_NAME.match(name):
            raise _error(where, "a variant name is a folder name: letters, digits, '_', '.', '-'")
        if not isinstance(entry, dict) or "network" not in entry:
            raise _error(where, 'an object with a "network" is expected')
        unknown = sorted(set(entry) - set(VARIANT_KEYS))
        if unknown:
            raise _error(where, f"unknown key {unknown[0]!r}; the keys are {', '.join(VARIANT_KEYS)}")
        if entry["network"] not in NETWORKS:
            raise _error(where, f"unknown network {entry['network']!r}; choose one of {sorted(NETWORKS)}")
        args, overrides = entry.get("network_args", {}), entry.get("overrides", {})
        if not isinstance(args, dict) or not isinstance(overrides, dict):
            raise _error(where, "network_args and overrides are JSON objects")
        shared_args = sorted(set(args) & set(SHARED_ARGS))
        if shared_args:
            raise _error(where, f"network_args may not set {shared_args[0]!r}: it is the same for every variant")
        check_overrides(overrides, known_id, where, SHARED_IDS)
        variants.append(Variant(name, entry["network"], args, overrides, str(entry.get("description", ""))))
    if only:
        by_name = {v.name: v for v in variants}
        missing = [n for n in only if n not in by_name]
        if missing:
            raise _error(str(file), f"no variant {missing[0]!r}; the variants are {', '.join(by_name)}")
        variants = [by_name[n] for n in dict.fromkeys(only)]
    return variants


def check_overrides(
    overrides: Mapping[str, Any], known_id: Callable[[str], bool], where: str, refused: Iterable[str]
) -> None:
    """Refuse bundle ids that are unknown or among ``refused``.

    Raises:
        ConfigurationError: naming the first such id.
    """
    refused = set(refused)
    for key in overrides:
        if key == WEIGHTS_FILE_ARG:
            raise _error(where, f"an encoder weights file fits one backbone: give {key} in a variant's network_args")
        if key in refused or key.split("#")[0] in refused:
            raise _error(where, f"{key!r} is set by the comparison for every variant alike")
        if not known_id(key):
            raise _error(where, f"unknown bundle id {key!r} (not in train.json, inference.json or evaluate.json)")


def network_cost(variant: Variant, in_channels: int, roi_size: Sequence[int]) -> dict[str, Any]:
    """Parameters and GFLOP of one forward pass on one ``roi_size`` slice of the variant's network (random
    weights); building it also checks its arguments and that it can segment slices of that size.

    Raises:
        ConfigurationError: for network arguments it does not take, or a slice size too small for it.
    """
    from .networks import build_network
    from .networks.cost import count_flops, count_parameters

    where = f"variant {variant.name!r}"
    args = {k: v for k, v in variant.network_args.items() if k != WEIGHTS_FILE_ARG}  # random weights suffice
    try:
        network = build_network(variant.network, in_channels=in_channels, out_channels=len(REGIONS), **args)
    except TypeError as err:
        raise _error(where, f"network {variant.network!r} does not take these network_args ({err})") from None
    except ConfigurationError as err:
        raise _error(where, str(err)) from None
    size = "x".join(map(str, roi_size))
    try:
        flops = count_flops(network, (1, in_channels, *roi_size))
    except RuntimeError as err:
        reason = str(err).splitlines()[0]
        raise _error(where, f"its network cannot segment {size} slices ({reason}); give a larger roi_size") from None
    return {"parameters": count_parameters(network), "gflop_per_slice": flops / 1e9, "roi_size": list(roi_size)}


def check_record(path: Path, record: Mapping[str, Any], what: str, ignore: Iterable[str] = ()) -> None:
    """Write ``record`` to ``path``, or check that the one there matches it (but for the keys ``ignore``).

    Raises:
        ConfigurationError: when an earlier record differs; a resumed comparison must keep its settings.
    """
    record = json.loads(json.dumps(record))
    if path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        for key in sorted(set(earlier) | set(record)):
            if key not in ignore and earlier.get(key) != record.get(key):
                raise ConfigurationError(
                    f"{path.parent} holds {what} with {key} = {earlier.get(key)!r}, not {record.get(key)!r}: "
                    "resume it with the same settings, or give another output folder (or variant name)"
                )
    write_json_atomic(path, record)


# ------------------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Run:
    """The training and evaluation of one variant on one fold, in ``OUT/<variant>/fold<k>``."""

    variant: Variant
    fold: int
    folder: Path

    @property
    def models(self) -> Path:
        return self.folder / outputs.MODELS_DIR

    @property
    def weights(self) -> Path:
        return self.models / outputs.WEIGHTS

    @property
    def logs(self) -> Path:
        return self.folder / outputs.RUNS_DIR

    @property
    def evaluation(self) -> Path:
        return self.folder / outputs.EVAL_DIR

    @property
    def metrics(self) -> Path:
        return self.evaluation / outputs.METRICS_CSV

    @property
    def training_record(self) -> Path:
        return self.folder / outputs.TRAINING_JSON

    @property
    def finished(self) -> bool:
        return self.metrics.is_file()

    @property
    def trained(self) -> bool:
        return self.training_record.is_file() and self.weights.is_file()


def plan_runs(output_dir: str | os.PathLike, variants: Sequence[Variant], folds: Sequence[int]) -> list[Run]:
    """Every (variant, fold) run, fold by fold (all variants of fold 0 first), finished or not."""
    out = Path(output_dir)
    return [Run(v, k, out / v.name / outputs.fold_dir(k)) for k in folds for v in variants]


def describe_dataset(dataset_dir: str | os.PathLike, label_files: Sequence[str | os.PathLike]) -> str:
    """What the data is, for the table's title: generated cases say so (:func:`~axunet_bundle.data.synth
    .is_generated` on their label maps), any other dataset is named by its folder."""
    from .data.synth import is_generated

    generated = sum(is_generated(f) for f in label_files)
    name = Path(dataset_dir).resolve().name
    if label_files and generated == len(label_files):
        return "generated BraTS-like cases (not BraTS)"
    if generated:
        return f"`{name}` ({generated} of its {len(label_files)} cases generated, not patient data)"
    return f"`{name}`"


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
    """The numeric columns of an evaluation report (``metrics.csv``) and its rows by case id."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    header = [c for c in (rows[0] if rows else {}) if c != CASE_ID]

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
    """Metric columns grouped by family, in the evaluation report's order: ``{"dice": [("WT", "dice_wt"), ...],
    "hd95": [...]}``; a column without a region suffix is a family of its own (region ``""``)."""
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
    return f"{_DISPLAY.get(family, family)} {region}".strip()


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
    from .visualize import DICE_COLUMNS, comparison_boxplot

    if not scores:
        raise ConfigurationError(f"{output_dir}: no finished run to tabulate yet")
    out = Path(output_dir)
    families = metric_families(c for s in scores.values() for c in s.columns)
    columns = [column for members in families.values() for _, column in members]
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
        outputs.COMPARISON_CSV: write_text_atomic(out / outputs.COMPARISON_CSV, _csv(list(rows[0]), rows)),
        outputs.WILCOXON_CSV: write_text_atomic(
            out / outputs.WILCOXON_CSV,
            _csv(["variant", "reference", "column", *PairedTest.__dataclass_fields__], tests),
        ),
        outputs.PER_CASE_CSV: write_text_atomic(out / outputs.PER_CASE_CSV, _per_case_csv(scores, columns)),
    }
    header = ["variant", "model", "cases"] + [_label(f, r) for f, members in families.items() for r, _ in members]
    header += ["parameters (M)", "GFLOP / slice", "training / fold"]
    lines = [f"# {title}", "", *context, "", *_markdown_table(header, markdown_rows), ""]
    lines += _markdown_tests(tests, families, reference, scores)
    written[outputs.COMPARISON_MD] = write_text_atomic(out / outputs.COMPARISON_MD, "\n".join(lines) + "\n")
    dice = {
        name: {region: np.asarray(list(entry.values(column).values())) for region, column in DICE_COLUMNS.items()}
        for name, entry in scores.items()
    }
    written[outputs.COMPARISON_PNG] = comparison_boxplot(dice, out / outputs.COMPARISON_PNG, title=title)
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
        lines += [f"**{_DISPLAY.get(family, family)}**", ""]
        lines += _markdown_table(["variant", *(r or family for r, _ in members)], rows) + [""]
    if any(t["note"] and t["p_value"] is not None for t in tests):
        lines += [f"{_FEW} fewer than {MIN_WILCOXON_N} non-zero differences: a two-sided p cannot be below 0.05.", ""]
    return lines
