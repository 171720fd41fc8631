"""Slice cache (prepare, resume, invalidation, serving) and the on-the-fly slice path of the training config."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from conftest import CONFIGS, TINY_ROI
from monai.bundle import ConfigParser
from monai.transforms import Compose

from axunet_bundle.atomic import PARTIAL_PREFIX
from axunet_bundle.cli.slice_cache import prepare_slice_cache
from axunet_bundle.data.slices import SliceCacheDataset
from axunet_bundle.errors import CaseError, DatasetError


def train_parser(dataset_dir, **overrides) -> ConfigParser:
    parser = ConfigParser()
    parser.read_config(CONFIGS / "train.json")
    parser.update({"dataset_dir": str(dataset_dir), "roi_size": TINY_ROI, "folds": 2, **overrides})
    return parser


@pytest.fixture(scope="module")
def chain(tiny_dataset):
    parser = train_parser(tiny_dataset)
    data = parser.get_parsed_content("datalist_dict")
    items = data["training"] + data["validation"]
    return (
        items,
        Compose(parser.get_parsed_content("volume_transforms")),
        parser.get_parsed_content("preprocessing_params"),
    )


def test_prepare_writes_compact_arrays_and_serves_slices(tmp_path, chain):
    items, transform, params = chain
    report = prepare_slice_cache(items, tmp_path, transform, params, workers=1, progress=False)
    assert sorted(report.prepared) == sorted(i["case_id"] for i in items) and not report.problems
    image = np.load(tmp_path / items[0]["case_id"] / "image.npy", mmap_mode="r")
    label = np.load(tmp_path / items[0]["case_id"] / "label.npy", mmap_mode="r")
    assert image.dtype == np.float16 and label.dtype == np.uint8
    assert image.shape[1:] == (3, *TINY_ROI) and label.shape[1:] == (3, *TINY_ROI)  # axial slices first
    every = SliceCacheDataset(tmp_path, params=params)
    tumour_only = SliceCacheDataset(tmp_path, tumour_slice_ratio=1.0, params=params)
    assert 0 < len(tumour_only) < len(every)
    for i in range(len(tumour_only)):
        sample = tumour_only[i]
        assert sample["image"].shape == (3, *TINY_ROI) and sample["label"].shape == (3, *TINY_ROI)
        assert sample["label"][0].sum() > 0  # every served slice has whole tumour
    half = SliceCacheDataset(tmp_path, tumour_slice_ratio=0.5, params=params)
    tumour_fraction = np.mean([half[i]["label"][0].sum().item() > 0 for i in range(len(half))])
    assert 0.4 <= tumour_fraction <= 0.6


def test_interrupted_prepare_resumes_and_never_leaves_a_valid_looking_case(tmp_path, chain):
    items, transform, params = chain
    calls = []

    def crash_on_second_case(item):
        calls.append(item["case_id"])
        if len(calls) == 2:
            raise KeyboardInterrupt  # the user pressed Ctrl-C while the second case was being written
        return transform(item)

    with pytest.raises(KeyboardInterrupt):
        prepare_slice_cache(items, tmp_path, crash_on_second_case, params, workers=1, progress=False)
    done = [p.name for p in tmp_path.iterdir() if p.is_dir() and not p.name.startswith(PARTIAL_PREFIX)]
    assert done == [calls[0]]
    (tmp_path / f"{PARTIAL_PREFIX}{calls[1]}.999").mkdir()  # what a kill -9 during writing leaves behind
    report = prepare_slice_cache(items, tmp_path, transform, params, workers=1, progress=False)
    assert report.skipped == [calls[0]]
    assert sorted(report.prepared) == sorted(i["case_id"] for i in items if i["case_id"] != calls[0])
    assert not list(tmp_path.glob(f"{PARTIAL_PREFIX}*"))
    assert len(SliceCacheDataset(tmp_path, case_ids=[i["case_id"] for i in items], params=params)) > 0


def test_changed_parameters_invalidate_the_cache(tmp_path, chain):
    items, transform, params = chain
    prepare_slice_cache(items[:1], tmp_path, transform, params, workers=1, progress=False)
    changed = dict(params, roi_size=[32, 32])
    with pytest.raises(DatasetError, match="other preprocessing parameters"):
        SliceCacheDataset(tmp_path, params=changed)
    report = prepare_slice_cache(items[:1], tmp_path, transform, changed, workers=1, progress=False)
    assert report.invalidated and report.prepared == [items[0]["case_id"]] and not report.skipped
    assert json.loads((tmp_path / "manifest.json").read_text())["params"]["roi_size"] == [32, 32]


def test_any_change_to_the_volume_transforms_invalidates_the_cache(tmp_path, tiny_dataset, chain):
    """The parameters carry a hash of the instantiated volume transforms (as MONAI's PersistentDataset can hash its
    transforms), so a changed transform setting that no named parameter records still invalidates the cache."""
    items, transform, params = chain
    prepare_slice_cache(items[:1], tmp_path, transform, params, workers=1, progress=False)
    parser = train_parser(tiny_dataset)
    (orientation,) = [t for t in parser["volume_transforms"] if t["_target_"] == "Orientationd"]
    orientation["axcodes"] = "LPS"
    changed = parser.get_parsed_content("preprocessing_params")
    assert {k for k in params if params[k] != changed[k]} == {"volume_transforms"}
    with pytest.raises(DatasetError, match="other preprocessing parameters"):
        SliceCacheDataset(tmp_path, params=changed)
    assert train_parser(tiny_dataset).get_parsed_content("preprocessing_params") == params  # stable when unchanged


def test_a_bad_case_is_reported_and_the_others_prepared(tmp_path, chain):
    items, transform, params = chain

    def fail_first(item):
        if item["case_id"] == items[0]["case_id"]:  # as MONAI's Compose raises a transform's error: wrapped
            error = CaseError(item["case_id"], "x_t1ce.nii.gz", "2 non-finite voxels")
            raise RuntimeError("applying transform <ValidateCased>") from error
        return transform(item)

    report = prepare_slice_cache(items, tmp_path, fail_first, params, workers=1, progress=False)
    assert report.problems == [f"{items[0]['case_id']}: x_t1ce.nii.gz: 2 non-finite voxels"]
    assert len(report.prepared) == len(items) - 1


def test_parallel_prepare_matches_serial(tmp_path, chain):
    items, transform, params = chain
    prepare_slice_cache(items[:2], tmp_path / "serial", transform, params, workers=1, progress=False)
    prepare_slice_cache(items[:2], tmp_path / "parallel", transform, params, workers=2, progress=False)
    for item in items[:2]:
        for name in ("image.npy", "label.npy"):
            a = np.load(tmp_path / "serial" / item["case_id"] / name)
            b = np.load(tmp_path / "parallel" / item["case_id"] / name)
            assert np.array_equal(a, b)


def test_on_the_fly_path_samples_2d_slices_from_3d_volumes(tiny_dataset):
    parser = train_parser(tiny_dataset, slices_per_volume=3, tumour_slice_ratio=1.0)
    item = parser.get_parsed_content("datalist_dict")["training"][0]
    samples = parser.get_parsed_content("train#preprocessing")(item)
    assert len(samples) == 3
    for sample in samples:
        assert sample["image"].shape == (3, *TINY_ROI) and sample["label"].shape == (3, *TINY_ROI)
        assert sample["label"][0].sum() > 0  # tumour_slice_ratio 1: every sampled slice holds tumour


def test_a_served_slice_is_the_preprocessed_volume_s_axial_slice(tmp_path, chain):
    """The cache stores slices first (a served slice is one contiguous read); what it serves is still the
    preprocessing's (C, H, W, D) volume at that z, in float16."""
    items, transform, params = chain
    prepare_slice_cache(items[:1], tmp_path, transform, params, workers=1, progress=False)
    volume = transform(dict(items[0]))
    dataset = SliceCacheDataset(tmp_path, params=params)
    for i in (0, len(dataset) // 2, len(dataset) - 1):
        sample = dataset[i]
        expected_image = np.asarray(volume["image"][..., sample["slice"]], dtype=np.float16).astype(np.float32)
        assert np.array_equal(sample["image"].numpy(), expected_image)
        assert np.array_equal(sample["label"].numpy(), np.asarray(volume["label"][..., sample["slice"]]))


def test_a_cache_of_the_former_layout_is_refused_with_a_line_saying_to_prepare_again(tmp_path, chain):
    items, transform, params = chain
    prepare_slice_cache(items[:1], tmp_path, transform, params, workers=1, progress=False)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format": 1}))
    with pytest.raises(DatasetError, match="format 1.*re-run prepare"):
        SliceCacheDataset(tmp_path, params=params)
    report = prepare_slice_cache(items[:1], tmp_path, transform, params, workers=1, progress=False)
    assert report.invalidated and report.prepared == [items[0]["case_id"]]  # prepare rebuilds it
    assert len(SliceCacheDataset(tmp_path, params=params)) > 0


@pytest.mark.parametrize(
    "cpus, local_processes, workers",
    [(2, None, 2), (16, None, 15), (16, "2", 7), (8, "8", 2), (128, None, 32)],  # 2 cores: as before (2)
)
def test_loader_workers_follow_the_cpus_each_process_may_use(monkeypatch, cpus, local_processes, workers):
    from axunet_bundle.data.slices import loader_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(cpus)), raising=False)
    if local_processes is None:
        monkeypatch.delenv("LOCAL_WORLD_SIZE", raising=False)
    else:
        monkeypatch.setenv("LOCAL_WORLD_SIZE", local_processes)
    assert loader_workers() == workers
    assert train_parser(".").get_parsed_content("num_workers") == workers  # the training's default


def test_augmented_slices_are_plain_tensors_with_the_augmentations_values(tmp_path, chain):
    """The slice cache serves augmented slices without MONAI's metadata (nothing follows that could invert them): the
    values are those the same augmentations give with metadata, and the global setting is left as it was."""
    from monai.data import MetaTensor, get_track_meta

    items, transform, params = chain
    prepare_slice_cache(items[:1], tmp_path, transform, params, workers=1, progress=False)
    augmentation = Compose(train_parser(".").get_parsed_content("train#augmentation"))
    dataset = SliceCacheDataset(tmp_path, params=params, transform=augmentation)
    plain = SliceCacheDataset(tmp_path, params=params)
    for seed in range(4):
        augmentation.set_random_state(seed)
        served = dataset[seed]
        augmentation.set_random_state(seed)
        expected = augmentation(plain[seed])
        assert type(served["image"]) is torch.Tensor and isinstance(expected["image"], MetaTensor)
        for key in ("image", "label"):
            assert torch.equal(served[key], expected[key].as_tensor())
    assert get_track_meta()
