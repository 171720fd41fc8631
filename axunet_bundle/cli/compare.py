# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``axunet compare``: the paper's comparison with one command. Every variant of a variants file (default: the
comparison package's ``variants.json``) is trained and evaluated by the bundle's own workflows on the same patient-level
folds, with the same preprocessing, epochs and seed; then the table (:mod:`axunet_bundle.comparison`)."""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import outputs
from ..atomic import write_json_atomic
from ..data.datalist import MIN_FOLDS
from ..errors import ConfigurationError
from .configs import read_config
from .data import split_names
from .workflows import OPTION_CONFIGS, OPTION_WORKFLOWS, WORKFLOW_CONFIGS, bundle_run

if TYPE_CHECKING:  # the command line imports its commands' machinery when they run
    from ..comparison import Run, Variant

__all__ = ["compare", "run_comparison"]

EPOCHS = 40  # the paper's
FOLDS = 5


def _fold_ids(folds: int, fold: int | Sequence[int] | None) -> list[int]:
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < MIN_FOLDS:
        raise ConfigurationError(f"folds must be an integer >= {MIN_FOLDS}, got {folds!r}")
    wanted = range(folds) if fold is None else [fold] if isinstance(fold, int) else fold
    ids = []
    for k in wanted:
        if isinstance(k, bool) or not isinstance(k, int) or not 0 <= k < folds:
            raise ConfigurationError(f"fold must be a fold number in [0, {folds - 1}] or a list of them, got {fold!r}")
        ids.append(k)
    return list(dict.fromkeys(ids))


def _listing(values: dict) -> str:
    return ", ".join(f"{k}={v}" for k, v in values.items()) or "none"


def _device_name(device: Any) -> str:
    import torch

    if getattr(device, "type", str(device)) == "cuda" and torch.cuda.is_available():
        return torch.cuda.get_device_name(device)
    return f"CPU ({torch.get_num_threads()} threads)"


@dataclass
class _Plan:
    """A comparison checked and set up: its output folder holds the settings, the variants' records and the
    datalists; ``runs`` are every (variant, fold), finished or not."""

    dataset: Path
    variants: list[Variant]
    reference: str
    runs: list[Run]
    datalists: dict[int, Path]
    labels: list[str]  # the label maps of the labelled cases
    costs: dict[str, dict]
    parsers: dict[str, Any]  # the configs of the training and evaluating workflows
    settings: dict[str, Any]
    overrides: dict[str, Any]
    modalities: list[str]
    roi_size: list[int]
    device: str

    def ids_of(self, workflow: str, run: Run) -> dict[str, Any]:
        """The shared and the variant's overrides that are ids of ``workflow``'s configs, or that select one of its
        option files (:data:`~axunet_bundle.cli.workflows.OPTION_WORKFLOWS`: the slice cache for training, flip
        test-time augmentation for evaluation)."""
        values = {**self.overrides, **run.variant.overrides}
        return {
            key: value
            for key, value in values.items()
            if key in self.parsers[workflow] or workflow in OPTION_WORKFLOWS.get(key, ())
        }


def _prepare(
    dataset_dir: str,
    output_dir: str,
    overrides: dict[str, Any],
    *,
    variants: str | None,
    only: Sequence[str] | None,
    reference: str | None,
    folds: int,
    fold: int | Sequence[int] | None,
    epochs: int,
    seed: int,
    pretrained: bool,
) -> _Plan:
    """Check everything a user gives before anything is written (a mistake leaves no settings behind), then write
    or check the settings, the variants' records and the datalists. The options are :func:`compare`'s."""
    from ..comparison import (
        COMPARISON_SETTINGS,
        DEFAULT_REFERENCE,
        DEFAULT_VARIANTS,
        EXECUTION_IDS,
        RESERVED_IDS,
        VARIANT_JSON,
        check_overrides,
        check_record,
        datalist_file,
        load_variants,
        network_cost,
        plan_runs,
    )
    from ..data.datalist import TRAINING, VALIDATION, make_datalist

    fold_ids = _fold_ids(folds, fold)
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigurationError(f"epochs must be a positive integer, got {epochs!r}")
    if not isinstance(pretrained, bool):
        raise ConfigurationError(f"pretrained must be True or False, got {pretrained!r}")
    parsers = {workflow: read_config(*WORKFLOW_CONFIGS[workflow]) for workflow in ("training", "evaluating")}

    def known(key: str) -> bool:
        return key in OPTION_CONFIGS or any(key in parser for parser in parsers.values())

    check_overrides(overrides, known, "compare", RESERVED_IDS)
    variant_list = load_variants(variants or DEFAULT_VARIANTS, known, only)
    names = [v.name for v in variant_list]
    reference = reference or (DEFAULT_REFERENCE if DEFAULT_REFERENCE in names else names[0])
    if reference not in names:
        raise ConfigurationError(f"reference {reference!r} is not among the variants: {', '.join(names)}")
    train = read_config("train.json", **overrides, epochs=epochs)
    modalities, roi_size = train.get_parsed_content("modalities"), train.get_parsed_content("roi_size")
    if train.get_parsed_content("val_interval") > epochs:
        raise ConfigurationError(f"val_interval must be at most epochs ({epochs}): the best model is a validated one")
    dataset, out = Path(dataset_dir).resolve(), Path(output_dir).resolve()
    splits = {k: make_datalist(dataset, modalities=modalities, folds=folds, fold=k, seed=seed) for k in fold_ids}
    costs = {v.name: network_cost(v, len(modalities), roi_size) for v in variant_list}

    shared = {key: value for key, value in overrides.items() if key not in EXECUTION_IDS}
    settings = {"dataset_dir": str(dataset), "folds": folds, "seed": seed, "epochs": epochs, "pretrained": pretrained}
    check_record(out / COMPARISON_SETTINGS, {**settings, "overrides": shared}, "a comparison")
    for v in variant_list:
        record = {**v.spec(), "description": v.description, **costs[v.name]}
        ignored = ["description", "gflop_per_slice"]  # FlopCounterMode may count differently in another torch
        check_record(out / v.name / VARIANT_JSON, record, f"variant {v.name!r}", ignored)
    datalists = {k: out / datalist_file(k) for k in fold_ids}
    for k, path in datalists.items():
        if path.is_file() and json.loads(path.read_text(encoding="utf-8")) != json.loads(json.dumps(splits[k])):
            raise ConfigurationError(f"{path} differs from the split of {dataset} now: its cases changed")
        write_json_atomic(path, splits[k])
    split = splits[fold_ids[0]]
    return _Plan(
        dataset=dataset,
        variants=variant_list,
        reference=reference,
        runs=plan_runs(out, variant_list, fold_ids),
        datalists=datalists,
        labels=[item["label"] for item in split[TRAINING] + split[VALIDATION]],
        costs=costs,
        parsers=parsers,
        settings=settings,
        overrides=overrides,
        modalities=modalities,
        roi_size=roi_size,
        device=_device_name(train.get_parsed_content("device")),
    )


def _execute(plan: _Plan, run: Run, label: str) -> list[str]:
    """Train (unless an earlier invocation did) and evaluate one run; returns the steps done."""
    from ..data.datalist import VALIDATION

    common = {"dataset_dir": str(plan.dataset), "datalist": str(plan.datalists[run.fold])}
    steps = []
    if not run.trained:  # never started, or stopped during its training: from scratch
        again = run.folder.exists()
        shutil.rmtree(run.folder, ignore_errors=True)
        epochs = plan.settings["epochs"]
        print(f"{label}: training {epochs} epochs" + (" (again: it stopped before the end)" if again else ""))
        started = time.perf_counter()
        training = {
            **common,
            "seed": plan.settings["seed"],
            "epochs": epochs,
            "pretrained": plan.settings["pretrained"],
            "resume": False,
            "ckpt_dir": str(run.models),
            "output_dir": str(run.logs),
            "network_def": run.variant.network_def(),
            "pretrained_path": run.variant.pretrained_path,
        }
        bundle_run("training", {**plan.ids_of("training", run), **training}, pictures=True)
        seconds = time.perf_counter() - started
        for checkpoint in run.models.glob(f"{outputs.CHECKPOINT_PREFIX}*.pt"):  # resumable state: not needed now
            checkpoint.unlink()
        write_json_atomic(run.training_record, {"seconds": seconds, "device": plan.device, "epochs": epochs})
        steps.append("training")
    print(f"{label}: evaluating {run.weights} on the fold's validation cases")
    evaluation = {
        **common,
        "datalist_split": VALIDATION,
        "ckpt_path": str(run.weights),
        "output_dir": str(run.evaluation),
        "overwrite": True,
        "network_def": run.variant.network_def(),
    }
    bundle_run("evaluating", {**plan.ids_of("evaluating", run), **evaluation})
    return steps + ["evaluation"]


def _context(plan: _Plan, scores: dict) -> list[str]:
    """The lines under the table's title: the data, the training, what the numbers are."""
    from ..comparison import EXECUTION_IDS, WEIGHTS_FILE_ARG

    s = plan.settings
    evaluated = ", ".join(str(k) for k in sorted({k for entry in scores.values() for k in entry.folds}))
    devices = ", ".join(sorted({d for entry in scores.values() for d in entry.devices})) or "unknown"
    shared = ", ".join(f"{k}={v}" for k, v in plan.overrides.items() if k not in EXECUTION_IDS) or "none"
    weights = "from ImageNet weights" if s["pretrained"] else "from scratch"
    files = [v.name for v in plan.variants if WEIGHTS_FILE_ARG in v.network_args]
    weights += f" (from weights files: {', '.join(files)})" if files else ""
    return [
        f"- **Data**: {plan.dataset} ({len(plan.labels)} labelled cases), {s['folds']}-fold patient-level "
        f"cross-validation (split seed {s['seed']}); folds evaluated: {evaluated}.",
        f"- **Training**: {s['epochs']} epoch{'s' if s['epochs'] > 1 else ''} per fold, seed {s['seed']}, "
        f"{'x'.join(map(str, plan.roi_size))} slices of {', '.join(plan.modalities)}, timm encoders {weights} "
        f"(pretrained: {str(s['pretrained']).lower()}); shared overrides: {shared}; device: {devices}.",
        "- **Scores**: each run's evaluation report (`eval/metrics.csv`: whole 3D validation volumes), pooled over "
        "folds; mean ± std (population) over the cases with a finite score. The legacy HD95 is in mm (the "
        "reference's voxel spacing).",
        "- **Cost**: parameters; GFLOP of one forward pass on one slice (PyTorch FlopCounterMode, 2 per "
        "multiply-add); training: wall time of the training workflow (with its validations), mean per fold.",
        "- Every number here was computed by these runs; none is copied from the paper.",
    ]


def run_comparison(
    dataset_dir: str, output_dir: str, overrides: dict | None = None, **options: Any
) -> tuple[list[tuple[str, int, str]], dict[str, Path]]:
    """Run the comparison; ``options`` are all of :func:`compare`'s (``variants`` ... ``pretrained``). Returns the
    steps it ran, ``(variant, fold, "training" | "evaluation")`` in order (none for what an earlier invocation
    finished), and the table's files by name."""
    from ..comparison import collect_scores, describe_dataset, write_tables

    plan = _prepare(dataset_dir, output_dir, dict(overrides or {}), **options)
    steps = []
    for i, run in enumerate(plan.runs, start=1):
        label = f"[{i}/{len(plan.runs)}] {run.variant.name} fold {run.fold}"
        if run.finished:
            print(f"{label}: finished earlier, skipped")
            continue
        steps += [(run.variant.name, run.fold, step) for step in _execute(plan, run, label)]
    scores = collect_scores(plan.runs, plan.costs)
    title = f"AXUNet, baselines and ablations on {describe_dataset(plan.dataset, plan.labels)}"
    return steps, write_tables(Path(output_dir).resolve(), scores, plan.reference, title, _context(plan, scores))


def compare(
    dataset_dir: str,
    output_dir: str = "comparison",
    variants: str | None = None,
    only: str | Sequence[str] | None = None,
    reference: str | None = None,
    folds: int = FOLDS,
    fold: int | Sequence[int] | None = None,
    epochs: int = EPOCHS,
    seed: int = 0,
    pretrained: bool = False,
    **overrides,
) -> None:
    """The paper's comparison with one command: train and evaluate every variant (AXUNet, its baselines and
    ablations) with the bundle's workflows on the same patient-level folds of DATASET_DIR, with the same
    preprocessing, epochs and seed, then write the table: OUTPUT_DIR/comparison.md and comparison.csv (mean ± std
    over cases of every metric of the evaluation report, parameters, GFLOP per slice, training time), wilcoxon.csv
    (paired tests against the reference), per_case.csv and comparison_dice.png. Run it again to continue a stopped
    comparison: finished runs (variant, fold) are skipped, a run stopped during its training starts again.

    Args:
        dataset_dir: the BraTS folder (labelled cases).
        output_dir: where the runs (OUTPUT_DIR/<variant>/fold<k>/) and the table go.
        variants: a variants JSON file (default: the comparison package's variants.json, the paper's table and
            ablations).
        only: comma-separated variant names to run, e.g. axunet,xception_unet,unet.
        reference: the variant the others are tested against (default: axunet, else the first).
        folds: cross-validation folds of the patient-level split.
        fold: the folds to run, a number or a list (default: all).
        epochs: training epochs of every run.
        seed: seed of the split and of every training.
        pretrained: start the timm encoders from ImageNet weights (needs timm's hub); baselines without one train
            from scratch either way.
        overrides: bundle ids for every variant, e.g. --batch_size 16 --roi_size "[224,224]" --num_workers 4.

    Example:
        axunet compare /data/BraTS2021 --output_dir comparison --fold 0 --only axunet,xception_unet
    """
    from ..comparison import COMPARISON_CSV, COMPARISON_MD, COMPARISON_PNG, PER_CASE_CSV, WILCOXON_CSV

    only = split_names(only) if only else None
    options = dict(variants=variants, only=only, reference=reference, folds=folds, fold=fold, epochs=epochs)
    steps, tables = run_comparison(dataset_dir, output_dir, overrides, seed=seed, pretrained=pretrained, **options)
    print(f"ran {len(steps)} steps; table: {tables[COMPARISON_MD]}")
    for name in (COMPARISON_CSV, WILCOXON_CSV, PER_CASE_CSV, COMPARISON_PNG):
        print(f"  {tables[name]}")
