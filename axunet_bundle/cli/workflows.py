# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``axunet train | evaluate | infer | export``: the bundle's workflows, run as ``python -m monai.bundle run`` runs
them, with the package's configs (or those of the bundle folder given as ``--bundle_root``).

Outputs go where the configs put them, under ``bundle_root``: the current folder unless ``--bundle_root DIR`` is
given (``./models``, ``./runs``, ``./eval``), never into the installed package.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

from .. import outputs
from ..errors import ConfigurationError
from ..settings import check_resume, read_model_settings, run_identity
from .configs import config_dir, config_path, read_config

__all__ = [
    "OPTION_CONFIGS",
    "OPTION_WORKFLOWS",
    "WORKFLOW_CONFIGS",
    "bundle_run",
    "option_configs",
    "evaluate",
    "export",
    "infer",
    "train",
]

logger = logging.getLogger(__name__)

#: the config files of each workflow, in merge order (later files override earlier ones)
WORKFLOW_CONFIGS = {
    "training": ["train.json"],
    "evaluating": ["inference.json", "evaluate.json"],
    "inference": ["inference.json"],
}
#: the command line's pictures, merged into a workflow's configs (``+`` ids extend its handler and ``run`` lists): the
#: model-zoo bundle does not carry the drawing code
PICTURES_CONFIGS = {
    "training": Path(__file__).with_name("pictures_training.json"),
    "evaluating": Path(__file__).with_name("pictures_evaluation.json"),
}
#: override files merged after a workflow's configs when the command line gives their id (``python -m monai.bundle
#: run`` names them in ``--config_file``): training from the slice cache, flip test-time augmentation
OPTION_CONFIGS = {"slice_cache_dir": "slice_cache.json", "flip_tta": "flip_tta.json"}
#: the workflows each option file belongs to
OPTION_WORKFLOWS = {"slice_cache_dir": ("training",), "flip_tta": ("evaluating", "inference")}
#: ``bundle_root`` of the configs: relative paths and the default output folders are the current folder's
DEFAULT_BUNDLE_ROOT = "."
EXPORT_SLICE_SIZE = 224


def bundle_run(workflow: str, overrides: dict, pictures: bool = False) -> None:
    """``python -m monai.bundle run <workflow>`` with the bundle's configs, metadata and logging; ``overrides`` are the
    bundle ids to change (``epochs=2``, ``dataset_dir=...``); ``pictures`` adds the command line's pictures
    (:data:`PICTURES_CONFIGS`)."""
    from monai.bundle import run

    configs = config_dir(overrides.get("bundle_root"))
    overrides = dict(overrides)
    given = overrides.pop("config_file", None)  # the user's config files replace the workflow's (e.g. ONNX)
    names = WORKFLOW_CONFIGS[workflow] if given is None else [given] if isinstance(given, str) else list(given)
    root = overrides.get("bundle_root")
    config_files = [str(config_path(name, root)) for name in names + option_configs(workflow, overrides)]
    if workflow != "training":
        check_trained_settings(overrides)
    logger.info("configs: %s", configs)
    if pictures and workflow in PICTURES_CONFIGS:
        config_files.append(str(PICTURES_CONFIGS[workflow]))
    run(
        run_id=workflow,
        config_file=config_files,
        meta_file=str(configs / "metadata.json"),
        logging_file=str(configs / "logging.conf"),
        # outputs under the current folder (the configs' own default is the folder holding their configs/)
        **{"bundle_root": DEFAULT_BUNDLE_ROOT, **overrides},
    )


def _json(path: str | Path) -> dict:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def weights_path(overrides: dict) -> Path:
    """The weights a workflow loads: ``--ckpt_path``, else ``<bundle_root>/models/model.pt``."""
    bundle_root = Path(overrides.get("bundle_root", DEFAULT_BUNDLE_ROOT))
    return Path(overrides.get("ckpt_path") or bundle_root / outputs.MODELS_DIR / outputs.WEIGHTS)


def check_trained_settings(overrides: dict) -> None:
    """Check ``overrides`` against the settings the weights were trained with (their ``model_settings.json``; the
    configs take the slice size, the modalities and the network arguments from the file themselves).

    Raises:
        ConfigurationError: ``roi_size`` or ``modalities`` given otherwise than the weights were trained with.
    """
    ckpt = weights_path(overrides)
    if isinstance(overrides.get("ckpt_path"), str) and overrides["ckpt_path"][:1] in "$@":
        return
    settings = read_model_settings(ckpt) or {}
    for name in ("roi_size", "modalities"):
        if name in overrides and name in settings and list(overrides[name]) != list(settings[name]):
            raise ConfigurationError(
                f"--{name} {overrides[name]!r} contradicts the weights' {name} {settings[name]!r} "
                f"({ckpt.with_name(outputs.MODEL_SETTINGS)}): leave --{name} out to use theirs"
            )


def option_configs(workflow: str, overrides: dict) -> list[str]:
    """The override files of :data:`OPTION_CONFIGS` that ``overrides`` ask for: ``slice_cache_dir`` (kept, the file
    reads it) for training, ``flip_tta=True`` (removed: the file is the option) for evaluation and inference.

    Raises:
        ConfigurationError: ``flip_tta`` is not ``True`` or ``False``.
    """
    flip_tta = overrides.pop("flip_tta", False)
    if not isinstance(flip_tta, bool):
        raise ConfigurationError(f"flip_tta must be True or False, got {flip_tta!r}")
    wanted = {"slice_cache_dir": overrides.get("slice_cache_dir") is not None, "flip_tta": flip_tta}
    return [OPTION_CONFIGS[key] for key, given in wanted.items() if given and workflow in OPTION_WORKFLOWS[key]]


def check_resume_option(overrides: dict) -> None:
    """Before a training starts: ``--resume True`` needs a checkpoint of this run in ``ckpt_dir`` (the same dataset,
    datalist, folds, fold, modalities, slice size and network).

    Raises:
        ConfigurationError: there is none, or the newest is another run's.
    """
    if overrides.get("resume") is not True:
        return
    config = {**_json(config_dir(overrides.get("bundle_root")) / "train.json"), **overrides}
    bundle_root = Path(overrides.get("bundle_root", DEFAULT_BUNDLE_ROOT))
    ckpt_dir = overrides.get("ckpt_dir") or bundle_root / outputs.MODELS_DIR
    target = overrides.get("network_def", config["network_def"]).get("_target_")
    run = run_identity(
        config["dataset_dir"] if config.get("datalist") is None else None,
        config.get("datalist"),
        config["folds"],
        config["fold"],
        config["modalities"],
        config["roi_size"],
        {"_target_": target},
    )
    if config.get("datalist") is not None:
        run.pop("dataset_dir")  # the datalist names the cases
    check_resume(ckpt_dir, run)


def train(**overrides) -> None:
    """Train AXUNet with the bundle's configs/train.json (= python -m monai.bundle run training ...).

    Any bundle id can be overridden: --dataset_dir DIR (a BraTS folder), --datalist FILE, --epochs 40,
    --batch_size 64, --learning_rate 1e-4, --roi_size "[224,224]", --modalities "['t1ce','t2','flair']",
    --grid_modality auto (the modality whose grid the others are resampled onto and labels lie on: T1CE where read),
    --slice_cache_dir DIR (from `axunet prepare`), --pretrained False or --pretrained_path FILE (ImageNet weights),
    --resume True, --device "$torch.device('cpu')", --amp False. Weights go to ./models/model.pt (best validation
    Dice) and ./models/checkpoint_epoch=N.pt (resumable); TensorBoard logs (loss, validation Dice, a validation
    case's overlay image per validation) to ./runs/, and the loss/Dice curves to ./runs/training_curves.png at the
    end. --bundle_root DIR puts them under DIR instead (and runs DIR's configs when it is a bundle folder);
    --ckpt_dir / --output_dir set each folder.

    Example:
        axunet train --dataset_dir /data/BraTS2021 --epochs 40 --batch_size 64
    """
    check_resume_option(overrides)
    bundle_run("training", overrides, pictures=True)


def evaluate(**overrides) -> None:
    """Evaluate ./models/model.pt on whole labelled volumes (= monai.bundle run evaluating with inference.json +
    evaluate.json): per case, of WT, TC, ET, the legacy BraTS Dice and HD95 and the BraTS 2023+ challenge metrics
    of brats-evaluation (lesion-wise DSC/HD95/NSD, lesion TP/FP/FN and F1, global DSC/HD95/NSD) in
    ./eval/metrics.csv, mean/median/std in ./eval/summary.json, the segmentations, Dice box plots
    ./eval/dice_boxplot.png and one overlay per case in ./eval/overlays/ (--overlays False: none).

    Overrides: --dataset_dir DIR (every labelled case) or --datalist FILE with --datalist_split validation,
    --output_dir DIR, --ckpt_path FILE, --threshold 0.5, --et_min_voxels N, --flip_tta True, --overwrite True
    (replace an earlier evaluation's files in output_dir; without it an existing metrics.csv stops the run),
    --grid_modality auto (the modality whose grid the others are resampled onto and labels lie on: T1CE where read),
    --challenge auto (the brats-evaluation config: gli when installed; gli, ped, mets, MenPre, GoAT, or none).

    Example:
        axunet evaluate --dataset_dir /data/BraTS2021 --datalist datalist.json --output_dir eval
    """
    bundle_run("evaluating", overrides, pictures=True)
    # inference.json's default output_dir is <bundle_root>/eval
    bundle_root = Path(overrides.get("bundle_root", DEFAULT_BUNDLE_ROOT))
    output_dir = Path(overrides.get("output_dir", bundle_root / outputs.EVAL_DIR))
    print(
        f"per-case scores: {output_dir / outputs.METRICS_CSV}; summary: {output_dir / outputs.SUMMARY_JSON}; "
        f"box plot: {output_dir / outputs.DICE_BOXPLOT_PNG}; overlays: {output_dir / outputs.OVERLAYS_DIR}"
    )


def infer(report: bool = False, **overrides) -> None:
    """Segment every case of a folder (BraTS, Decathlon Task01, multi-channel NIfTI files; = monai.bundle run
    inference with configs/inference.json): one <case_id>_seg.nii.gz label map per case, on the input's grid (the
    grid of --grid_modality, T1CE by default, where the modalities lie on several: the others are resampled), in the
    case's own dataset's labels (BraTS 2021 names 0/1/2/4, 2023+ names 0/1/2/3, Decathlon its dataset.json's;
    --label_convention brats2021|brats2023|brats2024|msd for one). Cases already segmented are skipped unless
    --overwrite True.

    Overrides: --dataset_dir DIR, --output_dir DIR (default ./predictions), --output_ext .nii.gz (or .nii, .nrrd for
    3D Slicer, .mha), --ckpt_path FILE (default ./models/model.pt), --threshold 0.5, --et_min_voxels N (ET components
    smaller than N voxels become necrosis), --flip_tta True.

    Args:
        report: after inference, write each segmented case's one-page report (as axunet report) into output_dir:
            <case_id>_report.png and .pdf.

    Example:
        axunet infer --dataset_dir /data/new_cases --output_dir segs
    """
    bundle_run("inference", overrides)
    if report:
        write_reports(overrides)


def write_reports(overrides: dict) -> None:
    """``infer --report True``: a report (:func:`.pictures.case_report_files`) per case of ``dataset_dir`` that has
    a NIfTI label map in ``output_dir``, beside it."""
    from ..data.cases import find_cases
    from .pictures import case_report_files

    config = read_config("inference.json", **overrides)
    output_dir = Path(config.get_parsed_content("output_dir"))
    ext = config.get_parsed_content("output_ext")
    if not ext.startswith(".nii"):
        raise ConfigurationError(f"--report True draws NIfTI label maps; --output_ext {ext} is not one")
    ckpt = weights_path(overrides)
    for case in find_cases(config.get_parsed_content("dataset_dir")):
        seg = outputs.segmentation_path(output_dir, case.case_id, ext)
        if seg.is_file():
            written = case_report_files(
                case,
                seg,
                output_dir / f"{case.case_id}{outputs.REPORT_SUFFIX}",
                str(ckpt) if ckpt.is_file() else None,
                convention=config.get_parsed_content("label_convention"),
            )
            print(f"wrote {written.png} and {written.pdf}")


def export(
    ckpt_path: str | None = None, output_dir: str | None = None, size: int | None = None, onnx: bool = True, **overrides
) -> None:
    """Export ./models/model.pt to TorchScript (MONAI's ckpt_export, by tracing: the timm encoder cannot be
    scripted) and ONNX; each is loaded back and compared with the eager network on the same input (max abs
    difference; refused above 1e-4, ExportMismatchError). The network is configs/inference.json's network_def, so
    the overrides it was trained with apply here too (e.g. --modalities "['t1','t1ce','t2','flair']" for a 4-channel
    model).

    Args:
        ckpt_path: plain state dict to export (default: ./models/model.pt).
        output_dir: where model.ts and model.onnx go (default: ./models).
        size: slice size of the example input (default: the weights' roi_size, from their model_settings.json,
            else 224).
        onnx: also write the ONNX model (needs the package's extra "export": onnx, onnxruntime, onnxscript).

    Example:
        axunet export --ckpt_path models/model.pt --output_dir models
    """
    import torch
    from monai.bundle import ckpt_export

    from ..export import export_onnx, require_onnx
    from ..weights import load_plain_weights
    from .exports import check_difference, max_abs_diff_onnx, max_abs_diff_torchscript

    if onnx:
        require_onnx()
    bundle_root = Path(overrides.get("bundle_root", DEFAULT_BUNDLE_ROOT))
    ckpt = weights_path({**overrides, "ckpt_path": ckpt_path})
    out = Path(output_dir or bundle_root / outputs.MODELS_DIR)
    if not ckpt.is_file():
        raise ConfigurationError(f"no weights at {ckpt}: train first, or give --ckpt_path")
    configs = config_dir(overrides.get("bundle_root"))
    overrides = {**overrides, "ckpt_path": str(ckpt)}
    check_trained_settings(overrides)
    config = read_config("inference.json", **overrides)
    channels = len(config.get_parsed_content("modalities"))
    trained_size = (read_model_settings(ckpt) or {}).get("roi_size", [EXPORT_SLICE_SIZE] * 2)
    if size is not None and [size, size] != list(trained_size) and read_model_settings(ckpt) is not None:
        raise ConfigurationError(f"--size {size} contradicts the weights' roi_size {trained_size}: leave --size out")
    height, width = (size, size) if size is not None else trained_size
    out.mkdir(parents=True, exist_ok=True)
    ts_path = out / outputs.TORCHSCRIPT
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(ckpt),
        meta_file=str(configs / "metadata.json"),
        config_file=str(configs / "inference.json"),
        use_trace=True,
        input_shape=[1, channels, height, width],
        **overrides,
    )
    net = config.get_parsed_content("network_def").eval()
    net.load_state_dict(load_plain_weights(ckpt, map_location="cpu"))
    x = torch.randn(1, channels, height, width)
    check_difference("TorchScript", ts_path, max_abs_diff_torchscript(net, ts_path, x))
    if onnx:
        onnx_path = export_onnx(net, x, out / outputs.ONNX)
        check_difference("ONNX", onnx_path, max_abs_diff_onnx(net, onnx_path, x))
