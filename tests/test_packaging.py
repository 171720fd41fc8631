# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""What ships works where users meet it: the wheel, installed without this checkout, from any folder; the model-zoo
bundle zip, unzipped where nothing of this repository is, under a Python that cannot import the installed package."""

from __future__ import annotations

import ast
import json
import os
import re
import subprocess
import sys
import zipfile
from importlib.metadata import packages_distributions
from pathlib import Path

import nibabel as nib
import pytest
import torch
from conftest import BUNDLE_ROOT, CONFIGS, SCHEMA, TINY_ROI, in_ci, make_venv

import axunet_bundle
from axunet_bundle import AXUNet
from axunet_bundle.cli.zoo_bundle import BUNDLE_NAME, BundleError, runtime_code_files, write_bundle
from axunet_bundle.synthetic import write_synthetic_dataset

#: what the model zoo's bundle layout holds besides the code (docs/README.md is the model card)
ZOO_FILES = {
    "LICENSE",
    "large_files.yml",
    "docs/README.md",
    "docs/data_license.txt",
    "docs/architecture.md",
    "docs/benchmarks.md",
    *(f"configs/{p.name}" for p in CONFIGS.iterdir() if p.suffix in (".json", ".conf")),
}
ONE_MB = 1024 * 1024
RUN_TIMEOUT_S = 600
#: overrides that keep a whole-case inference small on 2 CPU cores
SMALL_INFERENCE = ["--roi_size", json.dumps(TINY_ROI), "--num_workers", "0"]


def run(command: list, cwd: Path, **kwargs) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    result = subprocess.run(
        [str(c) for c in command], cwd=cwd, env=env, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, **kwargs
    )
    assert result.returncode == 0, f"{command}\n{result.stdout[-3000:]}\n{result.stderr[-6000:]}"
    return result


@pytest.fixture(scope="module")
def cases(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("cases")
    write_synthetic_dataset(folder, n=1, seed=0, shape=(64, 64, 16), progress=False)
    return folder


@pytest.fixture(scope="module")
def untrained_weights(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("weights") / "model.pt"
    torch.manual_seed(0)
    torch.save(AXUNet().state_dict(), path)
    return path


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """``pip wheel .`` of a copy of the checkout's files (an in-tree build would leave build/ behind)."""
    tmp = tmp_path_factory.mktemp("wheel")
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=BUNDLE_ROOT,
        capture_output=True,
        check=True,
    ).stdout.decode()
    source = tmp / "source"
    for name in filter(None, listed.split("\0")):
        if (BUNDLE_ROOT / name).is_file():
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            (source / name).write_bytes((BUNDLE_ROOT / name).read_bytes())
    pip = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", tmp / "dist", source]
    run(pip, cwd=tmp)
    (found,) = (tmp / "dist").glob("axunet_bundle-*.whl")
    return found


@pytest.fixture(scope="module")
def installed(wheel, tmp_path_factory) -> Path:
    """A fresh virtual environment holding the wheel alone (``--no-deps``), the rest from this environment."""
    python = make_venv(tmp_path_factory.mktemp("installed") / "venv", with_pip=True)
    run([python, "-m", "pip", "install", "--no-deps", "-q", wheel], cwd=wheel.parent)
    return python.parent


def site_packages_files(bin_dir: Path) -> set[str]:
    lib = bin_dir.parent / "lib"
    return {str(p.relative_to(lib)) for p in lib.rglob("*") if p.is_file() and "__pycache__" not in p.parts}


def test_the_wheel_holds_every_module_and_the_bundle_files(wheel):
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
    modules = {p.relative_to(BUNDLE_ROOT).as_posix() for p in (BUNDLE_ROOT / "axunet_bundle").rglob("*.py")}
    assert modules <= names, sorted(modules - names)
    assert {f"axunet_bundle/bundle_files/{f}" for f in ZOO_FILES} <= names
    assert not any(n.startswith(("tests/", "scripts/", "axunet_bundle/bundle_files/axunet_bundle")) for n in names)


def test_the_installed_wheel_runs_from_any_folder_and_writes_there(installed, cases, untrained_weights, tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    before = site_packages_files(installed)
    # the default output folder, the current one's predictions/ (--ckpt_path: no ./models/model.pt here)
    result = run(
        [installed / "axunet", "infer", "--dataset_dir", cases, "--ckpt_path", untrained_weights, *SMALL_INFERENCE],
        work,
    )
    (case,) = (p.name for p in cases.iterdir())
    seg = work / "predictions" / f"{case}_seg.nii.gz"
    assert nib.load(seg).shape == nib.load(next((cases / case).glob("*_t1ce.nii.gz"))).shape
    assert "site-packages/axunet_bundle/bundle_files/configs" in result.stderr  # the packaged configs ran
    assert site_packages_files(installed) == before  # nothing written into the installed package

    # `axunet bundle` from the installed package, with weights; then that folder selected with --bundle_root runs
    # its own configs and its own models/model.pt
    run([installed / "axunet", "bundle", "out", "--weights", untrained_weights], work)
    bundle = work / "out" / BUNDLE_NAME
    assert (bundle / "models" / "model.pt").read_bytes() == untrained_weights.read_bytes()
    result = run(
        [
            installed / "axunet",
            "infer",
            "--bundle_root",
            bundle,
            "--dataset_dir",
            cases,
            "--output_dir",
            "segs",
            *SMALL_INFERENCE,
        ],
        work,
    )
    assert f"configs: {bundle / 'configs'}" in result.stderr and (work / "segs" / seg.name).is_file()


def test_the_zoo_bundle_holds_the_zoo_layout_and_only_runtime_code(zoo_bundle):
    folder, zip_path = zoo_bundle
    version = json.loads((CONFIGS / "metadata.json").read_text())["version"]
    assert folder.name == BUNDLE_NAME and "segmentation" in folder.name
    assert zip_path.name == f"{BUNDLE_NAME}_v{version}.zip"
    assert zip_path.stat().st_size < ONE_MB
    with zipfile.ZipFile(zip_path) as archive:
        names = {n.removeprefix(f"{BUNDLE_NAME}/") for n in archive.namelist()}
    code = {p.as_posix() for p in runtime_code_files()}
    assert names == ZOO_FILES | code
    assert not any(n.startswith(("axunet_bundle/cli/", "tests/", "scripts/")) for n in names)
    # the code the configs import is all there: every axunet_bundle module but the command line, the comparison, the
    # generated cases and the pictures
    package = Path(axunet_bundle.__file__).parent
    expected = {
        f"axunet_bundle/{p.relative_to(package).as_posix()}"
        for p in package.rglob("*.py")
        if p.relative_to(package).parts[0] not in ("cli", "comparison", "synthetic", "visualize", "__main__.py")
    }
    assert code == expected
    # the same files give the same zip (fixed dates and order, as the zoo's release)
    again, zip_again = write_bundle(zip_path.parent / "again")
    assert zip_again.read_bytes() == zip_path.read_bytes()


def test_the_zoo_bundle_refuses_what_would_not_load(tmp_path):
    with pytest.raises(BundleError, match="segmentation"):
        write_bundle(tmp_path, name="brats_axunet")
    torch.save({"model": AXUNet().state_dict()}, tmp_path / "nested.pt")
    with pytest.raises(BundleError, match="not a plain state dict"):
        write_bundle(tmp_path, weights=tmp_path / "nested.pt")
    torch.save(AXUNet(in_channels=4).state_dict(), tmp_path / "four.pt")
    with pytest.raises(BundleError, match="do not fit the bundle's network_def"):
        write_bundle(tmp_path, weights=tmp_path / "four.pt")
    write_bundle(tmp_path)
    with pytest.raises(BundleError, match="exists"):
        write_bundle(tmp_path)
    write_bundle(tmp_path, overwrite=True)


def _module_file(module: str) -> str | None:
    """``axunet_bundle.data.cases`` -> the bundle file holding it, or ``None`` when the bundle has none."""
    code = {p.as_posix() for p in runtime_code_files()}
    base = module.replace(".", "/")
    return next((f for f in (f"{base}.py", f"{base}/__init__.py") if f in code), None)


def test_the_bundle_code_and_configs_import_only_what_the_bundle_carries():
    """Every import of the package in the bundle's code (in functions too) and every ``axunet_bundle`` name in its
    configs resolve to a file the bundle carries: nothing reaches the command line, the comparison, the generated
    cases or the pictures, which the zoo bundle leaves out."""
    for relative in runtime_code_files():
        for node in ast.walk(ast.parse((BUNDLE_ROOT / relative).read_text())):
            if isinstance(node, ast.ImportFrom) and node.level > 0:
                here = list(relative.parent.parts)[: len(relative.parent.parts) - (node.level - 1)]
                base = ".".join(here + ([node.module] if node.module else []))
                assert _module_file(base), f"{relative}: from {'.' * node.level}{node.module} is not in the bundle"
            elif isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                for name in names:
                    if name.split(".")[0] == "axunet_bundle":
                        assert _module_file(name), f"{relative}: import {name} is not in the bundle"
    for config in CONFIGS.glob("*.json"):
        for name in re.findall(r"axunet_bundle(?:\.[A-Za-z_]+)+", config.read_text()):
            assert _module_file(".".join(name.split(".")[:2])), f"{config.name}: {name} is not in the bundle"


def test_metadata_requires_every_package_the_bundle_code_imports():
    """A Python with only what metadata.json lists (and MONAI, torch, numpy) must be able to run the bundle's code."""
    metadata = json.loads((CONFIGS / "metadata.json").read_text())
    listed = {name.lower() for name in metadata["required_packages_version"]} | {"monai", "torch", "numpy"}
    distributions = packages_distributions()
    imported = set()
    for relative in runtime_code_files():
        tree = ast.parse((BUNDLE_ROOT / relative).read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name.split(".")[0] for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                imported.add(node.module.split(".")[0])
    third_party = {m for m in imported - set(sys.stdlib_module_names) if m != "axunet_bundle"}
    needed = {dist.lower() for module in third_party for dist in distributions.get(module, [module])}
    assert needed <= listed, sorted(needed - listed)
    assert metadata["version"] == axunet_bundle.__version__ and metadata["version"] in metadata["changelog"]


def test_the_unzipped_bundle_segments_a_case_without_this_package(
    unzipped_bundle, bare_python, cases, untrained_weights, tmp_path
):
    out = tmp_path / "segs"
    run(
        [
            bare_python,
            "-m",
            "monai.bundle",
            "run",
            "inference",
            "--meta_file",
            "configs/metadata.json",
            "--config_file",
            "configs/inference.json",
            "--logging_file",
            "configs/logging.conf",
            "--dataset_dir",
            cases,
            "--output_dir",
            out,
            "--ckpt_path",
            untrained_weights,
            *SMALL_INFERENCE,
        ],
        unzipped_bundle,
    )
    (case,) = (p.name for p in cases.iterdir())
    assert nib.load(out / f"{case}_seg.nii.gz").shape == (64, 64, 16)


PROPERTIES_SCRIPT = """
import sys
from monai.bundle import ConfigWorkflow
import axunet_bundle
assert axunet_bundle.__file__.startswith(sys.argv[1]), axunet_bundle.__file__  # the bundle's own code
for kind, files in (("infer", ["configs/inference.json"]), ("train", ["configs/train.json"])):
    workflow = ConfigWorkflow(workflow_type=kind, config_file=files, meta_file="configs/metadata.json",
                              bundle_root=sys.argv[1], dataset_dir=sys.argv[2], pretrained=False, folds=2)
    workflow.initialize()
    assert workflow.check_properties() == [], (kind, workflow.check_properties())
    print(kind, "properties ok")
"""


def test_the_unzipped_bundle_passes_monai_property_checks_and_the_zoo_checks(
    unzipped_bundle, bare_python, tiny_dataset
):
    result = run([bare_python, "-c", PROPERTIES_SCRIPT, unzipped_bundle, tiny_dataset], unzipped_bundle)
    assert "infer properties ok" in result.stdout and "train properties ok" in result.stdout
    command = [bare_python, BUNDLE_ROOT / "scripts" / "zoo_check.py", unzipped_bundle]
    if SCHEMA.exists() or in_ci():
        command += ["--schema", SCHEMA]
    else:
        command += ["--checks", "large_files,necessary_files,preferred_files,version,net_in_out,torchscript,onnx"]
    result = run(command, unzipped_bundle)
    assert "zoo checks passed" in result.stdout, result.stdout
    lines = [line for line in result.stdout.splitlines() if line.startswith(("PASS", "WARN", "FAIL", "SKIP"))]
    # the one WARN: no download url for weights that are not published
    assert all(
        line.startswith("PASS") or line.startswith(("WARN large_files", "SKIP properties")) for line in lines
    ), lines
