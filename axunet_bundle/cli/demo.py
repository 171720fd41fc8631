# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``axunet demo``: the whole product on generated BraTS-like data, no download, minutes on a CPU."""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from .. import outputs
from .pictures import overlay
from .workflows import bundle_run, evaluate, infer

__all__ = ["demo"]

# The demo: small generated cases and a short, fast-learning schedule so that it finishes in about 5 minutes on
# 2 cores. 64 x 64 slices cost 0.44x the FLOPs of 96 x 96 and the generated tumours are still learned (validation
# WT Dice >= 0.8 after 12 epochs at lr 3e-3); the paper's network is unchanged.
DEMO_CASES = 10
DEMO_SIZE = 64
DEMO_DEPTH = 32
DEMO_EPOCHS = 12
DEMO_BATCH = 16
DEMO_SLICES_PER_VOLUME = 16
DEMO_LEARNING_RATE = 3e-3
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

    Example:
        axunet demo --output_dir demo_output --epochs 12
    """
    from ..evaluation import LEGACY_DICE
    from ..evaluation.challenge import LESIONWISE_DSC
    from ..synthetic import write_synthetic_dataset
    from .data import write_datalist

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
    bundle_run(
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
        pictures=True,
    )
    weights = str(out / outputs.MODELS_DIR / outputs.WEIGHTS)
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
    seg = outputs.segmentation_path(out / "predictions", held_out.name)
    overlay(str(held_out), seg=str(seg), output=str(out / "overlay.png"))
    curves = out / outputs.RUNS_DIR / outputs.CURVES_PNG  # drawn at the training's end (TrainingCurvesWriter)

    evaluation = out / outputs.EVAL_DIR
    summary = json.loads((evaluation / outputs.SUMMARY_JSON).read_text())
    dice = {region: stats["mean"] for region, stats in summary[LEGACY_DICE].items()}
    lesions = summary.get(LESIONWISE_DSC, {})
    minutes = (time.perf_counter() - started) / 60
    print()
    print(
        f"demo finished in {minutes:.1f} min; validation Dice (whole volumes, {summary['n_cases']} cases): "
        + ", ".join(f"{r} {v:.3f}" for r, v in dice.items())
        + (
            "; lesion-wise DSC " + ", ".join(f"{r} {v['mean']:.3f}" for r, v in lesions.items() if v["n"])
            if lesions
            else ""
        )
    )
    print(f"  weights          {weights}")
    print(f"  per-case scores  {evaluation / outputs.METRICS_CSV}  (box plot: {evaluation / outputs.DICE_BOXPLOT_PNG})")
    print(f"  case overlays    {evaluation / outputs.OVERLAYS_DIR}")
    print(f"  segmentation     {seg}")
    print(f"  overlay picture  {out / 'overlay.png'}")
    print(f"  training curves  {curves}  (TensorBoard: tensorboard --logdir {out / 'runs'})")
    print("These are generated cases: the numbers say the pipeline works, not how AXUNet does on BraTS.")
