# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The model zoo's checks (scripts/zoo_check.py): all pass on this bundle; each failure case fails on a copy of it."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import BUNDLE_ROOT, SCHEMA, in_ci

from scripts.zoo_check import CHECKS, FAIL, NOT_IN_BUNDLE, PASS, SKIP, WARN, find_schema, main, run_zoo_checks

#: what a bundle copy needs for the cheap checks (no code, no weights)
COPIED = ("configs", "LICENSE", "large_files.yml", ".gitignore")
#: the one allowed WARN: the BraTS weights have no download url yet
ALLOWED = {"large_files": {PASS, WARN}, "properties": {PASS, SKIP}}
TWO_MB = 2 * 1024 * 1024


def copy_bundle(tmp_path: Path) -> Path:
    root = tmp_path / "bundle"
    root.mkdir()
    for name in COPIED:
        source = BUNDLE_ROOT / name
        if source.is_dir():
            shutil.copytree(source, root / name)
        elif source.exists():
            shutil.copy2(source, root / name)
    return root


def checked(root: Path, check: str, module_text: str):
    """The result of ``check`` on the bundle at ``root`` with ``axunet_bundle/sizes.py`` holding ``module_text``."""
    module = root / "axunet_bundle" / "sizes.py"
    module.parent.mkdir(exist_ok=True)
    module.write_text(module_text)
    return by_name(run_zoo_checks(root, checks=[check]))[check]


def by_name(results) -> dict:
    return {r.name: r for r in results}


@pytest.mark.slow  # about 10 s of model export on 2 CPU cores
def test_the_bundle_passes_every_zoo_check(tmp_path):
    weights = BUNDLE_ROOT / "models" / "model.pt"
    had_weights = weights.exists()
    checks = list(CHECKS)
    if not SCHEMA.exists():
        if in_ci():
            pytest.fail(f"CI needs MONAI's schema at {SCHEMA}")
        checks.remove("metadata")
    results = by_name(run_zoo_checks(BUNDLE_ROOT, work_dir=tmp_path, checks=checks))

    assert list(results) == checks
    for name, result in results.items():
        assert result.status in ALLOWED.get(name, {PASS}), result.line()
    for name in ("torchscript", "onnx"):
        assert "max abs diff" in results[name].detail
    if not had_weights:
        assert "UNTRAINED" in results["torchscript"].detail
        assert not weights.exists()  # the untrained weights went to the work folder, not into the bundle
        assert (tmp_path / "model.pt").is_file()


def test_json_indented_with_two_spaces_fails_the_zoos_pretty_format_json_hook(tmp_path):
    root = copy_bundle(tmp_path)
    config = root / "configs" / "inference.json"
    config.write_text(json.dumps(json.loads(config.read_text()), indent=2) + "\n")

    result = by_name(run_zoo_checks(root, checks=["hooks"]))["hooks"]
    assert result.status == FAIL
    assert "pretty-format-json" in result.detail and "configs/inference.json" in result.detail
    assert json.loads(config.read_text()) and '  "' in config.read_text()  # the fixer ran on a copy only


def test_json_without_final_newline_fails_the_zoos_end_of_file_hook(tmp_path):
    root = copy_bundle(tmp_path)
    config = root / "configs" / "metadata.json"
    config.write_text(config.read_text().rstrip("\n"))

    result = by_name(run_zoo_checks(root, checks=["hooks"]))["hooks"]
    assert result.status == FAIL and "end-of-file-fixer" in result.detail


def test_a_string_under_a_module_constant_fails_the_zoos_docstring_first_hook(tmp_path):
    root = copy_bundle(tmp_path)
    result = checked(root, "hooks", '"""Sizes."""\n\nROI = 224\n"""The slice size."""\n')
    assert result.status == FAIL and "check-docstring-first" in result.detail and "sizes.py" in result.detail
    assert checked(root, "hooks", '"""Sizes."""\n\n#: the slice size\nROI = 224\n').status == PASS


def test_the_bundle_code_is_checked_with_the_zoos_black_and_isort_settings(tmp_path):
    """The zoo runs black with --skip-magic-trailing-comma and isort with its own first-party list: a call the
    project's black keeps exploded by a trailing comma, or the bundle's package imported by absolute name in the
    first-party block, fails there."""
    root = copy_bundle(tmp_path)
    result = checked(root, "code_format", '"""Sizes."""\n\nSIZES = dict(\n    roi=224,\n)\n')
    assert result.status == FAIL and "black" in result.detail and "sizes.py" in result.detail
    absolute = '"""Sizes."""\n\nimport numpy\n\nimport axunet_bundle\n\nSIZES = (numpy, axunet_bundle)\n'
    result = checked(root, "code_format", absolute)
    assert result.status == FAIL and "isort" in result.detail
    relative = '"""Sizes."""\n\nimport numpy\n\nfrom . import errors\n\nSIZES = (numpy, errors)\n'
    assert checked(root, "code_format", relative).status == PASS


@pytest.mark.parametrize(
    "change, message",
    [
        ({"required_packages_version": {"scipy": "1.17.1"}}, "scipy==1.17.1 (newest with a wheel for Python 3.10"),
        ({"optional_packages_version": {"brats-evaluation": "0.0.10"}}, "optional_packages_version"),
    ],
)
def test_pins_without_a_wheel_for_the_zoos_python_or_deprecated_keys_fail(tmp_path, change, message):
    root = copy_bundle(tmp_path)
    meta_file = root / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    for key, value in change.items():
        metadata[key] = {**metadata.get(key, {}), **value}
    meta_file.write_text(json.dumps(metadata, indent=4) + "\n")
    result = by_name(run_zoo_checks(root, checks=["pins"]))["pins"]
    assert result.status == FAIL and message in result.detail


def test_version_missing_from_changelog_fails(tmp_path):
    root = copy_bundle(tmp_path)
    meta_file = root / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    metadata["version"] = "9.9.9"
    meta_file.write_text(json.dumps(metadata, indent=4) + "\n")

    result = by_name(run_zoo_checks(root, checks=["version", "hooks"]))
    assert result["version"].status == FAIL
    assert "9.9.9" in result["version"].detail
    assert result["hooks"].status == PASS


def test_a_two_megabyte_file_fails_the_zoos_large_file_hook_but_ignored_weights_do_not(tmp_path):
    root = copy_bundle(tmp_path)
    (root / "models").mkdir()
    (root / "models" / "model.pt").write_bytes(b"\0" * TWO_MB)  # gitignored (models/*.pt)
    assert by_name(run_zoo_checks(root, checks=["hooks"]))["hooks"].status == PASS

    (root / "docs").mkdir()
    (root / "docs" / "figure.png").write_bytes(b"\0" * TWO_MB)
    result = by_name(run_zoo_checks(root, checks=["hooks"]))["hooks"]
    assert result.status == FAIL
    assert "check-added-large-files" in result.detail and "docs/figure.png (2048 KB)" in result.detail
    assert "model.pt" not in result.detail


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_a_two_megabyte_file_fails_in_a_git_work_tree(tmp_path):
    root = copy_bundle(tmp_path)
    subprocess.run(["git", "init", "-q", str(root)], check=True)
    (root / "data.bin").write_bytes(b"\0" * TWO_MB)
    result = by_name(run_zoo_checks(root, checks=["hooks"]))["hooks"]
    assert result.status == FAIL
    assert "data.bin" in result.detail and "git ls-files" not in result.detail


@pytest.mark.parametrize("git", [False, True])
def test_a_listed_large_file_that_git_would_commit_fails(tmp_path, git):
    if git and shutil.which("git") is None:
        pytest.skip("needs git")
    root = copy_bundle(tmp_path)
    if git:
        subprocess.run(["git", "init", "-q", str(root)], check=True)
    assert by_name(run_zoo_checks(root, checks=["large_files"]))["large_files"].status == WARN  # ignored, no url
    (root / ".gitignore").write_text("")  # models/*.pt no longer ignored
    result = by_name(run_zoo_checks(root, checks=["large_files"]))["large_files"]
    assert result.status == FAIL
    assert "models/model.pt would be committed" in result.detail


def test_weights_neither_present_nor_listed_fail(tmp_path):
    root = copy_bundle(tmp_path)
    (root / "large_files.yml").unlink()
    results = by_name(run_zoo_checks(root, checks=["large_files", "preferred_files"]))
    assert results["large_files"].status == PASS
    assert results["preferred_files"].status == FAIL


def test_no_local_schema_fails_clearly(tmp_path):
    root = copy_bundle(tmp_path)
    assert find_schema(root) is None
    result = by_name(run_zoo_checks(root, checks=["metadata"]))["metadata"]
    assert result.status == FAIL
    assert "schema not available offline" in result.detail


@pytest.mark.skipif(not SCHEMA.exists(), reason="MONAI's metadata schema is not beside this checkout (../shared)")
def test_metadata_against_the_schema_fails_without_a_required_field(tmp_path):
    root = copy_bundle(tmp_path)
    meta_file = root / "configs" / "metadata.json"
    metadata = json.loads(meta_file.read_text())
    assert by_name(run_zoo_checks(root, schema=SCHEMA, checks=["metadata"]))["metadata"].status == PASS
    del metadata["required_packages_version"]
    meta_file.write_text(json.dumps(metadata, indent=4) + "\n")
    result = by_name(run_zoo_checks(root, schema=SCHEMA, checks=["metadata"]))["metadata"]
    assert result.status == FAIL
    assert "required_packages_version" in result.detail


def test_the_command_prints_one_line_per_check_and_exits_non_zero_on_failure(tmp_path, capsys):
    root = copy_bundle(tmp_path)
    assert main([str(root), "--checks", "necessary_files,hooks"]) == 0
    (root / "LICENSE").unlink()
    assert main([str(root), "--checks", "necessary_files,hooks"]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert any(line.startswith("FAIL necessary_files") and "LICENSE" in line for line in lines)
    assert any(line.startswith("PASS hooks") for line in lines)
    assert lines[-1].startswith("zoo checks FAILED")


def test_strict_turns_the_missing_weights_url_into_a_failure(tmp_path, capsys):
    root = copy_bundle(tmp_path)
    assert main([str(root), "--checks", "large_files"]) == 0
    assert main([str(root), "--checks", "large_files", "--strict"]) == 1
    assert "WARN large_files" in capsys.readouterr().out


def test_unknown_check_names_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown checks"):
        run_zoo_checks(tmp_path, checks=["nonsense"])


def test_nested_weights_fail_the_export_checks(tmp_path):
    import torch

    root = copy_bundle(tmp_path)
    model_dir = tmp_path / "weights"
    model_dir.mkdir()
    torch.save({"model": {"weight": torch.zeros(1)}, "optimizer": {}}, model_dir / "model.pt")
    results = by_name(run_zoo_checks(root, model_dir=model_dir, checks=["preferred_files", "torchscript", "onnx"]))
    assert results["preferred_files"].status == PASS
    for name in ("torchscript", "onnx"):
        assert results[name].status == FAIL
        assert "not a plain state dict" in results[name].detail


def test_the_code_check_leaves_out_exactly_what_the_zoo_bundle_does_not_carry():
    from axunet_bundle.cli.zoo_bundle import COMMAND_LINE_ONLY

    carried_elsewhere = {"tests/", "scripts/"}
    left_out = {f"axunet_bundle/{part}" + ("" if part.endswith(".py") else "/") for part in COMMAND_LINE_ONLY}
    assert set(NOT_IN_BUNDLE) == left_out | carried_elsewhere
