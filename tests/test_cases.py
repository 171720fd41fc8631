"""Tests for BraTS case discovery (axunet_bundle.data.cases)."""

from __future__ import annotations

import pickle
from pathlib import Path

import pytest

from axunet_bundle.data.cases import (
    DEFAULT_MODALITIES,
    MODALITIES,
    Case,
    CaseError,
    DatasetPathError,
    find_cases,
    parse_file_name,
)

SUFFIXES_2021 = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair"}
SUFFIXES_2023 = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f"}


def touch_case(directory: Path, case_id: str, suffixes: dict[str, str], sep: str, ext: str, seg: bool = True) -> Path:
    """Create empty files named like a BraTS case (discovery reads names only)."""
    directory.mkdir(parents=True, exist_ok=True)
    for suffix in list(suffixes.values()) + (["seg"] if seg else []):
        (directory / f"{case_id}{sep}{suffix}{ext}").touch()
    return directory


def test_modality_constants():
    assert MODALITIES == ("t1", "t1ce", "t2", "flair")
    assert DEFAULT_MODALITIES == ("t1ce", "t2", "flair")


def test_brats2021_layout_nested(tmp_path):
    case_dir = touch_case(tmp_path / "a" / "b" / "BraTS2021_00000", "BraTS2021_00000", SUFFIXES_2021, "_", ".nii.gz")
    cases = find_cases(tmp_path)
    assert len(cases) == 1
    case = cases[0]
    assert case.case_id == "BraTS2021_00000"
    assert case.layout == "2021" and case.convention == "brats2021"
    assert case.patient_id == "BraTS2021_00000"
    assert case.directory == case_dir
    assert dict(case.images) == {m: case_dir / f"BraTS2021_00000_{m}.nii.gz" for m in MODALITIES}
    assert case.label == case_dir / "BraTS2021_00000_seg.nii.gz"
    assert case.images["t1"].is_absolute()


def test_brats2023_layout_uncompressed(tmp_path):
    case_dir = touch_case(tmp_path / "BraTS-GLI-00007-001", "BraTS-GLI-00007-001", SUFFIXES_2023, "-", ".nii")
    (case,) = find_cases(tmp_path)
    assert case.case_id == "BraTS-GLI-00007-001"
    assert case.layout == "2023" and case.convention == "brats2023"
    assert case.patient_id == "BraTS-GLI-00007"
    assert case.images["t1ce"] == case_dir / "BraTS-GLI-00007-001-t1c.nii"
    assert case.images["flair"] == case_dir / "BraTS-GLI-00007-001-t2f.nii"
    assert case.images["t1"] == case_dir / "BraTS-GLI-00007-001-t1n.nii"
    assert case.images["t2"] == case_dir / "BraTS-GLI-00007-001-t2w.nii"
    assert case.label == case_dir / "BraTS-GLI-00007-001-seg.nii"


@pytest.mark.parametrize(
    "names, case_id, layout, expected",
    [
        (  # BraTS 2020, upper-case suffix and extension
            ["BraTS20_Training_001_T1.NII.GZ", "BraTS20_Training_001_T1CE.nii.gz", "BraTS20_Training_001_seg.nii.gz"],
            "BraTS20_Training_001",
            "2021",
            {"t1": "BraTS20_Training_001_T1.NII.GZ", "t1ce": "BraTS20_Training_001_T1CE.nii.gz"},
        ),
        (  # other 2023+ challenges
            ["BraTS-SSA-00002-000-t1c.nii.gz", "BraTS-SSA-00002-000-t2f.nii.gz"],
            "BraTS-SSA-00002-000",
            "2023",
            {"t1ce": "BraTS-SSA-00002-000-t1c.nii.gz", "flair": "BraTS-SSA-00002-000-t2f.nii.gz"},
        ),
        (
            ["BraTS-PED-00001-000-t2w.nii", "BraTS-MEN-00004-000-t1n.nii"],
            "BraTS-MEN-00004-000",
            "2023",
            {"t1": "BraTS-MEN-00004-000-t1n.nii"},
        ),
        (  # other sources: "-" separator, t1gd alias, mixed case
            ["UPENN-GBM-00001-T1GD.nii.gz", "UPENN-GBM-00001-Flair.nii.gz", "UPENN-GBM-00001-t2.nii.gz"],
            "UPENN-GBM-00001",
            "2021",
            {
                "t1ce": "UPENN-GBM-00001-T1GD.nii.gz",
                "flair": "UPENN-GBM-00001-Flair.nii.gz",
                "t2": "UPENN-GBM-00001-t2.nii.gz",
            },
        ),
        (  # 2023 suffixes on a renamed case id still mean 2023 naming (and labels)
            ["case7_t1c.nii.gz", "case7_t2w.nii.gz", "case7_t2f.nii.gz", "case7_seg.nii.gz"],
            "case7",
            "2023",
            {"t1ce": "case7_t1c.nii.gz", "t2": "case7_t2w.nii.gz", "flair": "case7_t2f.nii.gz"},
        ),
    ],
)
def test_variant_names(tmp_path, names, case_id, layout, expected):
    for name in names:
        (tmp_path / name).touch()
    cases = {c.case_id: c for c in find_cases(tmp_path)}
    case = cases[case_id]
    assert case.layout == layout
    assert {m: p.name for m, p in case.images.items()} == expected


def test_flat_directory_holds_several_cases_sorted(tmp_path):
    for cid in ["BraTS2021_00002", "BraTS2021_00000", "BraTS2021_00001"]:
        touch_case(tmp_path, cid, SUFFIXES_2021, "_", ".nii.gz")
    assert [c.case_id for c in find_cases(tmp_path)] == ["BraTS2021_00000", "BraTS2021_00001", "BraTS2021_00002"]


def test_symlinked_case_folders_are_found_and_a_symlink_loop_ends(tmp_path):
    """A subset of a dataset made of symlinks to its case folders (common on shared storage) is a dataset."""
    store = tmp_path / "store"
    for cid in ["BraTS2021_00000", "BraTS2021_00001"]:
        touch_case(store / cid, cid, SUFFIXES_2021, "_", ".nii.gz")
    subset = tmp_path / "subset"
    subset.mkdir()
    (subset / "BraTS2021_00001").symlink_to(store / "BraTS2021_00001", target_is_directory=True)
    (subset / "loop").symlink_to(subset, target_is_directory=True)
    (case,) = find_cases(subset)
    assert case.case_id == "BraTS2021_00001" and case.images["t1"].parent == subset / "BraTS2021_00001"


def test_case_without_seg_is_inference_case(tmp_path):
    touch_case(tmp_path / "x", "BraTS2021_00009", SUFFIXES_2021, "_", ".nii.gz", seg=False)
    (case,) = find_cases(tmp_path)
    assert case.label is None and not case.has_label


def test_hidden_and_unrelated_files_are_ignored(tmp_path):
    touch_case(tmp_path, "BraTS2021_00000", SUFFIXES_2021, "_", ".nii.gz")
    (tmp_path / "._BraTS2021_00000_t1.nii.gz").touch()  # macOS resource fork
    (tmp_path / "README.txt").touch()
    (tmp_path / "BraTS2021_00000_t1.json").touch()
    (tmp_path / ".cache").mkdir()
    touch_case(tmp_path / ".cache", "BraTS2021_00001", SUFFIXES_2021, "_", ".nii.gz")
    (case,) = find_cases(tmp_path)
    assert case.case_id == "BraTS2021_00000"
    assert case.images["t1"].name == "BraTS2021_00000_t1.nii.gz"


def test_modalities_select_collected_images(tmp_path):
    touch_case(tmp_path, "BraTS2021_00000", SUFFIXES_2021, "_", ".nii.gz")
    (case,) = find_cases(tmp_path, modalities=("t1ce", "flair"))
    assert set(case.images) == {"t1ce", "flair"}


def test_missing_root_raises_a_dataset_path_error(tmp_path):
    missing = tmp_path / "nope"
    with pytest.raises(DatasetPathError, match="does not exist") as err:
        find_cases(missing)
    assert str(missing) in str(err.value) and "\n" not in str(err.value)


def test_root_that_is_a_file_raises(tmp_path):
    (tmp_path / "f.txt").touch()
    with pytest.raises(DatasetPathError, match="is a file, not a directory"):
        find_cases(tmp_path / "f.txt")


@pytest.mark.parametrize("content", [[], ["notes.txt", "scan.nii.gz", "brain_mask.nii"]])
def test_empty_or_non_brats_directory_raises_value_error(tmp_path, content):
    for name in content:
        (tmp_path / name).touch()
    with pytest.raises(ValueError, match=r"no BraTS cases found under .*: expected files like \.\.\._t1ce\.nii\.gz"):
        find_cases(tmp_path)


def test_duplicate_case_ids_in_different_folders(tmp_path):
    touch_case(tmp_path / "train", "BraTS2021_00000", SUFFIXES_2021, "_", ".nii.gz")
    touch_case(tmp_path / "copy", "BraTS2021_00000", SUFFIXES_2021, "_", ".nii.gz")
    with pytest.raises(ValueError, match="BraTS2021_00000 found in more than one directory") as err:
        find_cases(tmp_path)
    assert str(tmp_path / "train") in str(err.value) and str(tmp_path / "copy") in str(err.value)


def test_two_files_for_one_modality_raise_case_error(tmp_path):
    touch_case(tmp_path, "BraTS2021_00000", SUFFIXES_2021, "_", ".nii.gz")
    (tmp_path / "BraTS2021_00000_t1ce.nii").touch()
    with pytest.raises(CaseError, match="more than one t1ce file") as err:
        find_cases(tmp_path)
    assert err.value.case_id == "BraTS2021_00000"


def test_unknown_modality_name_raises(tmp_path):
    touch_case(tmp_path, "BraTS2021_00000", SUFFIXES_2021, "_", ".nii.gz")
    with pytest.raises(ValueError, match="unknown modality 't1c'.*t1, t1ce, t2, flair"):
        find_cases(tmp_path, modalities=("t1c",))


def test_image_files_order_and_missing_modality(tmp_path):
    touch_case(tmp_path, "BraTS-GLI-00000-000", {"t1ce": "t1c", "flair": "t2f"}, "-", ".nii.gz")
    (case,) = find_cases(tmp_path)
    assert case.image_files(("flair", "t1ce")) == [
        str(tmp_path / "BraTS-GLI-00000-000-t2f.nii.gz"),
        str(tmp_path / "BraTS-GLI-00000-000-t1c.nii.gz"),
    ]
    assert case.missing_modalities(DEFAULT_MODALITIES) == ["t2"]
    with pytest.raises(CaseError) as err:
        case.image_files(DEFAULT_MODALITIES)
    assert str(err.value) == "BraTS-GLI-00000-000: BraTS-GLI-00000-000-t2w.nii.gz: missing t2 image"
    assert (err.value.case_id, err.value.reason) == ("BraTS-GLI-00000-000", "missing t2 image")


def test_case_error_is_one_line_value_error_and_picklable():
    err = CaseError("BraTS2021_00000", Path("/data/BraTS2021_00000/BraTS2021_00000_t2.nii.gz"), "all zero")
    assert isinstance(err, ValueError)
    assert str(err) == "BraTS2021_00000: BraTS2021_00000_t2.nii.gz: all zero"
    copy = pickle.loads(pickle.dumps(err))
    assert str(copy) == str(err) and copy.case_id == err.case_id


def test_case_is_immutable():
    case = Case("c", "2021", {"t1": "c_t1.nii.gz"}, None, ".")
    with pytest.raises(AttributeError):
        case.case_id = "d"  # type: ignore[misc]
    with pytest.raises(TypeError):
        case.images["t2"] = Path("x")  # type: ignore[index]
    assert case.images["t1"] == Path("c_t1.nii.gz")


def test_parse_file_name():
    assert parse_file_name("BraTS20_Training_001_t1ce.nii.gz") == ("BraTS20_Training_001", "t1ce")
    assert parse_file_name("/x/BraTS-GLI-00000-000-SEG.nii") == ("BraTS-GLI-00000-000", "seg")
    assert parse_file_name("BraTS2021_00000_t1ce.nii.bak") is None
    assert parse_file_name("t1ce.nii.gz") == (None, "t1ce")  # a case folder's file named by what it holds alone
    assert parse_file_name("BRATS_001.nii.gz") is None
    # the longest known name at the end wins; "-"/"_"/letter case do not matter
    assert parse_file_name("UCSF-PDGM-0004_Tumor-Segmentation.nrrd") == ("UCSF-PDGM-0004", "seg")
    assert parse_file_name("P_7_T2_FLAIR.mha") == ("P_7", "flair")
