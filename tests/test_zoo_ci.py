# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""What the model zoo's own CI and the Hugging Face hub do with the bundle ``axunet bundle`` writes: the pins it
installs, the large files it downloads, the traced TorchScript, the pull request's unit tests run as the zoo's
``ci/unit_tests/runner.py`` runs them, and ``push_to_hf_hub`` / ``download`` / ``load`` with only the hub's network
calls replaced."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import pytest
import torch
import yaml
from conftest import CONFIGS

from axunet_bundle import AXUNet
from axunet_bundle.cli.zoo_bundle import BUNDLE_NAME, TORCHSCRIPT, WEIGHTS, bundle, write_bundle
from scripts.zoo_check import _pins

WEIGHTS_URL = "https://example.org/brats_axunet_2d_segmentation/model.pt"
#: the zoo's ci/unit_tests/utils.py functions the pull request's tests import, with the zoo's behaviour: a workflow
#: initialises, passes MONAI's property check, runs and finalises; the multi-GPU test exports the overridden config
#: and runs it under torchrun with the bundle root as PYTHONPATH
ZOO_TEST_UTILS = """
import os, subprocess
from monai.bundle import ConfigParser, ConfigWorkflow

def check_workflow(workflow, check_properties=False):
    workflow.initialize()
    if check_properties:
        problems = workflow.check_properties()
        if problems:
            raise ValueError(f"check properties for workflow failed: {problems}")
    workflow.run()
    workflow.finalize()

def export_config_and_run_mgpu_cmd(config_file, meta_file, override_dict, output_path, logging_file=None,
                                   workflow_type="train", nnode=1, ngpu=2, check_config=False):
    parser = ConfigParser()
    parser.read_config(config_file)
    parser.update(pairs=override_dict)
    ConfigParser.export_config_file(parser.config, output_path, indent=4)
    if check_config:
        engine = ConfigWorkflow(workflow_type=workflow_type, config_file=output_path, logging_file=logging_file,
                                meta_file=meta_file)
        engine.initialize()
        problems = engine.check_properties()
        if problems:
            raise ValueError(f"check properties for overrided mgpu configs failed: {problems}")
    command = ["torchrun", "--standalone", f"--nnodes={nnode}", f"--nproc_per_node={ngpu}", "-m", "monai.bundle",
               "run", "--config_file", output_path, "--meta_file", meta_file]
    if logging_file is not None:
        command += ["--logging_file", logging_file]
    env = dict(os.environ, PYTHONPATH=override_dict.get("bundle_root", "."))
    subprocess.check_call(command, env=env)
"""
#: the zoo's ci/unit_tests/runner.py: the test module by name, ordered by its test_order, exit status 1 on failure
#: (the multi-GPU test runs under torchrun; on a machine without GPUs with one process, gloo, where the zoo's GPU
#: runner has several)
ZOO_RUNNER = """
import importlib, sys, unittest
sys.path.append("ci/unit_tests")
name = sys.argv[1]
if name.endswith("_dist"):
    import torch
    torch.cuda.device_count = lambda: 1
module = importlib.import_module(name)
loader = unittest.TestLoader()
if hasattr(module, "test_order"):
    loader.sortTestMethodsUsing = module.test_order
result = unittest.TextTestRunner(verbosity=2).run(loader.loadTestsFromNames([name]))
sys.exit(int(not result.wasSuccessful()))
"""


def test_metadata_pins_are_the_versions_the_tests_run_with():
    """The zoo installs exactly the pins of metadata.json: they must be what this suite ran the bundle with (the
    test extra pins them; scripts/zoo_check.py's ``pins`` check asks the index for their Python 3.10 wheels)."""
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    installed = {}
    for pin in _pins(metadata):
        name, pinned = pin.split("==")
        installed[name] = version(name).split("+")[0]  # torch's local version (+cu130, +cpu) is the build
    assert installed == {pin.split("==")[0]: pin.split("==")[1] for pin in _pins(metadata)}


@pytest.fixture(scope="module")
def released(tmp_path_factory) -> Path:
    """``axunet bundle OUT --weights W --weights_url URL``: the folder with the traced network, and ci/ beside it."""
    out = tmp_path_factory.mktemp("release")
    torch.manual_seed(0)
    torch.save(AXUNet().state_dict(), out / "trained.pt")
    bundle(str(out), weights=str(out / "trained.pt"), weights_url=WEIGHTS_URL)
    return out


def test_large_files_list_each_shipped_file_with_its_url_and_hash(released, capsys):
    from monai.apps.utils import check_hash

    folder = released / BUNDLE_NAME
    entries = {e["path"]: e for e in yaml.safe_load((folder / "large_files.yml").read_text())["large_files"]}
    assert set(entries) == {WEIGHTS, TORCHSCRIPT}
    assert entries[WEIGHTS]["url"] == WEIGHTS_URL and "url" not in entries[TORCHSCRIPT]
    for path, entry in entries.items():
        assert check_hash(folder / path, entry["hash_val"], entry["hash_type"]), path


def test_a_bundle_without_urls_says_in_one_line_what_the_zoo_will_need(tmp_path, capsys):
    torch.manual_seed(0)
    torch.save(AXUNet().state_dict(), tmp_path / "trained.pt")
    bundle(str(tmp_path / "out"), weights=str(tmp_path / "trained.pt"))
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "models/model.pt, models/model.ts" in notes[0] and "--weights_url" in notes[0]
    with pytest.raises(Exception, match="give --weights FILE"):
        write_bundle(tmp_path / "other", weights_url=WEIGHTS_URL)


def test_the_traced_torchscript_runs_like_the_network(released):
    """The zoo cannot script the network (timm's features_only encoder), so the bundle ships a traced model.ts:
    ``torch.jit.load`` runs it on another batch and size than the trace's, with the eager network's outputs."""
    folder = released / BUNDLE_NAME
    with pytest.raises(Exception, match="partial"):
        torch.jit.script(AXUNet())
    traced = torch.jit.load(str(folder / TORCHSCRIPT), map_location="cpu")
    network = AXUNet().eval()
    network.load_state_dict(torch.load(folder / WEIGHTS, weights_only=True))
    x = torch.rand(2, 3, 128, 128, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.allclose(traced(x), network(x), atol=1e-4)
    line = (released / "ci" / f"bundle_custom_data_{BUNDLE_NAME}.txt").read_text().splitlines()[-1]
    assert line == f'exclude_verify_torchscript_list.append("{BUNDLE_NAME}")'


def zoo_checkout(released: Path, root: Path) -> Path:
    """The zoo's repository as the pull request makes it: models/<name>/ and ci/ (the PR's files + the zoo's utils)."""
    shutil.copytree(released / BUNDLE_NAME, root / "models" / BUNDLE_NAME)
    shutil.copytree(released / "ci", root / "ci")
    (root / "ci" / "unit_tests" / "utils.py").write_text(ZOO_TEST_UTILS)
    (root / "ci" / "unit_tests" / "runner.py").write_text(ZOO_RUNNER)
    return root


@pytest.mark.slow  # trains 1 epoch, evaluates and segments ten 64 x 64 x 8 cases, then trains under torchrun
def test_the_pull_requests_unit_tests_pass_as_the_zoos_runner_runs_them(released, bare_python, tmp_path):
    """Run from the zoo's root by a Python that has the packages but not this project: the bundle's configs find
    their own code (nothing on sys.path)."""
    zoo = zoo_checkout(released, tmp_path / "model-zoo")
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")  # torchrun
    runs = {
        f"test_{BUNDLE_NAME}": ([], ["test_train_config_0", "test_evaluate_config_0", "test_infer_config_0"]),
        f"test_{BUNDLE_NAME}_dist": (
            ["-m", "torch.distributed.run", "--nproc_per_node=1"],
            ["test_train_mgpu_config_0"],
        ),
    }
    for test, (launcher, expected) in runs.items():
        done = subprocess.run(
            [bare_python, *launcher, "ci/unit_tests/runner.py", test],
            cwd=zoo,
            capture_output=True,
            text=True,
            timeout=1200,
            env=env,
        )
        assert done.returncode == 0, done.stderr[-3000:]
        assert f"Ran {len(expected)} test" in done.stderr and "\nOK" in done.stderr, done.stderr[-2000:]
        first = [done.stderr.index(f"{name} (") for name in expected]
        assert first == sorted(first), "the zoo's runner runs them in test_order: training first"
    bundle_dir = zoo / "models" / BUNDLE_NAME
    assert list((bundle_dir / "infer_test").rglob("*_seg.nii.gz"))
    assert (bundle_dir / "eval_test" / "metrics.csv").is_file()


class FakeHub:
    """The Hugging Face hub's calls that MONAI's push_to_hf_hub and download make, on a local folder."""

    def __init__(self, root: Path):
        self.root = root

    def api(self, token=None):
        hub = self

        class Api:
            def create_repo(self, repo_id, private=True, exist_ok=False):
                (hub.root / repo_id).mkdir(parents=True, exist_ok=exist_ok)

            def upload_folder(self, repo_id, folder_path, **kwargs):
                shutil.copytree(folder_path, hub.root / repo_id, dirs_exist_ok=True)
                return f"https://huggingface.co/{repo_id}"

            def create_tag(self, repo_id, tag, exist_ok=False):
                (hub.root / repo_id / ".tags").mkdir(exist_ok=True)
                (hub.root / repo_id / ".tags" / tag).touch()

        return Api()

    def snapshot_download(self, repo_id, revision=None, local_dir=None):
        assert (self.root / repo_id / ".tags" / revision).exists(), f"no tag {revision} in {repo_id}"
        shutil.copytree(self.root / repo_id, local_dir, ignore=shutil.ignore_patterns(".tags"), dirs_exist_ok=True)
        return local_dir


LOAD_SCRIPT = """
import sys, monai.bundle
for workflow_type in ("inference", "train"):
    network = monai.bundle.load(sys.argv[1], bundle_dir=sys.argv[2], workflow_type=workflow_type, device="cpu")
    print(workflow_type, type(network).__name__, sum(p.numel() for p in network.parameters()))
print("code from", sys.modules["axunet_bundle"].__file__)
"""


@pytest.mark.slow  # two bundle workflows parse their configs and build the network
def test_the_hub_round_trip_push_download_and_load_from_any_folder(released, bare_python, tmp_path, monkeypatch):
    import huggingface_hub
    import monai.bundle

    hub = FakeHub(tmp_path / "hub")
    monkeypatch.setattr(huggingface_hub, "HfApi", hub.api)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub.snapshot_download)
    repo = f"someone/{BUNDLE_NAME}"
    version_ = json.loads((CONFIGS / "metadata.json").read_text())["version"]
    pushed = tmp_path / "pushed"
    shutil.copytree(released / BUNDLE_NAME, pushed / BUNDLE_NAME)
    monai.bundle.push_to_hf_hub(repo=repo, name=BUNDLE_NAME, bundle_dir=str(pushed), version=version_, token="x")

    # the README push_to_hf_hub makes from docs/README.md: its front matter, and every relative link resolves
    readme = (hub.root / repo / "README.md").read_text()
    assert readme.startswith("---") and "library_name: monai" in readme
    links = [t for t in re.findall(r"\]\(([^)#\s]+)", readme) if "://" not in t and not t.startswith("mailto:")]
    assert all((hub.root / repo / link).exists() for link in links), links

    users = tmp_path / "user"
    monai.bundle.download(BUNDLE_NAME, source="huggingface_hub", repo=repo, version=version_, bundle_dir=str(users))
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    done = subprocess.run(
        [bare_python, "-c", LOAD_SCRIPT, BUNDLE_NAME, str(users)],
        cwd=elsewhere,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HOME": str(tmp_path)},
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    parameters = sum(p.numel() for p in AXUNet().parameters())
    assert f"inference AXUNet {parameters}" in lines and f"train AXUNet {parameters}" in lines
    assert f"code from {users / BUNDLE_NAME / 'axunet_bundle' / '__init__.py'}" in lines
    assert not list(elsewhere.iterdir())  # nothing written where it ran
