# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The datasets users have, end to end: the Decathlon's Task01_BrainTumour, one multi-channel NIfTI per case (in
the layouts nibabel, ITK/SimpleITK and 3D Slicer write), BraTS 2024 post-treatment labels, BraTS 2020's stray label;
and every step that uses a dataset (check, datalist, slice cache, training, evaluation) refusing the same cases with
the same lines."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_ROI, TINY_SHAPE, raises_user_error
from monai.bundle import ConfigParser, ConfigWorkflow
from monai.data import Dataset
from monai.transforms import Compose, LoadImaged

from axunet_bundle import AXUNet
from axunet_bundle.cli.data import check_dataset
from axunet_bundle.cli.workflows import WORKFLOW_CONFIGS
from axunet_bundle.data.cases import DEFAULT_MODALITIES, LAYOUT_MSD, discover, find_cases
from axunet_bundle.data.datalist import CaseLoader, CaseSelection, evaluation_cases, labelled_cases, make_datalist
from axunet_bundle.data.pipeline import ValidateCased
from axunet_bundle.data.slices import inference_workers, loader_workers
from axunet_bundle.errors import CaseError, LeftOutCasesError
from axunet_bundle.outputs import segmentation_path
from axunet_bundle.synthetic.datasets import MSD_MODALITY, write_synthetic_dataset

SMALL = dict(roi_size=TINY_ROI, num_workers=0, sw_batch_size=4, inference_backend="eager")


def untrained_weights(path: Path) -> Path:
    """An untrained AXUNet whose last bias is 0 (p ~ 0.5): label maps with every region, not empty ones."""
    torch.manual_seed(0)
    net = AXUNet()
    torch.nn.init.zeros_([m for m in net.modules() if isinstance(m, torch.nn.Conv2d)][-1].bias)
    torch.save(net.state_dict(), path)
    return path


def run_workflow(kind: str, **overrides) -> None:
    workflow = ConfigWorkflow(
        workflow_type="train" if kind == "training" else "infer",
        config_file=[str(CONFIGS / name) for name in WORKFLOW_CONFIGS[kind]],
        meta_file=str(CONFIGS / "metadata.json"),
        **overrides,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()


def train_a_few_iterations(dataset: Path, out: Path, **overrides) -> Path:
    settings = dict(roi_size=TINY_ROI, num_workers=0, folds=2, epochs=1, batch_size=4, slices_per_volume=2)
    settings.update(overrides)
    run_workflow("training", dataset_dir=str(dataset), bundle_root=str(out), pretrained=False, **settings)
    return out / "models" / "model.pt"


def label_values(path: Path) -> set[int]:
    return set(np.unique(np.asarray(nib.load(path).dataobj)).astype(int).tolist())


def preprocessed(items: list[dict], **overrides) -> list[torch.Tensor]:
    """The training's volume chain (load, channels, checks, RAS, crop, normalise, resize) on datalist items."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"roi_size": TINY_ROI, **overrides})
    chain = Compose(parser.get_parsed_content("volume_transforms"))
    return [torch.as_tensor(chain(item)["image"]) for item in items]


# --- the Decathlon's Task01_BrainTumour ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def msd(tmp_path_factory) -> Path:
    """Task01-like: 4 labelled cases in imagesTr/labelsTr and 1 test case in imagesTs, listed by dataset.json."""
    root = tmp_path_factory.mktemp("Task01_BrainTumour")
    write_synthetic_dataset(root, n=4, seed=1, layout="msd", shape=TINY_SHAPE, progress=False)
    write_synthetic_dataset(
        root / "extra", n=1, seed=7, layout="msd", shape=TINY_SHAPE, with_labels=False, progress=False
    )
    spec = json.loads((root / "dataset.json").read_text())
    (root / "imagesTs").mkdir()
    shutil.move(root / "extra" / "imagesTs" / "BRATS_000.nii.gz", root / "imagesTs" / "BRATS_100.nii.gz")
    shutil.rmtree(root / "extra")
    spec["test"] = ["./imagesTs/BRATS_100.nii.gz"]
    (root / "dataset.json").write_text(json.dumps(spec, indent=4))
    return root


def test_a_decathlon_folder_is_read_by_the_names_dataset_json_gives_its_channels(msd):
    cases = find_cases(msd)
    assert [c.case_id for c in cases] == ["BRATS_000", "BRATS_001", "BRATS_002", "BRATS_003", "BRATS_100"]
    assert {c.layout for c in cases} == {LAYOUT_MSD} and {c.convention for c in cases} == {"msd"}
    assert cases[0].channel_indices(DEFAULT_MODALITIES) == [2, 3, 0]  # t1gd, T2w, FLAIR
    assert check_dataset(msd, progress=False)[1] == []
    # pointing at a sub-folder takes that part of the task
    assert [c.case_id for c in find_cases(msd / "imagesTs")] == ["BRATS_100"]
    datalist = make_datalist(msd, folds=2)
    assert len(datalist["training"]) + len(datalist["validation"]) == 4 and len(datalist["testing"]) == 1
    item = datalist["training"][0]
    assert item["channels"] == [2, 3, 0] and item["label_convention"] == "msd"


def test_the_channel_order_comes_from_dataset_json_never_from_the_position(msd, tmp_path):
    """The same case with its channels stored in another order (and dataset.json saying so) preprocesses to the
    same network input."""
    shuffled = tmp_path / "shuffled"
    shutil.copytree(msd, shuffled)
    order = [3, 1, 0, 2]  # new channel i holds old channel order[i]
    spec = json.loads((shuffled / "dataset.json").read_text())
    spec["modality"] = {str(i): MSD_MODALITY[str(old)] for i, old in enumerate(order)}
    (shuffled / "dataset.json").write_text(json.dumps(spec, indent=4))
    image = shuffled / "imagesTr" / "BRATS_000.nii.gz"
    original = nib.load(image)
    nib.save(nib.Nifti1Image(np.asarray(original.dataobj)[..., order], original.affine, original.header), image)

    first = make_datalist(msd, folds=2)["training"] + make_datalist(msd, folds=2)["validation"]
    again = make_datalist(shuffled, folds=2)["training"] + make_datalist(shuffled, folds=2)["validation"]
    pick = [next(i for i in items if i["case_id"] == "BRATS_000") for items in (first, again)]
    assert pick[0]["channels"] != pick[1]["channels"]
    a, b = preprocessed(pick)
    assert torch.equal(a, b)


@pytest.mark.slow
def test_a_decathlon_folder_trains_segments_and_evaluates_in_its_own_labels(msd, tmp_path):
    weights = train_a_few_iterations(msd, tmp_path / "train")
    assert weights.is_file()
    out = tmp_path / "segs"
    run_workflow("inference", dataset_dir=str(msd), output_dir=str(out), ckpt_path=str(weights), **SMALL)
    for case in find_cases(msd):
        seg = segmentation_path(out, case.case_id)
        assert nib.load(seg).shape == TINY_SHAPE  # the 4D input's grid, one label map
        assert label_values(seg) <= {0, 1, 2, 3}  # msd: 1 edema, 2 non-enhancing, 3 enhancing
    evaluated = tmp_path / "eval"
    run_workflow(
        "evaluating",
        dataset_dir=str(msd),
        output_dir=str(evaluated),
        ckpt_path=str(untrained_weights(tmp_path / "w.pt")),
        **SMALL,
    )
    rows = (evaluated / "metrics.csv").read_text().splitlines()
    assert len(rows) == 1 + 4  # the labelled cases


# --- one multi-channel NIfTI per case ---------------------------------------------------------------------------


def _write_multichannel(folder: Path, case_dir: Path, layout: str, channels: int = 3) -> Path:
    """One case's model modalities (T1CE, T2, FLAIR, and FLAIR again for a 4th channel) as one NIfTI file in the
    layout of a writer: nibabel's ``X, Y, Z, C``, or ITK/SimpleITK's (and 3D Slicer's) vector image ``X, Y, Z, 1, C``
    with the vector intent."""
    case_id = case_dir.name
    volumes = [nib.load(case_dir / f"{case_id}_{m}.nii.gz") for m in DEFAULT_MODALITIES]
    data = np.stack([np.asarray(v.dataobj) for v in volumes] + [np.asarray(volumes[-1].dataobj)] * (channels - 3), -1)
    if layout == "itk":
        data = data[:, :, :, None, :]
    image = nib.Nifti1Image(data, volumes[0].affine)
    if layout == "itk":
        image.header.set_intent("vector")
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{case_id}.nii.gz"
    nib.save(image, path)
    return path


def test_multichannel_files_of_every_writer_give_the_per_modality_result(tiny_dataset, tmp_path):
    case_dir = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
    ckpt = untrained_weights(tmp_path / "model.pt")
    segs = {}
    for layout in ("per-modality", "nibabel", "itk"):
        if layout == "per-modality":
            data = tmp_path / layout / case_dir.name
            shutil.copytree(case_dir, data)
            data = data.parent
        else:
            data = tmp_path / layout
            _write_multichannel(data, case_dir, layout)
        assert check_dataset(data, progress=False)[1] == []
        out = tmp_path / f"{layout}-out"
        run_workflow("inference", dataset_dir=str(data), output_dir=str(out), ckpt_path=str(ckpt), **SMALL)
        segs[layout] = np.asarray(nib.load(segmentation_path(out, case_dir.name)).dataobj)
    assert segs["nibabel"].shape == segs["itk"].shape == TINY_SHAPE
    assert np.array_equal(segs["nibabel"], segs["per-modality"]) and np.array_equal(segs["itk"], segs["per-modality"])
    assert len(np.unique(segs["nibabel"])) > 1


def test_a_channel_count_that_cannot_be_resolved_is_one_line(tiny_dataset, tmp_path, capsys):
    case_dir = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
    path = _write_multichannel(tmp_path / "data", case_dir, "nibabel", channels=4)
    expected = (
        f"{case_dir.name}: {path.name}: 4 channels where 3 are expected (t1ce, t2, flair, in this order); "
        "a file of other channels needs a dataset.json naming them"
    )
    assert [str(p) for p in check_dataset(tmp_path / "data", progress=False)[1]] == [expected]
    ckpt = str(untrained_weights(tmp_path / "model.pt"))
    with raises_user_error(LeftOutCasesError):  # the run ends by listing the left-out case
        run_workflow(
            "inference", dataset_dir=str(tmp_path / "data"), output_dir=str(tmp_path / "o"), ckpt_path=ckpt, **SMALL
        )
    assert f"leaving out case {expected}" in capsys.readouterr().out  # the bundle's logging.conf logs to stdout


# --- BraTS 2024 post-treatment labels ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def brats2024(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("brats2024")
    write_synthetic_dataset(root, n=4, seed=2, layout="2024", shape=(96, 96, 24), progress=False)
    return root


def test_brats2024_labels_are_detected_where_unambiguous(brats2024):
    cases = find_cases(brats2024)
    assert all(4 in label_values(c.label) and 3 in label_values(c.label) for c in cases)  # RC and ET
    assert check_dataset(brats2024, progress=False)[1] == []  # auto: 3 and 4 together are 2024 labels
    refused = check_dataset(brats2024, progress=False, convention="brats2023")[1]
    assert len(refused) == len(cases) and all("outside the brats2023 labels" in str(p) for p in refused)
    assert check_dataset(brats2024, progress=False, convention="brats2024")[1] == []


@pytest.mark.slow
def test_a_brats2024_folder_trains_and_segments_in_the_2023_labels(brats2024, tmp_path, capsys):
    weights = train_a_few_iterations(brats2024, tmp_path / "train", roi_size=[96, 96])
    out = tmp_path / "segs"
    small = {**SMALL, "roi_size": [96, 96]}
    run_workflow("inference", dataset_dir=str(brats2024), output_dir=str(out), ckpt_path=str(weights), **small)
    assert (
        "label convention brats2023" in capsys.readouterr().out
    )  # the log says which convention the maps are written in
    for case in find_cases(brats2024):
        assert label_values(segmentation_path(out, case.case_id)) <= {0, 1, 2, 3}  # ET 3; RC is never predicted


# --- conventions of the written label maps ----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "convention", "et"), [("2021", "auto", 4), ("2023", "auto", 3), ("2021", "brats2023", 3)]
)
def test_each_case_is_written_in_its_own_datasets_labels_unless_told(tmp_path, layout, convention, et):
    data = tmp_path / "data"
    write_synthetic_dataset(data, n=1, seed=0, layout=layout, shape=TINY_SHAPE, progress=False)
    conv = torch.nn.Conv2d(3, 3, kernel_size=1)  # predicts every region everywhere: the map is ET where brain
    torch.nn.init.zeros_(conv.weight)
    torch.nn.init.constant_(conv.bias, 10.0)
    torch.save(conv.state_dict(), tmp_path / "model.pt")
    net = {"_target_": "torch.nn.Conv2d", "in_channels": 3, "out_channels": 3, "kernel_size": 1}
    run_workflow(
        "inference",
        dataset_dir=str(data),
        output_dir=str(tmp_path / "out"),
        ckpt_path=str(tmp_path / "model.pt"),
        network_def=net,
        label_convention=convention,
        **SMALL,
    )
    (seg,) = (tmp_path / "out").glob("*_seg.nii.gz")
    assert label_values(seg) == {0, et}


# --- BraTS 2020 and stray files; every step refuses the same cases -------------------------------------------------


def test_brats2020_names_and_the_stray_label_of_case_355_are_reported(tmp_path, caplog):
    root = tmp_path / "MICCAI_BraTS2020_TrainingData"
    write_synthetic_dataset(root, n=3, seed=0, shape=TINY_SHAPE, progress=False)
    for index, case_dir in enumerate(sorted(root.iterdir())):  # the 2020 release's names and plain .nii files
        name = f"BraTS20_Training_{353 + index:03d}"
        (root / name).mkdir()
        for path in sorted(case_dir.iterdir()):
            image = nib.load(path)
            kind = path.name[len(case_dir.name) + 1 :].replace(".nii.gz", "")
            target = "W39_1998.09.19_Segm.nii" if (index == 2 and kind == "seg") else f"{name}_{kind}.nii"
            nib.save(image, root / name / target)
        shutil.rmtree(case_dir)
    found = discover(root)
    assert [c.case_id for c in found.cases] == [f"BraTS20_Training_{i}" for i in (353, 354, 355)]
    lines = [str(p) for p in check_dataset(root, progress=False)[1]]
    assert lines == [
        "BraTS20_Training_355: W39_1998.09.19_Segm.nii: an image file that is no modality or label of any case "
        "(ignored); a label must be named like <case id>_seg.nii.gz",
        "BraTS20_Training_355: BraTS20_Training_355_seg.nii.gz: no label, where 2 of the dataset's 3 cases have one: it"
        " cannot train or be evaluated",
    ]
    with caplog.at_level(logging.WARNING):
        datalist = make_datalist(root, folds=2)
    assert all(line in caplog.text for line in lines)  # the training's datalist says the same, and the case is not
    assert "BraTS20_Training_355" not in {i["case_id"] for i in datalist["training"] + datalist["validation"]}


def test_check_datalist_slice_cache_and_evaluation_refuse_the_same_cases_with_the_same_lines(tmp_path, caplog):
    root = tmp_path / "data"
    write_synthetic_dataset(root, n=4, seed=3, layout="2023", shape=TINY_SHAPE, progress=False)
    cases = find_cases(root)
    label = nib.load(cases[0].label)  # a 2023-named case with a 4 and no 3: 2021's ET or 2024's RC? ambiguous
    values = np.asarray(label.dataobj).copy()
    values[values == 3] = 0
    values[0, 0, 0] = 4
    nib.save(nib.Nifti1Image(values, label.affine), cases[0].label)
    flair = nib.load(cases[1].images["flair"])  # a NaN voxel
    data = np.asarray(flair.dataobj).astype(np.float32)
    data[1, 1, 1] = np.nan
    nib.save(nib.Nifti1Image(data, flair.affine), cases[1].images["flair"])

    checked = sorted(str(p) for p in check_dataset(root, progress=False)[1])
    assert [line.split(":")[0] for line in checked] == [cases[0].case_id, cases[1].case_id]
    with caplog.at_level(logging.WARNING, logger="axunet_bundle.data.datalist"):
        make_datalist(root, folds=2)
    logged = sorted(r.getMessage().removeprefix("leaving out case ") for r in caplog.records)
    assert logged == checked
    # the slice cache's and the evaluation's cases are chosen by their headers; their voxels are checked as they load
    assert evaluation_cases(root).left_out == []
    selection = labelled_cases(root)
    assert selection.left_out == [] and len(selection.items) == len(cases)
    chain = Compose(
        [LoadImaged(["image", "label"], ensure_channel_first=True, image_only=True), ValidateCased("image")]
    )
    loaded = list(CaseLoader(Dataset(selection.items, chain), selection, batch_size=1))
    assert len(loaded) == len(cases) - 2
    assert sorted(str(p) for p in selection.left_out) == checked


def test_cases_that_fit_one_batch_load_in_the_calling_process_and_a_bad_one_is_still_left_out():
    def load(item: dict) -> dict:
        if item["case_id"] == "bad":
            raise CaseError("bad", "bad_t1ce.nii.gz", "non-finite values (NaN or inf)")
        return {"image": torch.zeros(1, 2, 2), "case_id": item["case_id"]}

    def loader(ids: list[str], **kwargs) -> tuple[CaseLoader, CaseSelection]:
        selection = CaseSelection(items=[{"case_id": i} for i in ids])
        return CaseLoader(Dataset(selection.items, load), selection, **kwargs), selection

    # a folder: workers load the next case while the network runs this one
    assert loader(["a", "b"], batch_size=1, num_workers=2)[0].num_workers == 2
    # one case (or one batch): no next case to load, so no worker to start
    single, selection = loader(["bad"], batch_size=1, num_workers=2, persistent_workers=True, prefetch_factor=2)
    assert single.num_workers == 0
    assert list(single) == [] and [str(e) for e in selection.left_out] == [
        "bad: bad_t1ce.nii.gz: non-finite values (NaN or inf)"
    ]
    assert loader(["a", "b"], batch_size=2, num_workers=2)[0].num_workers == 0


def test_inference_loads_cases_in_the_main_process_on_the_cpu_and_with_workers_for_a_gpu():
    assert inference_workers("cpu") == 0  # the network's threads use every core
    assert inference_workers(torch.device("cuda:0")) == loader_workers() >= 2
    parser = ConfigParser()
    parser.read_config(CONFIGS / "inference.json")
    parser["device"] = "$torch.device('cpu')"
    assert parser.get_parsed_content("num_workers") == 0
