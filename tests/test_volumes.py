"""Volumes in mL per label and region, volumes.csv beside the segmentations, flip TTA's uncertainty map."""

from __future__ import annotations

import csv
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_SHAPE
from test_bundle_workflows import CONSTANT_NET, EVALUATION, INFERENCE, save_untrained_axunet, workflow

from axunet_bundle.data.cases import find_cases
from axunet_bundle.data.labels import LABEL_CONVENTIONS, region_labels
from axunet_bundle.synthetic import write_synthetic_dataset
from axunet_bundle.volumes import UNCERTAINTY_SCORE, label_volumes

#: an anisotropic, oblique grid: 0.9 x 1.2 x 2.5 mm voxels, rotated 20 degrees in-plane
SPACING = (0.9, 1.2, 2.5)
FLIP_TTA = [*INFERENCE, str(CONFIGS / "flip_tta.json")]


def anisotropic_affine() -> np.ndarray:
    angle = np.deg2rad(20.0)
    rotation = np.array([[np.cos(angle), -np.sin(angle), 0], [np.sin(angle), np.cos(angle), 0], [0, 0, 1]])
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(SPACING)
    affine[:3, 3] = (-30.0, 12.0, 5.0)
    return affine


@pytest.fixture(scope="module")
def anisotropic_dataset(tmp_path_factory) -> Path:
    """Three generated BraTS 2021 cases (64 x 64 x 16) whose files all lie on :func:`anisotropic_affine`."""
    root = tmp_path_factory.mktemp("aniso")
    write_synthetic_dataset(root, n=3, seed=1, shape=TINY_SHAPE, progress=False)
    for path in root.rglob("*.nii.gz"):
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), anisotropic_affine(), image.header), path)
    return root


def save_intensity_net(path: Path) -> Path:
    """Weights of ``CONSTANT_NET`` (a 1x1 convolution) that predict every label somewhere: WT in the whole brain, TC
    where T1CE is brighter than its mean, ET where T2 is more than one standard deviation above its mean."""
    conv = torch.nn.Conv2d(3, 3, kernel_size=1)
    torch.nn.init.zeros_(conv.weight)
    with torch.no_grad():
        conv.bias.copy_(torch.tensor([10.0, 0.0, -10.0]))
        conv.weight[1, 0] = 10.0
        conv.weight[2, 1] = 10.0
    torch.save(conv.state_dict(), path)
    return path


def read_csv(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def hand_count(label: np.ndarray, convention: str) -> dict[str, float]:
    """Voxel counts times the voxel's volume, 0.9 * 1.2 * 2.5 mm^3 = 0.0027 mL."""
    voxel_ml = float(np.prod(SPACING)) / 1000
    classes = LABEL_CONVENTIONS[convention]
    names = {"NCR": "NETC", "ED": "SNFH"} if convention.startswith("brats202") and convention != "brats2021" else {}
    counts = {f"{names.get(c, c)}_label{v}_mL": int((label == v).sum()) * voxel_ml for c, v in classes.items()}
    for region, values in region_labels(convention).items():
        counts[f"{region}_region_mL"] = int(np.isin(label, values).sum()) * voxel_ml
    return counts


@pytest.mark.parametrize("convention", sorted(LABEL_CONVENTIONS))
def test_label_volumes_equal_voxel_counts_times_the_voxel_volume(convention):
    rng = np.random.default_rng(0)
    values = [0, *LABEL_CONVENTIONS[convention].values()]
    label = rng.choice(values, size=(1, 20, 18, 7)).astype(np.uint8)
    volumes = label_volumes(label, anisotropic_affine(), convention)
    expected = hand_count(label[0], convention)
    assert volumes.keys() == expected.keys()
    for column, ml in expected.items():
        assert volumes[column] == pytest.approx(ml, abs=1e-6), column
    assert ("RC_label4_mL" in volumes) == (convention == "brats2024")


def test_inference_appends_one_volumes_row_per_case_equal_to_a_hand_count(anisotropic_dataset, tmp_path):
    out = tmp_path / "pred"
    ckpt = save_intensity_net(tmp_path / "model.pt")
    cases = find_cases(anisotropic_dataset)
    first = tmp_path / "first"
    (first / cases[0].case_id).parent.mkdir(parents=True)
    (first / cases[0].case_id).symlink_to(Path(cases[0].images["t1ce"]).parent)
    # one case, then all: the finished case is skipped and its row kept, the others' rows appended
    for data in (first, anisotropic_dataset):
        wf = workflow(
            INFERENCE, dataset_dir=str(data), output_dir=str(out), ckpt_path=str(ckpt), network_def=CONSTANT_NET
        )
        wf.run()
        wf.finalize()
        rows = read_csv(out / "volumes.csv")
        assert [r["case_id"] for r in rows] == [c.case_id for c in cases][: len(rows)]
    assert len(rows) == len(cases)
    for column in hand_count(np.zeros(1), "brats2021"):
        assert all(float(r[column]) > 0 for r in rows), column  # every label is predicted somewhere
    assert not list(out.glob("*_uncertainty.nii.gz")) and UNCERTAINTY_SCORE not in rows[0]  # TTA off: no map
    for case, row in zip(cases, rows):
        seg = nib.load(out / f"{case.case_id}_seg.nii.gz")
        np.testing.assert_allclose(seg.affine, anisotropic_affine(), atol=1e-5)
        assert row["label_convention"] == "brats2021"
        for column, ml in hand_count(np.asarray(seg.dataobj), "brats2021").items():
            assert float(row[column]) == pytest.approx(ml, abs=1e-6), column


def test_flip_tta_writes_an_uncertainty_map_on_the_inputs_grid_and_its_score(anisotropic_dataset, tmp_path):
    out = tmp_path / "pred"
    ckpt = save_untrained_axunet(tmp_path / "model.pt")
    wf = workflow(FLIP_TTA, dataset_dir=str(anisotropic_dataset), output_dir=str(out), ckpt_path=str(ckpt))
    wf.run()
    wf.finalize()
    rows = {r["case_id"]: r for r in read_csv(out / "volumes.csv")}
    for case in find_cases(anisotropic_dataset):
        image = nib.load(case.images["t1ce"])
        uncertainty = nib.load(out / f"{case.case_id}_uncertainty.nii.gz")
        assert uncertainty.shape == image.shape
        np.testing.assert_allclose(uncertainty.affine, image.affine, atol=1e-5)
        data = np.asarray(uncertainty.dataobj, dtype=np.float64)
        assert data.min() >= 0 and data.max() <= 0.25  # a variance of probabilities
        seg = np.asarray(nib.load(out / f"{case.case_id}_seg.nii.gz").dataobj)
        wt = np.isin(seg, region_labels("brats2021")["WT"])
        score = float(rows[case.case_id][UNCERTAINTY_SCORE])
        if wt.any():
            assert score == pytest.approx(data[wt].mean(), abs=1e-6)
        else:
            assert np.isnan(score)


def test_evaluation_reports_the_volumes_of_segmentation_and_reference_and_their_difference(
    anisotropic_dataset, tmp_path
):
    out = tmp_path / "eval"
    ckpt = save_intensity_net(tmp_path / "model.pt")
    settings = dict(dataset_dir=str(anisotropic_dataset), output_dir=str(out), ckpt_path=str(ckpt))
    wf = workflow(EVALUATION, network_def=CONSTANT_NET, challenge="none", **settings)
    wf.run()
    wf.finalize()
    rows = read_csv(out / "metrics.csv")
    assert len(rows) == len(find_cases(anisotropic_dataset))
    for row, case in zip(rows, find_cases(anisotropic_dataset)):
        seg = np.asarray(nib.load(out / f"{case.case_id}_seg.nii.gz").dataobj)
        ref = np.asarray(nib.load(case.label).dataobj)
        pred_ml, ref_ml = hand_count(seg, "brats2021"), hand_count(ref, "brats2021")
        for column in pred_ml:
            assert float(row[f"pred_{column}"]) == pytest.approx(pred_ml[column], abs=1e-6)
            assert float(row[f"ref_{column}"]) == pytest.approx(ref_ml[column], abs=1e-6)
            assert float(row[f"diff_{column}"]) == pytest.approx(pred_ml[column] - ref_ml[column], abs=1e-6)
