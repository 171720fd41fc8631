"""Tests for dataset integrity checks (axunet_bundle.data.integrity)."""

from __future__ import annotations

import gzip
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from monai.data import MetaTensor
from monai.transforms import Compose, EnsureChannelFirstd, LoadImaged

from axunet_bundle.cli.data import check_dataset, run_check
from axunet_bundle.data.cases import DEFAULT_MODALITIES, MODALITIES, CaseError, find_cases
from axunet_bundle.data.integrity import check_case
from axunet_bundle.data.pipeline import LoadCased, ValidateCased
from axunet_bundle.errors import DatasetError

SHAPE = (16, 16, 8)
SUFFIXES = {
    "2021": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    "2023": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
}
ET_LABEL = {"2021": 4, "2023": 3}


def save(path: Path, data: np.ndarray, affine: np.ndarray | None = None) -> Path:
    nib.save(nib.Nifti1Image(data, np.eye(4) if affine is None else affine), str(path))
    return path


def valid_label(layout: str) -> np.ndarray:
    label = np.zeros(SHAPE, dtype=np.uint8)
    label[4:8, 4:8, 2:6] = 2
    label[5:7, 5:7, 3:5] = 1
    label[6, 6, 4] = ET_LABEL[layout]
    return label


def write_case(root: Path, case_id: str, layout: str = "2021", ext: str = ".nii.gz", seg: bool = True) -> Path:
    """A valid tiny case in its own folder; returns the folder."""
    directory = root / case_id
    directory.mkdir(parents=True)
    sep = "-" if layout == "2023" else "_"
    rng = np.random.default_rng(0)
    for modality in MODALITIES:
        save(directory / f"{case_id}{sep}{SUFFIXES[layout][modality]}{ext}", rng.random(SHAPE, dtype=np.float32) + 1)
    if seg:
        save(directory / f"{case_id}{sep}seg{ext}", valid_label(layout))
    return directory


def file_of(directory: Path, kind: str, layout: str = "2021", ext: str = ".nii.gz") -> Path:
    sep = "-" if layout == "2023" else "_"
    return directory / f"{directory.name}{sep}{SUFFIXES[layout][kind]}{ext}"


def test_clean_cases_of_both_layouts(tmp_path, capsys):
    write_case(tmp_path, "BraTS2021_00000")
    write_case(tmp_path, "BraTS-GLI-00000-000", layout="2023", ext=".nii")
    cases, problems = check_dataset(tmp_path, modalities=MODALITIES)
    assert [c.case_id for c in cases] == ["BraTS-GLI-00000-000", "BraTS2021_00000"]
    assert problems == []
    assert run_check(tmp_path) == 0
    captured = capsys.readouterr()
    # the model reads T1CE, T2 and FLAIR: the T1 files are counted as ignored, not as problems
    assert captured.out.splitlines() == [
        "ignored files (the model does not read them): 2 t1",
        "2 cases checked, 0 with problems",
    ]
    assert captured.err == ""  # no progress bar when stderr is not a terminal


def test_a_folder_of_inference_cases_is_clean_and_an_unlabelled_case_among_labelled_ones_is_named(tmp_path):
    """Unlabelled cases are inference cases; one among labelled cases lacks its label, and is said to."""
    write_case(tmp_path, "BraTS2021_00001", seg=False)
    assert check_dataset(tmp_path)[1] == []
    write_case(tmp_path, "BraTS2021_00000")
    (problem,) = check_dataset(tmp_path)[1]
    assert str(problem).startswith("BraTS2021_00001: BraTS2021_00001_seg.nii.gz: no label, where 1 of the dataset's 2")


def test_legitimate_variants_pass(tmp_path):
    directory = write_case(tmp_path, "BraTS2021_00000")
    save(file_of(directory, "t1"), np.arange(np.prod(SHAPE), dtype=np.int16).reshape(SHAPE) - 100)  # negatives
    save(file_of(directory, "t1ce"), np.full(SHAPE, 7, dtype=np.uint16))
    save(file_of(directory, "t2"), np.ones(SHAPE + (1,), dtype=np.float64))  # trailing singleton 4th dim is 3D
    shifted = np.eye(4)
    shifted[0, 3] = 5e-4  # within the label's 1e-3 affine tolerance (stacked images need np.allclose, as MONAI)
    save(file_of(directory, "flair"), np.ones(SHAPE, dtype=np.float32))
    save(file_of(directory, "seg"), valid_label("2021").astype(np.float32), affine=shifted)  # float, integral values
    (case,) = find_cases(tmp_path)
    assert check_case(case) == []


def _break_cases(root: Path) -> dict[str, tuple[str, str]]:
    """One broken case per problem kind; returns case id -> (file name, expected reason fragment)."""
    expected = {}

    d = write_case(root, "BraTS2021_00001")
    file_of(d, "t2").unlink()
    expected[d.name] = (file_of(d, "t2").name, "missing t2 image")

    d = write_case(root, "BraTS2021_00002")
    data = file_of(d, "t1ce").read_bytes()
    file_of(d, "t1ce").write_bytes(data[: len(data) // 2])
    expected[d.name] = (file_of(d, "t1ce").name, "truncated file")

    d = write_case(root, "BraTS2021_00003")
    file_of(d, "flair").write_text("this is not an image\n" * 40)
    expected[d.name] = (file_of(d, "flair").name, "not gzip-compressed")

    d = write_case(root, "BraTS2021_00004", ext=".nii")
    file_of(d, "flair", ext=".nii").write_text("this is not an image either\n" * 40)
    expected[d.name] = (file_of(d, "flair", ext=".nii").name, "not a NIfTI file")

    d = write_case(root, "BraTS2021_00005")
    save(file_of(d, "t1"), np.ones(SHAPE + (2,), dtype=np.float32))
    expected[d.name] = (file_of(d, "t1").name, "4D image of shape (16, 16, 8, 2) where a 3D volume is expected")

    d = write_case(root, "BraTS2021_00006")
    far = np.eye(4)
    far[0, 3] = 1000.0  # another grid (it would be resampled) whose field of view has nothing in common with t1ce's
    save(file_of(d, "t2"), np.ones((16, 16, 9), dtype=np.float32), affine=far)
    expected[d.name] = (file_of(d, "t2").name, "its field of view does not overlap t1ce's")

    d = write_case(root, "BraTS2021_00007")
    moved = np.eye(4)
    moved[2, 3] = 0.5
    save(file_of(d, "seg"), valid_label("2021"), affine=moved)
    expected[d.name] = (file_of(d, "seg").name, "affine differs from t1ce's (largest difference 0.5)")

    d = write_case(root, "BraTS2021_00008")
    data = np.ones(SHAPE, dtype=np.float32)
    data[0, 0, :3] = [np.nan, np.inf, -np.inf]
    save(file_of(d, "t1ce"), data)
    expected[d.name] = (file_of(d, "t1ce").name, "3 non-finite voxels (NaN/inf) in t1ce")

    d = write_case(root, "BraTS2021_00009")
    save(file_of(d, "flair"), np.zeros(SHAPE, dtype=np.int16))
    expected[d.name] = (file_of(d, "flair").name, "flair image is all zero")

    d = write_case(root, "BraTS2021_00010")
    label = valid_label("2021")
    label[0, 0, 0], label[0, 0, 1] = 3, 7
    save(file_of(d, "seg"), label)
    expected[d.name] = (file_of(d, "seg").name, "label values 3, 7 outside the brats2021 labels (0, 1, 2, 4)")

    d = write_case(root, "BraTS-GLI-00001-000", layout="2023")
    save(file_of(d, "seg", "2023"), np.where(valid_label("2023") == 3, 4, valid_label("2023")).astype(np.uint8))
    expected[d.name] = (file_of(d, "seg", "2023").name, "label values 4 outside the brats2023 labels (0, 1, 2, 3)")

    d = write_case(root, "BraTS2021_00011")
    label = valid_label("2021").astype(np.float32)
    label[1, 1, 1] = 2.5
    save(file_of(d, "seg"), label)
    expected[d.name] = (file_of(d, "seg").name, "non-integral label values 2.5")

    d = write_case(root, "BraTS2021_00012", ext=".nii")
    data = file_of(d, "t2", ext=".nii").read_bytes()
    file_of(d, "t2", ext=".nii").write_bytes(data[:-100])
    expected[d.name] = (file_of(d, "t2", ext=".nii").name, "truncated file")

    d = write_case(root, "BraTS2021_00013")
    file_of(d, "t1").write_bytes(file_of(d, "t1").read_bytes()[:20])  # cut inside the gzip-compressed header
    expected[d.name] = (file_of(d, "t1").name, "truncated file: it ends inside the NIfTI header")
    return expected


def test_every_problem_is_reported_and_run_continues(tmp_path, capsys):
    write_case(tmp_path, "BraTS2021_00000")  # a good case among the bad ones
    expected = _break_cases(tmp_path)
    cases, problems = check_dataset(tmp_path, modalities=MODALITIES)
    assert len(cases) == len(expected) + 1
    by_case: dict[str, list[CaseError]] = {}
    for problem in problems:
        by_case.setdefault(problem.case_id, []).append(problem)
    assert set(by_case) == set(expected)  # the good case has none, every bad one has some
    for case_id, (file_name, reason) in expected.items():
        (problem,) = by_case[case_id]
        assert problem.file.name == file_name
        assert reason in problem.reason, str(problem)
        assert str(problem) == f"{case_id}: {file_name}: {problem.reason}"

    assert run_check(tmp_path, modalities=MODALITIES) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines == [str(p) for p in problems] + [f"{len(expected) + 1} cases checked, {len(expected)} with problems"]


def test_header_only_check_skips_voxel_problems(tmp_path):
    expected = _break_cases(tmp_path)
    cases, problems = check_dataset(tmp_path, modalities=MODALITIES, read_voxels=False)
    found = {p.case_id for p in problems}
    header_level = {"BraTS2021_00001", "BraTS2021_00003", "BraTS2021_00004", "BraTS2021_00005", "BraTS2021_00006"}
    header_level |= {"BraTS2021_00007", "BraTS2021_00012", "BraTS2021_00013"}
    # no voxel is read, labels' neither: the chain checks them as it loads them
    label_values = {case_id for case_id, (name, _) in expected.items() if name.endswith("seg.nii.gz")}
    assert found == header_level and label_values - header_level  # some label problems are left to the chain
    assert found < set(expected)


@pytest.mark.parametrize("ext", [".nii.gz", ".nii"])
def test_a_header_claiming_more_voxels_than_the_file_holds_is_refused_before_any_read(tmp_path, ext):
    """nibabel allocates a header's whole claim before reading: a damaged 1 kB file claiming a 24 GB volume must be
    refused from its length (the fuzz test found one that got a test process killed for memory)."""
    directory = write_case(tmp_path, "BraTS2021_00000", ext=ext)
    flair = file_of(directory, "flair", ext=ext)
    header = nib.load(flair).header.copy()
    header._structarr["dim"] = [3, 2048, 2048, 1536, 1, 1, 1, 1]  # 24 GiB of float32 (raw: nibabel refuses to set it)
    image = nib.Nifti1Image(np.zeros((1, 1, 1), np.float32), np.eye(4), header)
    image.header._structarr["dim"] = header._structarr["dim"]
    data = image.header.binaryblock + b"\0" * 4 + np.zeros(SHAPE, np.float32).tobytes()
    flair.write_bytes(gzip.compress(data) if ext == ".nii.gz" else data)
    (case,) = find_cases(tmp_path)
    (problem,) = check_case(case, read_voxels=False)
    assert problem.file == flair and problem.reason.startswith("truncated file")


def test_several_problems_in_one_case_are_all_reported(tmp_path):
    d = write_case(tmp_path, "BraTS2021_00000")
    file_of(d, "t1").unlink()
    save(file_of(d, "flair"), np.zeros(SHAPE, dtype=np.float32))
    file_of(d, "seg").write_bytes(b"\x1f\x8b garbage")
    (case,) = find_cases(tmp_path)
    reasons = [(p.file.name, p.reason) for p in check_case(case)]
    assert reasons[0] == ("BraTS2021_00000_t1.nii.gz", "missing t1 image")
    assert ("BraTS2021_00000_flair.nii.gz", "flair image is all zero") in reasons
    assert any(name == "BraTS2021_00000_seg.nii.gz" for name, _ in reasons)
    assert len(reasons) == 3
    # only the requested modalities are required
    assert [p.reason for p in check_case(case, modalities=("t1ce", "t2"))] == [
        "corrupt compressed data (BadGzipFile: Unknown compression method)"
    ]


@pytest.mark.parametrize("make", ["missing", "empty"])
def test_run_check_unusable_directory_is_a_dataset_error(tmp_path, capsys, make):
    """A folder that cannot be used at all: a DatasetError, which the command line prints as one line, exit 2."""
    target = tmp_path / "data"
    if make == "empty":
        target.mkdir()
    with pytest.raises(DatasetError, match=str(target)):
        run_check(target)
    assert capsys.readouterr().out == ""


def load_case(directory: Path, modalities=DEFAULT_MODALITIES) -> dict:
    loader = Compose([LoadImaged(["image", "label"], reader="NibabelReader"), EnsureChannelFirstd(["image", "label"])])
    return loader({"image": [str(file_of(directory, m)) for m in modalities], "label": str(file_of(directory, "seg"))})


def test_validate_cased_passes_good_data_unchanged(tmp_path):
    data = load_case(write_case(tmp_path, "BraTS2021_00000"))
    out = ValidateCased("image", convention="brats2021")(data)
    assert out["image"] is data["image"] and out["label"] is data["label"]
    assert ValidateCased("image", label_key=None)({"image": data["image"]})["image"] is data["image"]


@pytest.mark.parametrize("modality, bad", [("t1ce", "nan"), ("t2", "nan"), ("flair", "zero")])
def test_validate_cased_names_the_bad_channel_file(tmp_path, modality, bad):
    d = write_case(tmp_path, "BraTS2021_00000")
    data = np.zeros(SHAPE, dtype=np.float32)
    if bad == "nan":
        data[:] = 1
        data[3, 3, 3] = np.nan
    save(file_of(d, modality), data)
    loaded = load_case(d)
    with pytest.raises(CaseError) as err:
        ValidateCased("image", modalities=DEFAULT_MODALITIES)(loaded)
    assert err.value.case_id == "BraTS2021_00000"
    assert Path(err.value.file).name == f"BraTS2021_00000_{modality}.nii.gz"
    assert str(err.value).startswith(f"BraTS2021_00000: BraTS2021_00000_{modality}.nii.gz: ")
    assert modality in err.value.reason


@pytest.mark.parametrize("bad", ["t2", "flair", "t1ce"])
def test_validate_cased_names_the_bad_file_when_the_reference_grid_is_not_the_first_channel(tmp_path, bad):
    # LoadCased keeps the reference modality's metadata (T1CE's, here the last channel), not the first file's
    d = write_case(tmp_path, "BraTS2021_00000")
    data = np.ones(SHAPE, dtype=np.float32)
    data[3, 3, 3] = np.nan
    save(file_of(d, bad), data)
    modalities = ("t2", "flair", "t1ce")
    loaded = LoadCased("image", modalities=modalities)({"image": [str(file_of(d, m)) for m in modalities]})
    with pytest.raises(CaseError) as err:
        ValidateCased("image", label_key=None, modalities=modalities)(loaded)
    assert Path(err.value.file).name == f"BraTS2021_00000_{bad}.nii.gz" and bad in err.value.reason


def test_validate_cased_label_outside_convention(tmp_path):
    d = write_case(tmp_path, "BraTS-GLI-00003-000", layout="2023")
    loaded = Compose([LoadImaged(["image", "label"], reader="NibabelReader"), EnsureChannelFirstd(["image", "label"])])(
        {
            "image": [str(file_of(d, m, "2023")) for m in DEFAULT_MODALITIES],
            "label": str(file_of(d, "seg", "2023")),
            "case_id": "BraTS-GLI-00003-000",
        }
    )
    ValidateCased("image", convention="brats2023")(loaded)
    with pytest.raises(CaseError, match=r"^BraTS-GLI-00003-000: BraTS-GLI-00003-000-seg\.nii\.gz: label values 3 "):
        ValidateCased("image", convention="brats2021")(loaded)


def test_validate_cased_meta_file_list_and_label_shape():
    files = ["/d/c_t1ce.nii.gz", "/d/c_t2.nii.gz", "/d/c_flair.nii.gz"]
    image = MetaTensor(torch.ones(3, 4, 4, 2), meta={"filename_or_obj": files})
    image[1, 0, 0, 0] = float("inf")
    with pytest.raises(CaseError) as err:
        ValidateCased("image", label_key=None)({"image": image, "case_id": "c"})
    assert str(err.value) == "c: c_t2.nii.gz: 1 non-finite voxels (NaN/inf) in t2"

    image[1, 0, 0, 0] = 1
    label = MetaTensor(torch.zeros(1, 4, 4, 3), meta={"filename_or_obj": "/d/c_seg.nii.gz"})
    with pytest.raises(CaseError, match="^c: c_seg.nii.gz: label shape"):
        ValidateCased("image")({"image": image, "label": label})


def test_validate_cased_rejects_unknown_convention():
    with pytest.raises(ValueError, match="valid conventions are brats2021, brats2023"):
        ValidateCased("image", convention="brats2020")
