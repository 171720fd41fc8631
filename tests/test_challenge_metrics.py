# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The report's two families of scores against the BraTS challenges' own package, brats-evaluation: the legacy Dice
and HD95 on crafted shapes, every challenge number of ``axunet score`` against the package's command-line run on the
same files, the challenge configs, and scoring label maps from other tools."""

from __future__ import annotations

import contextlib
import csv
import io
import json
import logging
import math
import warnings

import nibabel as nib
import numpy as np
import pytest
import torch
from brats_evaluation import config_path
from conftest import raises_user_error
from monai.metrics import compute_hausdorff_distance
from official_brats import assert_same_numbers, official_scores
from panoptica import Panoptica_Evaluator

from axunet_bundle.cli import main
from axunet_bundle.cli.score import label_map_files, score_folders
from axunet_bundle.data.labels import labels_to_regions
from axunet_bundle.errors import ConfigurationError, DatasetError, LeftOutCasesError
from axunet_bundle.evaluation import challenge as challenge_metrics
from axunet_bundle.evaluation.challenge import CHALLENGE_LABELS, challenge_columns, score_challenge
from axunet_bundle.evaluation.metrics import HD95_EMPTY_PENALTY
from axunet_bundle.evaluation.report import ReportExistsError, report_columns, score_label_maps, summarize
from axunet_bundle.synthetic import write_synthetic_dataset

SHAPE = (40, 40, 30)
ET_2021, ET_GLI = 4, 3
REGIONS = ("wt", "tc", "et")


def _package(prediction: np.ndarray, reference: np.ndarray, spacing=(1.0, 1.0, 1.0)) -> dict:
    """brats-evaluation's gli evaluator, called directly on ET-only label maps: its ``et`` result."""
    with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        evaluator = Panoptica_Evaluator.load_from_config(config_path("gli"))
        result = evaluator.evaluate(
            (prediction > 0).astype(np.uint8) * ET_GLI,
            (reference > 0).astype(np.uint8) * ET_GLI,
            voxelspacing=spacing,
            skip_groups=["netc", "snfh", "rc", "tc", "wt"],
        )
    return result["et"].to_dict()


def _cube(corner, size) -> tuple[slice, ...]:
    return tuple(slice(c, c + s) for c, s in zip(corner, size))


def _crafted(name: str) -> tuple[np.ndarray, np.ndarray]:
    pred, ref = np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8)
    if name == "cube":
        ref[_cube((10, 10, 10), (10, 10, 10))] = ET_2021
        pred[_cube((12, 10, 11), (10, 10, 10))] = ET_2021
    elif name == "two lesions":
        ref[_cube((4, 4, 4), (8, 8, 8))] = ET_2021
        ref[_cube((25, 25, 18), (6, 6, 6))] = ET_2021
        pred[_cube((5, 4, 4), (8, 8, 8))] = ET_2021
        pred[_cube((25, 26, 19), (6, 6, 6))] = ET_2021
    elif name == "missed and false-positive lesions":
        ref[_cube((4, 4, 4), (8, 8, 8))] = ET_2021
        ref[_cube((25, 25, 18), (6, 6, 6))] = ET_2021  # missed
        pred[_cube((5, 4, 4), (8, 8, 8))] = ET_2021
        pred[_cube((30, 4, 4), (6, 6, 6))] = ET_2021  # false positive
    elif name == "one-voxel lesion":
        ref[20, 20, 15] = ET_2021
        pred[_cube((19, 19, 14), (3, 3, 3))] = ET_2021
    elif name == "empty prediction":
        ref[_cube((10, 10, 10), (10, 10, 10))] = ET_2021
    elif name == "empty reference":
        pred[_cube((10, 10, 10), (10, 10, 10))] = ET_2021
    return pred, ref


OVERLAPPING = ["cube", "two lesions", "missed and false-positive lesions", "one-voxel lesion"]


@pytest.mark.parametrize("name", OVERLAPPING)
def test_legacy_dice_and_hd95_equal_the_package_global_ones(name):
    pred, ref = _crafted(name)
    ours = score_label_maps(pred, ref, "brats2021")
    theirs = _package(pred, ref)
    assert ours["legacy_dice_et"] == pytest.approx(theirs["global_bin_dsc"], abs=1e-4)
    assert ours["legacy_hd95_et"] == pytest.approx(theirs["global_bin_hd95"], abs=1e-4)
    if name == "one-voxel lesion":
        assert ours["legacy_hd95_et"] == pytest.approx(math.sqrt(3), abs=1e-4)
    if name == "missed and false-positive lesions":  # MONAI's HD95, the larger directed percentile, differs here
        monai_hd95 = compute_hausdorff_distance(
            torch.as_tensor(pred > 0)[None, None], torch.as_tensor(ref > 0)[None, None], percentile=95
        )
        assert float(monai_hd95) > ours["legacy_hd95_et"] + 0.5


def test_legacy_hd95_is_in_mm_as_the_package_lesion_wise_one():
    """At anisotropic spacing the legacy HD95 uses it (mm), as the package's lesion-wise HD95 does; the package's
    global HD95 is in voxels."""
    pred, ref = _crafted("cube")
    spacing = (1.0, 1.0, 2.5)
    ours = score_label_maps(pred, ref, "brats2021", spacing=spacing)
    theirs = _package(pred, ref, spacing)
    assert ours["legacy_hd95_et"] == pytest.approx(theirs["sq_hd95"], abs=1e-4)
    assert ours["legacy_hd95_et"] == pytest.approx(2.5)  # the shift of 1 voxel along the 2.5 mm axis dominates
    assert theirs["global_bin_hd95"] == pytest.approx(score_label_maps(pred, ref, "brats2021")["legacy_hd95_et"])
    assert ours["legacy_dice_et"] == pytest.approx(theirs["global_bin_dsc"], abs=1e-4)


@pytest.mark.parametrize("name", ["empty prediction", "empty reference"])
def test_empty_regions_follow_each_family_rules(name):
    """Legacy: Dice 0, HD95 the BraTS <= 2021 volume diagonal 373.13 mm; the package: DSC 0, HD95 inf (373 parsed)."""
    pred, ref = _crafted(name)
    ours = score_label_maps(pred, ref, "brats2021", challenge="gli")
    theirs = _package(pred, ref)
    assert ours["legacy_dice_et"] == theirs["global_bin_dsc"] == 0
    assert ours["legacy_hd95_et"] == pytest.approx(HD95_EMPTY_PENALTY)
    assert math.isinf(theirs["global_bin_hd95"]) and ours["global_hd95_et"] == 373.0
    both_empty = score_label_maps(np.zeros(SHAPE, np.uint8), np.zeros(SHAPE, np.uint8), "brats2021", challenge="gli")
    assert both_empty["legacy_dice_et"] == 1 and both_empty["legacy_hd95_et"] == 0
    assert all(math.isnan(both_empty[f"{m}_et"]) for m in ("global_dsc", "lesionwise_dsc_mean", "all_instance_f1"))


def test_legacy_hd95_equals_the_package_on_random_ellipsoids():
    rng = np.random.default_rng(0)
    grid = np.indices(SHAPE, dtype=float)
    for _ in range(6):
        masks = []
        for _ in range(2):
            centre = rng.uniform(12, 28, 3) * np.array([1, 1, 0.75])
            axes = rng.uniform(4, 9, 3)
            masks.append((sum(((g - c) / a) ** 2 for g, c, a in zip(grid, centre, axes)) <= 1).astype(np.uint8) * 4)
        pred, ref = masks
        if not (pred & ref).any():
            continue
        ours = score_label_maps(pred, ref, "brats2021")
        assert ours["legacy_hd95_et"] == pytest.approx(_package(pred, ref)["global_bin_hd95"], abs=1e-4)


def test_every_challenge_config_with_tumour_regions_scores_them_alike():
    """Each config gets the label values its groups expect (ped numbers ET 1, NETC 2, ED 4): the same case scores the
    same WT, TC and ET whatever the config."""
    ref = np.zeros(SHAPE, np.uint8)
    ref[_cube((8, 8, 8), (20, 20, 14))] = 2
    ref[_cube((12, 12, 10), (10, 10, 8))] = 1
    ref[_cube((14, 14, 12), (4, 4, 4))] = 4
    pred = np.roll(ref, 2, axis=0)
    regions = [labels_to_regions(m[None], "brats2021") for m in (pred, ref)]
    scores = {name: score_challenge(*regions, (1.0, 1.0, 1.0), name) for name in CHALLENGE_LABELS}
    for values in scores.values():
        assert_same_numbers(values, scores["gli"], challenge_columns())
    assert scores["gli"]["global_dsc_tc"] < 1 and scores["gli"]["all_instance_tp_wt"] == 1
    with raises_user_error(ConfigurationError, match="MenRT scores one gross tumour volume"):
        score_challenge(*regions, (1.0, 1.0, 1.0), "MenRT")
    with raises_user_error(ConfigurationError, match="challenge must be one of auto, none, gli"):
        score_challenge(*regions, (1.0, 1.0, 1.0), "glioma")


# --- axunet score: label maps from any tool ------------------------------------------------------------------------


def _with_satellites(label: np.ndarray, corner, value: int) -> np.ndarray:
    out = label.copy()
    out[_cube(corner, (4, 4, 4))] = value
    return out


@pytest.fixture(scope="module")
def scored(tmp_path_factory):
    """Generated cases with a second, separate ET lesion in the references; predictions (nnU-Net-style names) that
    miss it and add a false-positive lesion, one that misses all ET, and one case without a prediction."""
    root = tmp_path_factory.mktemp("score")
    cases = write_synthetic_dataset(root / "ref", 3, seed=6, shape=(64, 64, 40), progress=False)  # all with ET
    (root / "pred").mkdir()
    for i, case in enumerate(cases):
        seg_file = next(case.glob("*_seg.nii.gz"))
        image = nib.load(seg_file)
        label = np.asarray(image.dataobj)
        reference = _with_satellites(label, (4, 4, 30), 4)  # a satellite lesion far from the tumour
        nib.save(nib.Nifti1Image(reference, image.affine, image.header), seg_file)
        if i == 2:
            continue  # no prediction: scored as an empty segmentation
        prediction = _with_satellites(label, (56, 4, 4), 4)  # misses the satellite, adds a false positive
        if i == 1:
            prediction[prediction == 4] = 1  # no ET at all
        nib.save(nib.Nifti1Image(prediction, image.affine, image.header), root / "pred" / f"{case.name}.nii.gz")
    empty = root / "empty" / f"{cases[2].name}.nii.gz"  # what the package scores for the missing prediction
    empty.parent.mkdir()
    image = nib.load(next(cases[2].glob("*_seg.nii.gz")))
    nib.save(nib.Nifti1Image(np.zeros(image.shape, np.uint8), image.affine, image.header), empty)
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        main(["score", str(root / "pred"), str(root / "ref"), "--output_dir", str(root / "out")])
    return root, cases, printed.getvalue()


def test_score_reports_every_number_as_brats_evaluation(scored, tmp_path):
    root, cases, printed = scored
    with open(root / "out" / "metrics.csv", newline="") as f:
        rows = {row.pop("case_id"): {k: float(v) for k, v in row.items()} for row in csv.DictReader(f)}
    assert list(next(iter(rows.values()))) == report_columns()
    assert sorted(rows) == [c.name for c in cases] and "scored 3 cases" in printed
    refs = {c.name: next(c.glob("*_seg.nii.gz")) for c in cases}
    preds = {c.name: root / "pred" / f"{c.name}.nii.gz" for c in cases[:2]}
    preds[cases[2].name] = root / "empty" / f"{cases[2].name}.nii.gz"
    theirs = official_scores([(c, preds[c], refs[c]) for c in sorted(refs)], "brats2021", tmp_path)
    for case_id, values in rows.items():
        assert_same_numbers(values, theirs[case_id], challenge_columns())
    first = rows[cases[0].name]
    # the missed satellite and the false positive, as lesion counts; the lesion-wise Dice ignores both
    assert (first["all_instance_tp_et"], first["all_instance_fp_et"], first["all_instance_fn_et"]) == (1, 1, 1)
    assert first["all_instance_f1_et"] == pytest.approx(0.5)
    assert first["lesionwise_dsc_mean_et"] == 1.0 and first["global_dsc_et"] < 1
    assert rows[cases[1].name]["all_instance_tp_et"] == 0 and math.isinf(rows[cases[1].name]["lesionwise_hd95_mean_et"])
    assert rows[cases[2].name]["legacy_dice_wt"] == 0 and rows[cases[2].name]["legacy_hd95_wt"] == HD95_EMPTY_PENALTY


def test_score_summary_and_box_plot_carry_both_families(scored):
    root, _, _ = scored
    summary = json.loads((root / "out" / "summary.json").read_text())
    with open(root / "out" / "metrics.csv", newline="") as f:
        values = [float(row["lesionwise_hd95_mean_et"]) for row in csv.DictReader(f)]
    et = summary["lesionwise_hd95_mean"]["ET"]
    finite = [v for v in values if math.isfinite(v)]
    assert et["n"] == len(finite) and et["n_infinite"] == len(values) - len(finite) > 0
    assert et["mean"] == pytest.approx(np.mean(finite)) and et["median"] == pytest.approx(np.median(finite))
    assert set(summary) >= {"n_cases", "legacy_dice", "legacy_hd95", "global_dsc", "lesionwise_dsc_mean"}
    assert (root / "out" / "dice_boxplot.png").read_bytes()[:4] == b"\x89PNG"


def test_score_matches_cases_by_id_and_warns_about_the_unmatched(scored, tmp_path, caplog):
    root, cases, _ = scored
    pred = tmp_path / "pred"
    pred.mkdir()
    source = root / "pred" / f"{cases[0].name}.nii.gz"
    (pred / f"{cases[0].name}_seg.nii.gz").write_bytes(source.read_bytes())  # the bundle's own naming
    (pred / "nested").mkdir()
    (pred / "nested" / "BraTS2021_99999.nii.gz").write_bytes(source.read_bytes())  # no such reference
    with caplog.at_level(logging.WARNING):
        rows = score_folders(pred, root / "ref", tmp_path / "out", challenge="none")
    assert [r["case_id"] for r in rows] == [c.name for c in cases]
    metrics = {"case_id", *report_columns(challenge=False)}
    assert metrics <= set(rows[0]) and all(c.endswith("_mL") for c in set(rows[0]) - metrics)  # + the volumes
    assert "BraTS2021_99999.nii.gz has no reference" in caplog.text
    assert f"case {cases[1].name} has no prediction" in caplog.text
    with raises_user_error(ReportExistsError, match="metrics.csv exists"):
        score_folders(pred, root / "ref", tmp_path / "out")
    with raises_user_error(DatasetError, match="no prediction in .* matches a reference"):
        score_folders(root / "empty", tmp_path / "pred", tmp_path / "other")


def test_score_reads_label_folders_in_their_labels(tmp_path):
    """A flat folder of BraTS 2023-valued label maps is read as such; Decathlon labels come with their task folder."""
    write_synthetic_dataset(tmp_path / "msd", 2, seed=1, layout="msd", shape=(48, 48, 24), progress=False)
    labels = tmp_path / "msd" / "labelsTr"
    found = label_map_files(tmp_path / "msd")
    assert set(found) == {"BRATS_000", "BRATS_001"} and {c for _, c in found.values()} == {"msd"}
    rows = score_folders(labels, tmp_path / "msd", tmp_path / "out", challenge="none")
    assert all(r["legacy_dice_tc"] == 1.0 and r["legacy_dice_et"] == 1.0 for r in rows)  # read as msd: TC is 2+3

    write_synthetic_dataset(tmp_path / "b23", 1, seed=2, layout="2023", shape=(48, 48, 24), progress=False)
    flat = tmp_path / "flat"
    flat.mkdir()
    for seg in (tmp_path / "b23").rglob("*-seg.nii.gz"):
        (flat / f"{seg.name.removesuffix('-seg.nii.gz')}.nii.gz").write_bytes(seg.read_bytes())
    rows = score_folders(flat, flat, tmp_path / "out23", challenge="none")  # 3s read as ET, not refused
    assert rows[0]["legacy_dice_et"] == 1.0


def test_score_leaves_out_what_it_cannot_read_and_says_so(scored, tmp_path):
    root, cases, _ = scored
    pred = tmp_path / "pred"
    pred.mkdir()
    for case in cases:
        image = nib.load(next(case.glob("*_seg.nii.gz")))
        label = np.asarray(image.dataobj).copy()
        if case is cases[0]:
            label[0, 0, 0] = 7  # a label no convention has
        nib.save(nib.Nifti1Image(label, image.affine, image.header), pred / f"{case.name}.nii.gz")
    with pytest.raises(SystemExit) as exit_info:
        main(["score", str(pred), str(root / "ref"), "--challenge", "none"])
    assert exit_info.value.code == LeftOutCasesError.exit_code
    with open(pred / "metrics.csv", newline="") as f:
        assert [row["case_id"] for row in csv.DictReader(f)] == [c.name for c in cases[1:]]


def test_challenge_metrics_need_the_package_only_when_named(monkeypatch, caplog):
    monkeypatch.setattr(challenge_metrics, "_HAS_BRATS_EVALUATION", False)
    challenge_metrics._warn_unavailable.cache_clear()
    with caplog.at_level(logging.WARNING):
        assert challenge_metrics.resolve_challenge("auto") is None
        assert challenge_metrics.resolve_challenge("auto") is None
    assert caplog.text.count("brats-evaluation is not installed") == 1
    with raises_user_error(ConfigurationError, match=r'challenge gli needs brats-evaluation: pip install "axunet'):
        challenge_metrics.resolve_challenge("gli")
    assert challenge_metrics.resolve_challenge("none") is None


def test_summary_statistics_leave_out_regions_empty_in_both():
    rows = [{"global_dsc_wt": 0.5}, {"global_dsc_wt": math.nan}, {"global_dsc_wt": 1.0}]
    summary = summarize(rows, ["global_dsc_wt"])
    assert summary["global_dsc"]["WT"] == {"mean": 0.75, "median": 0.75, "std": 0.25, "n": 2, "n_infinite": 0}
    assert summarize([{"x_wt": math.nan}], ["x_wt"])["x"]["WT"]["mean"] is None
