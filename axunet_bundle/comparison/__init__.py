# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The paper's comparison: AXUNet, its baselines and ablations ("variants"), each trained and evaluated by the
bundle's own workflows on the same patient-level folds, and the table of their per-case scores.

This package holds everything but running the workflows (``axunet compare``, :mod:`axunet_bundle.cli.compare`, does
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

from .tables import PairedTest, VariantScores, collect_scores, metric_families, paired_wilcoxon, write_tables
from .variants import (
    COMPARISON_CSV,
    COMPARISON_MD,
    COMPARISON_PNG,
    COMPARISON_SETTINGS,
    DEFAULT_REFERENCE,
    DEFAULT_VARIANTS,
    EXECUTION_IDS,
    NETWORK_TARGET,
    PER_CASE_CSV,
    RESERVED_IDS,
    SHARED_IDS,
    VARIANT_JSON,
    WEIGHTS_FILE_ARG,
    WILCOXON_CSV,
    Run,
    Variant,
    check_overrides,
    check_record,
    datalist_file,
    describe_dataset,
    load_variants,
    network_cost,
    plan_runs,
)

__all__ = [
    "DEFAULT_VARIANTS",
    "COMPARISON_CSV",
    "COMPARISON_MD",
    "COMPARISON_PNG",
    "COMPARISON_SETTINGS",
    "PER_CASE_CSV",
    "VARIANT_JSON",
    "WILCOXON_CSV",
    "datalist_file",
    "DEFAULT_REFERENCE",
    "EXECUTION_IDS",
    "NETWORK_TARGET",
    "RESERVED_IDS",
    "SHARED_IDS",
    "WEIGHTS_FILE_ARG",
    "PairedTest",
    "Run",
    "Variant",
    "VariantScores",
    "check_overrides",
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
