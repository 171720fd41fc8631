"""Shared fixtures: tiny generated BraTS-like datasets, the bundle's configs, the model-zoo bundle it ships, and a
Python that has this environment's packages but not this project."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import sysconfig
import zipfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from axunet_bundle.errors import AxunetError, user_error
from axunet_bundle.synthetic import write_synthetic_dataset

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = BUNDLE_ROOT / "configs"
SCHEMA = BUNDLE_ROOT.parent / "shared" / "monai" / "meta_schema_20240725.json"
#: small enough for 2 CPU cores, large enough for Xception's stride-32 map (64 -> 2x2)
TINY_SHAPE = (64, 64, 16)
TINY_ROI = [64, 64]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Four generated cases in the BraTS 2021 layout, 64 x 64 x 16."""
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_dataset(root, n=4, seed=0, shape=TINY_SHAPE, progress=False)
    return root


def make_venv(path: Path, with_pip: bool = False) -> Path:
    """A virtual environment that sees this test environment's installed packages through a ``.pth`` file (no
    second torch on disk) but not this project: the editable install's own ``.pth`` hook is not run for a folder a
    ``.pth`` file adds, so ``import axunet_bundle`` fails there. Returns its python."""
    subprocess.run([sys.executable, "-m", "venv", *([] if with_pip else ["--without-pip"]), str(path)], check=True)
    python = path / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (Path(site) / "test_environment.pth").write_text("".join(f"{p}\n" for p in ours))
    return python


@pytest.fixture(scope="session")
def bare_python(tmp_path_factory) -> Path:
    """A Python with this environment's packages that cannot import ``axunet_bundle`` (except from the current
    folder, as a bundle folder provides it)."""
    python = make_venv(tmp_path_factory.mktemp("bare") / "venv")
    probe = subprocess.run([str(python), "-c", "import axunet_bundle"], capture_output=True, text=True, cwd="/")
    assert probe.returncode != 0 and "No module named 'axunet_bundle'" in probe.stderr
    return python


@pytest.fixture(scope="session")
def zoo_bundle(tmp_path_factory) -> tuple[Path, Path]:
    """What ``axunet bundle OUT`` writes without weights: the bundle folder and its zip."""
    from axunet_bundle.cli.zoo_bundle import write_bundle

    return write_bundle(tmp_path_factory.mktemp("zoo"))


@pytest.fixture(scope="session")
def unzipped_bundle(zoo_bundle, tmp_path_factory) -> Path:
    """The bundle zip unzipped into a folder of its own, where no other file of this repository is."""
    folder, zip_path = zoo_bundle
    out = tmp_path_factory.mktemp("unzipped")
    with zipfile.ZipFile(zip_path) as archive:
        archive.extractall(out)
    return out / folder.name


def in_ci() -> bool:
    """Whether the suite runs in CI (``CI`` set): a test that cannot find what it needs fails there instead of
    skipping, so CI cannot pass without running it."""
    return os.environ.get("CI", "").strip().lower() not in ("", "0", "false", "no")


def require(module: str, how: str) -> None:
    """Skip the calling test module when ``module`` cannot be imported, and fail it in CI (:func:`in_ci`).

    Args:
        module: the importable name (``"nvflare"``).
        how: how to install it, for the message.
    """
    try:
        __import__(module)
    except ImportError:
        message = f"{module} is not installed: {how}"
        if in_ci():
            pytest.fail(message + " (CI must run these tests)", pytrace=False)
        pytest.skip(message, allow_module_level=True)


@contextmanager
def raises_user_error(kind: type[AxunetError] = AxunetError, match: str | None = None) -> Iterator[None]:
    """Expect an :class:`AxunetError` of ``kind`` (itself, or wrapped by MONAI's config parser) whose one-line
    message matches ``match``: what the error boundary prints."""
    with pytest.raises(Exception) as info:
        yield
    error = user_error(info.value)
    assert isinstance(error, kind), f"expected {kind.__name__}, got {info.value!r}"
    assert "\n" not in str(error)
    if match is not None:
        assert re.search(match, str(error)), str(error)


@pytest.fixture(autouse=True)
def restore_logging() -> Iterator[None]:
    """A workflow configures logging from configs/logging.conf with a handler on the stream of the test that ran it;
    later tests must not log into that closed stream."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)
