"""Untrusted files: a crafted pickle is refused without running its code; dataset names cannot escape the output."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import CONFIGS
from ignite.engine import Engine
from monai.handlers import CheckpointLoader
from test_bundle_workflows import CONSTANT_LOGIT, CONSTANT_NET, EVALUATION, INFERENCE, save_constant_net, workflow

from axunet_bundle import AXUNet
from axunet_bundle.cli.slice_cache import prepare_slice_cache
from axunet_bundle.data.cases import DEFAULT_MODALITIES, CaseError, check_case_id, find_cases
from axunet_bundle.data.datalist import load_datalist
from axunet_bundle.data.slices import MANIFEST
from axunet_bundle.errors import user_error
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
        workflow(configs, **settings).run()  # the loader checks when the engine is built: before it reads a case
    cause = user_error(info.value)
    assert isinstance(cause, UnsafeWeightsError)  # MONAI wraps errors of config components in a RuntimeError
    assert str(cause).startswith(f"cannot read checkpoint {path}: {NOT_PLAIN}")
    assert not marker.exists()
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_bundle_run_command_refuses_a_crafted_checkpoint(evil, tiny_dataset, tmp_path):
    """``python -m monai.bundle run inference --ckpt_path evil.pt``: exit 2, the clear line and no traceback, no code
    run."""
    path, marker = evil
    command = [sys.executable, "-m", "monai.bundle", "run", "inference", "--config_file", INFERENCE[0]]
    command += ["--meta_file", str(CONFIGS / "metadata.json"), "--logging_file", str(CONFIGS / "logging.conf")]
    command += ["--dataset_dir", str(tiny_dataset), "--output_dir", str(tmp_path / "out"), "--ckpt_path", str(path)]
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith(f"error: cannot read checkpoint {path}: {NOT_PLAIN}")
    assert "Traceback" not in result.stderr
    assert not marker.exists()


# --- dataset names never escape the output directory ------------------------------------------------------------

#: case ids a datalist could hold that point outside a directory (relative, absolute, the directory itself)
UNSAFE_IDS = ["../escaped", "nested/../../escaped2", "..", ".", ""]


def files_under(root: Path) -> set[Path]:
    return {p for p in root.rglob("*") if p.is_file()}


def assert_only_written_inside(root: Path, before: set[Path], output_dir: Path) -> set[Path]:
    """Every file that appeared under ``root`` since ``before`` lies inside ``output_dir``; returns them."""
    new = files_under(root) - before
    outside = sorted(str(p) for p in new if output_dir.resolve() not in p.resolve().parents)
    assert not outside, f"written outside {output_dir}: {outside}"
    return new


def test_case_ids_must_be_plain_names():
    for case_id in UNSAFE_IDS + ["/abs/escaped", "a\\..\\b"]:
        with pytest.raises(CaseError, match="not a plain name"):
            check_case_id(case_id)
    assert check_case_id("BraTS2021_00000") == "BraTS2021_00000"
    assert check_case_id("x..y") == "x..y"  # dots inside a name are harmless


def test_prepare_slice_cache_keeps_unsafe_case_ids_out_and_prepares_the_rest(tmp_path):
    out = tmp_path / "run" / "cache"
    absolute = str(tmp_path / "absolute_escape")
    unsafe = UNSAFE_IDS + [absolute]
    items = [{"case_id": case_id, "image": []} for case_id in ["good_a", *unsafe, "good_b"]]
    before = files_under(tmp_path)

    def transform(item: dict) -> dict:
        return {"image": np.ones((1, 4, 4, 2)), "label": np.zeros((3, 4, 4, 2))}

    report = prepare_slice_cache(items, out, transform=transform, params={"p": 1}, workers=1, progress=False)

    written = assert_only_written_inside(tmp_path, before, out)
    assert sorted(report.prepared) == ["good_a", "good_b"]
    assert len(report.problems) == len(unsafe)
    for case_id, problem in zip(unsafe, report.problems):
        assert problem.startswith(f"{case_id!r}: ") and "not a plain name" in problem
    assert {p.parent.name for p in written if p.name != MANIFEST} == {"good_a", "good_b"}


def test_datalist_with_an_unsafe_case_id_is_refused(tiny_dataset, tmp_path):
    case = find_cases(tiny_dataset)[0]
    item = {"image": case.image_files(DEFAULT_MODALITIES), "label": str(case.label), "case_id": "../escaped"}
    datalist = tmp_path / "datalist.json"
    datalist.write_text(json.dumps({"training": [item], "validation": [item]}))
    with pytest.raises(CaseError, match="not a plain name") as info:
        load_datalist(tiny_dataset, datalist)
    assert "'../escaped'" in str(info.value) and datalist.name in str(info.value)


def test_evaluation_from_a_datalist_with_dotted_and_absolute_paths_writes_only_inside(tiny_dataset, tmp_path):
    """Image paths with ``..`` and absolute paths in a datalist are inputs only: outputs stay in output_dir."""
    run = tmp_path / "run"
    out = run / "out"
    cases = find_cases(tiny_dataset)[:2]
    relative = Path(os.path.relpath(tiny_dataset, run))  # e.g. ../../brats0: resolved against dataset_dir=run
    items = [
        {
            "image": [
                str(relative / p.relative_to(tiny_dataset)) for p in map(Path, cases[0].image_files(DEFAULT_MODALITIES))
            ],
            "label": str(relative / cases[0].label.relative_to(tiny_dataset)),
            "case_id": cases[0].case_id,
        },
        {"image": cases[1].image_files(DEFAULT_MODALITIES), "label": str(cases[1].label), "case_id": cases[1].case_id},
    ]
    run.mkdir()
    datalist = run / "datalist.json"
    datalist.write_text(json.dumps({"training": items, "validation": items}))
    ckpt = save_constant_net(tmp_path / "model.pt", CONSTANT_LOGIT)
    before = files_under(tmp_path)

    wf = workflow(
        EVALUATION,
        network_def=CONSTANT_NET,
        dataset_dir=str(run),
        datalist=str(datalist),
        output_dir=str(out),
        ckpt_path=str(ckpt),
    )
    wf.run()
    wf.finalize()

    written = {p.name for p in assert_only_written_inside(tmp_path, before, out)}
    assert {f"{c.case_id}_seg.nii.gz" for c in cases} <= written


def test_inference_on_dotted_case_names_writes_only_inside(tiny_dataset, tmp_path):
    """Case folders and files whose names hold ``..``, reached through a dataset path with ``..`` in it."""
    data = tmp_path / "data"
    source = find_cases(tiny_dataset)[0]
    for case_id in ("x..", "y..", "a..b"):
        folder = data / f"{case_id}dir"
        folder.mkdir(parents=True)
        for modality, path in source.images.items():
            shutil.copy(path, folder / f"{case_id}_{modality}.nii.gz")
    out = tmp_path / "run" / "out"
    out.parent.mkdir()
    ckpt = save_constant_net(tmp_path / "model.pt", CONSTANT_LOGIT)
    before = files_under(tmp_path)

    dataset_dir = tmp_path / "run" / ".." / "data"
    wf = workflow(
        INFERENCE, network_def=CONSTANT_NET, dataset_dir=str(dataset_dir), output_dir=str(out), ckpt_path=str(ckpt)
    )
    wf.run()
    wf.finalize()

    written = {p.name for p in assert_only_written_inside(tmp_path, before, out)}
    assert written == {"x.._seg.nii.gz", "y.._seg.nii.gz", "a..b_seg.nii.gz", "volumes.csv"}


def test_resuming_training_refuses_a_crafted_checkpoint(evil, tiny_dataset, tmp_path):
    from test_bundle_train import train_workflow

    path, marker = evil
    (tmp_path / "models").mkdir()
    planted = shutil.copy(path, tmp_path / "models" / "checkpoint_epoch=1.pt")  # what --resume True picks up
    workflow = train_workflow(tiny_dataset, tmp_path, resume=True)
    workflow.initialize()
    with pytest.raises(Exception) as info:
        workflow.run()  # the loader checks when the trainer is built: before the first iteration
    cause = user_error(info.value)
    assert isinstance(cause, UnsafeWeightsError)
    assert str(cause).startswith(f"cannot read checkpoint {planted}: {NOT_PLAIN}")
    assert not marker.exists()
