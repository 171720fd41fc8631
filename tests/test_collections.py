"""Cases of collections other than BraTS (their names, extra files), NRRD and MetaImage files, and studies whose
modalities lie on several grids: built from generated BraTS-like cases, renamed, converted (ITK) or resliced."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from conftest import TINY_SHAPE, raises_user_error

from axunet_bundle.cli.data import run_check
from axunet_bundle.data.cases import MODALITIES, UNPLACED_REASON, discover, find_cases
from axunet_bundle.data.datalist import make_datalist
from axunet_bundle.data.integrity import check_case, dataset_problems, ignored_file_problems
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


def test_a_case_file_that_may_be_a_misnamed_label_is_named_with_what_to_do(generated, tmp_path):
    case = collection_case(generated[0], tmp_path, "UPENN-GBM-00001_11", UPENN)
    odd = write_as(source(generated[0], "seg"), case / "UPENN-GBM-00001_11_automated_approx_segm.nii.gz")
    (problem,) = dataset_problems(discover(tmp_path))
    assert (problem.case_id, problem.file, problem.reason) == ("UPENN-GBM-00001_11", odd, UNPLACED_REASON)


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
    assert f"case study: flair resampled onto t1ce's grid ({grids})" in caplog.messages
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
        f"shape {(x, y, z // 4)} differs from t1ce's {TINY_SHAPE}",
    )
    assert problems["broken"][0] == ("broken_t2.mha", "invalid affine (non-finite or zero voxel size)")


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


@pytest.mark.parametrize("output_ext", [".nii.gz", ".nrrd"])
def test_inference_segments_a_thick_slice_nrrd_study_on_its_t1ce_grid(generated, tmp_path, output_ext):
    """The bundle's inference.json on a study whose T1CE is NRRD and whose T2 and FLAIR are 4 mm series: one label
    map, on the T1CE's grid (the grid its overlay needs), as NIfTI or, on request, NRRD for 3D Slicer; a second run
    finds it and skips the case."""
    from test_bundle_workflows import INFERENCE, save_untrained_axunet, workflow

    from axunet_bundle.evaluation.report import read_label_map

    folder = thick_slice_case(generated[0], tmp_path / "data", "study")
    write_as(folder / "study_t1ce.nii.gz", folder / "study_t1ce.nrrd")
    (folder / "study_t1ce.nii.gz").unlink()
    out = tmp_path / "segs"
    ckpt = save_untrained_axunet(tmp_path / "model.pt")
    settings = dict(dataset_dir=str(tmp_path / "data"), output_dir=str(out), ckpt_path=str(ckpt), output_ext=output_ext)
    wf = workflow(INFERENCE, **settings)
    wf.run()
    wf.finalize()
    assert [p.name for p in out.glob("study_*")] == [f"study_seg{output_ext}"]
    seg, affine = read_label_map(out / f"study_seg{output_ext}", "study")
    t1ce = nib.load(source(generated[0], "t1ce"))
    assert seg.shape == t1ce.shape and set(np.unique(seg)) <= {0, 1, 2, 4}
    np.testing.assert_allclose(affine, t1ce.affine, atol=1e-4)
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
