# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``axunet network | overlay | attention | report``: the network's size and speed, and pictures of one case."""

from __future__ import annotations

import logging
import time
from pathlib import Path

from .. import outputs
from ..errors import ConfigurationError
from ..settings import MIN_SLICE_SIZE, read_model_settings, trained_network
from .configs import read_config
from .data import split_names

__all__ = [
    "DEFAULT_WEIGHTS",
    "REPORT_MODALITIES",
    "SLICE_SIZE",
    "attention",
    "case_report_files",
    "model_details",
    "network",
    "one_case",
    "overlay",
    "report",
]

#: the modalities a case report shows, one row each
REPORT_MODALITIES = ("t1ce", "flair")
#: the paper's slice size
SLICE_SIZE = 224
#: where the training workflow writes the best weights, relative to the current folder (its bundle_root)
DEFAULT_WEIGHTS = Path(outputs.MODELS_DIR) / outputs.WEIGHTS


def one_case(case_dir: str):
    """The one BraTS case in `case_dir`, or exit with a message."""
    from ..data.cases import find_cases

    cases = find_cases(case_dir)
    if len(cases) != 1:
        raise ConfigurationError(f"{case_dir}: expected the folder of one case, found {len(cases)} cases")
    return cases[0]


def network(batch: int = 2, size: int = SLICE_SIZE) -> None:
    """Build the paper's AXUNet and run it on random slices; print its size and speed.

    Args:
        batch: slices per forward pass.
        size: slice height and width.

    Example:
        axunet network --batch 2 --size 224
    """
    import torch

    from ..networks import AXUNet

    if size < MIN_SLICE_SIZE:
        raise ConfigurationError(f"size must be at least {MIN_SLICE_SIZE} (the encoder's stride-32 map), got {size}")
    net = AXUNet().eval()
    params = sum(p.numel() for p in net.parameters()) / 1e6
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        net(x)  # warm-up
        start = time.perf_counter()
        out = net(x)
        seconds = time.perf_counter() - start
    print(f"AXUNet: {params:.2f} M parameters; input {tuple(x.shape)} (T1CE, T2, FLAIR) -> logits {tuple(out.shape)}")
    per_slice_ms = seconds / batch * 1e3
    threads = torch.get_num_threads()
    print(f"output channels: WT, TC, ET; {per_slice_ms:.0f} ms per {size}x{size} slice, {threads} threads")


def overlay(
    case_dir: str,
    seg: str | None = None,
    output: str | None = None,
    modalities: str = "t1ce,t2,flair",
    convention: str = "auto",
) -> None:
    """Draw a case's modalities with the WT/TC/ET contours of a segmentation (dashed) and of the case's own
    label when it has one (solid), on the axial, coronal and sagittal slices with the most tumour.

    Args:
        case_dir: folder of one BraTS case (its modality files, and optionally its seg).
        seg: the predicted label map (default: the case's own label only).
        output: PNG to write (default: <case_id>_overlay.png in the current folder).
        modalities: comma-separated modalities to show, in order.
        convention: label convention of the files: auto (the case's dataset's), brats2021, brats2023, brats2024, msd.

    Example:
        axunet overlay /data/new_cases/CASE --seg segs/CASE_seg.nii.gz
    """
    import nibabel as nib
    import numpy as np

    from ..data.labels import resolve_convention
    from ..visualize import overlay_files

    if seg is not None and not Path(seg).is_file():
        raise ConfigurationError(f"--seg {seg}: no such file")
    case = one_case(case_dir)
    mods = split_names(modalities)
    if seg is None and case.label is None:
        raise ConfigurationError(f"{case.case_id}: no --seg given and the case has no label to draw")
    label = np.asanyarray(nib.load(case.label).dataobj) if case.label is not None else None
    convention = resolve_convention(convention, case.convention, label)
    png = overlay_files(
        case.image_files(mods),
        seg if seg is not None else case.label,
        output or f"{case.case_id}{outputs.OVERLAY_SUFFIX}",
        label_file=case.label if seg is not None else None,
        convention=convention,
        modality_names=[m.upper() for m in mods],
        channels=case.channel_indices(mods),
    )
    print(f"wrote {png}")


def attention(
    case_dir: str,
    ckpt_path: str | None = None,
    output: str | None = None,
    modalities: str | None = None,
    size: int | None = None,
    slice_index: int | None = None,
) -> None:
    """Draw what AXUNet's attention looks at for one case: a PNG with, per attention level (1 = fine ... 4 = coarse),
    the input slice, the PAM (position attention) activity and the CAM (channel attention) activity. The case is
    preprocessed as for training (RAS, brain crop, z-score, SIZE x SIZE in-plane) and shown on the axial slice with
    the most tumour (of its label; the middle slice without one).

    Args:
        case_dir: folder of one BraTS case.
        ckpt_path: trained weights (plain state dict); default ./models/model.pt, or untrained (random) weights with
            a warning when that does not exist.
        output: PNG to write (default: <case_id>_attention.png in the current folder).
        modalities: comma-separated network input channels, in order (default: those the weights were trained
            with, from their model_settings.json; else t1ce,t2,flair).
        size: in-plane size of the network input (default: the weights' roi_size; else 224).
        slice_index: axial slice to show (in the preprocessed volume) instead of the one with the most tumour.

    Example:
        axunet attention /data/new_cases/CASE --ckpt_path models/model.pt
    """
    from monai.transforms import Compose

    from ..data.datalist import case_item
    from ..networks import AXUNet
    from ..visualize import attention_maps, most_tumour_slices
    from ..weights import load_plain_weights

    ckpt = Path(ckpt_path) if ckpt_path else DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None
    if ckpt is not None and not ckpt.is_file():
        raise ConfigurationError(f"no weights at {ckpt}")
    trained = (read_model_settings(ckpt) if ckpt is not None else None) or {}
    mods = split_names(modalities) if modalities is not None else trained.get("modalities", ["t1ce", "t2", "flair"])
    roi_size = [size, size] if size is not None else trained.get("roi_size", [SLICE_SIZE, SLICE_SIZE])
    for name, value, option in (("modalities", mods, "--modalities"), ("roi_size", roi_size, "--size")):
        if name in trained and list(value) != list(trained[name]):
            raise ConfigurationError(
                f"{option} {','.join(map(str, value))} contradicts the weights' {name} {trained[name]} "
                f"({ckpt.with_name(outputs.MODEL_SETTINGS)}): leave {option} out to use theirs"
            )
    case = one_case(case_dir)
    net = (trained_network(str(ckpt), in_channels=len(mods)) if ckpt else AXUNet(in_channels=len(mods))).eval()
    if ckpt is None:
        logging.getLogger(__name__).warning(
            "no weights at %s and no --ckpt_path: showing an UNTRAINED network (random weights)", DEFAULT_WEIGHTS
        )
    else:
        try:
            net.load_state_dict(load_plain_weights(ckpt, map_location="cpu"))
        except RuntimeError as err:  # torch's message lists every mismatched tensor: name the cause in one line
            raise ConfigurationError(
                f"{ckpt}: these weights do not fit AXUNet with {len(mods)} input channels ({','.join(mods)}) "
                f"({str(err).splitlines()[0].rstrip(':')}): give the --modalities they were trained with"
            ) from None

    # the training's own preprocessing, so that the network sees what it was trained on
    parser = read_config("train.json", modalities=mods, roi_size=list(roi_size))
    data = Compose(parser.get_parsed_content("volume_transforms"))(case_item(case, mods))
    image = data["image"]
    if slice_index is None:
        position = most_tumour_slices(data["label"][0]) if "label" in data else None
        slice_index = position[2] if position is not None else image.shape[-1] // 2
    where = "most tumour" if "label" in data else "middle"
    weights = ckpt.name if ckpt is not None else "untrained"
    png = attention_maps(
        net,
        image[..., slice_index],
        output or f"{case.case_id}{outputs.ATTENTION_SUFFIX}",
        modality_names=[m.upper() for m in mods],
        show_prediction=ckpt is not None,
        title=f"{case.case_id}, axial slice {slice_index} ({where}), weights: {weights}",
    )
    print(f"wrote {png}")


def model_details(ckpt_path: str | None) -> dict[str, str]:
    """The model a report names: the bundle's name and version (``configs/metadata.json``) and, for the weights
    (``ckpt_path``, else ./models/model.pt when it exists), their path and SHA-256; none when there are none.

    Raises:
        ConfigurationError: ``ckpt_path`` is no file.
    """
    import hashlib
    import json

    from .configs import config_dir

    metadata = json.loads((config_dir() / "metadata.json").read_text(encoding="utf-8"))
    details = {"name": metadata.get("name", ""), "version": metadata.get("version", "")}
    ckpt = Path(ckpt_path) if ckpt_path else DEFAULT_WEIGHTS if DEFAULT_WEIGHTS.is_file() else None
    if ckpt is not None:
        if not ckpt.is_file():
            raise ConfigurationError(f"--ckpt_path {ckpt}: no such file")
        with open(ckpt, "rb") as f:
            details.update(weights=str(ckpt), sha256=hashlib.file_digest(f, "sha256").hexdigest())
    return details


def _uncertainty_beside(seg: Path, case_id: str) -> Path | None:
    """``<case>_uncertainty.nii.gz`` beside a ``<case>_seg<ext>`` label map (what flip TTA writes), when present."""
    stem = next(
        (
            seg.name[: -len(f"_{outputs.SEGMENTATION_POSTFIX}{ext}")]
            for ext in outputs.SEGMENTATION_EXTENSIONS
            if seg.name.endswith(f"_{outputs.SEGMENTATION_POSTFIX}{ext}")
        ),
        case_id,
    )
    path = seg.with_name(f"{stem}_{outputs.UNCERTAINTY_POSTFIX}.nii.gz")
    return path if path.is_file() else None


def report(
    case_dir: str,
    seg: str | None = None,
    output: str | None = None,
    ckpt_path: str | None = None,
    modalities: str = "t1ce,flair",
    convention: str = "auto",
) -> None:
    """Write a one-page case report (A4, PNG and PDF): the planes through the tumour's centre with the label
    contours, the volume of each label and region in mL (as volumes.csv), the uncertainty score (when a
    <case>_uncertainty.nii.gz lies beside the segmentation), the model, its version and the weights' SHA-256, and
    the label convention. Research use only; not for diagnosis.

    Args:
        case_dir: folder of one case (its modality files).
        seg: the case's label map (NIfTI, e.g. what axunet infer wrote); required.
        output: the report's path without extension (default: <case_id>_report in the current folder; .png and .pdf
            are written).
        ckpt_path: the weights that made the segmentation, for their SHA-256 (default: ./models/model.pt when it
            exists, else "not given").
        modalities: comma-separated modalities to show, one row each.
        convention: label convention of the segmentation: auto (the case's dataset's), brats2021, brats2023,
            brats2024, msd.

    Example:
        axunet report /data/new_cases/CASE --seg segs/CASE_seg.nii.gz --ckpt_path models/model.pt
    """
    if not Path(case_dir).is_dir():
        raise ConfigurationError(f"{case_dir}: no such case folder")
    if seg is None or not Path(seg).is_file():
        raise ConfigurationError(f"--seg {seg}: no such file" if seg else "axunet report: --seg SEG is required")
    written = case_report_files(one_case(case_dir), seg, output, ckpt_path, split_names(modalities), convention)
    print(f"wrote {written.png} and {written.pdf}")


def case_report_files(case, seg, output=None, ckpt_path=None, modalities=REPORT_MODALITIES, convention="auto"):
    """Draw ``case``'s report (:func:`axunet_bundle.visualize.report.case_report`) for the label map ``seg``:
    ``output`` (default ``<case_id>_report`` in the current folder) ``.png`` and ``.pdf``; the other arguments as
    :func:`report`'s. Returns the :class:`~axunet_bundle.visualize.report.CaseReport`.

    Raises:
        ConfigurationError: a ``ckpt_path`` that is no file, a label map on another grid.
        CaseError: the case lacks one of ``modalities``.
    """
    import nibabel as nib
    import numpy as np

    from ..data.cases import DEFAULT_MODALITIES
    from ..data.labels import resolve_convention
    from ..visualize.report import case_report

    channels = case.channel_indices(modalities) if case.multichannel else None
    if case.multichannel and channels is None:  # without dataset.json: the model's modalities in the model's order
        unknown = [m for m in modalities if m not in DEFAULT_MODALITIES]
        if unknown:
            raise ConfigurationError(
                f"{case.case_id}: a multi-channel image without dataset.json holds {','.join(DEFAULT_MODALITIES)}, "
                f"not {','.join(unknown)}"
            )
        channels = [DEFAULT_MODALITIES.index(m) for m in modalities]
    label = np.asanyarray(nib.load(seg).dataobj)
    try:
        return case_report(
            case.image_files(modalities),
            [m.upper() for m in modalities],
            seg,
            output or f"{case.case_id}{outputs.REPORT_SUFFIX}",
            case_id=case.case_id,
            convention=resolve_convention(convention, case.convention, label),
            model=model_details(ckpt_path),
            uncertainty_file=_uncertainty_beside(Path(seg), case.case_id),
            channels=channels,
        )
    except ValueError as err:  # a segmentation of another case or grid: the user's mistake, one line
        raise ConfigurationError(f"{case.case_id}: {Path(seg).name}: {err}") from None
