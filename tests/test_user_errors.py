# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""A user's mistake (a wrong path, argument, convention, a dataset too small for what was asked) ends in one line
and exit status 2, from every command and from ``python -m monai.bundle run``: never a traceback."""

from __future__ import annotations

import subprocess
import sys
import urllib.error
from pathlib import Path

import pytest
import torch
from conftest import BUNDLE_ROOT, CONFIGS

from axunet_bundle import AXUNet
from axunet_bundle.cli import main
from axunet_bundle.synthetic import write_synthetic_dataset

SHAPE = (64, 64, 16)
#: settings that keep a workflow that would run small
SMALL = ["--roi_size", "[64,64]", "--num_workers", "0"]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A folder of one labelled and one unlabelled case (too few for any split), a folder of unlabelled cases, and
    untrained weights."""
    root = tmp_path_factory.mktemp("errors")
    labelled = root / "one_labelled"
    write_synthetic_dataset(labelled, n=2, seed=0, shape=SHAPE, progress=False)
    (labelled / "BraTS2021_00001" / "BraTS2021_00001_seg.nii.gz").unlink()
    write_synthetic_dataset(root / "unlabelled", n=1, seed=1, shape=SHAPE, with_labels=False, progress=False)
    weights = root / "model.pt"
    torch.save(AXUNet().state_dict(), weights)
    return {"root": root, "labelled": labelled, "weights": weights}


def mistakes(d: dict) -> dict[str, tuple[list, str]]:
    """command line -> (arguments, what the one line must say)."""
    root, labelled, weights, missing = d["root"], d["labelled"], d["weights"], d["root"] / "nope"
    infer = ["infer", "--output_dir", root / "o", *SMALL]
    return {
        "check: a missing folder": (["check", missing], f"DATASET_DIR: {missing} does not exist"),
        "check: an unknown convention": (
            ["check", labelled, "--label_convention", "brats2020"],
            "unknown label convention",
        ),
        "check: an unknown modality": (["check", labelled, "--modalities", "t1ce,dwi"], "unknown modality 'dwi'"),
        "datalist: too few cases for the folds": (
            ["datalist", labelled, "--folds", 2],
            "too few labelled patients for 2-fold",
        ),
        "datalist: one fold": (["datalist", labelled, "--folds", 1], "--folds: got 1, expected an integer >= 2"),
        "datalist: a fold out of range": (["datalist", labelled, "--fold", 7], "fold must be an integer in [0, 4]"),
        "synth: an unknown layout": (["synth", root / "s", "--layout", "2019"], "layout must be one of"),
        "prepare: a missing folder": (["prepare", missing, root / "cache"], f"{missing} does not exist"),
        "train: a missing folder": (["train", "--dataset_dir", missing, *SMALL], "does not exist"),
        "train: too few cases": (["train", "--dataset_dir", labelled, "--pretrained", "False", *SMALL], "too few"),
        "infer: a missing folder": ([*infer, "--dataset_dir", missing, "--ckpt_path", weights], "does not exist"),
        "infer: missing weights": (
            [*infer, "--dataset_dir", labelled, "--ckpt_path", root / "none.pt"],
            f"--ckpt_path: {root / 'none.pt'} does not exist",
        ),
        "infer: an unknown convention": (
            [*infer, "--dataset_dir", labelled, "--label_convention", "brats2020", "--ckpt_path", weights],
            "unknown label convention 'brats2020'",
        ),
        "infer: an unknown backend": (
            [*infer, "--dataset_dir", labelled, "--inference_backend", "fast", "--ckpt_path", weights],
            "inference_backend must be one of",
        ),
        "evaluate: no labelled case": (
            [
                "evaluate",
                "--dataset_dir",
                root / "unlabelled",
                "--output_dir",
                root / "e",
                "--ckpt_path",
                weights,
                *SMALL,
            ],
            "no labelled cases",
        ),
        "export: missing weights": (["export", "--ckpt_path", root / "none.pt"], "none.pt does not exist"),
        "overlay: a folder of several cases": (["overlay", labelled], "expected the folder of one case, found 2"),
        "attention: missing weights": (
            ["attention", labelled / "BraTS2021_00000", "--ckpt_path", root / "none.pt"],
            "none.pt does not exist",
        ),
        "bundle: a name MONAI Label would not take": (["bundle", root / "b", "--name", "axunet"], "segmentation"),
        "network: a slice too small for the encoder": (
            ["network", "--size", 16],
            "--size: got 16, expected an integer >= 64",
        ),
        "demo: too few cases": (["demo", "--output_dir", root / "demo", "--cases", 1], "too few"),
    }


@pytest.mark.parametrize("name", sorted(mistakes(dict.fromkeys(("root", "labelled", "weights"), Path("/")))))
def test_every_command_ends_a_users_mistake_with_one_line(name, data, capsys):
    args, words = mistakes(data)[name]
    with pytest.raises(SystemExit) as exited:
        main([str(a) for a in args])
    captured = capsys.readouterr()
    assert exited.value.code == 2, captured.err[-2000:]
    assert "Traceback" not in captured.out + captured.err
    (line,) = [line for line in captured.err.splitlines() if line.strip()]
    assert line.startswith("error: ") and words in line, line


def test_training_without_the_imagenet_weights_offline_is_one_line(tiny_dataset, capsys, monkeypatch, tmp_path):
    """The first command of anyone without timm's hub: one line saying how to continue, not four tracebacks."""

    def offline(*args, **kwargs):
        raise urllib.error.URLError("no network")

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # no cached copy
    monkeypatch.setattr(torch.hub, "download_url_to_file", offline)
    with pytest.raises(SystemExit) as exited:
        main(["train", "--dataset_dir", str(tiny_dataset), "--folds", "2", "--bundle_root", str(tmp_path), *SMALL])
    captured = capsys.readouterr()
    assert exited.value.code == 2 and "Traceback" not in captured.out + captured.err
    (line,) = [line for line in captured.err.splitlines() if line.strip()]
    assert line.startswith("error: could not download the ImageNet weights") and "--pretrained_path" in line


def test_the_console_script_prints_one_line_in_a_fresh_process(data):
    result = subprocess.run(
        [sys.executable, "-m", "axunet_bundle", "datalist", str(data["labelled"]), "--folds", "2"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=BUNDLE_ROOT,
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.strip().splitlines()[-1].startswith("error: too few labelled patients for 2-fold")
    assert (CONFIGS / "train.json").is_file()
