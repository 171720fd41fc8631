# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The ``axunet`` command line (``python -m axunet_bundle``), built with fire: one function per command."""

from __future__ import annotations

import json
import logging
import shutil
import sys
import time
from pathlib import Path

import fire

__all__ = ["main", "BUNDLE_ROOT"]

#: the repository root is the MONAI bundle (configs/, models/, docs/)
BUNDLE_ROOT = Path(__file__).resolve().parents[1]

DEMO_SLICE_SIZE = 224
# The demo: small generated cases and a short, fast-learning schedule so that it finishes in minutes on 2 cores.
DEMO_CASES = 10
DEMO_SIZE = 96
DEMO_DEPTH = 32
DEMO_EPOCHS = 15
DEMO_BATCH = 16
DEMO_SLICES_PER_VOLUME = 16
DEMO_LEARNING_RATE = 1e-3
DEMO_VAL_INTERVAL = 3
DEMO_VAL_FRACTION = 0.2
DEMO_WORKERS = 0


def demo(
    output_dir: str = "demo_output",
    cases: int = DEMO_CASES,
    size: int = DEMO_SIZE,
    depth: int = DEMO_DEPTH,
    epochs: int = DEMO_EPOCHS,
    seed: int = 0,
) -> None:
    """The whole product on generated BraTS-like data, no download, a few minutes on a CPU: generate cases, train
    AXUNet with the bundle's training workflow, evaluate it on whole validation volumes, segment a held-out case,
    and draw the overlay (the training draws its curves into runs/).

    Args:
        output_dir: where everything goes (data/, models/, runs/, eval/, predictions/, overlay.png).
        cases: generated training + validation cases.
        size: in-plane size of the generated cases and of the network input.
        depth: axial slices per generated case.
        epochs: training epochs.
        seed: seed of the generated data and of training.
    """
    from .data.datalist import write_datalist
    from .data.synth import write_synthetic_dataset
    from .handlers import CURVES_PNG, METRICS_CSV, SUMMARY_JSON
    from .visualize import DICE_BOXPLOT_PNG, OVERLAYS_DIR

    started = time.perf_counter()
    out = Path(output_dir).resolve()
    data, holdout = out / "data", out / "holdout"
    shape = (size, size, depth)
    print(f"[1/5] generating {cases} BraTS-like cases of {size}x{size}x{depth} (+1 held out) in {data}")
    generated = write_synthetic_dataset(data, n=cases + 1, seed=seed, shape=shape)
    holdout.mkdir(parents=True, exist_ok=True)
    held_out = holdout / generated[-1].name
    if held_out.exists():  # a re-run: the case was generated and moved before
        shutil.rmtree(generated[-1])
    else:
        generated[-1].rename(held_out)
    datalist = write_datalist(data, out / "datalist.json", val_fraction=DEMO_VAL_FRACTION, seed=seed)
    common = {"dataset_dir": str(data), "roi_size": [size, size], "num_workers": DEMO_WORKERS}
    n_train, n_val = len(datalist["training"]), len(datalist["validation"])
    print(f"[2/5] training {epochs} epochs on {n_train} cases, validating on {n_val} whole volumes")
    _bundle_run(
        "training",
        {
            **common,
            "datalist": str(out / "datalist.json"),
            "ckpt_dir": str(out / "models"),
            "output_dir": str(out / "runs"),
            "epochs": epochs,
            "batch_size": DEMO_BATCH,
            "slices_per_volume": DEMO_SLICES_PER_VOLUME,
            "learning_rate": DEMO_LEARNING_RATE,
            # validate at the last epoch too: the best validated model is the one evaluated
            "val_interval": DEMO_VAL_INTERVAL if epochs % DEMO_VAL_INTERVAL == 0 else 1,
            "pretrained": False,
            "seed": seed,
        },
    )
    weights = str(out / "models" / "model.pt")
    print("[3/5] evaluating the best model on the whole validation volumes")
    evaluate(
        **common, datalist=str(out / "datalist.json"), ckpt_path=weights, output_dir=str(out / "eval"), overwrite=True
    )
    print(f"[4/5] segmenting the held-out case {held_out.name}")
    infer(
        **{**common, "dataset_dir": str(holdout)},
        ckpt_path=weights,
        output_dir=str(out / "predictions"),
        overwrite=True,
    )
    print("[5/5] drawing the pictures")
    seg = out / "predictions" / f"{held_out.name}_seg.nii.gz"
    overlay(str(held_out), seg=str(seg), output=str(out / "overlay.png"))
    curves = out / "runs" / CURVES_PNG  # drawn by the training itself (TrainingCurvesWriter)

    summary = json.loads((out / "eval" / SUMMARY_JSON).read_text())
    dice = {region: summary["dice"][region]["mean"] for region in summary["dice"]}
    minutes = (time.perf_counter() - started) / 60
    print()
    print(
        f"demo finished in {minutes:.1f} min; validation Dice (whole volumes, {summary['n_cases']} cases): "
        + ", ".join(f"{r} {v:.3f}" for r, v in dice.items())
    )
    print(f"  weights          {weights}")
    print(f"  per-case scores  {out / 'eval' / METRICS_CSV}  (box plot: {out / 'eval' / DICE_BOXPLOT_PNG})")
    print(f"  case overlays    {out / 'eval' / OVERLAYS_DIR}")
    print(f"  segmentation     {seg}")
    print(f"  overlay picture  {out / 'overlay.png'}")
    print(f"  training curves  {curves}  (TensorBoard: tensorboard --logdir {out / 'runs'})")
    print("These are generated cases: the numbers say the pipeline works, not how AXUNet does on BraTS.")


def network(batch: int = 2, size: int = DEMO_SLICE_SIZE) -> None:
    """Build the paper's AXUNet and run it on random slices; print its size and speed.

    Args:
        batch: slices per forward pass.
        size: slice height and width.
    """
    import torch

    from .networks import AXUNet

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


def synth(output_dir: str, n: int = 4, seed: int = 0, layout: str = "2021", size: int = 240, depth: int = 155) -> None:
    """Write N generated BraTS-like cases (4 modalities + seg, gzipped NIfTI) in the BraTS 2021 or 2023 layout.

    Args:
        output_dir: folder to write the case folders into.
        n: number of cases.
        seed: cases are deterministic per seed.
        layout: "2021" (t1/t1ce/t2/flair, labels 1/2/4) or "2023" (t1n/t1c/t2w/t2f, labels 1/2/3).
        size: in-plane size (BraTS: 240).
        depth: number of axial slices (BraTS: 155).
    """
    from .data.synth import write_synthetic_dataset

    paths = write_synthetic_dataset(output_dir, n=n, seed=seed, layout=str(layout), shape=(size, size, depth))
    print(f"wrote {len(paths)} cases to {output_dir}")


def check(dataset_dir: str, modalities: str = "t1,t1ce,t2,flair") -> None:
    """Check every case of a BraTS folder; one line per problem (case, file, reason); exit 0 only when clean.

    Args:
        dataset_dir: the BraTS folder.
        modalities: comma-separated modalities that must be present.
    """
    from .data.integrity import run_check

    sys.exit(run_check(dataset_dir, modalities=_split(modalities)))


def datalist(
    dataset_dir: str,
    output: str = "datalist.json",
    folds: int = 5,
    fold: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    modalities: str = "t1ce,t2,flair",
) -> None:
    """Write a MONAI decathlon-style datalist (training / validation / testing), split by patient, seeded.

    Args:
        dataset_dir: the BraTS folder.
        output: JSON file to write.
        folds: number of cross-validation folds.
        fold: which fold is the validation set.
        val_fraction: a random validation fraction instead of folds.
        test_fraction: fraction of labelled patients held out for testing.
        seed: split seed.
        modalities: comma-separated image channels, in order.
    """
    from .data.datalist import write_datalist

    result = write_datalist(
        dataset_dir,
        output,
        modalities=_split(modalities),
        folds=folds,
        fold=fold,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
    )
    sizes = ", ".join(f"{len(v)} {k}" for k, v in result.items())
    print(f"wrote {output}: {sizes}")


def prepare(dataset_dir: str, output: str, workers: int = 2, config_file: str | None = None, **overrides) -> None:
    """Preprocess every labelled case once into a slice cache for fast training (resumable, both cores).

    Uses the ``volume_transforms`` of the bundle's ``configs/train.json`` (override its values with
    ``--roi_size "[224,224]"``, ``--modalities "['t1ce','t2','flair']"`` ...). Train from it with
    ``--slice_cache_dir OUTPUT``.

    Args:
        dataset_dir: the BraTS folder.
        output: the cache folder.
        workers: parallel processes.
        config_file: the training config (default: the bundle's configs/train.json).
    """
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from .data.cases import CaseError, find_cases
    from .data.slices import prepare_slice_cache

    parser = ConfigParser()
    parser.read_config(config_file or BUNDLE_ROOT / "configs" / "train.json")
    parser.update({"dataset_dir": dataset_dir, **overrides})
    modalities = parser.get_parsed_content("modalities")
    items, incomplete = [], []
    for case in (c for c in find_cases(dataset_dir) if c.label is not None):
        try:
            items.append({"image": case.image_files(modalities), "label": str(case.label), "case_id": case.case_id})
        except CaseError as err:  # a missing modality: reported with the other problems, the rest is prepared
            incomplete.append(str(err))
    report = prepare_slice_cache(
        items,
        output,
        transform=Compose(parser.get_parsed_content("volume_transforms")),
        params=parser.get_parsed_content("preprocessing_params"),
        workers=workers,
    )
    problems = incomplete + list(report.problems)
    print(f"{len(report.prepared)} cases prepared, {len(report.skipped)} already cached, {len(problems)} failed")
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


CONFIG_DIR = BUNDLE_ROOT / "configs"
#: the config files of each workflow, in merge order (later files override earlier ones)
WORKFLOW_CONFIGS = {
    "training": ["train.json"],
    "evaluating": ["inference.json", "evaluate.json"],
    "inference": ["inference.json"],
}


def _bundle_run(workflow: str, overrides: dict) -> None:
    """``python -m monai.bundle run <workflow>`` with the bundle's configs, metadata and logging; ``overrides`` are the
    bundle ids to change (``epochs=2``, ``dataset_dir=...``). Relative paths are the bundle root's by default."""
    from monai.bundle import run

    files = [str(CONFIG_DIR / name) for name in WORKFLOW_CONFIGS[workflow]]
    overrides = {"bundle_root": str(BUNDLE_ROOT), **overrides}
    run(
        run_id=workflow,
        config_file=files,
        meta_file=str(CONFIG_DIR / "metadata.json"),
        logging_file=str(CONFIG_DIR / "logging.conf"),
        **overrides,
    )


def train(**overrides) -> None:
    """Train AXUNet with the bundle's configs/train.json (= python -m monai.bundle run training ...).

    Any bundle id can be overridden: --dataset_dir DIR (a BraTS folder), --datalist FILE, --epochs 40,
    --batch_size 64, --learning_rate 1e-4, --roi_size "[224,224]", --modalities "['t1ce','t2','flair']",
    --slice_cache_dir DIR (from `axunet prepare`), --pretrained False or --pretrained_path FILE (ImageNet weights),
    --resume True, --device "$torch.device('cpu')", --amp False. Weights go to models/model.pt (best validation
    Dice) and models/checkpoint_epoch=N.pt (resumable); TensorBoard logs (loss, validation Dice, a validation case's
    overlay image per validation) to runs/, and the loss/Dice curves to runs/training_curves.png at the end.
    Defaults (bundle_root = the bundle's folder) write inside the bundle: --ckpt_dir / --output_dir change that.
    """
    _bundle_run("training", overrides)


def evaluate(**overrides) -> None:
    """Evaluate models/model.pt on whole labelled volumes (= monai.bundle run evaluating with inference.json +
    evaluate.json): per-case Dice and HD95 of WT, TC, ET in eval/metrics.csv, mean/median/std in eval/summary.json,
    the segmentations, a Dice box plot eval/dice_boxplot.png and one overlay per case in eval/overlays/
    (--overlays False: none).

    Overrides: --dataset_dir DIR (every labelled case) or --datalist FILE with --datalist_split validation,
    --output_dir DIR, --ckpt_path FILE, --threshold 0.5, --et_min_voxels N, --flip_tta True, --overwrite True
    (replace an earlier evaluation's files in output_dir; without it an existing metrics.csv stops the run).
    """
    from .handlers import METRICS_CSV, SUMMARY_JSON
    from .visualize import DICE_BOXPLOT_PNG, OVERLAYS_DIR

    _bundle_run("evaluating", overrides)
    # inference.json's default output_dir is bundle_root + '/eval'
    output_dir = Path(overrides.get("output_dir", Path(overrides.get("bundle_root", BUNDLE_ROOT)) / "eval"))
    print(
        f"per-case scores: {output_dir / METRICS_CSV}; summary: {output_dir / SUMMARY_JSON}; "
        f"box plot: {output_dir / DICE_BOXPLOT_PNG}; overlays: {output_dir / OVERLAYS_DIR}"
    )


def infer(**overrides) -> None:
    """Segment every case of a BraTS folder (= monai.bundle run inference with configs/inference.json): one
    <case_id>_seg.nii.gz label map per case, on the input's grid, labels 0/1/2/4 (brats2021; --label_convention
    brats2023 writes 0/1/2/3). Cases already segmented are skipped unless --overwrite True.

    Overrides: --dataset_dir DIR, --output_dir DIR (default eval/), --ckpt_path FILE, --threshold 0.5,
    --et_min_voxels N (ET components smaller than N voxels become necrosis), --flip_tta True.
    """
    _bundle_run("inference", overrides)


def overlay(
    case_dir: str,
    seg: str | None = None,
    output: str | None = None,
    modalities: str = "t1ce,t2,flair",
    convention: str = "brats2021",
) -> None:
    """Draw a case's modalities with the WT/TC/ET contours of a segmentation (dashed) and of the case's own
    label when it has one (solid), on the axial, coronal and sagittal slices with the most tumour.

    Args:
        case_dir: folder of one BraTS case (its modality files, and optionally its seg).
        seg: the predicted label map (default: the case's own label only).
        output: PNG to write (default: <case_id>_overlay.png in the current folder).
        modalities: comma-separated modalities to show, in order.
        convention: label convention of the files ("brats2021" 1/2/4 or "brats2023" 1/2/3).
    """
    from .visualize import overlay_files

    case = _one_case(case_dir)
    mods = _split(modalities)
    if seg is None and case.label is None:
        raise SystemExit(f"{case.case_id}: no --seg given and the case has no label to draw")
    png = overlay_files(
        case.image_files(mods),
        seg if seg is not None else case.label,
        output or f"{case.case_id}_overlay.png",
        label_file=case.label if seg is not None else None,
        convention=convention,
        modality_names=[m.upper() for m in mods],
    )
    print(f"wrote {png}")


def attention(
    case_dir: str,
    ckpt_path: str | None = None,
    output: str | None = None,
    modalities: str = "t1ce,t2,flair",
    size: int = DEMO_SLICE_SIZE,
    slice_index: int | None = None,
) -> None:
    """Draw what AXUNet's attention looks at for one case: a PNG with, per attention level (1 = fine ... 4 = coarse),
    the input slice, the PAM (position attention) activity and the CAM (channel attention) activity. The case is
    preprocessed as for training (RAS, brain crop, z-score, SIZE x SIZE in-plane) and shown on the axial slice with
    the most tumour (of its label; the middle slice without one).

    Args:
        case_dir: folder of one BraTS case.
        ckpt_path: trained weights (plain state dict); default models/model.pt of the bundle, or untrained (random)
            weights with a warning when that does not exist.
        output: PNG to write (default: <case_id>_attention.png in the current folder).
        modalities: comma-separated network input channels, in order (as the weights were trained).
        size: in-plane size of the network input (the training's roi_size).
        slice_index: axial slice to show (in the preprocessed volume) instead of the one with the most tumour.
    """
    from monai.bundle import ConfigParser
    from monai.transforms import Compose

    from .networks import AXUNet
    from .visualize import attention_maps, most_tumour_slices
    from .weights import load_plain_weights

    case = _one_case(case_dir)
    mods = _split(modalities)
    default_ckpt = BUNDLE_ROOT / "models" / "model.pt"
    ckpt = Path(ckpt_path) if ckpt_path else default_ckpt if default_ckpt.is_file() else None
    net = AXUNet(in_channels=len(mods)).eval()
    if ckpt is None:
        logging.getLogger(__name__).warning(
            "no weights at %s and no --ckpt_path: showing an UNTRAINED network (random weights)", default_ckpt
        )
    elif not ckpt.is_file():
        raise SystemExit(f"no weights at {ckpt}")
    else:
        net.load_state_dict(load_plain_weights(ckpt, map_location="cpu"))

    # the training's own preprocessing, so that the network sees what it was trained on
    parser = ConfigParser()
    parser.read_config(CONFIG_DIR / "train.json")
    parser.update({"modalities": mods, "roi_size": [size, size], "label_convention": case.convention})
    item = {"image": case.image_files(mods), "case_id": case.case_id}
    if case.label is not None:
        item["label"] = str(case.label)
    data = Compose(parser.get_parsed_content("volume_transforms"))(item)
    image = data["image"]
    if slice_index is None:
        position = most_tumour_slices(data["label"][0]) if "label" in data else None
        slice_index = position[2] if position is not None else image.shape[-1] // 2
    where = "most tumour" if "label" in data else "middle"
    weights = ckpt.name if ckpt is not None else "untrained"
    png = attention_maps(
        net,
        image[..., slice_index],
        output or f"{case.case_id}_attention.png",
        modality_names=[m.upper() for m in mods],
        show_prediction=ckpt is not None,
        title=f"{case.case_id}, axial slice {slice_index} ({where}), weights: {weights}",
    )
    print(f"wrote {png}")


def export(
    ckpt_path: str | None = None,
    output_dir: str | None = None,
    size: int = DEMO_SLICE_SIZE,
    onnx: bool = True,
    **overrides,
) -> None:
    """Export models/model.pt to TorchScript (MONAI's ckpt_export, by tracing: the timm encoder cannot be scripted)
    and ONNX; each is loaded back and compared with the eager network on the same input (max abs difference).
    The network is configs/inference.json's network_def, so the overrides it was trained with apply here too
    (e.g. --modalities "['t1','t1ce','t2','flair']" for a 4-channel model).

    Args:
        ckpt_path: plain state dict to export (default: models/model.pt).
        output_dir: where model.ts and model.onnx go (default: models/).
        size: slice size of the example input.
        onnx: also write the ONNX model.
    """
    import torch
    from monai.bundle import ConfigParser, ckpt_export

    from .export import export_onnx, max_abs_diff_onnx, max_abs_diff_torchscript
    from .weights import load_plain_weights

    ckpt = Path(ckpt_path or BUNDLE_ROOT / "models" / "model.pt")
    out = Path(output_dir or BUNDLE_ROOT / "models")
    if not ckpt.is_file():
        raise SystemExit(f"no weights at {ckpt}: train first, or give --ckpt_path")
    overrides = {"bundle_root": str(BUNDLE_ROOT), **overrides}
    config = ConfigParser()
    config.read_config(str(CONFIG_DIR / "inference.json"))
    config.update(overrides)
    channels = len(config.get_parsed_content("modalities"))
    out.mkdir(parents=True, exist_ok=True)
    ts_path = out / "model.ts"
    ckpt_export(
        net_id="network_def",
        filepath=str(ts_path),
        ckpt_file=str(ckpt),
        meta_file=str(CONFIG_DIR / "metadata.json"),
        config_file=str(CONFIG_DIR / "inference.json"),
        use_trace=True,
        input_shape=[1, channels, size, size],
        **overrides,
    )
    net = config.get_parsed_content("network_def").eval()
    net.load_state_dict(load_plain_weights(ckpt, map_location="cpu"))
    x = torch.randn(1, channels, size, size)
    print(f"TorchScript {ts_path}: max |eager - exported| = {max_abs_diff_torchscript(net, ts_path, x):.2e}")
    if onnx:
        onnx_path = export_onnx(net, x, out / "model.onnx")
        print(f"ONNX {onnx_path}: max |eager - exported| = {max_abs_diff_onnx(net, onnx_path, x):.2e}")


def bench(
    device: str = "cpu",
    cases: int | None = None,
    threads: int | None = None,
    quick: bool = False,
    backends: bool = False,
    networks: bool = False,
    output: str = "docs/benchmarks.md",
) -> None:
    """Benchmark whole-case inference (AXUNet vs the model zoo's SegResNet, same cases, same process settings),
    achieved FLOP/s against a matmul, training and data-loading slices/s, PAM softplus vs softmax, peak memory, on
    generated BraTS-size cases; print the table and write it to docs/benchmarks.md.

    Args:
        device: "cpu" or "cuda" (bf16 autocast; also times training at batch 64).
        cases: cases timed per model (default 2; with --quick 1).
        threads: torch / ONNX Runtime threads (default: torch's).
        quick: tiny sizes, a smoke test whose numbers mean nothing.
        backends: also time each AXUNet backend and slice batch.
        networks: also measure the paper's comparison networks (parameters, GFLOP and ms per slice).
        output: Markdown file to write ("" for none).
    """
    from .benchmark import main as benchmark_main

    argv = ["--device", device, "--output", output]
    argv += ["--cases", str(cases)] if cases is not None else []
    argv += ["--threads", str(threads)] if threads is not None else []
    argv += ["--quick"] if quick else []
    argv += ["--backends"] if backends else []
    argv += ["--networks"] if networks else []
    benchmark_main(argv)


def zoo_check(
    schema: str | None = None,
    model_dir: str | None = None,
    work_dir: str | None = None,
    checks: str | None = None,
    strict: bool = False,
    verbose: bool = False,
) -> None:
    """Run the MONAI model zoo's CI checks on this bundle with MONAI's own functions (required files, version in
    changelog, metadata schema, network input/output, TorchScript and ONNX export parity, JSON format, file sizes,
    code format); one PASS/FAIL line per check, exit 1 on any failure. Untrained weights are used when
    models/model.pt does not exist (nothing is written into models/).

    Args:
        schema: local copy of MONAI's metadata schema (default: ../shared/monai/ beside the bundle).
        model_dir: folder of model.pt (default: models/).
        work_dir: folder for exports (default: a temporary one).
        checks: comma-separated subset of the checks.
        strict: count warnings (what only the zoo's own CI can settle, e.g. the weights' download URL) as failures.
        verbose: print MONAI's own log lines too.
    """
    from .zoo import zoo_check as run_zoo_check

    sys.exit(
        run_zoo_check(
            str(BUNDLE_ROOT),
            schema=schema,
            model_dir=model_dir,
            work_dir=work_dir,
            checks=checks,
            strict=strict,
            verbose=verbose,
        )
    )


def _one_case(case_dir: str):
    """The one BraTS case in `case_dir`, or exit with a message."""
    from .data.cases import find_cases

    cases = find_cases(case_dir)
    if len(cases) != 1:
        raise SystemExit(f"{case_dir}: expected the folder of one case, found {len(cases)} cases")
    return cases[0]


def _split(values: str | tuple | list) -> list[str]:
    return [v.strip() for v in values.split(",")] if isinstance(values, str) else list(values)


COMMANDS = {
    "demo": demo,
    "network": network,
    "synth": synth,
    "check": check,
    "datalist": datalist,
    "prepare": prepare,
    "train": train,
    "evaluate": evaluate,
    "infer": infer,
    "export": export,
    "bench": bench,
    "overlay": overlay,
    "attention": attention,
    "zoo-check": zoo_check,
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fire.Fire(COMMANDS, name="axunet")
