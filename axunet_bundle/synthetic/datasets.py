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
"""
Generated BraTS-like datasets (cases of :func:`axunet_bundle.synthetic.phantom.synth_case`) written in the layouts the
bundle reads: BraTS 2021, 2023, 2024 post-treatment and the Decathlon's Task01.

Every file written carries :data:`GENERATED_DESCRIP` in its NIfTI header's ``descrip`` field, so that whatever reads
a case later (e.g. the comparison table, :func:`is_generated`) can tell generated cases from patient data, wherever
the case folders have been copied or moved.
"""

from __future__ import annotations

import gzip
import json
import os
from collections.abc import Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

from ..atomic import atomic_path, write_json_atomic
from ..data.cases import LABEL_SUFFIX, LAYOUT_2021, LAYOUT_2023, LAYOUT_MSD, MODALITIES
from ..data.labels import LABEL_CONVENTIONS
from ..errors import ConfigurationError
from ..progress import progress as show_progress
from .phantom import DEFAULT_SHAPE, LABEL_RC, add_resection_cavity, synth_case

__all__ = [
    "GENERATED_DESCRIP",
    "LAYOUT_2024",
    "MSD_MODALITY",
    "SUFFIXES_2021",
    "SUFFIXES_2023",
    "SYNTH_LAYOUTS",
    "brats_affine",
    "case_seed",
    "is_generated",
    "write_synthetic_dataset",
]

# file-name suffix of each image key (canonical modality names, as in cases.MODALITIES) and of the label
SUFFIXES_2021: dict[str, str] = {"t1": "t1", "t1ce": "t1ce", "t2": "t2", "flair": "flair", LABEL_SUFFIX: "seg"}
SUFFIXES_2023: dict[str, str] = {"t1": "t1n", "t1ce": "t1c", "t2": "t2w", "flair": "t2f", LABEL_SUFFIX: "seg"}
_LABELS_2021 = LABEL_CONVENTIONS["brats2021"]
#: the BraTS 2024 post-treatment layout: the 2023 names, a resection cavity in the labels
LAYOUT_2024 = "2024"

CASE_SEED_STRIDE = 100003  # prime stride: datasets with different seeds do not share cases
GZIP_LEVEL = 1  # nibabel's default for .nii.gz: fast, and the zero background compresses well anyway
QFORM_CODE = SFORM_CODE = 1  # "scanner anatomical" for both forms
#: the NIfTI header ``descrip`` (at most 80 bytes) of every generated file: the mark of generated, not patient, data
GENERATED_DESCRIP = b"axunet_bundle synth: generated BraTS-like case, not patient data"


def case_seed(seed: int, index: int) -> int:
    """
    Seed of case ``index`` of a dataset generated with ``seed``.

    Args:
        seed: dataset seed.
        index: case index within the dataset.

    Returns:
        the seed passed to :py:func:`synth_case`.
    """
    return seed * CASE_SEED_STRIDE + index


def brats_affine(shape: Sequence[int] = DEFAULT_SHAPE) -> np.ndarray:
    """
    BraTS-like voxel-to-world affine: 1 mm isotropic, x and y flipped, origin at (0, shape[1] - 1, 0).

    Args:
        shape: spatial shape of the volume.

    Returns:
        a 4x4 float64 affine; for the default shape this is the affine of the BraTS release files.
    """
    return np.array([[-1.0, 0, 0, 0], [0, -1.0, 0, shape[1] - 1], [0, 0, 1.0, 0], [0, 0, 0, 1.0]])


def is_generated(path: str | os.PathLike) -> bool:
    """Whether the NIfTI file at ``path`` was written by this module (its header's ``descrip`` is
    :data:`GENERATED_DESCRIP`); only the header is read."""
    return bytes(nib.load(os.fspath(path)).header["descrip"].item()).rstrip(b"\0") == GENERATED_DESCRIP


def _save_nifti_atomic(data: np.ndarray, affine: np.ndarray, path: Path) -> None:
    """Write a gzipped NIfTI atomically (no half-written file is ever left under its name)."""
    img = nib.Nifti1Image(data, affine)
    img.set_qform(affine, code=QFORM_CODE)
    img.set_sform(affine, code=SFORM_CODE)
    img.header.set_xyzt_units("mm", "sec")
    img.header["descrip"] = GENERATED_DESCRIP
    img.set_data_dtype(data.dtype)
    # mtime=0: identical seeds give byte-identical files
    with atomic_path(path) as tmp:
        tmp.write_bytes(gzip.compress(img.to_bytes(), compresslevel=GZIP_LEVEL, mtime=0))


#: file-name suffixes of each layout's per-modality files, and its label convention
_NAMED_LAYOUTS = {
    LAYOUT_2021: (SUFFIXES_2021, "brats2021"),
    LAYOUT_2023: (SUFFIXES_2023, "brats2023"),
    LAYOUT_2024: (SUFFIXES_2023, "brats2024"),
}
#: the layouts :func:`write_synthetic_dataset` writes
SYNTH_LAYOUTS = (*_NAMED_LAYOUTS, LAYOUT_MSD)
#: the Decathlon Task01_BrainTumour's dataset.json, as published (channel order FLAIR, T1w, t1gd, T2w)
MSD_MODALITY = {"0": "FLAIR", "1": "T1w", "2": "t1gd", "3": "T2w"}
MSD_LABELS = {"0": "background", "1": "edema", "2": "non-enhancing tumor", "3": "enhancing tumour"}
_MSD_CHANNELS = ("flair", "t1", "t1ce", "t2")


def _relabel(label: np.ndarray, convention: str) -> np.ndarray:
    """A BraTS 2021 label map (with :data:`LABEL_RC` for a cavity) in another convention."""
    lut = np.zeros(max(*_LABELS_2021.values(), LABEL_RC) + 1, dtype=np.uint8)  # background stays 0
    for cls, value in LABEL_CONVENTIONS[convention].items():
        lut[LABEL_RC if cls == "RC" else _LABELS_2021[cls]] = value
    return lut[label]


def _write_msd(out: Path, cases: list[tuple[str, dict[str, np.ndarray] | None]], affine: np.ndarray) -> None:
    """dataset.json listing the cases, and each one's 4D image (FLAIR, T1w, t1gd, T2w) and label."""
    previous = out / "dataset.json"  # a second call adds to the dataset (e.g. unlabelled test cases)
    spec = (
        json.loads(previous.read_text())
        if previous.is_file()
        else {
            "name": "BRATS",
            "description": "Generated BraTS-like cases in the Medical Segmentation Decathlon Task01 layout (not BraTS)",
            "tensorImageSize": "4D",
            "modality": MSD_MODALITY,
            "labels": MSD_LABELS,
            "training": [],
            "test": [],
        }
    )
    for name, data in cases:
        spec["training"] = [e for e in spec["training"] if not e["image"].endswith(f"/{name}.nii.gz")]
        spec["test"] = [e for e in spec["test"] if not e.endswith(f"/{name}.nii.gz")]
        labelled = LABEL_SUFFIX in data
        image = np.stack([data[m] for m in _MSD_CHANNELS], axis=-1)
        image_path = f"./{'imagesTr' if labelled else 'imagesTs'}/{name}.nii.gz"
        _save_nifti_atomic(image, affine, out / image_path)
        if labelled:
            _save_nifti_atomic(_relabel(data[LABEL_SUFFIX], "msd"), affine, out / "labelsTr" / f"{name}.nii.gz")
            spec["training"].append({"image": image_path, "label": f"./labelsTr/{name}.nii.gz"})
        else:
            spec["test"].append(image_path)
    spec["numTraining"], spec["numTest"] = len(spec["training"]), len(spec["test"])
    write_json_atomic(out / "dataset.json", spec)


def _gamma(image: np.ndarray, gamma: float) -> np.ndarray:
    """``image``'s non-zero voxels through ``max * (v / max) ** gamma``, kept >= 1 and in the image's dtype."""
    top = float(image.max())
    out = np.where(image > 0, np.maximum(1.0, np.rint(top * (image / max(top, 1.0)) ** gamma)), 0.0)
    return out.astype(image.dtype)


def write_synthetic_dataset(
    out_dir: str | os.PathLike,
    n: int,
    seed: int = 0,
    layout: str = LAYOUT_2021,
    shape: Sequence[int] = DEFAULT_SHAPE,
    with_labels: bool = True,
    progress: bool = True,
    intensity_gamma: float = 1.0,
) -> list[Path]:
    """
    Write ``n`` generated cases in one of the layouts the bundle reads (:data:`SYNTH_LAYOUTS`):

    - ``"2021"``: ``BraTS2021_00000/BraTS2021_00000_{t1,t1ce,t2,flair,seg}.nii.gz``, labels 1/2/4;
    - ``"2023"``: ``BraTS-GLI-00000-000/BraTS-GLI-00000-000-{t1n,t1c,t2w,t2f,seg}.nii.gz``, labels 1/2/3;
    - ``"2024"``: the 2023 names, BraTS 2024 post-treatment labels: 1/2/3 and a resection cavity, 4, in every case;
    - ``"msd"``: the Decathlon's Task01_BrainTumour: ``dataset.json``, ``imagesTr/BRATS_000.nii.gz`` (4D: FLAIR,
      T1w, t1gd, T2w), ``labelsTr/`` (1 edema, 2 non-enhancing tumour, 3 enhancing tumour), ``imagesTs/`` without
      labels.

    Case ``i`` is ``synth_case(case_seed(seed, i), shape)``, so the same arguments always give the same files.
    Images are int16 and labels uint8, with a BraTS-like affine (see :py:func:`brats_affine`) as qform and sform.

    Args:
        out_dir: output folder, created if missing.
        n: number of cases.
        seed: dataset seed.
        layout: one of :data:`SYNTH_LAYOUTS`.
        shape: spatial shape of every volume.
        with_labels: whether to write the labels (False mimics an unlabelled validation set).
        progress: show a progress bar when stderr is a terminal, log lines with rate and ETA otherwise.
        intensity_gamma: every image's brain intensities ``v`` become ``max * (v / max) ** gamma`` (the background
            stays 0): another scanner's contrast, as a site of a federation sees it; a plain scale would not do, as
            the training's z-score removes it. 1.0 (default) leaves the images as generated.

    Returns:
        the case folders, in order (for ``"msd"``: the image files).

    Raises:
        ConfigurationError: when ``layout`` is unknown, ``n`` is negative or ``intensity_gamma`` is not positive.
    """
    if not intensity_gamma > 0:
        raise ConfigurationError(f"intensity_gamma must be > 0, got {intensity_gamma}")
    if layout not in SYNTH_LAYOUTS:
        raise ConfigurationError(f"layout must be one of {', '.join(SYNTH_LAYOUTS)}, got {layout!r}")
    if n < 0:
        raise ConfigurationError(f"n must be >= 0, got {n}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    affine = brats_affine(shape)
    cases, msd_cases = [], []
    for i in show_progress(range(n), desc="synthetic BraTS", unit="case", enabled=progress):
        rng = np.random.default_rng(case_seed(seed, i))
        data = synth_case(case_seed(seed, i), shape, with_tissue=layout == LAYOUT_2024)
        if layout == LAYOUT_2024:
            add_resection_cavity(data, rng)
        if intensity_gamma != 1.0:
            for key in MODALITIES:
                data[key] = _gamma(data[key], intensity_gamma)
        if not with_labels:
            del data[LABEL_SUFFIX]
        if layout == LAYOUT_MSD:
            name = f"BRATS_{i:03d}"
            msd_cases.append((name, data))
            cases.append(out / ("imagesTr" if with_labels else "imagesTs") / f"{name}.nii.gz")
            continue
        suffixes, convention = _NAMED_LAYOUTS[layout]
        name, sep = (f"BraTS2021_{i:05d}", "_") if layout == LAYOUT_2021 else (f"BraTS-GLI-{i:05d}-000", "-")
        case_dir = out / name
        case_dir.mkdir(exist_ok=True)
        if with_labels:
            data[LABEL_SUFFIX] = _relabel(data[LABEL_SUFFIX], convention)
        for key in [*MODALITIES, *([LABEL_SUFFIX] if with_labels else [])]:  # seg last: then all images exist
            _save_nifti_atomic(data[key], affine, case_dir / f"{name}{sep}{suffixes[key]}.nii.gz")
        cases.append(case_dir)
    if layout == LAYOUT_MSD:
        _write_msd(out, msd_cases, affine)
    return cases
