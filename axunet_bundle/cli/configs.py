# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Where the bundle's configs are, and reading them.

The bundle's configs, model card (with the documents it links), data licence, ``LICENSE`` and ``large_files.yml``
are kept once, at the root of the source checkout (which is itself a MONAI bundle). A wheel carries copies of them
in ``axunet_bundle/bundle_files`` (``pyproject.toml`` maps that package folder onto the checkout's root), so every
command finds its configs wherever the package is installed.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from ..errors import AxunetError

__all__ = ["METADATA", "ConfigsMissingError", "bundle_source", "config_dir", "config_path", "read_config"]

METADATA = "configs/metadata.json"

_PACKAGE = Path(__file__).resolve().parents[1]
_PACKAGED = _PACKAGE / "bundle_files"  # present in an installed wheel only
_CHECKOUT = _PACKAGE.parent  # a source checkout (editable install): the repository root is the bundle


class ConfigsMissingError(AxunetError):
    """The package's own configs are not where they should be: a broken install."""


def bundle_source() -> Path:
    """The folder holding the bundle's ``configs/``, ``docs/``, ``LICENSE`` and ``large_files.yml``: the packaged
    copy in an installed wheel, else the root of the source checkout.

    Raises:
        ConfigsMissingError: when neither holds ``configs/metadata.json`` (a broken install).
    """
    for folder in (_PACKAGED, _CHECKOUT):
        if (folder / METADATA).is_file():
            return folder
    raise ConfigsMissingError(f"the bundle's configs are missing: neither {_PACKAGED} nor {_CHECKOUT} holds {METADATA}")


def config_dir(bundle_root: str | os.PathLike | None = None) -> Path:
    """The configs a workflow runs: those of the bundle folder ``bundle_root`` when it has ``configs/metadata.json``
    (an unzipped model-zoo bundle, say), else the package's own.

    Args:
        bundle_root: the bundle folder the user selected with ``--bundle_root``, or ``None``.
    """
    if bundle_root is not None and (Path(bundle_root) / METADATA).is_file():
        return Path(bundle_root) / "configs"
    return bundle_source() / "configs"


def config_path(name: str | os.PathLike, bundle_root: str | os.PathLike | None = None) -> Path:
    """A config file a user names: a file of that path, else the bundle's config of that name
    (``inference_onnx.json``).

    Raises:
        ConfigurationError: neither exists.
    """
    from ..errors import ConfigurationError

    path, bundled = Path(name), config_dir(bundle_root) / name
    if path.is_file() or bundled.is_file():
        return path.resolve() if path.is_file() else bundled
    raise ConfigurationError(f"config file {name}: neither {path.resolve()} nor {bundled} exists")


def read_config(*names: str, bundle_root: str | os.PathLike | None = None, **overrides: Any) -> Any:
    """MONAI's ``ConfigParser`` holding the bundle's config files ``names`` (merged in order, e.g. ``"inference.json",
    "evaluate.json"``) with ``overrides`` applied by id, as ``monai.bundle run`` would see them.

    Args:
        names: config file names in the configs folder (:func:`config_dir`), or absolute paths of other files.
        bundle_root: the bundle folder selected by the user (its configs when it is a bundle; its ``bundle_root`` id
            either way), or ``None`` for the package's configs with the current folder as ``bundle_root``.
        overrides: bundle ids to set, e.g. ``roi_size=[64, 64]``.
    """
    from monai.bundle import ConfigParser

    configs = config_dir(bundle_root)
    parser = ConfigParser()
    parser.read_config([str(configs / name) for name in names])
    parser.update({**overrides, "bundle_root": "." if bundle_root is None else str(bundle_root)})
    return parser
