"""The ``axunet`` command line on tiny generated data: each command runs and writes what it says."""

from __future__ import annotations

import csv
import json

import matplotlib.image
import nibabel as nib
import pytest
import torch
from tensorboard.backend.event_processing.event_accumulator import IMAGES, EventAccumulator

from axunet_bundle import AXUNet
from axunet_bundle.cli import COMMANDS, main
from axunet_bundle.cli.options import command_spec
from axunet_bundle.networks.axunet import ALL_LEVELS
from axunet_bundle.outputs import CURVES_PNG, VALIDATION_IMAGE_TAG
from axunet_bundle.visualize import ATTENTION_COLUMN_INCHES, ATTENTION_ROW_INCHES, ATTENTION_TITLE_INCHES, FIGURE_DPI


def axunet(*args: str):
    """Run ``axunet ARGS`` in this process, as the console script does."""
    return main([str(a) for a in args])


def test_every_command_has_help_text():
    for name in COMMANDS:
        spec = command_spec(name)
        assert len(spec.text.split()) > 8 and all(p.help for p in spec.params), name


def test_demo_runs_end_to_end_on_tiny_settings(tmp_path, capsys):
    out = tmp_path / "demo"
    axunet("demo", "--output_dir", out, "--cases", 4, "--size", 64, "--depth", 16, "--epochs", 1)
    printed = capsys.readouterr().out
    assert "validation Dice" in printed
    summary = json.loads((out / "eval" / "summary.json").read_text())
    assert set(summary["legacy_dice"]) == set(summary["lesionwise_dsc_mean"]) == {"WT", "TC", "ET"}
    seg = next((out / "predictions").glob("*_seg.nii.gz"))
    image = next((out / "holdout").glob("*/*_t1ce.nii.gz"))
    assert nib.load(seg).shape == nib.load(image).shape
    curves = out / "runs" / CURVES_PNG  # written by the training itself, not by the demo
    assert str(curves) in printed
    evaluated = [row["case_id"] for row in csv.DictReader(open(out / "eval" / "metrics.csv", newline=""))]
    case_overlays = [out / "eval" / "overlays" / f"{case_id}_overlay.png" for case_id in evaluated]
    for png in (out / "overlay.png", curves, out / "eval" / "dice_boxplot.png", *case_overlays):
        pixels = matplotlib.image.imread(png)
        assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100, png
    # the validation (at the last epoch) logged one case's axial overlay: 3 modalities of 64 x 64 at 2 px per voxel
    images = EventAccumulator(str(out / "runs"), size_guidance={IMAGES: 0})
    images.Reload()
    (image,) = images.Images(VALIDATION_IMAGE_TAG)
    assert image.step == 1 and (image.height, image.width) == (64 * 2, 3 * 64 * 2)


def test_attention_writes_pam_and_cam_per_level(tiny_dataset, tmp_path, capsys):
    case = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
    torch.manual_seed(0)
    torch.save(AXUNet().state_dict(), tmp_path / "model.pt")
    png = tmp_path / "attention.png"
    axunet("attention", case, "--ckpt_path", tmp_path / "model.pt", "--output", png, "--size", 64)
    assert str(png) in capsys.readouterr().out
    pixels = matplotlib.image.imread(png)
    expected = (
        round((len(ALL_LEVELS) * ATTENTION_ROW_INCHES + ATTENTION_TITLE_INCHES) * FIGURE_DPI),
        round(3 * ATTENTION_COLUMN_INCHES * FIGURE_DPI),
    )
    assert pixels.shape[:2] == expected
    with pytest.raises(SystemExit) as refused:
        axunet("attention", case, "--ckpt_path", tmp_path / "missing.pt", "--output", png, "--size", 64)
    assert refused.value.code == 2
    assert (
        capsys.readouterr().err.strip()
        == f"error: axunet attention --ckpt_path: {tmp_path / 'missing.pt'} does not exist"
    )


def test_synth_check_datalist(tmp_path, capsys):
    data = tmp_path / "data"
    axunet("synth", data, "--n", 3, "--size", 64, "--depth", 16)
    assert len(list(data.iterdir())) == 3
    with pytest.raises(SystemExit) as clean:
        axunet("check", data)
    assert clean.value.code == 0
    axunet("datalist", data, "--output", tmp_path / "datalist.json", "--folds", 3)
    datalist = json.loads((tmp_path / "datalist.json").read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == 3


def test_prepare_caches_the_good_cases_and_reports_the_incomplete_one(tmp_path, capsys):
    data, cache = tmp_path / "data", tmp_path / "cache"
    axunet("synth", data, "--n", 3, "--size", 64, "--depth", 16)
    incomplete = sorted(data.iterdir())[0]
    next(incomplete.glob("*_t2.nii.gz")).unlink()
    with pytest.raises(SystemExit) as done:
        axunet("prepare", data, cache, "--workers", 1, "--roi_size", "[64,64]")
    assert done.value.code == 1
    printed = capsys.readouterr().out
    assert "2 cases prepared, 0 already cached, 1 failed" in printed
    assert any(incomplete.name in line and "t2" in line for line in printed.splitlines())
    cached = sorted(p.name for p in cache.iterdir() if p.is_dir())
    assert cached == sorted(p.name for p in data.iterdir())[1:]
    assert all((cache / case_id / "image.npy").is_file() for case_id in cached)


def test_network_reports_size_and_output_shape(capsys):
    axunet("network", "--batch", 1, "--size", 64)
    printed = capsys.readouterr().out
    assert "M parameters" in printed and "-> logits (1, 3, 64, 64)" in printed


def test_overlay_draws_a_case_and_its_segmentation(tiny_dataset, tmp_path):
    case = sorted(p for p in tiny_dataset.iterdir() if p.is_dir())[0]
    label = next(case.glob("*_seg.nii.gz"))
    png = tmp_path / "overlay.png"
    axunet("overlay", case, "--seg", label, "--output", png)
    pixels = matplotlib.image.imread(png)
    assert pixels.ndim == 3 and min(pixels.shape[:2]) > 100


def test_export_writes_torchscript_and_onnx_that_match(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(AXUNet().state_dict(), tmp_path / "model.pt")
    axunet("export", "--ckpt_path", tmp_path / "model.pt", "--output_dir", tmp_path, "--size", 64)
    printed = capsys.readouterr().out
    assert (tmp_path / "model.ts").is_file() and (tmp_path / "model.onnx").is_file()
    diffs = [float(line.rsplit("=", 1)[1]) for line in printed.splitlines() if "max |eager - exported|" in line]
    assert len(diffs) == 2 and max(diffs) <= 1e-4


def test_export_refuses_an_export_that_differs_from_the_network(tmp_path, capsys, monkeypatch):
    """An exported file whose outputs are off (a tracing that took another branch, a broken runtime) is refused in
    one line, not printed as a number to be overlooked."""
    monkeypatch.setattr("axunet_bundle.cli.exports.max_abs_diff_torchscript", lambda *_: 0.5)
    torch.save(AXUNet().state_dict(), tmp_path / "model.pt")
    with pytest.raises(SystemExit) as refused:
        axunet(
            "export", "--ckpt_path", tmp_path / "model.pt", "--output_dir", tmp_path, "--size", 64, "--onnx", "False"
        )
    assert refused.value.code != 0
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"error: {tmp_path / 'model.ts'}: its outputs differ from the eager network's by 5.00e-01 (more than 0.0001): "
        "do not use it"
    )


def test_export_builds_the_configured_network(tmp_path, capsys):
    """A model trained with four modalities exports with four input channels (the bundle's network_def)."""
    torch.manual_seed(0)
    torch.save(AXUNet(in_channels=4).state_dict(), tmp_path / "model.pt")
    modalities = "['t1','t1ce','t2','flair']"
    axunet(
        "export",
        "--ckpt_path",
        tmp_path / "model.pt",
        "--output_dir",
        tmp_path,
        "--size",
        64,
        "--onnx",
        "False",
        "--modalities",
        modalities,
    )
    assert "max |eager - exported|" in capsys.readouterr().out
    traced = torch.jit.load(str(tmp_path / "model.ts"))
    assert traced(torch.randn(1, 4, 64, 64)).shape == (1, 3, 64, 64)


def test_option_ids_select_their_override_files_for_their_workflows():
    """--slice_cache_dir adds configs/slice_cache.json to a training (and stays: the file reads it); --flip_tta True
    adds configs/flip_tta.json to an evaluation or inference (and goes: the file is the option); elsewhere nothing."""
    import pytest

    from axunet_bundle.cli.workflows import option_configs
    from axunet_bundle.errors import ConfigurationError

    training = {"slice_cache_dir": "cache", "flip_tta": True}
    assert option_configs("training", training) == ["slice_cache.json"] and training == {"slice_cache_dir": "cache"}
    for workflow in ("evaluating", "inference"):
        overrides = {"flip_tta": True, "slice_cache_dir": "cache"}
        assert option_configs(workflow, overrides) == ["flip_tta.json"] and "flip_tta" not in overrides
    assert option_configs("inference", {"flip_tta": False}) == []
    with pytest.raises(ConfigurationError, match="flip_tta must be True or False"):
        option_configs("inference", {"flip_tta": "yes"})
