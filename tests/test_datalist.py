"""Tests for datalist creation (axunet_bundle.data.datalist)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from monai.data import load_decathlon_datalist

from axunet_bundle.cli.data import write_datalist
from axunet_bundle.data.cases import DEFAULT_MODALITIES, DatasetPathError
from axunet_bundle.data.datalist import make_datalist

SHAPE = (8, 8, 4)
SUFFIXES = {
    "2021": {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", "seg": "seg"},
    "2023": {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", "seg": "seg"},
}


def write_case(root: Path, case_id: str, layout: str = "2021", seg: bool = True) -> Path:
    directory = root / case_id
    directory.mkdir(parents=True)
    sep = "-" if layout == "2023" else "_"
    kinds = ["t1", "t1ce", "t2", "flair"] + (["seg"] if seg else [])
    for kind in kinds:
        data = np.zeros(SHAPE, np.uint8) if kind == "seg" else np.ones(SHAPE, np.float32)
        nib.save(nib.Nifti1Image(data, np.eye(4)), str(directory / f"{case_id}{sep}{SUFFIXES[layout][kind]}.nii.gz"))
    return directory


def ids(items: list[dict]) -> list[str]:
    return [item["case_id"] for item in items]


def patient(case_id: str) -> str:
    return case_id.rsplit("-", 1)[0]


@pytest.fixture
def dataset_2021(tmp_path: Path) -> Path:
    for i in range(6):
        write_case(tmp_path, f"BraTS2021_{i:05d}")
    for i in range(2):
        write_case(tmp_path, f"BraTS2021_{100 + i:05d}", seg=False)  # inference cases
    return tmp_path


@pytest.fixture
def dataset_2023(tmp_path: Path) -> Path:
    """Seven patients, most with two timepoints."""
    for p in range(7):
        for t in range(1 if p == 0 else 2):
            write_case(tmp_path, f"BraTS-GLI-{p:05d}-{t:03d}", layout="2023")
    return tmp_path


def test_items_and_structure(dataset_2021):
    datalist = make_datalist(dataset_2021, folds=3, fold=1)
    assert set(datalist) == {"training", "validation", "testing"}
    assert len(datalist["training"]) == 4 and len(datalist["validation"]) == 2
    assert ids(datalist["testing"]) == ["BraTS2021_00100", "BraTS2021_00101"]
    assert all("label" not in item for item in datalist["testing"])
    item = datalist["training"][0]
    assert set(item) == {"image", "label", "case_id", "label_convention"}
    assert item["label_convention"] == "brats2021"  # the dataset's own, from its names
    cid = item["case_id"]
    assert item["image"] == [str(dataset_2021 / cid / f"{cid}_{m}.nii.gz") for m in DEFAULT_MODALITIES]
    assert item["label"] == str(dataset_2021 / cid / f"{cid}_seg.nii.gz")
    assert all(Path(p).is_absolute() for p in item["image"])
    assert ids(datalist["training"]) == sorted(ids(datalist["training"]))


def test_modalities_order(dataset_2021):
    item = make_datalist(dataset_2021, modalities=("flair", "t1"), folds=2)["training"][0]
    assert [Path(p).name.split("_")[-1] for p in item["image"]] == ["flair.nii.gz", "t1.nii.gz"]


def test_kfold_splits_by_patient_without_leakage(dataset_2023):
    folds = 3
    validation_patients = []
    for fold in range(folds):
        datalist = make_datalist(dataset_2023, folds=folds, fold=fold, test_fraction=0.2, seed=3)
        train = {patient(c) for c in ids(datalist["training"])}
        val = {patient(c) for c in ids(datalist["validation"])}
        test = {patient(c) for c in ids(datalist["testing"])}
        assert not (train & val) and not (train & test) and not (val & test)
        assert len(train | val | test) == 7
        assert all(item["label"] for item in datalist["testing"])  # held-out labelled patients keep labels
        # both timepoints of a patient are in the same list
        for items in datalist.values():
            for p in {patient(c) for c in ids(items)}:
                expected = 1 if p.endswith("00000") else 2
                assert sum(patient(c) == p for c in ids(items)) == expected
        if fold == 0:
            first_test = test
        assert test == first_test  # the hold-out does not depend on the fold
        validation_patients.append(val)
    # the folds' validation sets partition the non-test patients
    assert set().union(*validation_patients) == {f"BraTS-GLI-{p:05d}" for p in range(7)} - first_test
    assert sum(len(v) for v in validation_patients) == 7 - len(first_test)


def test_reproducible_by_seed(dataset_2023):
    assert make_datalist(dataset_2023, seed=7) == make_datalist(dataset_2023, seed=7)
    splits = {tuple(ids(make_datalist(dataset_2023, seed=s)["validation"])) for s in range(6)}
    assert len(splits) > 1  # the seed changes the split


def test_val_fraction_random_split(dataset_2023):
    datalist = make_datalist(dataset_2023, val_fraction=0.3, seed=1)
    val = {patient(c) for c in ids(datalist["validation"])}
    train = {patient(c) for c in ids(datalist["training"])}
    assert len(val) == 2 and len(train) == 5 and not (val & train)
    assert datalist["testing"] == []


def test_bad_cases_left_out_with_warning(dataset_2021, caplog):
    (dataset_2021 / "BraTS2021_00001" / "BraTS2021_00001_flair.nii.gz").unlink()
    (dataset_2021 / "BraTS2021_00002" / "BraTS2021_00002_seg.nii.gz").write_text("not an image")
    (dataset_2021 / "BraTS2021_00100" / "BraTS2021_00100_t2.nii.gz").write_bytes(b"")
    with caplog.at_level(logging.WARNING, logger="axunet_bundle.data.datalist"):
        datalist = make_datalist(dataset_2021, folds=2)
    listed = {c for items in datalist.values() for c in ids(items)}
    assert not listed & {"BraTS2021_00001", "BraTS2021_00002", "BraTS2021_00100"}
    assert len(listed) == 5
    messages = [r.getMessage() for r in caplog.records]
    assert "leaving out case BraTS2021_00001: BraTS2021_00001_flair.nii.gz: missing flair image" in messages
    assert any(m.startswith("leaving out case BraTS2021_00002: BraTS2021_00002_seg.nii.gz: ") for m in messages)
    assert "leaving out case BraTS2021_00100: BraTS2021_00100_t2.nii.gz: empty file" in messages


def test_unrequested_modality_problem_does_not_exclude(dataset_2021):
    (dataset_2021 / "BraTS2021_00001" / "BraTS2021_00001_t1.nii.gz").unlink()  # t1 is not a model input
    datalist = make_datalist(dataset_2021, folds=2)
    assert "BraTS2021_00001" in ids(datalist["training"]) + ids(datalist["validation"])


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"fold": 5}, r"fold must be an integer in \[0, 4\]"),
        ({"fold": -1}, r"fold must be an integer in \[0, 4\]"),
        ({"folds": 1}, "folds must be an integer >= 2"),
        ({"test_fraction": 1.0}, r"test_fraction must be in \[0, 1\)"),
        ({"test_fraction": -0.1}, r"test_fraction must be in \[0, 1\)"),
        ({"val_fraction": 1.5}, r"val_fraction must be in \[0, 1\)"),
        ({"val_fraction": 0.6, "test_fraction": 0.4}, "must leave patients for training"),
        ({"folds": 7}, "too few labelled patients for 7-fold"),
        ({"folds": 5, "test_fraction": 0.5}, "too few labelled patients for 5-fold"),
    ],
)
def test_argument_errors(dataset_2021, kwargs, message):
    with pytest.raises(ValueError, match=message):
        make_datalist(dataset_2021, **kwargs)


def test_missing_dataset_dir(tmp_path):
    with pytest.raises(DatasetPathError, match="does not exist"):
        make_datalist(tmp_path / "nope")


def test_write_datalist_json_and_monai_loadable(dataset_2021, tmp_path):
    output = tmp_path / "out" / "datalist.json"
    written = write_datalist(dataset_2021, output, folds=3, fold=2, seed=4)
    text = output.read_text()
    assert json.loads(text) == written
    assert text.startswith('{\n    "training": [')  # indent 4
    assert [p.name for p in output.parent.iterdir()] == ["datalist.json"]  # no temp file left behind
    assert output.stat().st_mode & 0o044 == 0o044  # readable by others, not a private temp-file mode
    loaded = load_decathlon_datalist(str(output), data_list_key="validation")
    assert [d["case_id"] for d in loaded] == ids(written["validation"])
    assert loaded[0]["image"] == written["validation"][0]["image"]


def test_write_datalist_replaces_and_keeps_old_on_error(dataset_2021, tmp_path):
    output = tmp_path / "datalist.json"
    output.write_text("old")
    write_datalist(dataset_2021, output, folds=2)
    assert json.loads(output.read_text())["training"]
    before = output.read_text()
    with pytest.raises(ValueError):
        write_datalist(dataset_2021, output, folds=2, fold=9)
    assert output.read_text() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_file()) == ["datalist.json"]
