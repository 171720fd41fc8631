# Copyright (c) AXUNet bundle developers
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.

from __future__ import annotations

import itertools
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
from scipy import ndimage

from axunet_bundle.data.cases import find_cases
from axunet_bundle.synthetic import case_seed, write_synthetic_dataset
from axunet_bundle.synthetic.phantom import TISSUE_CSF, TISSUE_GM, TISSUE_WM, synth_case

SMALL = (48, 48, 24)
SEEDS = range(8)
IMAGE_KEYS = ("t1", "t1ce", "t2", "flair")
NAMES = {
    "2021": ("BraTS2021_{:05d}", "_", ("t1", "t1ce", "t2", "flair", "seg")),
    "2023": ("BraTS-GLI-{:05d}-000", "-", ("t1n", "t1c", "t2w", "t2f", "seg")),
}


@pytest.fixture(scope="module")
def small_cases() -> dict[int, dict[str, np.ndarray]]:
    return {seed: synth_case(seed, SMALL, with_tissue=True) for seed in SEEDS}


def _regions(seg: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(WT, TC, ET) masks from BraTS 2021 labels."""
    return seg > 0, (seg == 1) | (seg == 4), seg == 4


def _load(case_dir: Path, layout: str, index: int) -> dict[str, nib.Nifti1Image]:
    pattern, sep, suffixes = NAMES[layout]
    name = pattern.format(index)
    paths = {s: case_dir / f"{name}{sep}{s}.nii.gz" for s in suffixes}
    return {s: nib.load(path) for s, path in paths.items() if path.exists()}


def test_deterministic_per_seed():
    a, b, c = synth_case(3, SMALL), synth_case(3, SMALL), synth_case(4, SMALL)
    assert a.keys() == b.keys() == {*IMAGE_KEYS, "seg"}
    for key in a:
        np.testing.assert_array_equal(a[key], b[key])
    for key in a:
        assert not np.array_equal(a[key], c[key]), key


def test_default_shape_is_brats_grid():
    case = synth_case(0)
    for key in IMAGE_KEYS:
        assert case[key].shape == (240, 240, 155)
        assert case[key].dtype == np.int16
    assert case["seg"].shape == (240, 240, 155)
    assert case["seg"].dtype == np.uint8
    assert set(np.unique(case["seg"])) <= {0, 1, 2, 4}
    # a real skull-stripped brain is ~1.2-1.8 l, i.e. 13-20 % of the 240x240x155 mm volume
    assert 0.1 < (case["t1"] > 0).mean() < 0.3
    assert 0 < (case["seg"] > 0).sum() < (case["t1"] > 0).sum()


def test_background_is_zero_outside_the_brain(small_cases):
    for case in small_cases.values():
        brain = case["t1"] > 0
        assert brain.any()
        for key in IMAGE_KEYS:
            assert case[key].min() >= 0
            # one brain mask for all modalities, as in co-registered skull-stripped BraTS data
            np.testing.assert_array_equal(case[key] > 0, brain)
        assert not case["seg"][~brain].any()
        # the brain does not touch the image border
        for axis in range(3):
            assert not brain.take([0, -1], axis=axis).any()


def test_labels_and_region_nesting(small_cases):
    for case in small_cases.values():
        seg = case["seg"]
        assert set(np.unique(seg)) <= {0, 1, 2, 4}
        wt, tc, et = _regions(seg)
        assert wt.any()
        # the core, grown by one voxel, is still tumour: the core is wrapped in edema (or the brain edge)
        grown = ndimage.binary_dilation(tc) & (case["t1"] > 0)
        assert not (grown & ~wt).any()
        assert not (et & ~tc).any()


def test_variety_of_lesions():
    cases = [synth_case(seed, (64, 64, 40)) for seed in range(24)]
    labels = [set(np.unique(c["seg"])) for c in cases]
    assert any(4 in s for s in labels) and any(4 not in s for s in labels)  # with and without enhancing tumour
    assert any(1 in s for s in labels) and any(1 not in s for s in labels)  # with and without necrosis
    volumes = [(c["seg"] > 0).sum() for c in cases]
    assert max(volumes) > 10 * min(volumes)
    centres = {tuple(np.round(ndimage.center_of_mass(c["seg"] > 0))) for c in cases}
    assert len(centres) == len(cases)


def _mean(case: dict[str, np.ndarray], key: str, mask: np.ndarray) -> float:
    return float(case[key][mask].mean())


def _median(case: dict[str, np.ndarray], key: str, mask: np.ndarray) -> float:
    """Median: robust to the partial-volume voxels that dominate thin structures at tiny test shapes."""
    return float(np.median(case[key][mask]))


def test_modality_contrasts(small_cases):
    n_et = 0
    for case in small_cases.values():
        tissue, seg = case["tissue"], case["seg"]
        healthy = seg == 0
        wm, gm, csf = (healthy & (tissue == t) for t in (TISSUE_WM, TISSUE_GM, TISSUE_CSF))
        edema = seg == 2
        assert _median(case, "t1", wm) > _median(case, "t1", gm) > _median(case, "t1", csf)
        assert _median(case, "t2", csf) > _median(case, "t2", gm) > _median(case, "t2", wm)
        assert _median(case, "flair", gm) > _median(case, "flair", wm) > _median(case, "flair", csf)
        if edema.any():
            # T2 cannot tell edema from CSF (both bright), FLAIR can
            assert _mean(case, "t2", edema) > _mean(case, "t2", wm) and _mean(case, "t2", csf) > _mean(case, "t2", wm)
            assert _mean(case, "flair", edema) > 1.5 * _mean(case, "flair", csf)
        ncr = seg == 1
        if ncr.any():
            assert _mean(case, "t1ce", ncr) < _mean(case, "t1ce", wm)
            assert _mean(case, "t2", ncr) > _mean(case, "t2", wm)
        et = seg == 4
        if et.any():
            n_et += 1
            # relative to white matter, enhancing tumour is brighter in T1CE than in T1
            assert _mean(case, "t1ce", et) / _mean(case, "t1ce", wm) > _mean(case, "t1", et) / _mean(case, "t1", wm)
    assert n_et >= len(SEEDS) // 2


def test_enhancing_distractors_outside_tumour():
    shape = (120, 120, 78)
    cases = (synth_case(seed, shape, with_tissue=True) for seed in range(20))
    with_et = list(itertools.islice((c for c in cases if (c["seg"] == 4).any()), 3))
    assert len(with_et) == 3
    for case in with_et:
        seg, healthy_brain = case["seg"], (case["seg"] == 0) & (case["t1"] > 0)
        wm = healthy_brain & (case["tissue"] == TISSUE_WM)
        ratio = case["t1ce"] / case["t1ce"][wm].mean()
        # vessels / choroid plexus enhance like tumour: brightness in T1CE alone does not define ET
        assert (ratio[healthy_brain] > np.percentile(ratio[seg == 4], 25)).sum() > 50


@pytest.mark.parametrize("layout", ["2021", "2023"])
def test_write_layout_names_dtypes_affine(tmp_path, layout):
    n, seed = 2, 1
    cases = write_synthetic_dataset(tmp_path, n, seed=seed, layout=layout, shape=SMALL, progress=False)
    pattern, sep, suffixes = NAMES[layout]
    assert cases == [tmp_path / pattern.format(i) for i in range(n)]
    expected_affine = np.array([[-1, 0, 0, 0], [0, -1, 0, SMALL[1] - 1], [0, 0, 1, 0], [0, 0, 0, 1]], dtype=float)
    for i, case_dir in enumerate(cases):
        name = pattern.format(i)
        assert sorted(p.name for p in case_dir.iterdir()) == sorted(f"{name}{sep}{s}.nii.gz" for s in suffixes)
        images = _load(case_dir, layout, i)
        generated = synth_case(case_seed(seed, i), SMALL)
        for suffix, key in zip(suffixes, (*IMAGE_KEYS, "seg")):
            img = images[suffix]
            assert img.shape == SMALL
            assert img.get_data_dtype() == (np.uint8 if key == "seg" else np.int16)
            np.testing.assert_array_equal(img.affine, expected_affine)
            np.testing.assert_array_equal(img.get_qform(), expected_affine)
            np.testing.assert_array_equal(img.get_sform(), expected_affine)
            assert img.header.get_zooms() == (1.0, 1.0, 1.0)
            data = np.asanyarray(img.dataobj)
            if key != "seg":
                np.testing.assert_array_equal(data, generated[key])
        seg = np.asanyarray(images["seg"].dataobj)
        if layout == "2021":
            np.testing.assert_array_equal(seg, generated["seg"])
        else:
            assert set(np.unique(seg)) <= {0, 1, 2, 3}
            np.testing.assert_array_equal(seg, np.where(generated["seg"] == 4, 3, generated["seg"]))
    # the pipeline's case discovery recognises the layout, the labels' convention and every file
    found = find_cases(tmp_path)
    assert [c.case_id for c in found] == [pattern.format(i) for i in range(n)]
    assert all(c.layout == layout and c.has_label and not c.missing_modalities() for c in found)
    # different cases of one dataset differ
    assert not np.array_equal(
        np.asanyarray(_load(cases[0], layout, 0)[suffixes[0]].dataobj),
        np.asanyarray(_load(cases[1], layout, 1)[suffixes[0]].dataobj),
    )


def test_write_without_labels_and_quiet_when_not_a_tty(tmp_path, capsys):
    (case_dir,) = write_synthetic_dataset(tmp_path, 1, shape=SMALL, with_labels=False, progress=True)
    assert not list(case_dir.glob("*seg*"))
    assert len(list(case_dir.glob("*.nii.gz"))) == len(IMAGE_KEYS)
    assert capsys.readouterr().err == ""  # pytest's captured stderr is not a terminal


def test_interrupted_write_leaves_no_partial_file(tmp_path, monkeypatch):
    real_write_bytes = Path.write_bytes
    calls = []

    def write_half_then_fail(self: Path, data: bytes) -> int:
        calls.append(self)
        if len(calls) == 3:  # third file: simulate a crash halfway through the write
            real_write_bytes(self, data[: len(data) // 2])
            raise KeyboardInterrupt
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", write_half_then_fail)
    with pytest.raises(KeyboardInterrupt):
        write_synthetic_dataset(tmp_path, 1, shape=SMALL, progress=False)
    case_dir = tmp_path / "BraTS2021_00000"
    written = sorted(p.name for p in case_dir.iterdir())
    assert written == ["BraTS2021_00000_t1.nii.gz", "BraTS2021_00000_t1ce.nii.gz"]
    for name in written:
        assert np.asanyarray(nib.load(case_dir / name).dataobj).shape == SMALL

    # a rerun completes the case
    monkeypatch.setattr(Path, "write_bytes", real_write_bytes)
    write_synthetic_dataset(tmp_path, 1, shape=SMALL, progress=False)
    assert len(list(case_dir.iterdir())) == 5


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path, 1, layout="2020", shape=SMALL)
    with pytest.raises(ValueError):
        synth_case(0, (48, 48))
    assert case_seed(0, 1) != case_seed(1, 0)  # datasets with different seeds do not share cases
