"""``axunet compare``: variants trained and evaluated by the bundle's workflows on the same folds, the table of
their per-case scores and paired tests, resuming a stopped comparison, and one line for a user's mistake."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
import scipy.stats
from conftest import TINY_SHAPE

from axunet_bundle import outputs
from axunet_bundle.cli import main
from axunet_bundle.cli.compare import run_comparison
from axunet_bundle.comparison import (
    DEFAULT_VARIANTS,
    Variant,
    describe_dataset,
    load_variants,
    network_cost,
    paired_wilcoxon,
    variants,
)
from axunet_bundle.comparison.networks import build_network, count_parameters
from axunet_bundle.errors import ConfigurationError
from axunet_bundle.evaluation import report_columns
from axunet_bundle.synthetic import is_generated, write_synthetic_dataset
from axunet_bundle.visualize import COMPARISON_PANEL_INCHES, FIGURE_DPI

VARIANTS = ["axunet", "xception_unet", "unet"]
FOLDS, FOLD = 2, 0
#: tiny runs: one epoch of a few slices, validated once (the best model is a validated one)
SMALL = ["--roi_size", "[64,64]", "--batch_size", 4, "--slices_per_volume", 2, "--num_workers", 0, "--val_interval", 1]
SETTINGS = ["--folds", FOLDS, "--fold", FOLD, "--epochs", 1, "--seed", 0]
#: the paper's figures (paper facts): none may appear in a table computed here
PAPER_NUMBERS = ("93.73", "93.24", "92.80", "90.88", "90.38", "92.59", "86.81", "84.89", "84.92")


def axunet(*args):
    return main([str(a) for a in args])


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as f:
        return list(csv.DictReader(f))


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_dataset(root, n=6, seed=0, shape=TINY_SHAPE, progress=False)
    return root


@pytest.fixture(scope="module")
def compared(dataset, tmp_path_factory) -> tuple[Path, str]:
    """One small comparison run from the command line: its folder and what it printed."""
    out = tmp_path_factory.mktemp("comparison")
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        axunet("compare", dataset, "--output_dir", out, "--only", ",".join(VARIANTS), *SETTINGS, *SMALL)
    return out, printed.getvalue()


def per_case(out: Path, variant: str) -> dict[str, dict[str, float]]:
    """A run's own evaluation report, by case id."""
    rows = read_csv(out / variant / variants.fold_dir(FOLD) / outputs.EVAL_DIR / outputs.METRICS_CSV)
    return {row["case_id"]: {c: float(row[c]) for c in report_columns()} for row in rows}


@pytest.mark.slow  # the comparison trains tiny variants: about 30 s on 2 CPU cores
def test_table_has_a_row_per_variant_with_every_metric_and_its_costs(compared, dataset):
    out, printed = compared
    rows = read_csv(out / variants.COMPARISON_CSV)
    assert [row["variant"] for row in rows] == VARIANTS
    validation = json.loads((out / variants.datalist_file(FOLD)).read_text())["validation"]
    for row in rows:
        scores = per_case(out, row["variant"])
        assert sorted(scores) == sorted(item["case_id"] for item in validation)  # the same cases for every variant
        assert int(row["n_cases"]) == len(scores) and row["folds"] == str(FOLD)
        for column in report_columns():
            values = np.asarray([s[column] for s in scores.values()])
            values = values[np.isfinite(values)]  # NaN: a region empty in both; inf: no matched lesion
            expected = (values.mean(), values.std()) if values.size else (math.nan, math.nan)
            assert float(row[f"{column}_mean"]) == pytest.approx(expected[0], nan_ok=True)
            assert float(row[f"{column}_std"]) == pytest.approx(expected[1], nan_ok=True)
        net = build_network(row["network"], in_channels=3, out_channels=3)
        assert int(row["parameters"]) == count_parameters(net)
        assert float(row["gflop_per_slice"]) > 0 and float(row["training_seconds_per_fold"]) > 0

    markdown = (out / variants.COMPARISON_MD).read_text()
    title = markdown.splitlines()[0]
    assert title.startswith("# ") and "generated BraTS-like cases (not BraTS)" in title
    assert "1 epoch per fold, seed 0" in markdown and "2-fold" in markdown and "64x64" in markdown
    for variant in VARIANTS:
        assert f"\n| {variant} | " in markdown
    assert not any(number in markdown for number in PAPER_NUMBERS)
    assert str(out / variants.COMPARISON_MD) in printed

    pixels = matplotlib.image.imread(out / variants.COMPARISON_PNG)
    assert pixels.shape[0] == round(3 * COMPARISON_PANEL_INCHES * FIGURE_DPI)  # one panel per region


@pytest.mark.slow  # the comparison trains tiny variants: about 30 s on 2 CPU cores
def test_wilcoxon_tests_are_scipys_on_the_runs_per_case_scores(compared):
    out, _ = compared
    reference = per_case(out, "axunet")
    tests = read_csv(out / variants.WILCOXON_CSV)
    assert {(t["variant"], t["column"]) for t in tests} == {(v, c) for v in VARIANTS[1:] for c in report_columns()}
    computed = 0
    for test in tests:
        scores = per_case(out, test["variant"])
        column = test["column"]  # pairs where both are finite (NaN: region empty in both; inf: no matched lesion)
        cases = sorted(c for c in scores if math.isfinite(scores[c][column]) and math.isfinite(reference[c][column]))
        x = np.asarray([scores[case][column] for case in cases])
        y = np.asarray([reference[case][column] for case in cases])
        assert test["reference"] == "axunet" and int(test["n"]) == len(cases)
        if not cases:
            assert test["p_value"] == "" and test["note"] == "no case scored by both"
            continue
        if not np.any(x - y):
            assert test["p_value"] == "" and "differences zero" in test["note"]
            continue
        expected = scipy.stats.wilcoxon(x, y)
        assert float(test["statistic"]) == pytest.approx(expected.statistic)
        assert float(test["p_value"]) == pytest.approx(expected.pvalue)
        computed += 1
    assert computed  # the untrained UNet's scores differ from AXUNet's


@pytest.mark.slow  # the comparison trains tiny variants: about 30 s on 2 CPU cores
def test_a_second_invocation_skips_finished_runs(compared, dataset, capsys):
    out, _ = compared
    metrics = sorted(out.glob(f"*/fold{FOLD}/{outputs.EVAL_DIR}/{outputs.METRICS_CSV}"))
    assert len(metrics) == len(VARIANTS)
    before = [p.stat().st_mtime_ns for p in metrics]
    axunet("compare", dataset, "--output_dir", out, "--only", ",".join(VARIANTS), *SETTINGS, *SMALL)
    printed = capsys.readouterr().out
    assert printed.count("finished earlier, skipped") == len(VARIANTS) and "ran 0 steps" in printed
    assert [p.stat().st_mtime_ns for p in metrics] == before


@pytest.mark.slow  # the comparison trains tiny variants: about 30 s on 2 CPU cores
def test_a_stopped_comparison_continues_where_it_stopped(compared, dataset):
    out, _ = compared
    fold = variants.fold_dir(FOLD)
    # xception_unet stopped during its training (no training record), unet during its evaluation
    (out / "xception_unet" / fold / variants.TRAINING_JSON).unlink()
    (out / "xception_unet" / fold / outputs.EVAL_DIR / outputs.METRICS_CSV).unlink()
    (out / "unet" / fold / outputs.EVAL_DIR / outputs.METRICS_CSV).unlink()
    unet_weights = out / "unet" / fold / outputs.MODELS_DIR / outputs.WEIGHTS
    trained = unet_weights.stat().st_mtime_ns
    steps, _ = run_comparison(
        str(dataset),
        str(out),
        {"roi_size": [64, 64], "batch_size": 4, "slices_per_volume": 2, "num_workers": 0, "val_interval": 1},
        variants=None,
        only=VARIANTS,
        reference=None,
        folds=FOLDS,
        fold=FOLD,
        epochs=1,
        seed=0,
        pretrained=False,
    )
    assert steps == [
        ("xception_unet", FOLD, "training"),
        ("xception_unet", FOLD, "evaluation"),
        ("unet", FOLD, "evaluation"),
    ]
    assert unet_weights.stat().st_mtime_ns == trained
    assert not list((out / "xception_unet" / fold / outputs.MODELS_DIR).glob("checkpoint*"))  # only the weights
    assert [row["variant"] for row in read_csv(out / variants.COMPARISON_CSV)] == VARIANTS


@pytest.mark.slow  # the comparison trains tiny variants: about 30 s on 2 CPU cores
def test_a_resumed_comparison_keeps_its_settings(compared, dataset, capsys):
    out, _ = compared
    with pytest.raises(SystemExit) as refused:
        axunet("compare", dataset, "--output_dir", out, "--only", "unet", "--folds", FOLDS, "--epochs", 2, *SMALL)
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: {out} holds a comparison with epochs = 1, not 2: resume it with the same settings, "
        "or give another output folder (or variant name)"
    )


def test_paired_wilcoxon_pairs_by_fold_and_case_and_says_when_it_cannot_test():
    rng = np.random.default_rng(0)
    keys = [(fold, f"case{i}") for fold in (0, 1) for i in range(6)]
    reference = {k: float(v) for k, v in zip(keys, rng.uniform(0.5, 0.9, len(keys)))}
    variant = {k: v + float(d) for (k, v), d in zip(reference.items(), rng.normal(0.05, 0.05, len(keys)))}
    variant[(2, "only_here")] = 0.1  # scored by one of them: not paired
    test = paired_wilcoxon(variant, reference)
    expected = scipy.stats.wilcoxon([variant[k] for k in keys], [reference[k] for k in keys])
    assert (test.n, test.statistic, test.p_value, test.note) == (len(keys), expected.statistic, expected.pvalue, "")
    assert test.median_difference == pytest.approx(np.median([variant[k] - reference[k] for k in keys]))

    same = paired_wilcoxon(reference, reference)
    assert (same.n, same.p_value, same.note) == (len(keys), None, f"all {len(keys)} differences zero: no test")
    assert paired_wilcoxon({(0, "a"): 1.0}, {(1, "a"): 1.0}).note == "no case scored by both"
    few = paired_wilcoxon({k: reference[k] + 0.1 for k in keys[:3]}, reference)
    assert few.n == 3 and few.p_value is not None and "cannot be below 0.05" in few.note


def test_the_default_variants_are_the_papers_table_and_ablations():
    variants = {v.name: v for v in load_variants(DEFAULT_VARIANTS, lambda key: True)}
    assert list(variants)[:6] == [
        "axunet",
        "xception_unet",
        "inception_unet",
        "attention_resunet",
        "attention_gate_unet",
        "unet",
    ]
    args = {name: dict(v.network_args) for name, v in variants.items() if v.network == "axunet"}
    assert {"attention": "pam"} in args.values() and {"attention": "cam"} in args.values()
    assert {"pam_kernel": "softmax"} in args.values()
    assert {"attention_levels": [1, 2]} in args.values() and {"attention_levels": [3, 4]} in args.values()
    inception = variants["inception_unet"]
    assert network_cost(inception, 3, [224, 224])["parameters"] > 0  # a timm Inception-v3 encoder fits
    with pytest.raises(ConfigurationError, match="cannot segment 64x64 slices.*give a larger roi_size") as small:
        network_cost(inception, 3, [64, 64])
    assert "\n" not in str(small.value)


@pytest.mark.parametrize(
    "entry, message",
    [
        ({"network": "segformer"}, "unknown network 'segformer'"),
        ({"network": "axunet", "overrides": {"learning_rat": 1}}, "unknown bundle id 'learning_rat'"),
        ({"network": "axunet", "overrides": {"epochs": 3}}, "'epochs' is set by the comparison for every variant"),
        ({"network": "axunet", "overrides": {"roi_size": [96, 96]}}, "'roi_size' is set by the comparison"),
        ({"network": "axunet", "network_args": {"pretrained": True}}, "network_args may not set 'pretrained'"),
        ({"network": "axunet", "overrides": {"pretrained_path": "x.pth"}}, "give pretrained_path in a variant's"),
        ({"network": "axunet", "options": {}}, "unknown key 'options'"),
    ],
)
def test_a_wrong_variants_file_is_one_line(tmp_path, dataset, capsys, entry, message):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"mine": entry}))
    with pytest.raises(SystemExit) as refused:
        axunet("compare", dataset, "--output_dir", tmp_path / "out", "--variants", variants)
    error = capsys.readouterr().err.strip()
    assert refused.value.code == 2 and error.startswith(f"error: {variants}: variant 'mine': ") and message in error
    assert "\n" not in error and not (tmp_path / "out").exists()  # nothing written


def test_a_wrong_network_argument_or_dataset_is_one_line(tmp_path, dataset, capsys):
    variants = tmp_path / "variants.json"
    variants.write_text(json.dumps({"mine": {"network": "axunet", "network_args": {"attention_level": [1]}}}))
    few = tmp_path / "few"
    write_synthetic_dataset(few, n=1, shape=TINY_SHAPE, progress=False)
    for args, message in (
        ([dataset, "--variants", variants], "variant 'mine': network 'axunet' does not take these network_args"),
        ([tmp_path / "missing", "--only", "unet"], f"DATASET_DIR: {tmp_path / 'missing'} does not exist"),
        ([few, "--only", "unet", "--folds", 2], "too few labelled patients for 2-fold cross-validation"),
        ([dataset, "--only", "unet", "--reference", "axunet"], "reference 'axunet' is not among the variants"),
        ([dataset, "--only", "unet", "--fold", 5], "fold must be a fold number in [0, 4]"),
    ):
        with pytest.raises(SystemExit) as refused:
            axunet("compare", *args, "--output_dir", tmp_path / "out", *SMALL)
        error = capsys.readouterr().err.strip()
        assert refused.value.code == 2 and error.startswith("error: ") and message in error, error
        assert "\n" not in error


def test_generated_cases_say_so(tmp_path, dataset):
    labels = sorted(dataset.glob("*/*_seg.nii.gz"))
    assert labels and all(is_generated(f) for f in labels)
    assert describe_dataset(dataset, labels) == "generated BraTS-like cases (not BraTS)"
    patient = tmp_path / "BraTS2021_Training" / "case_seg.nii.gz"  # written by another tool
    patient.parent.mkdir()
    nib.save(nib.Nifti1Image(np.zeros((4, 4, 4), np.uint8), np.eye(4)), patient)
    assert not is_generated(patient)
    assert describe_dataset(patient.parent, [patient]) == "`BraTS2021_Training`"
    assert "1 of its 2 cases generated" in describe_dataset(patient.parent, [patient, labels[0]])


def test_variant_network_definitions_hold_the_architecture_and_the_weights_file_goes_to_the_training():
    axunet = Variant("a", "axunet", {"attention": "pam"})
    assert axunet.network_def()["attention"] == "pam"
    assert "pretrained" not in axunet.network_def() and axunet.pretrained_path is None
    local = Variant("r", "attention_resunet", {"pretrained_path": "resnet50.pth"})  # a file fits one backbone
    assert "pretrained_path" not in local.network_def()
    assert local.pretrained_path == "resnet50.pth"


def test_the_option_files_ids_reach_their_workflows(tmp_path):
    """A shared --slice_cache_dir reaches the training (its override file reads it) and --flip_tta the evaluation,
    although neither is an id of the base configs."""
    from axunet_bundle.cli.compare import _Plan
    from axunet_bundle.cli.configs import read_config
    from axunet_bundle.cli.workflows import WORKFLOW_CONFIGS
    from axunet_bundle.comparison.variants import Run

    parsers = {w: read_config(*WORKFLOW_CONFIGS[w]) for w in ("training", "evaluating")}
    overrides = {"slice_cache_dir": "cache", "flip_tta": True, "epochs": 2, "threshold": 0.4}
    plan = _Plan(tmp_path, [], "axunet", [], {}, [], {}, parsers, {}, overrides, [], [64, 64], "cpu")
    run = Run(Variant("axunet", "axunet", overrides={"learning_rate": 0.01}), 0, tmp_path / "axunet" / "fold0")
    assert plan.ids_of("training", run) == {"slice_cache_dir": "cache", "epochs": 2, "learning_rate": 0.01}
    assert plan.ids_of("evaluating", run) == {"flip_tta": True, "threshold": 0.4}
