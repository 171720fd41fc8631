"""The GPU check (scripts/gpu_check.sh): its CPU dry run end to end, its one line without CUDA, and its parts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT
from ignite.engine import Engine

from scripts.gpu_check import REGIONS, IterationTimer, label_dice


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHON": sys.executable, "PYTHONPATH": str(BUNDLE_ROOT)}


@pytest.mark.slow
def test_dry_run_runs_every_step_and_writes_the_table(tmp_path):
    """The same script as on the GPU, at tiny sizes on the CPU: the bundle's training (single process and torchrun),
    inference on 3 whole cases and the float32 comparison all run, and the table holds every figure."""
    out = tmp_path / "out"
    run = subprocess.run(
        ["bash", str(BUNDLE_ROOT / "scripts" / "gpu_check.sh"), str(out), "--dry-run"],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    results = json.loads((out / "gpu_check.json").read_text())
    summary = results["summary"]
    for key in ("training slices/s", "torchrun slices/s", "loader slices/s", "later cases (s per case)"):
        assert summary[key] > 0, key
    assert 0 <= summary["training data wait share"] <= 1
    assert results["train"]["iterations"] == 1 and results["torchrun"]["iterations"] == 1
    assert len(results["infer"]["iteration_s"]) == 3  # 3 whole cases segmented
    assert "on cpu" in results["infer_cpu_float32"]["path"] and "float32" in results["infer_cpu_float32"]["path"]
    (dice,) = results["dice"].values()
    assert len(dice) == len(REGIONS) and all(0 <= d <= 1 for d in dice)
    table = (out / "gpu_check.md").read_text()
    for row in (
        "slices/s",
        "waited for data",
        "peak GPU memory",
        "s per later case",
        "40 epochs on BraTS 2021",
        "Dice",
    ):
        assert row in table, row
    assert {"train.log", "torchrun.log", "infer.log", "infer_cpu_float32.log"} <= {p.name for p in out.iterdir()}


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_without_cuda_it_says_so_in_one_line(tmp_path):
    run = subprocess.run(
        [sys.executable, str(BUNDLE_ROOT / "scripts" / "gpu_check.py"), str(tmp_path / "out")],
        env=_env(),
        capture_output=True,
        text=True,
    )
    assert run.returncode == 3
    assert run.stdout.count("\n") == 1 and "no CUDA device" in run.stdout and not run.stderr
    assert not (tmp_path / "out").exists()


def _labels(path, values: dict[int, tuple[slice, ...]]):
    label = np.zeros((8, 8, 4), dtype=np.uint8)
    for value, where in values.items():
        label[where] = value
    nib.save(nib.Nifti1Image(label, np.eye(4)), str(path))
    return path


def test_label_dice_compares_the_regions_of_two_label_maps(tmp_path):
    """WT = 1 + 2 + 4, TC = 1 + 4, ET = 4 (BraTS 2021 labels); a region empty in both agrees fully."""
    a = _labels(tmp_path / "a.nii.gz", {2: np.s_[0:4, :, 0], 1: np.s_[0:2, :, 1]})  # WT 48 voxels, TC 16
    b = _labels(tmp_path / "b.nii.gz", {2: np.s_[0:4, :, 0]})  # WT 32, TC none
    wt, tc, et = label_dice(a, b)
    assert wt == pytest.approx(2 * 32 / (48 + 32))
    assert tc == 0.0
    assert et == 1.0


def test_iteration_timer_skips_the_first_iterations_and_counts_the_wait_for_data(tmp_path):
    def slow_batches():
        for _ in range(4):
            time.sleep(0.05)
            yield 0

    output = tmp_path / "timer.json"
    engine = Engine(lambda engine, batch: None)
    IterationTimer(str(output), items_per_iteration=8, skip=1).attach(engine)
    engine.run(slow_batches(), max_epochs=1, epoch_length=4)
    result = json.loads(output.read_text())
    assert result["iterations"] == 3 and result["items"] == 24 and len(result["iteration_s"]) == 4
    assert 3 * 0.05 <= result["data_wait_s"] <= result["seconds"]
    assert result["data_wait_s"] / result["seconds"] > 0.5  # the waiting dominates these iterations
