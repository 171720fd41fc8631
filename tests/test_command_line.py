# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The ``axunet`` command line as a user meets it, in fresh processes: ``--help`` prints and runs nothing, and every
kind of mistake (an unknown option, a wrong type, a value out of range, a missing input, a resume that cannot be this
run's, settings that contradict the weights') is one line naming what is wrong, with exit status 2, before any
work."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys

import pytest
import torch
from conftest import BUNDLE_ROOT

from axunet_bundle import AXUNet
from axunet_bundle.cli.options import COMMANDS, UsageError, command_spec, parse_command
from axunet_bundle.outputs import MODEL_SETTINGS


def axunet(*args, cwd=None) -> subprocess.CompletedProcess:
    """``python -m axunet_bundle ARGS`` in a fresh process that imports this checkout."""
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    command = [sys.executable, "-m", "axunet_bundle", *map(str, args)]
    return subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=cwd or BUNDLE_ROOT, env=env)


def one_line(result: subprocess.CompletedProcess) -> str:
    """The one error line of a refused command (and nothing else on stderr)."""
    assert result.returncode == 2, result.stderr[-3000:]
    assert "Traceback" not in result.stdout + result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("error: "), line
    return line


@pytest.mark.parametrize("name", list(COMMANDS))
def test_help_prints_options_defaults_and_an_example_without_running_or_importing_torch(name, tmp_path):
    code = (
        "import sys\nfrom axunet_bundle.cli import main\n"
        f"try:\n    main([{name!r}, '--help'])\nexcept SystemExit as exit:\n    status = exit.code\n"
        "print('status', status, 'torch' in sys.modules, 'monai' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, env=env)
    assert result.stdout.splitlines()[-1] == "status 0 False False", result.stdout + result.stderr
    assert result.stdout.startswith(f"usage: axunet {name}")
    assert f"example:\n  axunet {name}" in result.stdout
    spec = command_spec(name)
    for param in spec.params:
        assert (param.name.upper() if param.positional else f"--{param.name} (") in result.stdout
    if spec.overrides:
        assert re.search(r"--num_workers (2|\(from\s+the\s+CPUs|\(0\s+on\s+the\s+CPU)", result.stdout)  # ids, defaults
    assert list(tmp_path.iterdir()) == []  # nothing written


def test_short_help_and_the_overview():
    assert axunet("synth", "-h").stdout == axunet("synth", "--help").stdout
    overview = axunet("--help")
    assert overview.returncode == 0 and all(f"  {name} " in overview.stdout for name in COMMANDS)


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    """Untrained weights of a 64 x 64, two-modality AXUNet with its settings beside them, and plain weights."""
    root = tmp_path_factory.mktemp("weights")
    (root / "trained").mkdir()
    torch.manual_seed(0)
    torch.save(AXUNet(in_channels=2).state_dict(), root / "trained" / "model.pt")
    settings = {"roi_size": [64, 64], "modalities": ["t1ce", "flair"], "network": AXUNet(in_channels=2).init_args}
    settings["network"]["_target_"] = "axunet_bundle.networks.axunet.AXUNet"
    (root / "trained" / MODEL_SETTINGS).write_text(json.dumps(settings))
    torch.save(AXUNet().state_dict(), root / "plain.pt")
    return root


def mistakes(tiny, weights, tmp) -> dict[str, tuple[list, str]]:
    """Each command family with several kinds of mistakes: arguments -> what the one line must say."""
    case = sorted(p for p in tiny.iterdir() if p.is_dir())[0]
    trained = weights / "trained" / "model.pt"
    return {
        # training: names, types, ranges, resume
        "train: a mistyped option": (["train", "--epoch", 1], "unknown option --epoch (did you mean --epochs?)"),
        "train: a word for a number": (["train", "--epochs", "two"], "--epochs: got 'two', expected an integer >= 1"),
        "train: one number for a slice size": (
            ["train", "--roi_size", 64],
            "--roi_size: got 64, expected two integers",
        ),
        "train: a ratio out of range": (["train", "--tumour_slice_ratio", 1.5], "--tumour_slice_ratio: got 1.5"),
        "train: a flag that is not a flag": (["train", "--amp", "maybe", "--pretrained", "yes"], "--pretrained: got"),
        "train: resume without a checkpoint": (
            ["train", "--resume", "True", "--dataset_dir", tiny, "--ckpt_dir", tmp / "empty"],
            "resume requested but no checkpoint_*.pt",
        ),
        "train: a missing dataset": (["train", "--dataset_dir", tmp / "nope"], f"{tmp / 'nope'} does not exist"),
        # data commands
        "synth: no output folder": (["synth"], "required: output_dir"),
        "synth: a negative count": (["synth", tmp / "s", "--n", -2], "--n: got -2, expected an integer >= 1"),
        "datalist: a fraction out of range": (["datalist", tiny, "--val_fraction", 2], "--val_fraction: got 2.0"),
        "check: an unknown option": (["check", tiny, "--modality", "t1ce"], "did you mean --modalities?"),
        "prepare: an unknown bundle id": (["prepare", tiny, tmp / "c", "--roi", "[64,64]"], "unknown option --roi"),
        # inference family
        "infer: a mistyped option": (["infer", "--datset_dir", tiny], "did you mean --dataset_dir?"),
        "infer: a threshold out of range": (["infer", "--threshold", 0], "--threshold: got 0"),
        "infer: a slice size unlike the weights'": (
            ["infer", "--dataset_dir", tiny, "--ckpt_path", trained, "--roi_size", "[224,224]"],
            "--roi_size [224, 224] contradicts the weights' roi_size [64, 64]",
        ),
        "evaluate: modalities unlike the weights'": (
            ["evaluate", "--dataset_dir", tiny, "--ckpt_path", trained, "--modalities", "['t1ce','t2','flair']"],
            "contradicts the weights' modalities",
        ),
        "evaluate: missing weights": (["evaluate", "--ckpt_path", tmp / "none.pt"], "none.pt does not exist"),
        "export: a word for a flag": (["export", "--onnx", "perhaps"], "--onnx: got 'perhaps', expected True or False"),
        "export: a size unlike the weights'": (["export", "--ckpt_path", trained, "--size", 96], "contradicts"),
        # pictures
        "overlay: a missing --seg": (["overlay", case, "--seg", tmp / "none.nii.gz"], "--seg: "),
        "attention: modalities unlike the weights'": (
            ["attention", case, "--ckpt_path", trained, "--modalities", "t1ce,t2,flair"],
            "--modalities t1ce,t2,flair contradicts the weights' modalities",
        ),
        "attention: weights of other modalities, without settings": (
            ["attention", case, "--ckpt_path", weights / "plain.pt", "--modalities", "t1ce,flair", "--size", 64],
            "do not fit AXUNet with 2 input channels",
        ),
        "network: a slice too small": (["network", "--size", 16], "--size: got 16, expected an integer >= 64"),
        # the others
        "compare: an unknown option": (["compare", tiny, "--epoch", 1], "did you mean --epochs?"),
        "score: a missing folder": (["score", tmp / "p", tiny], "does not exist"),
        "bundle: an unknown option": (["bundle", tmp / "b", "--weight", trained], "did you mean --weights?"),
        "an unknown command": (["trian"], "unknown command 'trian' (did you mean train?)"),
    }


@pytest.mark.parametrize("name", sorted(mistakes(*[BUNDLE_ROOT] * 3)))
def test_each_mistake_is_one_line_and_exit_status_2_before_any_work(name, tiny_dataset, weights, tmp_path):
    args, words = mistakes(tiny_dataset, weights, tmp_path)[name]
    line = one_line(axunet(*args, cwd=tmp_path))
    assert words in line, line
    assert not (tmp_path / "models").exists() and not (tmp_path / "runs").exists()


def documented_commands() -> list[tuple[str, str]]:
    """Every ``axunet ...`` / ``python -m axunet_bundle ...`` command line of the README and the model card (inline
    and in code blocks), but the command reference's patterns (``COMMAND``, ``[...]``, ``a|b``, ``...``)."""
    found = []
    for document in (BUNDLE_ROOT / "README.md", BUNDLE_ROOT / "docs" / "README.md"):
        text = document.read_text(encoding="utf-8").replace("\\\n", " ")
        spans = re.findall(r"`((?:axunet|python -m axunet_bundle) [^`]+)`", text)
        lines = [line.strip() for line in text.splitlines()]
        blocks = [line for line in lines if re.match(r"(axunet|python -m axunet_bundle) ", line)]
        for command in spans + blocks:
            command = command.split(" #")[0].strip()
            if not re.search(r"COMMAND|\[--|\||\.\.\.", command):
                found.append((document.name, command))
    return found


def test_the_documents_command_examples_parse_against_the_real_options():
    commands = documented_commands()
    assert len(commands) >= 15  # the tour, the ONNX inference, the comparison ... are all found
    for document, command in commands:
        words = shlex.split(command)
        words = words[1:] if words[0] == "axunet" else words[3:]
        if len(words) == 1 and any(p.positional for p in command_spec(words[0]).params):
            continue  # the command named in a sentence, not an example
        try:
            parse_command(command_spec(words[0]), words[1:], check_paths=False)
        except UsageError as err:
            raise AssertionError(f"{document}: {command}: {err}") from None


def test_onnx_export_then_inference_with_the_onnx_config_names_onnx_runtime(tiny_dataset, tmp_path):
    """One command exports, one documented command segments with the export, and the log names the backend."""
    from axunet_bundle.cli import main

    models = tmp_path / "models"
    models.mkdir()
    torch.manual_seed(0)
    torch.save(AXUNet().state_dict(), models / "model.pt")
    (models / MODEL_SETTINGS).write_text(json.dumps({"roi_size": [64, 64]}))
    main(["export", "--bundle_root", tmp_path])  # the weights' slice size: no --size
    assert (models / "model.onnx").is_file()
    onnx_configs = "['inference.json','inference_onnx.json']"
    result = axunet("infer", "--bundle_root", tmp_path, "--dataset_dir", tiny_dataset, "--config_file", onnx_configs)
    log = result.stdout + result.stderr
    assert result.returncode == 0 and "inference backend: ONNX Runtime, float32" in log, log[-3000:]
    assert sorted(p.name for p in (tmp_path / "predictions").iterdir()) == sorted(
        f"{p.name}_seg.nii.gz" for p in tiny_dataset.iterdir() if p.is_dir()
    )


@pytest.mark.parametrize("missing", ["onnx", "onnxruntime"])
def test_onnx_without_the_export_extra_is_one_line_naming_it(missing, weights, tmp_path, monkeypatch, capsys):
    from axunet_bundle.cli import main

    monkeypatch.setitem(sys.modules, missing, None)  # as if not installed: importlib finds no module
    with pytest.raises(SystemExit) as exited:
        main(["export", "--ckpt_path", weights / "plain.pt", "--output_dir", tmp_path, "--size", 64])
    (line,) = capsys.readouterr().err.strip().splitlines()
    assert exited.value.code == 2 and missing in line and "axunet_bundle[export]" in line, line
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "workflow, configs, option, words",
    [
        ("training", "train.json", ["--epochs", "two"], "epochs: got 'two', expected an integer >= 1"),
        ("inference", "inference.json", ["--roi_size", "[32,32]"], "roi_size: got [32, 32], expected two integers"),
        ("training", "train.json", ["--grid_modality", "t1"], "grid_modality: got 't1', expected auto or one of"),
    ],
)
def test_monai_bundle_run_refuses_the_same_values_in_one_line(workflow, configs, option, words, tmp_path):
    """The configs' initialize checks the values python -m monai.bundle run resolved, before the workflow runs."""
    env = {**os.environ, "PYTHONPATH": str(BUNDLE_ROOT)}
    command = [sys.executable, "-m", "monai.bundle", "run", workflow, "--meta_file", "configs/metadata.json"]
    command += ["--config_file", f"configs/{configs}", "--logging_file", "configs/logging.conf", *option]
    command += ["--bundle_root", str(tmp_path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=BUNDLE_ROOT, env=env)
    assert result.returncode == 2 and "Traceback" not in result.stdout + result.stderr, result.stderr[-3000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and words in last, last
    assert list(tmp_path.iterdir()) == []
