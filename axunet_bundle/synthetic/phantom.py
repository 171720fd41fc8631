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
A generated BraTS-like brain: one multi-modal MRI case as arrays (:func:`synth_case`), for tests, demos and smoke
training; :mod:`axunet_bundle.synthetic` writes such cases as datasets.

The cases mimic skull-stripped, co-registered BraTS data: an irregular ellipsoidal brain (exactly 0 outside),
white matter, grey matter (cortex, sulci, deep nuclei) and CSF (surface, sulci, lateral ventricles) with
modality-specific contrast, and a glioma-like lesion made of a necrotic core, an enhancing rim and irregular
peritumoural edema. The contrasts are chosen so that each BraTS region needs the right modality:

- enhancing tumour is bright only in T1CE (so do enhancing vessels and choroid plexus, which are *not* tumour);
- edema and CSF are both bright in T2, but only edema is bright in FLAIR;
- necrosis is dark in T1CE and bright in T2.

Rician-like noise and a smooth multiplicative bias field are added, and each modality has its own intensity scale.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import ndimage

from ..data.cases import LABEL_SUFFIX, MODALITIES
from ..data.labels import LABEL_CONVENTIONS

__all__ = [
    "DEFAULT_SHAPE",
    "LABEL_RC",
    "TISSUE_BACKGROUND",
    "TISSUE_CSF",
    "TISSUE_GM",
    "TISSUE_WM",
    "add_resection_cavity",
    "synth_case",
]

_LABELS_2021 = LABEL_CONVENTIONS["brats2021"]
LABEL_NCR, LABEL_ED, LABEL_ET = _LABELS_2021["NCR"], _LABELS_2021["ED"], _LABELS_2021["ET"]
#: the resection cavity (BraTS 2024 post-treatment) in the generator's own label map
LABEL_RC = 5
_CAVITY_RADIUS = 0.3  # of the tumour core's extent

# values of the optional ``"tissue"`` map returned by ``synth_case(..., with_tissue=True)``
TISSUE_BACKGROUND, TISSUE_CSF, TISSUE_GM, TISSUE_WM = 0, 1, 2, 3

DEFAULT_SHAPE: tuple[int, int, int] = (240, 240, 155)

# Geometry, as fractions of the image size (brain semi-axes) or of the brain semi-axes (everything inside).
_BRAIN_SEMI_AXES = (0.29, 0.36, 0.37)  # ~1.4 l brain in a 240x240x155 1 mm grid
_BRAIN_SIZE_JITTER = 0.08
_BRAIN_SHIFT = 0.03
_SIZE_JITTER = 0.15  # of deep structures
_TUMOUR_ELONGATION = 0.25
_FIELD_EDGE = 0.2  # partial-volume ramp width in units of a unit-variance noise field
_SULCUS_EDGE = 0.1
_THIN_EDGE = 0.05  # narrow iso-bands (sulcal CSF, vessels) need a steeper ramp
# spacing of the control points of the smooth random fields, relative to the size of what they perturb
_BRAIN_NOISE_SPACING = 0.5
_BIAS_SPACING = 0.8
_VENTRICLE_NOISE_SPACING = 2.0
_CORE_NOISE_SPACING = 0.67
_NECROSIS_NOISE_SPACING = 0.5
_TEXTURE_MM = 2.0
_BRAIN_BOUNDARY_NOISE = 0.05  # relative irregularity of the brain outline
_NOISE_CLIP = 2.5  # clip unit-variance noise so that shapes stay bounded (keeps crops valid)
_REF_BRAIN_RADIUS_MM = 72.0  # mean brain semi-axis at the default shape, used to scale mm sizes to voxels
_CORTEX_MM = 3.0
_SURFACE_CSF_MM = 1.5
_SULCUS_SPACING_MM = 9.0
_SULCUS_DEPTH_MM = 14.0
_SULCUS_HALF_WIDTH = 0.10  # iso-band of unit noise that becomes a sulcus (CSF)
_SULCUS_GM_HALF_WIDTH = 0.45  # wider band lined by grey matter
_VESSEL_HALF_WIDTH = 0.12  # two crossing iso-bands make a tube
_VESSEL_BAND_MM = 8.0
_TUMOUR_CORE_MM = (5.0, 30.0)  # log-uniform core radius: small to large (BraTS median WT ~ 60 ml)
_TUMOUR_MAX_RADIUS = 0.55  # tumour centre lies within this normalised brain radius
_TUMOUR_FIT = 0.85  # core stays within this normalised brain radius
_MIN_CORE_VOXELS = 1.5
_CORE_NOISE = 0.1  # irregularity of the core outline (normalised radius units)
_NECROSIS_NOISE = 0.08
_NECROSIS_LEVEL = (0.4, 0.75)  # necrosis radius as a fraction of the core radius, for ring/patchy lesions
_NON_ENHANCING_NECROSIS_LEVEL = (0.3, 0.6)
_NON_ENHANCING_NECROSIS_PROB = 0.5
_PATCHY_THRESHOLD = (0.3, 1.0)  # higher: less of the rim enhances
_EDEMA_SCALE = (1.3, 2.6)  # edema radius relative to the core radius
_MAX_EDEMA_MM = 45.0  # keeps the whole tumour within BraTS' range (up to a few hundred ml)
_MINIMAL_EDEMA_SCALE = (1.1, 1.3)
_MINIMAL_EDEMA_PROB = 0.15
_EDEMA_CORTEX_SPARING = 0.35  # edema spreads along white matter and largely spares the cortex
_EDEMA_NOISE = 0.2  # irregularity of the edema outline (normalised radius units)
_EDEMA_EDGE = 3.0  # edema fades out over a few voxels (relative to the sharp tissue edges)
_EDGE_VOXELS = 1.0  # width of the partial-volume ramp at tissue edges
# deep grey nuclei, lateral ventricles and choroid plexus: centre offsets and semi-axes relative to the brain's
_NUCLEUS_OFFSET = (0.22, 0.05, -0.08)  # x is mirrored left/right
_NUCLEUS_SEMI = (0.10, 0.16, 0.12)
_NUCLEUS_GM = 0.8  # deep nuclei are a mix of grey and white matter
_VENTRICLE_OFFSET_X = (0.08, 0.12)
_VENTRICLE_OFFSET_Y = (-0.05, 0.05)
_VENTRICLE_OFFSET_Z = 0.1
_VENTRICLE_SEMI = ((0.05, 0.09), (0.30, 0.40), (0.08, 0.13))
_VENTRICLE_NOISE = 0.15
_PLEXUS_OFFSET = (0.0, 0.55, -0.2)  # relative to the ventricle: in its posterior part (trigone)
_PLEXUS_SEMI = (0.6, 0.2, 0.4)
# lesion kinds and their probabilities: ring-enhancing with necrosis, solid enhancing without necrosis,
# patchy (little) enhancement, non-enhancing
_KINDS = ("ring", "solid", "patchy", "non_enhancing")
_KIND_PROBS = (0.55, 0.15, 0.15, 0.15)

# Intensity of each compartment relative to white matter, per modality. Per case each value is jittered by
# +-_CONTRAST_JITTER, which never swaps the order of the contrasts that matter for the labels.
_COMPARTMENTS = ("wm", "gm", "csf", "edema", "net", "necrosis", "enhancing", "vessel", "plexus")
_CONTRAST: dict[str, dict[str, float]] = {
    "t1": dict(wm=1.0, gm=0.75, csf=0.3, edema=0.7, net=0.62, necrosis=0.4, enhancing=0.75, vessel=0.8, plexus=0.7),
    "t1ce": dict(wm=1.0, gm=0.77, csf=0.3, edema=0.72, net=0.65, necrosis=0.35, enhancing=1.7, vessel=1.8, plexus=1.7),
    "t2": dict(wm=1.0, gm=1.4, csf=3.0, edema=2.2, net=2.0, necrosis=2.6, enhancing=1.7, vessel=0.5, plexus=1.6),
    "flair": dict(wm=1.0, gm=1.35, csf=0.35, edema=2.1, net=1.9, necrosis=1.3, enhancing=1.7, vessel=1.0, plexus=0.8),
}
_CONTRAST_JITTER = 0.08
_WM_INTENSITY: dict[str, tuple[float, float]] = {  # white-matter intensity range per modality (int16 scanner units)
    "t1": (400.0, 1000.0),
    "t1ce": (400.0, 900.0),
    "t2": (250.0, 700.0),
    "flair": (200.0, 500.0),
}
_NOISE_SIGMA = (0.02, 0.05)  # Rician noise sigma, relative to white matter
_BIAS_STRENGTH = (0.05, 0.2)  # std of the log bias field
_TEXTURE_STRENGTH = 0.08  # multiplicative heterogeneity of tumour compartments
_INT16_MAX = np.iinfo(np.int16).max


def _basis(n: int, spacing: float) -> np.ndarray:
    """Gaussian interpolation weights (n, nodes) from control points ``spacing`` apart; rows have unit L2 norm."""
    n_nodes = int(np.ceil(n / spacing)) + 3
    nodes = (np.arange(n_nodes) - 1.0) * spacing
    w = np.exp(-0.5 * ((np.arange(n)[:, None] - nodes[None, :]) / (0.6 * spacing)) ** 2)
    # unit row norm makes every voxel of the separable field unit-variance for i.i.d. control values
    return (w / np.linalg.norm(w, axis=1, keepdims=True)).astype(np.float32)


def _smooth_noise(rng: np.random.Generator, shape: Sequence[int], spacing: float) -> np.ndarray:
    """
    Smooth unit-variance random field, built from random control values on a coarse grid.

    A separable Gaussian-kernel interpolation (three small matrix products) is much faster than
    ``scipy.ndimage.zoom`` of a low-resolution field and gives a smooth (not piecewise-linear) result.
    """
    spacing = max(float(spacing), 1.0)
    mats = [_basis(int(n), spacing) for n in shape]
    coef = rng.standard_normal([m.shape[1] for m in mats], dtype=np.float32)
    out = np.tensordot(coef, mats[2], axes=([2], [1]))  # (a, b, Z)
    out = np.tensordot(mats[1], out, axes=([1], [1]))  # (Y, a, Z)
    return np.tensordot(mats[0], out, axes=([1], [1]))  # (X, Y, Z)


def _ramp(signed: np.ndarray, width: float) -> np.ndarray:
    """Partial-volume fraction from a signed field that is positive inside: 0.5 at 0, linear over ``width``."""
    return np.clip(0.5 + signed / width, 0.0, 1.0)


def _ellipsoid_radius(shape: Sequence[int], centre: Sequence[float], semi_axes: Sequence[float]) -> np.ndarray:
    """Normalised ellipsoidal radius (1 on the surface) on a grid, computed by broadcasting."""
    # python floats keep the grid float32 (numpy scalars would promote it to float64)
    axes = [((np.arange(n, dtype=np.float32) - float(c)) / float(a)) ** 2 for n, c, a in zip(shape, centre, semi_axes)]
    return np.sqrt(axes[0][:, None, None] + axes[1][None, :, None] + axes[2][None, None, :])


def _box(centre: Sequence[float], half: Sequence[float], shape: Sequence[int], margin: int = 0) -> tuple[slice, ...]:
    """Slices of a box around ``centre`` clipped to ``shape`` less ``margin`` voxels on each side."""
    return tuple(
        slice(max(int(np.floor(c - h)), margin), min(int(np.ceil(c + h)) + 1, n - margin))
        for c, h, n in zip(centre, half, shape)
    )


def _contrasts(rng: np.random.Generator) -> dict[str, dict[str, float]]:
    """Per-case contrast table: relative compartment intensities times a random white-matter intensity."""
    table = {}
    for mod in MODALITIES:
        wm = rng.uniform(*_WM_INTENSITY[mod])
        jitter = rng.uniform(1 - _CONTRAST_JITTER, 1 + _CONTRAST_JITTER, len(_COMPARTMENTS))
        table[mod] = {
            k: float(wm * _CONTRAST[mod][k] * (1.0 if k == "wm" else j)) for k, j in zip(_COMPARTMENTS, jitter)
        }
    return table


def _blend(
    images: dict[str, np.ndarray],
    frac: np.ndarray,
    table: dict[str, dict[str, float]],
    key: str,
    box: tuple[slice, ...] = (),
    texture: np.ndarray | None = None,
) -> None:
    """
    Partial-volume mixing in place: ``img[box] = (1 - frac) * img[box] + frac * value`` for each modality.

    Without ``box`` the fractions are mostly 0 (thin or small structures), so only their nonzero voxels are touched.
    """
    if box:
        for mod, img in images.items():
            value = table[mod][key] if texture is None else table[mod][key] * texture
            view = img[box]
            view += frac * (value - view)
        return
    idx = np.flatnonzero(frac)
    f = frac.reshape(-1)[idx]
    for mod, img in images.items():
        flat = img.reshape(-1)  # a view: the images are contiguous
        flat[idx] += f * (table[mod][key] - flat[idx])


def synth_case(seed: int, shape: Sequence[int] = DEFAULT_SHAPE, with_tissue: bool = False) -> dict[str, np.ndarray]:
    """
    Generate one BraTS-like case, deterministically from ``seed``.

    Args:
        seed: seed of ``np.random.default_rng``; the same seed and shape always give the same case.
        shape: spatial shape (3D). Anatomy scales with the shape; the default is the BraTS grid (1 mm voxels).
        with_tissue: also return ``"tissue"``, the healthy-tissue map (uint8: ``TISSUE_BACKGROUND``,
            ``TISSUE_CSF``, ``TISSUE_GM``, ``TISSUE_WM``) under the lesion, for checks and visualisation.

    Returns:
        dict with ``"t1", "t1ce", "t2", "flair"`` (int16, 0 outside the brain, >= 1 inside) and ``"seg"``
        (uint8, BraTS 2021 labels: 0 background, 1 necrotic/non-enhancing core, 2 edema, 4 enhancing tumour).

    Raises:
        ValueError: when ``shape`` is not 3D or too small to hold a brain.
    """
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or min(shape) < 8:
        raise ValueError(f"shape must be 3D with every side >= 8, got {shape}.")
    rng = np.random.default_rng(seed)
    table = _contrasts(rng)

    # --- brain outline (work in the brain's bounding box only; the rest stays 0) ---
    semi = np.array(_BRAIN_SEMI_AXES) * shape * rng.uniform(1 - _BRAIN_SIZE_JITTER, 1 + _BRAIN_SIZE_JITTER, 3)
    centre = np.array(shape) / 2.0 + rng.uniform(-_BRAIN_SHIFT, _BRAIN_SHIFT, 3) * shape
    mean_semi = float(semi.mean())
    mm = mean_semi / _REF_BRAIN_RADIUS_MM  # voxels per "mm" of the reference anatomy
    # one voxel margin: the brain never touches the image border, whatever the jitter
    crop = _box(centre, semi * (1 + _BRAIN_BOUNDARY_NOISE * _NOISE_CLIP) + 1, shape, margin=1)
    cshape = tuple(s.stop - s.start for s in crop)
    ccentre = centre - [s.start for s in crop]
    radius = _ellipsoid_radius(cshape, ccentre, semi)
    radius += _BRAIN_BOUNDARY_NOISE * np.clip(
        _smooth_noise(rng, cshape, mean_semi * _BRAIN_NOISE_SPACING), -_NOISE_CLIP, _NOISE_CLIP
    )
    brain = radius < 1.0
    depth = (1.0 - radius) * mean_semi  # approximate distance to the brain surface in voxels
    del radius

    # --- healthy tissue as partial-volume fractions ---
    edge = _EDGE_VOXELS
    sulci = np.abs(_smooth_noise(rng, cshape, max(_SULCUS_SPACING_MM * mm, 2.5)))
    sulcus_depth = _SULCUS_DEPTH_MM * mm
    gm = np.maximum(
        _ramp(_CORTEX_MM * mm - depth, edge),
        _ramp(_SULCUS_GM_HALF_WIDTH - sulci, _SULCUS_EDGE) * _ramp(sulcus_depth + _CORTEX_MM * mm - depth, edge),
    )
    csf = np.maximum(
        _ramp(_SURFACE_CSF_MM * mm - depth, edge),
        _ramp(_SULCUS_HALF_WIDTH - sulci, _THIN_EDGE) * _ramp(sulcus_depth - depth, edge),
    )
    del sulci
    # deep grey nuclei (basal ganglia / thalami) and lateral ventricles with choroid plexus, mirrored left/right
    plexus = np.zeros(cshape, np.float32)
    for side in (-1.0, 1.0):
        nuc_c = ccentre + semi * [side * _NUCLEUS_OFFSET[0], *_NUCLEUS_OFFSET[1:]]
        nuc_a = semi * _NUCLEUS_SEMI * rng.uniform(1 - _SIZE_JITTER, 1 + _SIZE_JITTER, 3)
        box = _box(nuc_c, nuc_a + 2, cshape)
        r = _ellipsoid_radius([s.stop - s.start for s in box], nuc_c - [s.start for s in box], nuc_a)
        np.maximum(gm[box], _NUCLEUS_GM * _ramp((1.0 - r) * float(nuc_a.min()), edge), out=gm[box])

        ven_c = ccentre + semi * [
            side * rng.uniform(*_VENTRICLE_OFFSET_X),
            rng.uniform(*_VENTRICLE_OFFSET_Y),
            _VENTRICLE_OFFSET_Z,
        ]
        ven_a = np.maximum(semi * [rng.uniform(*lim) for lim in _VENTRICLE_SEMI], 1.0)
        box = _box(ven_c, ven_a / (1 - _VENTRICLE_NOISE * _NOISE_CLIP) + 2, cshape)
        bshape = [s.stop - s.start for s in box]
        r = _ellipsoid_radius(bshape, ven_c - [s.start for s in box], ven_a)
        ven_noise = _smooth_noise(rng, bshape, float(ven_a.min()) * _VENTRICLE_NOISE_SPACING)
        r += _VENTRICLE_NOISE * np.clip(ven_noise, -_NOISE_CLIP, _NOISE_CLIP)
        np.maximum(csf[box], _ramp((1.0 - r) * float(ven_a.min()), edge), out=csf[box])
        # choroid plexus: a small blob in the posterior ventricle; enhances like tumour but is not tumour
        plx_c = ven_c + ven_a * _PLEXUS_OFFSET
        plx_a = np.maximum(ven_a * _PLEXUS_SEMI, 1.0)
        box = _box(plx_c, plx_a + 2, cshape)
        r = _ellipsoid_radius([s.stop - s.start for s in box], plx_c - [s.start for s in box], plx_a)
        np.maximum(plexus[box], _ramp((1.0 - r) * float(plx_a.min()), edge), out=plexus[box])
    # enhancing cortical vessels: tubes where two independent smooth fields both cross zero, near the surface
    vessel_spacing = max(_SULCUS_SPACING_MM * 2 * mm, 3.0)
    vessels = _ramp(_VESSEL_HALF_WIDTH - np.abs(_smooth_noise(rng, cshape, vessel_spacing)), _THIN_EDGE)
    vessels *= _ramp(_VESSEL_HALF_WIDTH - np.abs(_smooth_noise(rng, cshape, vessel_spacing)), _THIN_EDGE)
    vessels *= _ramp(_VESSEL_BAND_MM * mm - depth, edge)
    for frac in (gm, csf, plexus, vessels):
        frac *= brain  # fractions are only meaningful (and only blended) inside the brain

    images = {mod: np.full(cshape, table[mod]["wm"], np.float32) for mod in MODALITIES}
    _blend(images, gm, table, "gm")
    _blend(images, csf, table, "csf")
    _blend(images, plexus, table, "plexus")
    _blend(images, vessels, table, "vessel")
    tissue = None
    if with_tissue:
        tissue = np.where(csf > 0.5, TISSUE_CSF, np.where(gm > 0.5, TISSUE_GM, TISSUE_WM)).astype(np.uint8)
        tissue[~brain] = TISSUE_BACKGROUND
    del csf, plexus, vessels

    # --- tumour: core (necrosis + enhancing rim or non-enhancing tissue) inside irregular edema ---
    seg = np.zeros(cshape, np.uint8)
    kind = _KINDS[rng.choice(len(_KINDS), p=_KIND_PROBS)]
    direction = rng.standard_normal(3)
    rho = _TUMOUR_MAX_RADIUS * rng.uniform() ** (1 / 3)  # uniform within the inner ellipsoid
    t_centre = ccentre + semi * rho * direction / np.linalg.norm(direction)
    core_r = np.exp(rng.uniform(*np.log(_TUMOUR_CORE_MM))) * mm
    core_r = float(max(min(core_r, (_TUMOUR_FIT - rho) * semi.min()), _MIN_CORE_VOXELS))
    core_a = core_r * rng.uniform(1 - _TUMOUR_ELONGATION, 1 + _TUMOUR_ELONGATION, 3)
    minimal_edema = rng.uniform() < _MINIMAL_EDEMA_PROB
    edema_scale = rng.uniform(*(_MINIMAL_EDEMA_SCALE if minimal_edema else _EDEMA_SCALE))
    edema_scale = max(min(edema_scale, _MAX_EDEMA_MM * mm / core_r), _MINIMAL_EDEMA_SCALE[0])
    # the clipped edema noise can shrink its radius by at most this factor: the box must hold that
    edema_reach = edema_scale / (1.0 - _EDEMA_NOISE * _NOISE_CLIP)
    box = _box(t_centre, core_a * edema_reach + 3, cshape)
    bshape = [s.stop - s.start for s in box]
    r_core = _ellipsoid_radius(bshape, t_centre - [s.start for s in box], core_a)
    edema_noise = np.clip(
        _smooth_noise(rng, bshape, core_r * edema_scale * _CORE_NOISE_SPACING), -_NOISE_CLIP, _NOISE_CLIP
    )
    r_edema = r_core / edema_scale + _EDEMA_NOISE * edema_noise
    r_edema += _EDEMA_CORTEX_SPARING * gm[box]
    r_core += _CORE_NOISE * np.clip(_smooth_noise(rng, bshape, core_r * _CORE_NOISE_SPACING), -_NOISE_CLIP, _NOISE_CLIP)
    r_necrosis = r_core + _NECROSIS_NOISE * _smooth_noise(rng, bshape, core_r * _NECROSIS_NOISE_SPACING)
    patches = _smooth_noise(rng, bshape, core_r * _NECROSIS_NOISE_SPACING)
    texture = 1.0 + _TEXTURE_STRENGTH * _smooth_noise(rng, bshape, _TEXTURE_MM * mm)
    tbrain = brain[box]
    scale = max(core_r, 1.0)  # radius units -> voxels at the core edge, for partial-volume ramps

    f_core = _ramp((1.0 - r_core) * scale, edge) * tbrain
    core = f_core > 0.5
    # the core is always wrapped in edema (at least one voxel), as in annotated gliomas
    wt = ((r_edema < 1.0) | ndimage.binary_dilation(core)) & tbrain
    f_wt = np.maximum(_ramp((1.0 - r_edema) * scale * edema_scale, _EDEMA_EDGE * edge), f_core) * tbrain
    necrosis_level = rng.uniform(*_NECROSIS_LEVEL) if kind in ("ring", "patchy") else -np.inf
    if kind == "non_enhancing" and rng.uniform() < _NON_ENHANCING_NECROSIS_PROB:
        necrosis_level = rng.uniform(*_NON_ENHANCING_NECROSIS_LEVEL)
    f_nec = _ramp((necrosis_level - r_necrosis) * scale, edge) * f_core if np.isfinite(necrosis_level) else 0.0
    if kind in ("ring", "solid"):
        f_patch = 1.0
    elif kind == "patchy":  # only a fraction of the rim enhances
        f_patch = _ramp(patches - rng.uniform(*_PATCHY_THRESHOLD), _FIELD_EDGE)
    else:
        f_patch = 0.0
    f_et = f_core * (1.0 - f_nec) * f_patch
    et = (f_et > 0.5) & core

    seg[box][wt] = LABEL_ED
    seg[box][core] = LABEL_NCR
    seg[box][et] = LABEL_ET
    _blend(images, f_wt, table, "edema", box, texture)
    _blend(images, f_core, table, "net", box, texture)
    _blend(images, f_et, table, "enhancing", box, texture)
    if np.isfinite(necrosis_level):
        _blend(images, f_nec, table, "necrosis", box, texture)

    # --- acquisition: bias field, Rician noise, integer scanner units; background stays exactly 0 ---
    out: dict[str, np.ndarray] = {}
    for mod in MODALITIES:
        bias = np.exp(rng.uniform(*_BIAS_STRENGTH) * _smooth_noise(rng, cshape, mean_semi * _BIAS_SPACING))
        vals = images[mod][brain] * bias[brain]
        sigma = rng.uniform(*_NOISE_SIGMA) * table[mod]["wm"]
        real = vals + sigma * rng.standard_normal(vals.shape, dtype=np.float32)
        imag = sigma * rng.standard_normal(vals.shape, dtype=np.float32)
        vals = np.clip(np.rint(np.sqrt(real * real + imag * imag)), 1, _INT16_MAX)  # >= 1: nonzero == brain
        full = np.zeros(shape, np.int16)
        full[crop][brain] = vals.astype(np.int16)
        out[mod] = full
    full_seg = np.zeros(shape, np.uint8)
    full_seg[crop] = seg * brain
    out["seg"] = full_seg
    if tissue is not None:
        full_tissue = np.zeros(shape, np.uint8)
        full_tissue[crop] = tissue
        out["tissue"] = full_tissue
    return out


def add_resection_cavity(data: dict[str, np.ndarray], rng: np.random.Generator) -> None:
    """A BraTS 2024 post-treatment resection cavity (:data:`LABEL_RC`): a fluid-filled hole cut into one side of the
    tumour core (its enhancing rim left standing), with the intensities of the case's CSF in every modality. In
    place; a case without tumour core is left as it is."""
    core = np.isin(data[LABEL_SUFFIX], (LABEL_NCR, LABEL_ET))
    if not core.any():
        return
    points = np.argwhere(core)
    lo, hi = points.min(0), points.max(0)
    radius = max(1.0, float((hi - lo).max()) * _CAVITY_RADIUS)
    centre = points[rng.integers(len(points))].astype(float)  # a point of the core: the cavity opens there
    grid = np.ogrid[tuple(slice(0, n) for n in core.shape)]
    cavity = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    cavity &= (data[MODALITIES[0]] > 0) & (data[LABEL_SUFFIX] != LABEL_ET)  # in the brain; the enhancing rim stays
    csf = (data[LABEL_SUFFIX] == 0) & (data["tissue"] == TISSUE_CSF)
    for modality in MODALITIES:
        fluid = np.median(data[modality][csf]) if csf.any() else np.median(data[modality][data[modality] > 0])
        data[modality][cavity] = max(1, int(fluid))
    data[LABEL_SUFFIX][cavity] = LABEL_RC
