"""Untrusted files: a crafted pickle is refused without running its code; dataset names cannot escape the output."""

from __future__ import annotations

import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import CONFIGS
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from test_bundle_workflows import EVALUATION, INFERENCE, workflow

from axunet_bundle import AXUNet
from axunet_bundle.networks import PretrainedWeightsError
from axunet_bundle.weights import UnsafeWeightsError, check_plain_weights

NOT_PLAIN = "not a plain weights file"


class _RunsCode:
    """Unpickling this object runs code: it creates ``marker`` (what a malicious checkpoint would do worse)."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return exec, (f"import pathlib; pathlib.Path({str(self.marker)!r}).touch()",)


def craft_malicious_checkpoint(path: Path, marker: Path) -> Path:
    """A ``.pt`` that looks like a checkpoint (a real state dict under ``model``) but carries code."""
    torch.save({"model": torch.nn.Conv2d(3, 3, 1).state_dict(), "extra": _RunsCode(marker)}, path)
    return path


@pytest.fixture
def evil(tmp_path) -> tuple[Path, Path]:
    """``(crafted file, marker that must never appear)``; the file is proven to run code when loaded unsafely."""
    control = tmp_path / "control_marker"
    torch.load(
        craft_malicious_checkpoint(tmp_path / "control.pt", control), weights_only=False
    )  # what an unguarded loader does: the code runs
    assert control.exists(), "the crafted file does not run code, so the tests below would prove nothing"
    marker = tmp_path / "marker"
    return craft_malicious_checkpoint(tmp_path / "evil.pt", marker), marker


def test_encoder_refuses_a_pickle_carrying_code(evil):
    path, marker = evil
    with pytest.raises(PretrainedWeightsError) as info:
        AXUNet(pretrained_path=path)
    message = str(info.value)
    assert str(path) in message and NOT_PLAIN in message and "builtins.exec" in message
    assert len(message.splitlines()) == 1
    assert not marker.exists()


def test_plain_state_dict_and_checkpoint_pass_the_check(tmp_path):
    weights = tmp_path / "model.pt"
    torch.save(torch.nn.Conv2d(3, 3, 1).state_dict(), weights)
    check_plain_weights(weights)
    net = torch.nn.Linear(2, 2)
    checkpoint = tmp_path / "checkpoint.pt"
    optimizer = torch.optim.Adam(net.parameters())
    torch.save({"model": net.state_dict(), "optimizer": optimizer.state_dict(), "trainer": {"epoch": 3}}, checkpoint)
    check_plain_weights(checkpoint)


def test_monai_checkpoint_loader_loads_weights_only(evil):
    """The handler the configs use (MONAI 1.6 passes weights_only=True): it fails and the code never runs."""
    path, marker = evil
    loader = CheckpointLoader(str(path), {"model": torch.nn.Conv2d(3, 3, 1)})
    with pytest.raises(pickle.UnpicklingError):
        loader(Engine(lambda engine, batch: None))
    assert not marker.exists()


@pytest.mark.parametrize("configs", [INFERENCE, EVALUATION], ids=["inference", "evaluation"])
def test_bundle_workflow_refuses_a_crafted_checkpoint(evil, tiny_dataset, tmp_path, configs):
    path, marker = evil
    settings = dict(dataset_dir=str(tiny_dataset), output_dir=str(tmp_path / "out"), ckpt_path=str(path))
    with pytest.raises(Exception) as info:
        workflow(configs, **settings)  # fails in the config's initialize, before any engine or output exists
    cause = info.value if isinstance(info.value, UnsafeWeightsError) else info.value.__cause__
    assert isinstance(cause, UnsafeWeightsError)  # MONAI wraps errors of config expressions in a RuntimeError
    assert str(cause).startswith(f"cannot read checkpoint {path}: {NOT_PLAIN}")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bundle_run_command_refuses_a_crafted_checkpoint(evil, tiny_dataset, tmp_path):
    """``python -m monai.bundle run inference --ckpt_path evil.pt``: non-zero exit, the clear line, no code run."""
    path, marker = evil
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", INFERENCE[0]]
    command += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    command += ["--dataset_dir", str(tiny_dataset), "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode != 0
    assert f"UnsafeWeightsError: cannot read checkpoint {path}: {NOT_PLAIN}" in result.stderr
    assert not marker.exists()
