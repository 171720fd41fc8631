"""Cases of collections other than BraTS (their names, extra files), NRRD and MetaImage files, and studies whose
modalities lie on several grids: built from generated BraTS-like cases, renamed, converted (ITK) or resliced."""

from __future__ import annotations

import logging
import re
import shutil
from dataclasses import replace
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_SHAPE, raises_user_error

from axunet_bundle.cli.data import ignored_file_problems, run_check
from axunet_bundle.data.cases import MODALITIES, UNPLACED_REASON, discover, find_cases
from axunet_bundle.data.datalist import make_datalist
from axunet_bundle.data.integrity import INVALID_AFFINE, check_case, dataset_problems
from axunet_bundle.data.pipeline import LoadCased
from axunet_bundle.synthetic import write_synthetic_dataset

KINDS = (*MODALITIES, "seg")


@pytest.fixture(scope="module")
def generated(tmp_path_factory) -> list[Path]:
    """Three generated cases in the BraTS 2021 layout (the sources every test renames or converts)."""
    return write_synthetic_dataset(tmp_path_factory.mktemp("src"), n=3, shape=TINY_SHAPE, progress=False)


def source(case_dir: Path, kind: str) -> Path:
    return case_dir / f"{case_dir.name}_{kind}.nii.gz"


def write_as(src: Path, target: Path) -> Path:
    """``src`` (NIfTI) copied to ``target``, converted by ITK when ``target`` is another format."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.name.endswith(".nii.gz"):
        shutil.copy(src, target)
    else:
        itk.imwrite(itk.imread(str(src)), str(target))
    return target


def collection_case(case_dir: Path, root: Path, case_id: str, names: dict[str, str], ext: str = ".nii.gz") -> Path:
    """A generated case written under other names: ``names`` maps t1/t1ce/t2/flair/seg -> a file name's ending."""
    for kind, ending in names.items():
        write_as(source(case_dir, kind), root / case_id / f"{case_id}{ending}{ext}")
    return root / case_id


UPENN = {"t1": "_T1", "t1ce": "_T1GD", "t2": "_T2", "flair": "_FLAIR", "seg": "_segm"}


def test_upenn_gbm_names_with_other_sequences_and_masks_beside_are_clean_cases(generated, tmp_path, capsys):
    root = tmp_path / "UPENN-GBM"
    for i, case_dir in enumerate(generated[:2], 1):
        case = collection_case(case_dir, root, f"UPENN-GBM-0000{i}_11", UPENN)
        for extra in ("_DSC_ap-rCBV", "_DTI_FA", "_brain_mask"):  # other sequences and a brain mask beside
            write_as(source(case_dir, "t2"), case / f"{case.name}{extra}.nii.gz")
    found = discover(root)
    assert [c.case_id for c in found.cases] == ["UPENN-GBM-00001_11", "UPENN-GBM-00002_11"]
    case = found.cases[0]
    assert case.label.name == "UPENN-GBM-00001_11_segm.nii.gz" and case.convention == "brats2021"
    assert case.images["t1ce"].name == "UPENN-GBM-00001_11_T1GD.nii.gz"
    assert dataset_problems(found) == []
    assert run_check(root) == 0
    assert capsys.readouterr().out.splitlines() == [
        "ignored files (the model does not read them): 2 brain_mask, 2 dsc_ap-rcbv, 2 dti_fa, 2 t1",
        "2 cases checked, 0 with problems",
    ]
    datalist = make_datalist(root, folds=2)
    assert all("label" in item for item in datalist["training"] + datalist["validation"])


@pytest.mark.parametrize(
    "case_id, names, ignored",
    [
        (  # UCSF-PDGM: its tumour label, and a brain segmentation that is no tumour label
            "UCSF-PDGM-0004",
            {"t1": "_T1", "t1ce": "_T1c", "t2": "_T2", "flair": "_FLAIR", "seg": "_tumor_segmentation"},
            ["_brain_segmentation", "_ADC", "_T1c_bias"],
        ),
        (  # a case folder whose files are named by what they hold alone
            "",
            {"t1": "T1", "t1ce": "T1ce", "t2": "T2", "flair": "T2-FLAIR", "seg": "label"},
            ["dwi", "brainmask"],
        ),
        ("P-7", {"t1": "-t1w", "t1ce": "-T1-post", "t2": "-t2w", "flair": "-t2_flair", "seg": "-tumorMask"}, ["-swi"]),
    ],
)
def test_other_collections_names_give_their_label_and_ignore_their_other_files(
    generated, tmp_path, case_id, names, ignored
):
    folder = tmp_path / "data" / "case-0001"
    for kind, ending in names.items():
        write_as(source(generated[0], kind), folder / f"{case_id}{ending}.nii.gz")
    for ending in ignored:
        write_as(source(generated[0], "t2"), folder / f"{case_id}{ending}.nii.gz")
    found = discover(tmp_path / "data")
    (case,) = found.cases
    assert case.case_id == (case_id or "case-0001")
    assert case.label == folder / f"{case_id}{names['seg']}.nii.gz"
    assert {m: p.name for m, p in case.images.items()} == {m: f"{case_id}{names[m]}.nii.gz" for m in MODALITIES}
    assert sorted(p.name for _, p in case.ignored) == sorted(f"{case_id}{e}.nii.gz" for e in ignored)
    assert dataset_problems(found) == [] and check_case(case) == []


@pytest.mark.parametrize("where", ["", "../other_folder/"])
@pytest.mark.parametrize("ending", ["_seg_old", "_mask", "_Segmentation-v2"])
def test_a_case_file_that_may_be_a_misnamed_label_is_named_with_what_to_do(generated, tmp_path, ending, where):
    """Beside the case's images or in another folder of the dataset: the label is never guessed."""
    case = collection_case(generated[0], tmp_path, "UPENN-GBM-00001_11", UPENN)
    odd = write_as(source(generated[0], "seg"), case / where / f"UPENN-GBM-00001_11{ending}.nii.gz").resolve()
    (problem,) = dataset_problems(discover(tmp_path))
    assert (problem.case_id, problem.file.resolve(), problem.reason) == ("UPENN-GBM-00001_11", odd, UNPLACED_REASON)


@pytest.mark.parametrize("ending", ["_seg_final", "_final_seg", "-Segm-Manual", "_tumor_segmentation", "_segmentation"])
def test_a_label_named_as_the_final_or_manual_one_is_the_label(generated, tmp_path, ending):
    names = {**UPENN, "seg": ending}
    case = collection_case(generated[0], tmp_path, "P-01", names)
    (found,) = find_cases(tmp_path)
    assert found.label == case / f"P-01{ending}.nii.gz" and check_case(found) == []


def upenn_as_tcia_ships_it(generated: list[Path], root: Path, labelled: int) -> list[str]:
    """TCIA's UPenn-GBM NIfTI download: one folder per kind of file, side by side; manual labels for the first
    ``labelled`` cases only, an automated segmentation for every case."""
    ids = []
    for i, case_dir in enumerate(generated, 1):
        case_id = f"UPENN-GBM-0000{i}_11"
        ids.append(case_id)
        collection_case(case_dir, root / "images_structural", case_id, {k: v for k, v in UPENN.items() if k != "seg"})
        folder = root / "images_structural_unstripped" / case_id
        write_as(source(case_dir, "t1"), folder / f"{case_id}_T1_unstripped.nii.gz")
        write_as(source(case_dir, "t2"), root / "images_DTI" / case_id / f"{case_id}_DTI_FA.nii.gz")
        write_as(source(case_dir, "seg"), root / "automated_segm" / f"{case_id}_automated_approx_segm.nii.gz")
        if i <= labelled:
            write_as(source(case_dir, "seg"), root / "images_segm" / f"{case_id}_segm.nii.gz")
    return ids


def test_upenn_gbm_labels_in_their_own_folder_are_found_by_every_step(generated, tmp_path, capsys):
    """check, datalist (training), evaluation and score find the labels of images_segm/; the automated
    segmentations and the other folders' files are the cases' ignored files; a case with only an automated
    segmentation is a warning (the collection labels a subset by hand), not a broken case."""
    from axunet_bundle.cli.score import label_map_files
    from axunet_bundle.data.datalist import evaluation_cases

    root = tmp_path / "UPENN-GBM"
    ids = upenn_as_tcia_ships_it(generated, root, labelled=2)
    found = discover(root)
    assert [c.case_id for c in found.cases] == ids and dataset_problems(found) == []
    labels = {c.case_id: c.label for c in found.cases}
    assert labels == {**{i: root / "images_segm" / f"{i}_segm.nii.gz" for i in ids[:2]}, ids[2]: None}
    assert run_check(root) == 0
    automated = root / "automated_segm" / f"{ids[2]}_automated_approx_segm.nii.gz"
    assert capsys.readouterr().out.splitlines() == [
        f"warning: {ids[2]}: {automated.name}: no label (this file is a program's segmentation, no reference): the "
        "case cannot train or be evaluated",
        "ignored files (the model does not read them): 3 automated_approx_segm, 3 dti_fa, 3 t1, 3 t1_unstripped",
        "3 cases checked, 0 with problems, 1 warnings",
    ]
    datalist = make_datalist(root, folds=2)
    assert sorted(item["label"] for item in datalist["training"] + datalist["validation"]) == sorted(
        str(labels[i]) for i in ids[:2]
    )
    assert [item["case_id"] for item in datalist["testing"]] == [ids[2]]
    assert sorted(item["reference"] for item in evaluation_cases(root).items) == sorted(str(labels[i]) for i in ids[:2])
    assert {i: path for i, (path, _) in label_map_files(root).items()} == {i: labels[i] for i in ids[:2]}


def test_a_second_label_in_another_folder_is_named(generated, tmp_path):
    case = collection_case(generated[0], tmp_path / "images", "UPENN-GBM-00001_11", UPENN)
    other = write_as(source(generated[0], "seg"), tmp_path / "images_segm" / "UPENN-GBM-00001_11_segm.nii.gz")
    found = discover(tmp_path)
    assert found.cases[0].label == case / "UPENN-GBM-00001_11_segm.nii.gz"
    (problem,) = dataset_problems(found)
    assert (problem.file, problem.reason) == (
        other,
        "a second label of the case, which has UPENN-GBM-00001_11_segm.nii.gz beside its images: keep one",
    )


@pytest.mark.parametrize("formats", [(".nrrd", ".mha", ".nii.gz", ".nrrd"), (".mha", ".nhdr", ".mhd", ".nii")])
def test_nrrd_and_metaimage_files_mixed_with_nifti_are_found_checked_and_loaded(generated, tmp_path, formats):
    """t1ce, t2, flair and seg in the given formats: the case is clean and loads the NIfTI sources' voxels."""
    folder, mods = tmp_path / "case", ("t1ce", "t2", "flair")
    for kind, ext in zip((*mods, "seg"), formats):
        src = source(generated[0], kind)
        target = folder / f"case_{kind}{ext}"
        if ext == ".nii":
            nib.save(nib.load(src), target)
        else:
            write_as(src, target)
    (case,) = find_cases(tmp_path)
    assert [case.images[m].name for m in ("t1ce", "t2", "flair")] == [f"case_{k}{e}" for k, e in zip(mods, formats)]
    assert check_case(case, ("t1ce", "t2", "flair")) == []
    item = LoadCased(["image", "label"])({"image": case.image_files(("t1ce", "t2", "flair")), "label": case.label})
    expected = [np.asarray(nib.load(source(generated[0], k)).dataobj) for k in ("t1ce", "t2", "flair", "seg")]
    np.testing.assert_array_equal(item["image"].numpy(), np.stack(expected[:3]))
    np.testing.assert_array_equal(item["label"][0].numpy(), expected[3])
    np.testing.assert_allclose(item["image"].affine.numpy(), nib.load(source(generated[0], "t1ce")).affine, atol=1e-4)


@pytest.mark.parametrize("ext", [".nrrd", ".mha"])
def test_a_cut_or_garbage_nrrd_or_metaimage_file_is_refused_in_one_line(generated, tmp_path, ext):
    case_dir = collection_case(generated[0], tmp_path, "c", {k: f"_{k}" for k in KINDS}, ext)
    t2, flair = case_dir / f"c_t2{ext}", case_dir / f"c_flair{ext}"
    t2.write_bytes(t2.read_bytes()[:-300])
    flair.write_bytes(b"\x00garbage" * 10)
    (case,) = find_cases(tmp_path)
    problems = {p.file.name: p.reason for p in check_case(case, ("t1ce", "t2", "flair"))}
    assert problems.keys() == {t2.name, flair.name}
    assert problems[t2.name].startswith("truncated file: ") and "unreadable image header" in problems[flair.name]
    assert all("\n" not in reason for reason in problems.values())


@pytest.mark.parametrize("ext", [".nhdr", ".mhd"])
def test_a_detached_header_whose_voxel_file_is_cut_or_missing_is_refused_in_one_line(generated, tmp_path, ext):
    """An .nhdr or .mhd keeps its voxels in a .raw file beside it: a cut or missing one is named from the header,
    before any voxel is read, as a cut .nii is."""
    case_dir = collection_case(generated[0], tmp_path, "c", {k: f"_{k}" for k in KINDS}, ext)
    t2_raw, flair_raw = case_dir / "c_t2.raw", case_dir / "c_flair.raw"
    t2_raw.write_bytes(t2_raw.read_bytes()[:-300])
    flair_raw.unlink()
    (case,) = find_cases(tmp_path)
    assert [(p.file.name, p.reason.split(":")[0]) for p in check_case(case, ("t1ce", "t2", "flair"))] == [
        (f"c_t2{ext}", "truncated file (its voxel file c_t2.raw)"),
        (f"c_flair{ext}", "cannot read its voxel file c_flair.raw (No such file or directory)"),
    ]


@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.float64])
def test_labels_of_any_integer_valued_dtype_and_a_4d_single_volume_modality_are_read(generated, tmp_path, dtype):
    """A label map stored as uint8, int16 or float64, and a T2 saved as X, Y, Z, 1 (a 4D file of one volume): a
    clean case, whose loaded label and T2 equal the generated ones."""
    folder = tmp_path / "case"
    for kind in ("t1ce", "flair"):
        write_as(source(generated[0], kind), folder / f"case_{kind}.nii.gz")
    t2, seg = nib.load(source(generated[0], "t2")), nib.load(source(generated[0], "seg"))
    nib.save(nib.Nifti1Image(np.asarray(t2.dataobj)[..., None], t2.affine), folder / "case_t2.nii.gz")
    label = nib.Nifti1Image(np.asarray(seg.dataobj).astype(dtype), seg.affine)
    label.set_data_dtype(dtype)
    nib.save(label, folder / "case_seg.nii.gz")
    (case,) = find_cases(tmp_path)
    mods = ("t1ce", "t2", "flair")
    assert check_case(case, mods) == []
    item = LoadCased(["image", "label"], mods)({"image": case.image_files(mods), "label": case.label})
    assert item["image"].shape == (3, *TINY_SHAPE)
    np.testing.assert_array_equal(item["image"][1].numpy(), np.asarray(t2.dataobj, dtype=np.float32))
    np.testing.assert_array_equal(item["label"][0].numpy(), np.asarray(seg.dataobj))


def resliced(src: Path, target: Path, step: int, shift_mm: float = 0.0) -> Path:
    """Every ``step``-th axial slice of ``src``, the affine saying so (a thick-slice series in the same space)."""
    img = nib.load(src)
    affine = img.affine.copy()
    affine[:3, 2] *= step
    affine[0, 3] += shift_mm
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(img.dataobj)[..., ::step], affine), target)
    return target


def thick_slice_case(case_dir: Path, root: Path, case_id: str, shift_mm: float = 0.0) -> Path:
    """The generated case with its T2 and FLAIR as 4 mm axial series (the T1CE and label stay 1 mm)."""
    folder = root / case_id
    for kind in ("t1ce", "seg"):
        write_as(source(case_dir, kind), folder / f"{case_id}_{kind}.nii.gz")
    for kind in ("t2", "flair"):
        resliced(source(case_dir, kind), folder / f"{case_id}_{kind}.nii.gz", step=4, shift_mm=shift_mm)
    return folder


def test_modalities_on_a_coarser_grid_are_resampled_onto_t1ce_and_the_log_says_so(generated, tmp_path, caplog):
    thick_slice_case(generated[0], tmp_path, "study")
    (case,) = find_cases(tmp_path)
    mods = ("t1ce", "t2", "flair")
    with caplog.at_level(logging.INFO, logger="axunet_bundle.data.integrity"):
        assert check_case(case, mods) == []
    x, y, z = TINY_SHAPE
    grids = f"{x}x{y}x{z // 4} voxels of 1x1x4 mm -> {x}x{y}x{z} voxels of 1x1x1 mm"
    apart = 4 / 2 - 1 / 2  # both series start at one slice centre: their first voxels' faces lie half a slice out
    assert f"case study: flair resampled onto t1ce's grid ({grids}; fields of view {apart:g} mm apart at most)" in (
        caplog.messages
    )
    item = LoadCased(["image", "label"])({"image": case.image_files(mods), "label": case.label})
    assert item["image"].shape == (3, *TINY_SHAPE) and item["label"].shape == (1, *TINY_SHAPE)
    t1ce = nib.load(case.images["t1ce"])
    np.testing.assert_allclose(item["image"].affine.numpy(), t1ce.affine, atol=1e-5)
    flair = np.asarray(nib.load(source(generated[0], "flair")).dataobj, dtype=np.float32)
    np.testing.assert_array_equal(item["image"][2, ..., ::4].numpy(), flair[..., ::4])  # the slices it had
    between = item["image"][2, ..., 1 : z - 4 : 4].numpy()  # interpolated: between its neighbours' values
    low, high = np.minimum(flair[..., 0 : z - 4 : 4], flair[..., 4::4]), np.maximum(
        flair[..., 0 : z - 4 : 4], flair[..., 4::4]
    )
    assert np.all((between >= low - 1e-3) & (between <= high + 1e-3))


def test_grids_without_common_space_a_broken_affine_or_a_label_on_another_grid_are_refused(generated, tmp_path):
    thick_slice_case(generated[0], tmp_path, "apart", shift_mm=1000.0)
    label_case = collection_case(generated[1], tmp_path, "label_apart", {k: f"_{k}" for k in ("t1ce", "t2", "flair")})
    resliced(source(generated[1], "seg"), label_case / "label_apart_seg.nii.gz", step=4)
    broken = collection_case(generated[2], tmp_path, "broken", {k: f"_{k}" for k in KINDS})
    t2 = write_as(broken / "broken_t2.nii.gz", broken / "broken_t2.mha")
    (broken / "broken_t2.nii.gz").unlink()
    t2.write_bytes(re.sub(rb"ElementSpacing = [^\n]*", b"ElementSpacing = 1 1 0", t2.read_bytes(), count=1))
    mods = ("t1ce", "t2", "flair")
    problems = {c.case_id: [(p.file.name, p.reason) for p in check_case(c, mods)] for c in find_cases(tmp_path)}
    assert problems["apart"] == [
        (f"apart_{m}.nii.gz", "its field of view does not overlap t1ce's: nothing to resample onto t1ce's grid")
        for m in ("t2", "flair")
    ]
    x, y, z = TINY_SHAPE
    assert problems["label_apart"][0] == (
        "label_apart_seg.nii.gz",
        f"shape {(x, y, z // 4)} differs from t1ce's {TINY_SHAPE} (a label must lie on the reference modality's grid: "
        "labels are never interpolated)",
    )
    assert problems["broken"] == [("broken_t2.mha", INVALID_AFFINE)]
    t2.write_bytes(re.sub(rb"ElementSpacing = [^\n]*", b"ElementSpacing = 1 1 1", t2.read_bytes(), count=1))
    t2.write_bytes(
        re.sub(rb"TransformMatrix = [^\n]*", b"TransformMatrix = 0 0 0 0 0 0 0 0 0", t2.read_bytes(), count=1)
    )
    (case,) = find_cases(tmp_path / "broken")
    assert [(p.file.name, p.reason) for p in check_case(case, mods)] == [("broken_t2.mha", INVALID_AFFINE)]


def test_the_grid_modality_setting_chooses_the_reference_grid_of_check_loading_and_labels(generated, tmp_path, caplog):
    """grid_modality flair: the 1 mm T1CE is resampled onto the 4 mm FLAIR's grid (the log says so), the stack keeps
    the FLAIR's grid, and the 1 mm label, on the T1CE's grid, is refused (labels are never interpolated)."""
    thick_slice_case(generated[0], tmp_path, "study")
    (case,) = find_cases(tmp_path)
    mods = ("t1ce", "t2", "flair")
    with caplog.at_level(logging.INFO, logger="axunet_bundle.data.integrity"):
        problems = check_case(case, mods, grid_modality="flair")
    x, y, z = TINY_SHAPE
    assert any(m.startswith("case study: t1ce resampled onto flair's grid (") for m in caplog.messages)
    assert not any("t2 resampled" in m for m in caplog.messages)  # T2 lies on the FLAIR's grid
    never = " (a label must lie on the reference modality's grid: labels are never interpolated)"
    assert [(p.file.name, p.reason) for p in problems] == [
        ("study_seg.nii.gz", f"shape {TINY_SHAPE} differs from flair's {(x, y, z // 4)}{never}"),
        ("study_seg.nii.gz", f"affine differs from flair's (largest difference {4 - 1}){never}"),  # 1 mm vs 4 mm
    ]
    assert check_case(replace(case, label=None), mods, grid_modality="flair") == []
    item = LoadCased("image", mods, "flair")({"image": case.image_files(mods)})
    flair = nib.load(case.images["flair"])
    assert item["image"].shape == (3, x, y, z // 4)
    np.testing.assert_allclose(item["image"].affine.numpy(), flair.affine, atol=1e-5)
    t1ce = np.asarray(nib.load(case.images["t1ce"]).dataobj, dtype=np.float32)
    # the FLAIR's slice centres are T1CE voxel centres: the resampled T1CE holds its own voxels there
    np.testing.assert_allclose(item["image"][0].numpy(), t1ce[..., ::4], atol=1e-3)


def test_a_grid_modality_that_is_no_modality_of_the_run_is_refused_in_one_line(generated, tmp_path):
    from test_command_line import axunet, one_line

    from axunet_bundle.settings import check_settings

    collection_case(generated[0], tmp_path, "c", {k: f"_{k}" for k in KINDS})
    (case,) = find_cases(tmp_path)
    mods = ["t1ce", "t2", "flair"]
    message = "grid_modality: got 't1', expected auto or one of the modalities t1ce, t2, flair"
    for refuse in (
        lambda: check_settings(modalities=mods, grid_modality="t1"),
        lambda: LoadCased("image", mods, "t1"),
        lambda: check_case(case, mods, grid_modality="t1"),
    ):
        with raises_user_error(match=message):
            refuse()
    assert one_line(axunet("check", tmp_path, "--grid_modality", "t1")) == f"error: {message}"


def test_training_and_evaluation_take_a_thick_slice_study_on_the_grid_modality(generated, tmp_path):
    """The training's volume chain (train.json) stacks the resampled T2/FLAIR with the T1CE and the label, on the
    T1CE's grid; with grid_modality flair, the datalist leaves the case out (its label lies on the T1CE's grid)."""
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from axunet_bundle.data.datalist import evaluation_cases

    for i, case_dir in enumerate(generated):
        thick_slice_case(case_dir, tmp_path, f"study{i}")
    datalist = make_datalist(tmp_path, folds=2)
    parser = ConfigParser()
    parser.read_config(str(Path(__file__).resolve().parents[1] / "configs" / "train.json"))
    loading = Compose(parser.get_parsed_content("volume_transforms")[:3])  # load, select, check
    item = loading(datalist["training"][0])
    assert item["image"].shape == (3, *TINY_SHAPE) and item["label"].shape == (1, *TINY_SHAPE)
    with raises_user_error(match="too few labelled patients"):  # every case left out: its label is on T1CE's grid
        make_datalist(tmp_path, folds=2, grid_modality="flair")
    selection = evaluation_cases(tmp_path, grid_modality="flair")
    assert selection.items == [] and {p.case_id for p in selection.left_out} == {"study0", "study1", "study2"}


def test_a_broken_file_the_model_does_not_use_is_a_warning_of_check(generated, tmp_path, capsys):
    case_dir = collection_case(generated[0], tmp_path, "c", {k: f"_{k}" for k in KINDS})
    (case_dir / "c_t1.nii.gz").write_bytes(b"\x1f\x8b" + bytes(78))  # 80 bytes: no volume
    (case,) = find_cases(tmp_path, ("t1ce", "t2", "flair"))  # what the model reads
    assert check_case(case, ("t1ce", "t2", "flair")) == []
    (warning,) = ignored_file_problems(case)
    assert warning.file == case_dir / "c_t1.nii.gz" and warning.reason.endswith("(a t1 file the model does not use)")
    assert run_check(tmp_path) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"warning: {warning}",
        "ignored files (the model does not read them): 1 t1",
        "1 cases checked, 0 with problems, 1 warnings",
    ]


@pytest.mark.parametrize("output_ext, grid_modality", [(".nii.gz", "auto"), (".nrrd", "t1ce"), (".nii.gz", "flair")])
def test_inference_segments_a_thick_slice_nrrd_study_on_its_grid_modality(
    generated, tmp_path, output_ext, grid_modality
):
    """The bundle's inference.json on a study whose T1CE is NRRD and whose T2 and FLAIR are 4 mm series: one label
    map, on the grid modality's grid (T1CE by default: the grid its overlay needs), as NIfTI or, on request, NRRD for
    3D Slicer; a second run finds it and skips the case."""
    from test_bundle_workflows import INFERENCE, save_untrained_axunet, workflow

    from axunet_bundle.evaluation.report import read_label_map

    folder = thick_slice_case(generated[0], tmp_path / "data", "study")
    write_as(folder / "study_t1ce.nii.gz", folder / "study_t1ce.nrrd")
    (folder / "study_t1ce.nii.gz").unlink()
    out = tmp_path / "segs"
    ckpt = save_untrained_axunet(tmp_path / "model.pt")
    settings = dict(dataset_dir=str(tmp_path / "data"), output_dir=str(out), ckpt_path=str(ckpt), output_ext=output_ext)
    settings["grid_modality"] = grid_modality
    wf = workflow(INFERENCE, **settings)
    wf.run()
    wf.finalize()
    assert [p.name for p in out.glob("study_*")] == [f"study_seg{output_ext}"]
    seg, affine = read_label_map(out / f"study_seg{output_ext}", "study")
    grid = nib.load(folder / "study_flair.nii.gz" if grid_modality == "flair" else source(generated[0], "t1ce"))
    assert seg.shape == grid.shape and set(np.unique(seg)) <= {0, 1, 2, 4}
    np.testing.assert_allclose(affine, grid.affine, atol=1e-4)
    again = workflow(INFERENCE, **settings)
    assert again.parser.get_parsed_content("cases").items == []  # already segmented


def test_an_output_format_the_bundle_does_not_write_is_refused_in_one_line():
    from axunet_bundle.settings import check_setting
    from axunet_bundle.transforms import AtomicITKWriter, AtomicNibabelWriter, atomic_writer

    assert atomic_writer(".nrrd") is AtomicITKWriter and atomic_writer(".nii") is AtomicNibabelWriter
    for refuse in (lambda: check_setting("output_ext", ".png"), lambda: atomic_writer(".png")):
        with raises_user_error(match=r"output_ext: .*\.png.*\.nii\.gz, \.nii, \.nrrd, \.mha"):
            refuse()


def test_the_evaluation_reads_an_nrrd_or_metaimage_label_map_as_its_nifti_source(generated, tmp_path):
    from axunet_bundle.evaluation.report import read_label_map

    src = nib.load(source(generated[0], "seg"))
    for ext in (".nrrd", ".mha"):
        data, affine = read_label_map(write_as(source(generated[0], "seg"), tmp_path / f"seg{ext}"), "c")
        np.testing.assert_array_equal(data, np.asarray(src.dataobj))
        np.testing.assert_allclose(affine, src.affine, atol=1e-4)
