"""``axunet report``: the one-page case report (PNG and PDF) shows the planes, the volumes volumes.csv holds, the
uncertainty score, the model and its weights' hash, and refuses a missing case or segmentation in one line."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import matplotlib.image
import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_SHAPE

from axunet_bundle.cli import main
from axunet_bundle.cli.pictures import model_details
from axunet_bundle.data.labels import region_labels
from axunet_bundle.synthetic import write_synthetic_dataset
from axunet_bundle.visualize.figures import REGION_COLOURS
from axunet_bundle.visualize.report import A4_INCHES, case_report
from axunet_bundle.volumes import label_volumes

#: a generated case holding all three labels (NCR, ED, ET)
SEED = 1


def axunet(*args: object) -> None:
    main([str(a) for a in args])


@pytest.fixture(scope="module")
def case(tmp_path_factory) -> tuple[Path, Path]:
    """One generated BraTS 2021 case (64 x 64 x 16, 1 x 1.5 x 2 mm voxels) and a copy of its label in a folder of
    segmentations, as ``axunet infer`` names it, with a flip-TTA uncertainty map beside it."""
    root = tmp_path_factory.mktemp("report")
    write_synthetic_dataset(root / "data", n=1, seed=SEED, shape=TINY_SHAPE, progress=False)
    case_dir = next(p for p in (root / "data").iterdir() if p.is_dir())
    affine = np.diag([1.0, 1.5, 2.0, 1.0])
    for path in case_dir.glob("*.nii.gz"):
        image = nib.load(path)
        nib.save(nib.Nifti1Image(np.asarray(image.dataobj), affine, image.header), path)
    seg = root / "segs" / f"{case_dir.name}_seg.nii.gz"
    seg.parent.mkdir()
    shutil.copy(next(case_dir.glob("*_seg.nii.gz")), seg)
    uncertainty = np.random.default_rng(0).random(TINY_SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(uncertainty, affine), seg.with_name(f"{case_dir.name}_uncertainty.nii.gz"))
    return case_dir, seg


def ink(pixels: np.ndarray) -> float:
    """The fraction of a page's pixels that are not white."""
    return float((pixels[..., :3] < 0.95).any(axis=-1).mean())


def test_report_writes_an_a4_png_and_a_one_page_pdf_with_the_contours(case, tmp_path, capsys):
    case_dir, seg = case
    axunet("report", case_dir, "--seg", seg, "--output", tmp_path / "page")
    assert "page.png" in capsys.readouterr().out
    pixels = matplotlib.image.imread(tmp_path / "page.png")
    assert pixels.shape[:2] == (int(A4_INCHES[1] * 100), int(A4_INCHES[0] * 100))  # matplotlib truncates
    assert 0.15 < ink(pixels) < 0.9
    for region in ("WT", "TC", "ET"):  # each region's contour colour is drawn
        colour = matplotlib.colors.to_rgb(REGION_COLOURS[region])
        assert (np.abs(pixels[..., :3] - colour).max(axis=-1) < 0.05).sum() > 50, region
    pdf = (tmp_path / "page.pdf").read_bytes()
    assert pdf.startswith(b"%PDF") and len(pdf) > 10_000
    assert len(re.findall(rb"/Type\s*/Page\b(?!s)", pdf)) == 1


def test_the_volumes_shown_are_those_of_volumes_csv_and_a_hand_count(case, tmp_path):
    case_dir, seg = case
    label = np.asarray(nib.load(seg).dataobj)
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"weights")
    shown = case_report(
        [next(case_dir.glob("*_t1ce.nii.gz")), next(case_dir.glob("*_flair.nii.gz"))],
        ["T1CE", "FLAIR"],
        seg,
        tmp_path / "page",
        case_id=case_dir.name,
        convention="brats2021",
        model=model_details(str(weights)),
        uncertainty_file=seg.with_name(f"{case_dir.name}_uncertainty.nii.gz"),
    )
    assert shown.volumes == label_volumes(label, nib.load(seg).affine, "brats2021")
    voxel_ml = 1.0 * 1.5 * 2.0 / 1000
    for name, value in {"NCR_label1_mL": 1, "ED_label2_mL": 2, "ET_label4_mL": 4}.items():
        assert shown.volumes[name] == pytest.approx((label == value).sum() * voxel_ml, abs=1e-6)
        assert shown.volumes[name] > 0
    wt = np.isin(label, region_labels("brats2021")["WT"])
    uncertainty = np.asarray(nib.load(seg.with_name(f"{case_dir.name}_uncertainty.nii.gz")).dataobj)
    assert shown.uncertainty == pytest.approx(float(uncertainty[wt].mean()))
    assert wt[shown.position]  # the planes cross inside the tumour


def test_model_details_give_the_weights_sha256_and_none_without_weights(tmp_path, monkeypatch):
    weights = tmp_path / "model.pt"
    weights.write_bytes(b"some weights")
    details = model_details(str(weights))
    assert details["sha256"] == hashlib.sha256(b"some weights").hexdigest()
    assert details["name"] and details["version"]
    monkeypatch.chdir(tmp_path / "..")  # no models/model.pt here
    assert "sha256" not in model_details(None)


@pytest.mark.parametrize(
    "args, message",
    [
        (["{missing}", "--seg", "{seg}"], "error: axunet report CASE_DIR: {missing} does not exist"),
        (["{case}", "--seg", "{missing}"], "error: axunet report --seg: {missing} does not exist"),
        (["{case}"], "error: axunet report: --seg SEG is required"),
    ],
)
def test_a_missing_case_or_segmentation_is_one_line_and_exit_2(case, tmp_path, capsys, args, message):
    case_dir, seg = case
    names = {"missing": tmp_path / "missing", "seg": seg, "case": case_dir}
    with pytest.raises(SystemExit) as refused:
        axunet("report", *(a.format(**names) for a in args))
    assert refused.value.code == 2
    assert capsys.readouterr().err.strip() == message.format(**names)


def test_a_segmentation_on_another_grid_is_one_line_and_exit_2(case, tmp_path, capsys):
    case_dir, _ = case
    other = tmp_path / "other_seg.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), other)
    with pytest.raises(SystemExit) as refused:
        axunet("report", case_dir, "--seg", other, "--output", tmp_path / "page")
    assert refused.value.code == 2
    line = capsys.readouterr().err.strip()
    assert line.startswith(f"error: {case_dir.name}: other_seg.nii.gz: ") and "differ in shape" in line
    assert "\n" not in line and not list(tmp_path.glob("page.*"))


def test_help_lists_the_report_command(capsys):
    with pytest.raises(SystemExit):
        axunet("--help")
    assert re.search(r"^  report\s+Write a one-page case report", capsys.readouterr().out, re.MULTILINE)
    with pytest.raises(SystemExit):
        axunet("report", "--help")
    assert "axunet report /data/new_cases/CASE --seg" in capsys.readouterr().out


def test_infer_report_writes_one_report_per_case_showing_volumes_csvs_numbers(tmp_path, capsys):
    from test_bundle_workflows import CONSTANT_NET
    from test_volumes import read_csv, save_intensity_net

    from axunet_bundle.cli.pictures import case_report_files
    from axunet_bundle.data.cases import find_cases
    from axunet_bundle.volumes import UNCERTAINTY_SCORE

    data, out = tmp_path / "data", tmp_path / "segs"
    write_synthetic_dataset(data, n=2, seed=SEED, shape=TINY_SHAPE, progress=False)
    ckpt = save_intensity_net(tmp_path / "model.pt")
    axunet(
        "infer", "--report", "True", "--flip_tta", "True", "--dataset_dir", data, "--output_dir", out,
        "--ckpt_path", ckpt, "--network_def", repr(CONSTANT_NET), "--roi_size", "[64,64]", "--num_workers", 0,
    )  # fmt: skip
    cases = find_cases(data)
    assert sorted(p.name for p in out.glob("*_report.p*")) == sorted(
        f"{c.case_id}_report.{ext}" for c in cases for ext in ("pdf", "png")
    )
    rows = {row["case_id"]: row for row in read_csv(out / "volumes.csv")}
    for case in cases:
        shown = case_report_files(case, out / f"{case.case_id}_seg.nii.gz", tmp_path / "again", str(ckpt))
        for column, ml in shown.volumes.items():
            assert ml == float(rows[case.case_id][column]), column
        assert shown.uncertainty == pytest.approx(float(rows[case.case_id][UNCERTAINTY_SCORE]), rel=1e-6)


def test_a_decathlon_case_shows_the_channels_dataset_json_names(tmp_path, capsys):
    write_synthetic_dataset(tmp_path / "msd", n=1, seed=SEED, layout="msd", shape=TINY_SHAPE, progress=False)
    image = next((tmp_path / "msd").rglob("imagesTr/*.nii.gz"))
    label = next((tmp_path / "msd").rglob(f"labelsTr/{image.name}"))
    axunet("report", image.parents[1], "--seg", label, "--output", tmp_path / "page")
    assert (tmp_path / "page.png").is_file() and (tmp_path / "page.pdf").is_file()
    shown = case_report(
        [image], ["T1CE", "FLAIR"], label, tmp_path / "direct", case_id="c", convention="msd", model={}, channels=[2, 0]
    )
    assert shown.volumes == label_volumes(np.asarray(nib.load(label).dataobj), nib.load(label).affine, "msd")
    with pytest.raises(ValueError, match="no channel 9"):
        case_report([image], ["X"], label, tmp_path / "bad", case_id="c", convention="msd", model={}, channels=[9])
