# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The model-zoo bundle folder and release zip that ``axunet bundle`` writes: the zoo's layout, the bundle's files
(:func:`axunet_bundle.cli.configs.bundle_source`) and the runtime code its configs import; beside them, what a pull
request to Project-MONAI/model-zoo adds outside the bundle (its unit tests and ``ci/bundle_custom_data.py`` entry)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import string
import zipfile
from pathlib import Path

import yaml

from .. import outputs
from ..atomic import atomic_directory, atomic_path
from ..errors import AxunetError
from .configs import METADATA, bundle_source, read_config

__all__ = ["BUNDLE_NAME", "BundleError", "bundle", "runtime_code_files", "write_bundle", "write_pull_request_files"]

logger = logging.getLogger(__name__)

#: the folder name of the model-zoo bundle: the zoo's naming (task, data, "segmentation"); MONAI Label derives the
#: task type from "segmentation" in it
BUNDLE_NAME = "brats_axunet_2d_segmentation"
#: the bundle's files other than code and weights, relative to the bundle root, as the model zoo lays them out (the
#: model card links architecture.md and benchmarks.md)
BUNDLE_FILES = (
    "configs",
    "docs/README.md",
    "docs/data_license.txt",
    "docs/architecture.md",
    "docs/benchmarks.md",
    "LICENSE",
    "large_files.yml",
)
LARGE_FILES = "large_files.yml"
WEIGHTS = f"{outputs.MODELS_DIR}/{outputs.WEIGHTS}"
#: the traced TorchScript network the zoo's bundles ship beside the weights (torch.jit.script cannot compile timm's
#: features_only encoder; the pull request lists the bundle in the zoo's exclude_verify_torchscript_list)
TORCHSCRIPT = f"{outputs.MODELS_DIR}/model.ts"
#: the files of a model-zoo pull request outside the bundle folder: templates here -> paths in the zoo's repository
PULL_REQUEST_FILES = {
    "test_bundle.py.in": "ci/unit_tests/test_${bundle_name}.py",
    "test_bundle_dist.py.in": "ci/unit_tests/test_${bundle_name}_dist.py",
    "bundle_custom_data.txt": "ci/bundle_custom_data_${bundle_name}.txt",
}
#: package folders and modules that only the ``axunet`` command line uses (commands, comparison, generated cases,
#: pictures): the configs never import them
COMMAND_LINE_ONLY = ("cli", "comparison", "synthetic", "visualize", "bundle_files", "__main__.py")
#: as the zoo's release (ci/utils.py compress_bundle: ``touch -t 202205300000``): the same files give the same zip
ZIP_DATE_TIME = (2022, 5, 30, 0, 0, 0)
ZIP_LEVEL = 9
WEIGHTS_HASH_TYPE = "sha256"
HASH_CHUNK = 1 << 20

_PACKAGE = Path(__file__).resolve().parents[1]


def runtime_code_files() -> list[Path]:
    """The package's modules that the configs import (everything but the command line), relative to the folder
    that holds the package, e.g. ``axunet_bundle/networks/axunet.py``."""
    files = []
    for path in sorted(_PACKAGE.rglob("*.py")):
        relative = path.relative_to(_PACKAGE)
        if relative.parts[0] not in COMMAND_LINE_ONLY:
            files.append(Path(_PACKAGE.name) / relative)
    return files


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(HASH_CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


class BundleError(AxunetError):
    """The bundle cannot be written: a name MONAI Label would not take, weights that do not fit, an existing output."""


def _check_weights(weights: Path) -> None:
    """The weights must be a plain state dict that loads into the bundle's ``network_def`` as configured."""
    import torch

    from ..weights import load_plain_weights

    if not weights.is_file():
        raise BundleError(f"--weights {weights}: no such file")
    state = load_plain_weights(weights, what="weights file", map_location="cpu")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise BundleError(
            f"--weights {weights}: not a plain state dict (the model zoo and MONAI Label load models/model.pt as "
            "names -> tensors): save network.state_dict(), as the training's models/model.pt is"
        )
    # as the bundle will build it: with the slice size and modalities of the settings shipped beside the weights
    network = read_config("inference.json", ckpt_path=str(weights)).get_parsed_content("network_def")
    try:
        network.load_state_dict(state)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[0]
        raise BundleError(
            f"--weights {weights} do not fit the bundle's network_def ({first}); a model trained with other "
            f"settings (e.g. --modalities) needs them in {outputs.MODEL_SETTINGS} beside the weights (as trained)"
        ) from None


def _large_files_yml(source: Path, hashes: dict[str, str], urls: dict[str, str]) -> str:
    """The bundle's ``large_files.yml``: one entry per large file written (``path``, ``url`` where given, ``hash_val``,
    ``hash_type``), in the zoo's format (model-zoo ci/utils.py ``download_large_files``), else the source's entries."""
    entries = yaml.safe_load(source.read_text(encoding="utf-8"))["large_files"]
    if hashes:
        entries = [
            {
                "path": path,
                **({"url": urls[path]} if path in urls else {}),
                "hash_val": digest,
                "hash_type": WEIGHTS_HASH_TYPE,
            }
            for path, digest in hashes.items()
        ]
    header = (
        "# Large files of the bundle (model zoo format: path, url, hash_val, hash_type). The zoo's CI downloads every\n"
        "# entry before its checks, so each needs the url where the file is hosted (axunet bundle --weights_url).\n"
    )
    return header + yaml.safe_dump({"large_files": entries}, sort_keys=False)


def _export_torchscript(folder: Path) -> None:
    """``models/model.ts``: the network traced by MONAI's ``ckpt_export`` (the configs and metadata inside, as the
    zoo's TorchScript files carry them) from the folder's ``models/model.pt``."""
    from monai.bundle import ckpt_export

    ckpt_export(
        net_id="network_def",
        filepath=str(folder / TORCHSCRIPT),
        ckpt_file=str(folder / WEIGHTS),
        meta_file=str(folder / METADATA),
        config_file=str(folder / "configs" / "inference.json"),
        bundle_root=str(folder),
        use_trace=True,
        # torch.jit.trace's own re-run check is off: scripts/zoo_check.py compares the traced network with eager
        converter_kwargs={"check_trace": False},
    )


def write_pull_request_files(output_dir: str | os.PathLike, name: str = BUNDLE_NAME) -> list[Path]:
    """Write what a model-zoo pull request adding the bundle ``name`` holds outside ``models/<name>``: the unit
    tests ``ci/unit_tests/test_<name>.py`` and ``test_<name>_dist.py`` (run by the zoo's ``ci/unit_tests/runner.py``)
    and the line for the zoo's ``ci/bundle_custom_data.py``. Returns the written files, under ``output_dir``."""
    written = []
    for template, target in PULL_REQUEST_FILES.items():
        text = (_PACKAGE / "cli" / "zoo_pull_request" / template).read_text(encoding="utf-8")
        path = Path(output_dir) / string.Template(target).substitute(bundle_name=name)
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as tmp:
            tmp.write_text(string.Template(text).substitute(bundle_name=name), encoding="utf-8")
        written.append(path)
    return written


def _write_zip(folder: Path, zip_path: Path, leave_out: set[str]) -> None:
    """``<name>_v<version>.zip`` holding ``<name>/...`` as the zoo's release does (deflate, fixed dates)."""
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() not in leave_out)
    with atomic_path(zip_path) as tmp, zipfile.ZipFile(tmp, "w") as archive:
        for path in files:
            info = zipfile.ZipInfo(f"{folder.name}/{path.relative_to(folder).as_posix()}", ZIP_DATE_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes(), compresslevel=ZIP_LEVEL)


def write_bundle(
    output_dir: str | os.PathLike,
    weights: str | os.PathLike | None = None,
    name: str = BUNDLE_NAME,
    overwrite: bool = False,
    weights_url: str | None = None,
    torchscript_url: str | None = None,
) -> tuple[Path, Path]:
    """Write the model-zoo bundle folder ``<output_dir>/<name>`` and its release zip ``<name>_v<version>.zip``.

    The folder holds the zoo's layout: ``configs/``, ``docs/README.md``, ``docs/data_license.txt``, ``LICENSE``,
    ``large_files.yml``, ``models/`` (``model.pt`` and its traced ``model.ts`` when ``weights`` are given) and the
    runtime code the configs import (``axunet_bundle/`` without its command line), so ``python -m monai.bundle run``
    and MONAI Label run it from that folder without this package installed. As in the zoo's release zip,
    ``large_files.yml`` is left out of the zip when the files it lists are inside.

    Args:
        output_dir: where the folder and the zip go.
        weights: a plain state dict for ``models/model.pt`` (checked to load into ``network_def``), or ``None``.
        name: the bundle folder's name; it must contain ``segmentation`` (MONAI Label's task type).
        overwrite: replace an existing folder and zip of the same name.
        weights_url: where ``models/model.pt`` is hosted (written into ``large_files.yml``).
        torchscript_url: where ``models/model.ts`` is hosted.

    Returns:
        the folder and the zip.

    Raises:
        BundleError: for a name without ``segmentation``, an existing output without ``overwrite``, weights that
            are not a plain state dict of the bundle's network, or a url without weights.
    """
    if "segmentation" not in name or Path(name).name != name:
        raise BundleError(f"bundle name {name!r}: a plain folder name containing 'segmentation' (MONAI Label's task)")
    source = bundle_source()
    version = json.loads((source / METADATA).read_text(encoding="utf-8"))["version"]
    folder = Path(output_dir) / name
    zip_path = Path(output_dir) / f"{name}_v{version}.zip"
    existing = [p for p in (folder, zip_path) if p.exists()]
    if existing and not overwrite:
        raise BundleError(f"{existing[0]} exists: pass --overwrite True to replace it, or another output folder")
    weights_path = Path(weights) if weights is not None else None
    if weights_path is not None:
        _check_weights(weights_path)
    elif weights_url is not None or torchscript_url is not None:
        raise BundleError("--weights_url and --torchscript_url describe the files of --weights: give --weights FILE")
    urls = {path: url for path, url in ((WEIGHTS, weights_url), (TORCHSCRIPT, torchscript_url)) if url}

    with atomic_directory(folder) as tmp:
        for item in BUNDLE_FILES:
            src, dst = source / item, tmp / item
            dst.parent.mkdir(parents=True, exist_ok=True)
            if src.is_dir():
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                shutil.copy2(src, dst)
        for relative in runtime_code_files():
            (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(_PACKAGE.parent / relative, tmp / relative)
        (tmp / outputs.MODELS_DIR).mkdir()
        hashes = {}
        if weights_path is not None:
            shutil.copy2(weights_path, tmp / WEIGHTS)
            settings = weights_path.with_name(outputs.MODEL_SETTINGS)  # the slice size etc. travel with the weights
            if settings.is_file():
                shutil.copy2(settings, tmp / outputs.MODELS_DIR / outputs.MODEL_SETTINGS)
            _export_torchscript(tmp)
            hashes = {path: _sha256(tmp / path) for path in (WEIGHTS, TORCHSCRIPT)}
        (tmp / LARGE_FILES).write_text(_large_files_yml(source / LARGE_FILES, hashes, urls), encoding="utf-8")
    _write_zip(folder, zip_path, leave_out={LARGE_FILES} if weights_path is not None else set())
    return folder, zip_path


def bundle(
    output_dir: str,
    weights: str | None = None,
    weights_url: str | None = None,
    torchscript_url: str | None = None,
    name: str = BUNDLE_NAME,
    overwrite: bool = False,
) -> None:
    """Write the MONAI model-zoo bundle: the folder OUTPUT_DIR/brats_axunet_2d_segmentation (configs/, docs/,
    LICENSE, large_files.yml, models/, and the runtime code its configs import), its release zip
    OUTPUT_DIR/brats_axunet_2d_segmentation_v<version>.zip, and what a pull request to the model zoo adds beside
    the bundle (OUTPUT_DIR/ci/: its unit tests and the ci/bundle_custom_data.py entry). The folder runs with
    `python -m monai.bundle run ...` and in MONAI Label (<app>/model/<name>) without this package installed.

    Args:
        output_dir: folder to write the bundle folder, the zip and ci/ into.
        weights: trained weights (a plain state dict, e.g. models/model.pt) to ship as models/model.pt, with the
            model_settings.json beside them and the traced models/model.ts; without them the bundle has no weights
            (the zip stays small).
        weights_url: where models/model.pt will be downloadable (large_files.yml; the zoo's CI downloads it).
        torchscript_url: where models/model.ts will be downloadable.
        name: the bundle's folder name (must contain "segmentation").
        overwrite: replace an existing bundle folder and zip.

    Example:
        axunet bundle zoo --weights models/model.pt
    """
    folder, zip_path = write_bundle(
        output_dir,
        weights=weights,
        name=name,
        overwrite=overwrite,
        weights_url=weights_url,
        torchscript_url=torchscript_url,
    )
    with zipfile.ZipFile(zip_path) as archive:
        count = len(archive.namelist())
    print(f"wrote {folder}")
    print(f"wrote {zip_path} ({count} files, {zip_path.stat().st_size / 1024:.0f} KiB)")
    for path in write_pull_request_files(output_dir, name):
        print(f"wrote {path}")
    missing = [p for p, url in ((WEIGHTS, weights_url), (TORCHSCRIPT, torchscript_url)) if weights and not url]
    if missing:
        print(
            f"note: no url for {', '.join(missing)} in large_files.yml: the model zoo's CI downloads every large file "
            "first, so give --weights_url and --torchscript_url before opening the pull request"
        )
    if not weights:
        print("note: no --weights: the bundle has no models/model.pt, which the model zoo requires")
