"""MONAI Label on a dataset as it lies on disk: one modality's file stands for its case in the bundle's loading
(what MONAI Label's datastore hands the bundle), and ``axunet monailabel-studies`` lays out a flat studies folder of
any layout the bundle reads, one image per case, its labels where MONAI Label looks. The real server is
tests/test_monailabel.py."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
from pathlib import Path

import itk
import nibabel as nib
import numpy as np
import pytest
from conftest import CONFIGS, raises_user_error

from axunet_bundle.cli import main
from axunet_bundle.cli.studies import LABELS_FINAL, lay_out_studies
from axunet_bundle.data.cases import DEFAULT_MODALITIES, STRAY_REASON, case_of_file, discover, find_cases
from axunet_bundle.data.integrity import label_problems
from axunet_bundle.data.labels import AUTO, LABEL_CONVENTIONS, labels_to_regions, regions_to_labels
from axunet_bundle.data.pipeline import CHANNELS_KEY, LoadCased, SelectModalitiesd, item_convention
from axunet_bundle.errors import CaseError
from axunet_bundle.synthetic import write_synthetic_dataset

MODS = DEFAULT_MODALITIES
SHAPE = (32, 32, 8)


@pytest.fixture(scope="module")
def layouts(tmp_path_factory) -> dict[str, Path]:
    """Two generated cases in each layout the generator writes."""
    root = tmp_path_factory.mktemp("layouts")
    for layout in ("2021", "2023", "2024", "msd"):
        write_synthetic_dataset(root / layout, n=2, seed=1, layout=layout, shape=SHAPE, progress=False)
    # another collection's way: case folders of NRRD files named by what they hold alone (what 3D Slicer saves)
    for case in find_cases(root / "2021"):
        for kind, path in [*((m, case.images[m]) for m in MODS), ("seg", case.label)]:
            target = root / "nrrd" / f"patient{case.case_id[-1]}" / f"{kind}.nrrd"
            target.parent.mkdir(parents=True, exist_ok=True)
            itk.imwrite(itk.imread(str(path)), str(target))
    return {p.name: p for p in root.iterdir()}


def load(item: dict, modalities=MODS) -> dict:
    """The first transforms of the bundle's chains: the case's files loaded, the model's modalities picked."""
    item = LoadCased(["image", "label"], modalities=modalities, allow_missing_keys=True)(item)
    return SelectModalitiesd("image", modalities)(item)


# --- one modality's file stands for its case -------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["2021", "2023"])
@pytest.mark.parametrize("given", ["t1", "t1ce", "flair"])
def test_one_modality_file_loads_its_case_from_beside_it(layouts, layout, given):
    """Any modality's file of a case (also one the model does not read) loads the case's T1CE, T2, FLAIR in order:
    the same voxels and grid as the case's list of files."""
    for case in find_cases(layouts[layout]):
        from_list = load({"image": case.image_files(MODS)})["image"]
        file = case.images[given] if given in case.images else next(p for k, p in case.ignored if k == given)
        from_one = load({"image": str(file)})["image"]
        assert from_one.shape == (3, *SHAPE)
        np.testing.assert_array_equal(from_one.numpy(), from_list.numpy())
        np.testing.assert_allclose(from_one.affine.numpy(), from_list.affine.numpy())
        assert Path(from_one.meta["filename_or_obj"]) == case.images["t1ce"]


def test_a_missing_sibling_is_one_line_naming_the_case_and_the_file(layouts, tmp_path):
    case = find_cases(layouts["2021"])[0]
    folder = shutil.copytree(case.directory, tmp_path / case.case_id)
    (folder / f"{case.case_id}_t2.nii.gz").unlink()
    with raises_user_error(CaseError, match=rf"^{case.case_id}: {case.case_id}_t2.nii.gz: missing t2 image beside"):
        load({"image": str(folder / f"{case.case_id}_flair.nii.gz")})


def test_a_4d_study_and_a_label_named_like_a_modality_load_as_they_are(layouts, tmp_path):
    """A multi-channel study is its own case; the label key never stands for a case, whatever its name (MONAI Label
    names a label after its image)."""
    case = find_cases(layouts["2021"])[0]
    channels = [nib.load(case.images[m]) for m in MODS]
    study = tmp_path / "study.nii.gz"
    nib.save(nib.Nifti1Image(np.stack([np.asarray(c.dataobj) for c in channels], -1), channels[0].affine), study)
    label = tmp_path / "labels" / "final" / f"{case.case_id}_flair.nii.gz"
    label.parent.mkdir(parents=True)
    shutil.copy(case.label, label)
    item = load({"image": str(study), "label": str(label)})
    np.testing.assert_array_equal(item["image"].numpy(), load({"image": case.image_files(MODS)})["image"].numpy())
    assert item["label"].shape == (1, *SHAPE)


def test_the_inference_config_reads_a_case_from_one_of_its_files(layouts, tmp_path):
    """inference.json's preprocessing (the chain MONAI Label's BundleInferTask runs) on a FLAIR file gives the model's
    three channels."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "inference.json"))
    parser["bundle_root"] = str(tmp_path)
    case = find_cases(layouts["2021"])[0]
    image = parser.get_parsed_content("preprocessing", instantiate=True)({"image": str(case.images["flair"])})["image"]
    assert image.shape[0] == len(MODS)


# --- a studies folder from a dataset -----------------------------------------------------------------------------


def listed(studies: Path, patterns) -> list[Path]:
    """The studies folder's files MONAI Label's local datastore lists for ``MONAI_LABEL_DATASTORE_FILE_EXT``."""
    return sorted(p for p in studies.iterdir() if p.is_file() and any(fnmatch.fnmatch(p.name, g) for g in patterns))


@pytest.mark.parametrize("layout", ["2021", "2023", "2024", "msd", "nrrd"])
def test_studies_folder_lists_one_image_per_case_that_loads_the_case_with_its_label(layouts, layout, tmp_path):
    """Each case: one listed image whose name less the pattern's tail is the case id; loading it gives the source
    case's modalities; its label lies in labels/final under the image's name, valid in the convention the bundle
    reads it in, and holds the source's regions."""
    sources = {c.case_id: c for c in find_cases(layouts[layout], MODS)}
    found = lay_out_studies(layouts[layout], tmp_path / "studies")
    images = listed(found.root, found.patterns)
    assert sorted(found.ids) == sorted(sources) and len(images) == len(sources)
    labels = listed(found.root / LABELS_FINAL, found.patterns)
    assert [p.name for p in labels] == [p.name for p in images]
    for image, label in zip(images, labels):
        case = sources[next(cid for cid in sources if image.name.startswith(cid))]
        loaded = load({"image": str(image), "label": str(label)})
        source = {"image": case.image_files(MODS), "label": str(case.label), CHANNELS_KEY: case.channel_indices(MODS)}
        expected = load(source)
        np.testing.assert_array_equal(loaded["image"].numpy(), expected["image"].numpy())
        np.testing.assert_allclose(loaded["image"].affine.numpy(), expected["image"].affine.numpy(), atol=1e-5)
        convention = item_convention(loaded, AUTO, loaded["label"])  # how the bundle's chains read it
        assert label_problems(loaded["label"].numpy(), convention) == []
        np.testing.assert_array_equal(
            labels_to_regions(loaded["label"].numpy(), convention),
            labels_to_regions(expected["label"].numpy(), case.convention),
        )


def test_a_rerun_keeps_the_labels_monailabel_saved_and_copies_where_links_fail(layouts, tmp_path, monkeypatch):
    out = tmp_path / "studies"
    first = lay_out_studies(layouts["2021"], out)
    saved = out / LABELS_FINAL / f"{first.ids[0]}.nii.gz"  # what MONAI Label writes for a label from 3D Slicer
    saved.write_bytes(b"a corrected label")
    again = lay_out_studies(layouts["2021"], out)
    assert again.counts["kept labels"] == 1 and saved.read_bytes() == b"a corrected label"

    def no_links(*_):
        raise OSError("operation not permitted")

    monkeypatch.setattr(Path, "symlink_to", no_links)
    copied = lay_out_studies(layouts["2021"], tmp_path / "copies")
    assert copied.counts["linked"] == 0 and copied.counts["copied"] == 2 * (len(MODS) + 1)
    assert not any(p.is_symlink() for p in (tmp_path / "copies").rglob("*"))


def test_the_command_prints_the_server_command_and_names_each_case_left_out(layouts, tmp_path, capsys):
    dataset = shutil.copytree(layouts["2021"], tmp_path / "data")
    case = find_cases(dataset)[1]
    (case.directory / f"{case.case_id}_flair.nii.gz").unlink()
    main(["monailabel-studies", str(dataset), str(tmp_path / "studies"), "--study_modality", "flair"])
    out = capsys.readouterr().out
    assert f"left out: {case.case_id}: {case.case_id}_flair.nii.gz: missing flair" in out
    command = out.strip().splitlines()[-1]
    match = re.match(
        r"^MONAI_LABEL_DATASTORE_FILE_EXT='(.*)' monailabel start_server --app (\S+) --studies (\S+)", command
    )
    assert match and json.loads(match[1]) == ["*_flair.nii.gz"] and Path(match[3]) == tmp_path / "studies"
    assert "--conf models brats_axunet_2d_segmentation" in command


@pytest.fixture
def thick_flair(layouts, tmp_path):
    """A 2021 dataset whose first case's FLAIR has every second axial slice only (another grid than T1CE's)."""
    dataset = shutil.copytree(layouts["2021"], tmp_path / "data")
    case = find_cases(dataset)[0]
    flair = case.directory / f"{case.case_id}_flair.nii.gz"
    image = nib.load(flair)
    nib.save(nib.Nifti1Image(np.asarray(image.dataobj)[:, :, ::2], image.affine @ np.diag([1, 1, 2, 1])), flair)
    return dataset, case


def test_a_study_modality_off_the_label_grid_is_refused_in_one_line(thick_flair, tmp_path):
    dataset, case = thick_flair
    with raises_user_error(CaseError, match=rf"^{case.case_id}: .*_flair.nii.gz: lies on another grid than t1ce"):
        lay_out_studies(dataset, tmp_path / "studies", study_modality="flair")


def test_the_label_grid_is_the_grid_modality_not_the_first_modality(thick_flair, tmp_path):
    # modalities in another channel order: T1CE (the grid the label maps are written on) stays the reference
    dataset, case = thick_flair
    found = lay_out_studies(dataset, tmp_path / "studies", study_modality="t1ce", modalities=["flair", "t2", "t1ce"])
    assert case.case_id in found.ids
    with raises_user_error(CaseError, match=rf"^{case.case_id}: .*_flair.nii.gz: lies on another grid than t1ce"):
        lay_out_studies(dataset, tmp_path / "studies2", study_modality="flair", modalities=["flair", "t2", "t1ce"])


# --- the studies folder as a dataset, and the names Slicer shows ------------------------------------------------


@pytest.mark.parametrize("layout", ["2021", "2023", "msd"])
def test_a_studies_folder_is_a_dataset_whose_saved_labels_are_its_cases_labels(layouts, layout, tmp_path, capsys):
    """What 3D Slicer saved (labels/final/<study>) is the case's label for check, datalist and training; MONAI Label's
    other tags are the case's ignored files, a label of no study is named."""
    found = lay_out_studies(layouts[layout], tmp_path / "studies")
    final = sorted((found.root / LABELS_FINAL).iterdir())
    original = found.root / "labels" / "original" / final[0].name
    original.parent.mkdir()
    shutil.copy(final[0], original)
    discovery = discover(found.root)
    assert [c.case_id for c in discovery.cases] == sorted(found.ids)
    assert sorted(c.label for c in discovery.cases) == final and not discovery.strays
    assert [p for c in discovery.cases for _, p in c.ignored] == [original]
    with pytest.raises(SystemExit) as clean:
        main(["check", str(found.root)])
    assert clean.value.code == 0, capsys.readouterr().out

    stray = found.root / LABELS_FINAL / "BraTS2021_09999_t1ce.nii.gz"  # a saved label whose study is gone
    shutil.copy(final[0], stray)
    assert discover(found.root).strays == [(None, stray, STRAY_REASON)]
    with pytest.raises(SystemExit) as named:
        main(["check", str(found.root)])
    assert named.value.code != 0 and stray.name in capsys.readouterr().out


def test_a_label_saved_from_slicer_is_the_cases_label(layouts, tmp_path, capsys):
    """3D Slicer's *Submit Label* saves ``labels/final/<image id><ext>`` (the image id: the case id): that correction
    is the case's label, the one laid out beside it an ignored file, and the folder checks clean."""
    found = lay_out_studies(layouts["2021"], tmp_path / "studies")
    case_id = found.ids[0]
    laid_out = next((found.root / LABELS_FINAL).glob(f"{case_id}_*"))
    saved = found.root / LABELS_FINAL / f"{case_id}.nii.gz"
    shutil.copy(laid_out, saved)
    case = next(c for c in discover(found.root).cases if c.case_id == case_id)
    assert case.label == saved and laid_out in [p for _, p in case.ignored]
    with pytest.raises(SystemExit) as clean:
        main(["check", str(found.root)])
    assert clean.value.code == 0, capsys.readouterr().out


def test_a_saved_label_of_no_study_is_named_not_read_as_a_case(layouts, tmp_path):
    found = lay_out_studies(layouts["2021"], tmp_path / "studies")
    for label in (found.root / LABELS_FINAL).iterdir():
        label.unlink()
    stray = found.root / LABELS_FINAL / "BraTS2021_09999_t1ce.nii.gz"
    shutil.copy(next(found.root.glob("*_t1ce.nii.gz")), stray)
    discovery = discover(found.root)
    assert sorted(c.case_id for c in discovery.cases) == sorted(found.ids)
    assert all(c.label is None for c in discovery.cases) and discovery.strays == [(None, stray, STRAY_REASON)]


def test_a_broken_case_beside_does_not_stop_one_modality_file_loading_its_own(layouts, tmp_path):
    """A flat folder of every case's files (a studies folder): another case's second T2 names that case only."""
    dataset = shutil.copytree(layouts["2021"], tmp_path / "data")
    first, second = find_cases(dataset)
    flat = tmp_path / "flat"
    flat.mkdir()
    for case in (first, second):
        for path in case.images.values():
            shutil.copy(path, flat / path.name)
    shutil.copy(second.images["t2"], flat / f"{second.case_id}_T2w.nii.gz")
    assert case_of_file(flat / first.images["t1ce"].name).images["t2"] == flat / first.images["t2"].name
    with raises_user_error(CaseError, match=rf"^{second.case_id}: .*more than one t2 file"):
        case_of_file(flat / second.images["t1ce"].name)


def test_one_modality_file_finds_a_sibling_added_after_its_folder_was_read(layouts, tmp_path):
    """case_of_file reads the folder as it is when asked (a studies folder changes while MONAI Label runs)."""
    dataset = shutil.copytree(layouts["2021"], tmp_path / "data")
    case = find_cases(dataset)[0]
    t2 = case.images["t2"]
    moved = t2.rename(tmp_path / t2.name)
    assert "t2" not in case_of_file(case.images["t1ce"]).images
    moved.rename(t2)
    assert case_of_file(case.images["t1ce"]).images["t2"] == t2


def test_channel_def_names_every_label_value_the_bundle_writes():
    """MONAI Label's label names (3D Slicer's segments) come from the output channel_def: each value a label map of
    any convention holds after inference has one."""
    named = {
        int(v)
        for v in json.loads((CONFIGS / "metadata.json").read_text())["network_data_format"]["outputs"]["pred"][
            "channel_def"
        ]
    }
    every_region_combination = np.array(np.meshgrid([0, 1], [0, 1], [0, 1])).reshape(3, -1)[..., None, None]
    for convention in LABEL_CONVENTIONS:
        written = set(np.unique(regions_to_labels(every_region_combination, convention)).tolist()) - {0}
        assert written <= named, convention
