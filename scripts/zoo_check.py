# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The MONAI model zoo's checks, run on a bundle folder with MONAI's own functions: ``python scripts/zoo_check.py``.

The checks and their order follow Project-MONAI/model-zoo ``ci/verify_bundle.py`` (``verify``: large files,
directory, version, metadata, properties, data shape, TorchScript), then what the zoo's other PR jobs check: the pins
of ``metadata.json`` on the zoo's CI Python (``ci/get_bundle_requirements.py``, then ``pip install`` on Python 3.10),
ONNX (the zoo exports ONNX only for TensorRT, ``ci/verify_tensorrt.py``; here onnxruntime on the CPU), the zoo's
pre-commit hooks and its code format (``runtests.sh --codeformat``: black, isort, flake8). The zoo's own settings
for those are copies in ``scripts/zoo_ci/`` and the tools run on the bundle's code laid out as in the zoo's
repository (``models/<name>/``).

Everything runs offline: the metadata schema must be a local file, large files are not downloaded, and when
``models/model.pt`` is absent the export checks use an untrained plain state dict of ``network_def`` written to a
temporary folder (as the zoo's ``_produce_fake_weights`` does), never into the bundle.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import fnmatch
import importlib.util
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

__all__ = [
    "CheckResult",
    "CHECKS",
    "run_zoo_checks",
    "format_results",
    "find_schema",
    "bundle_files",
    "zoo_check",
    "main",
    "PASS",
    "FAIL",
    "WARN",
    "SKIP",
]

PASS, FAIL, WARN, SKIP = "PASS", "FAIL", "WARN", "SKIP"

#: check names, in the order they run (model-zoo ci/verify_bundle.py ``verify`` order first)
CHECKS = (
    "large_files",
    "necessary_files",
    "preferred_files",
    "version",
    "metadata",
    "properties",
    "net_in_out",
    "torchscript",
    "pins",
    "onnx",
    "hooks",
    "code_format",
)

# model-zoo ci/verify_bundle.py
NECESSARY_FILES = ("configs/metadata.json", "LICENSE")
MODEL_FILE = "model.pt"
TS_FILE = "model.ts"
CONFIG_SUFFIXES = ("json", "yaml", "yml")
NET_ID = "network_def"
# model-zoo ci/utils.py SUPPORTED_HASH_TYPES
HASH_TYPES = ("md5", "sha1", "sha256", "sha512")
#: monai.apps.utils.download_url's hash type when an entry gives none
DOWNLOAD_HASH_TYPE = "sha256"
#: the model zoo's settings files (copies): setup.cfg (flake8, isort), pyproject.toml (black), its pre-commit hooks
ZOO_SETTINGS = Path(__file__).resolve().parent / "zoo_ci"
#: the Python of the zoo's premerge jobs (.github/workflows/premerge-cpu.yml: 3.10.14)
ZOO_PYTHON = "3.10"
#: monai.bundle.utils.DEPRECATED_ID_MAPPING's keys: MONAI replaces required_packages_version with their contents
DEPRECATED_METADATA_KEYS = ("optional_packages_version",)
#: this project's own code folders, formatted with its pyproject.toml (the bundle's code: with the zoo's settings)
CODE_DIRS = ("scripts", "tests")
FORMAT_TOOLS = ("black", "isort", "flake8")
#: folders of the package that only the command line uses (axunet_bundle.cli.zoo_bundle.COMMAND_LINE_ONLY, which a
#: bundle folder checked by a Python without this package cannot import; tests/test_zoo_check.py keeps the two
#: equal): not in a zoo bundle, so not checked with the zoo's settings
NOT_IN_BUNDLE = (
    "tests/",
    "scripts/",
    "axunet_bundle/bundle_files/",
    "axunet_bundle/cli/",
    "axunet_bundle/comparison/",
    "axunet_bundle/synthetic/",
    "axunet_bundle/visualize/",
    "axunet_bundle/__main__.py",
)
#: pre-commit-hooks 4.6.0 (.pre-commit-hooks.yaml): each hook's module (pre_commit_hooks.<module>:main, its console
#: script) and the file types pre-commit gives it
HOOKS = {
    "end-of-file-fixer": ("end_of_file_fixer", "text"),
    "trailing-whitespace": ("trailing_whitespace_fixer", "text"),
    "check-yaml": ("check_yaml", "yaml"),
    "check-docstring-first": ("check_docstring_first", "python"),
    "check-executables-have-shebangs": ("check_executables_have_shebangs", "executable"),
    "check-toml": ("check_toml", "toml"),
    "check-case-conflict": ("check_case_conflict", "file"),
    "check-added-large-files": ("check_added_large_files", "file"),
    "detect-private-key": ("detect_private_key", "text"),
    "forbid-new-submodules": (None, "file"),  # a git-history check: a bundle folder has no submodules
    "pretty-format-json": ("pretty_format_json", "json"),
    "mixed-line-ending": ("mixed_line_ending", "text"),
}
#: file name endings per pre-commit type (identify's mapping, for the types the hooks use)
TYPE_SUFFIXES = {"python": (".py",), "yaml": (".yaml", ".yml"), "toml": (".toml",), "json": (".json",)}
#: offline copies of the metadata schema: the zoo's ci/prepare_schema.py puts it at eval/schema.json; this
#: project keeps MONAI's schemas in ../shared/monai beside the checkout
ZOO_SCHEMA_FILE = "eval/schema.json"
SHARED_SCHEMA_DIR = Path("..", "shared", "monai")
DEFAULT_SCHEMA_NAME = "meta_schema_20240725.json"
#: the bundle's own declaration, the counterpart of listing it in model-zoo ci/bundle_custom_data.py
#: ``exclude_verify_torchscript_list``: timm's ``features_only`` encoder cannot be compiled by ``torch.jit.script``
#: (``'functools.partial' object has no attribute '__name__'``), so TorchScript is exported by tracing
TORCHSCRIPT_BY_TRACE = True
#: export outputs must match the eager network to this (max abs difference)
EXPORT_ATOL = 1e-4
#: batch and ``n`` of a second input, unlike the trace input, to show the traced graph is not shape-specialised
GENERALISATION_BATCH = 2
GENERALISATION_N = 2
SEED = 0
#: always skipped when walking a bundle that is not in a git work tree (besides its .gitignore patterns)
ALWAYS_IGNORED = (".git/", ".venv*/", "__pycache__/", "*.egg-info/", ".pytest_cache/", ".hypothesis/", ".pytype/")
MAX_LISTED = 5
#: exception messages longer than this are cut (a state dict mismatch lists every key)
MAX_DETAIL_CHARS = 400


@dataclasses.dataclass
class CheckResult:
    """The outcome of one check.

    Args:
        name: one of :data:`CHECKS`.
        status: ``PASS``, ``FAIL``, ``WARN`` (would stop the zoo's CI but cannot be fixed here, e.g. weights not
            published; a failure with ``strict``) or ``SKIP`` (the zoo does not run it for this bundle).
        detail: what was checked and what was found.
        seconds: wall time of the check.
    """

    name: str
    status: str
    detail: str
    seconds: float = 0.0

    @property
    def failed(self) -> bool:
        return self.status == FAIL

    def line(self) -> str:
        return f"{self.status} {self.name:<16} {self.detail} [{self.seconds:.1f} s]"


class _Failed(Exception):
    """A check's failure, with the message to print."""


class _Warned(Exception):
    """A check's warning, with the message to print."""


class _Skipped(Exception):
    """A check the zoo does not run for this bundle, with the reason."""


@dataclasses.dataclass
class _Bundle:
    """What the checks share: paths, the weights to export and the notes to print about them."""

    root: Path
    model_dir: Path
    work_dir: Path
    schema: Path | None
    _ckpt: Path | None = None

    @property
    def meta_file(self) -> Path:
        return self.root / "configs" / "metadata.json"

    @property
    def inference_config(self) -> Path | None:
        name = _find_bundle_file(self.root / "configs", "inference")
        return None if name is None else self.root / "configs" / name

    def metadata(self) -> dict:
        try:
            return json.loads(self.meta_file.read_text(encoding="utf-8"))
        except FileNotFoundError as e:
            raise _Failed(f"{_rel(self.meta_file, self.root)} not found") from e
        except json.JSONDecodeError as e:
            raise _Failed(f"configs/metadata.json is not valid JSON: {e}") from e

    def require_inference_config(self) -> Path:
        config = self.inference_config
        if config is None:
            raise _Failed("no configs/inference.json|yaml|yml")
        return config

    def ckpt_file(self) -> tuple[Path, str]:
        """The weights to export and a note on where they come from; makes untrained ones when there are none."""
        real = self.model_dir / MODEL_FILE
        if real.is_file():
            _require_plain_state_dict(real)
            return real, f"weights {_rel(real, self.root)}"
        if self._ckpt is None:
            self._ckpt = self.work_dir / MODEL_FILE
            _produce_fake_weights(self.require_inference_config(), self.meta_file, self._ckpt)
        return self._ckpt, f"{_rel(real, self.root)} absent: UNTRAINED weights from {NET_ID} ({self._ckpt})"


def _require_plain_state_dict(path: Path) -> None:
    """ckpt_export as the zoo calls it (no ``key_in_ckpt``) loads only a plain state dict: names -> tensors."""
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    if not isinstance(ckpt, dict) or not all(isinstance(v, torch.Tensor) for v in ckpt.values()):
        keys = _listing([str(k) for k in ckpt][:MAX_LISTED]) if isinstance(ckpt, dict) else type(ckpt).__name__
        raise _Failed(
            f"{path} is not a plain state dict (top level: {keys}); the zoo's ckpt_export call needs one: "
            "save network.state_dict(), as the training config's CheckpointSaver does"
        )


def _short(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 5] + " ..."


def _rel(path: Path, root: Path) -> str:
    try:
        return path.resolve().relative_to(root.resolve()).as_posix()
    except ValueError:
        return str(path)


def _find_bundle_file(root_dir: Path, stem: str) -> str | None:
    """``<stem>.json|yaml|yml`` in ``root_dir`` (model-zoo ci/verify_bundle.py ``_find_bundle_file``)."""
    if not root_dir.is_dir():
        return None
    names = set(os.listdir(root_dir))
    found = None
    for suffix in CONFIG_SUFFIXES:
        if f"{stem}.{suffix}" in names:
            found = f"{stem}.{suffix}"
    return found


def _parser(config_file: Path | None = None, meta_file: Path | None = None) -> Any:
    """MONAI's ``ConfigParser`` with a bundle's config and metadata files read, as the zoo's scripts read them."""
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    if config_file is not None:
        parser.read_config(f=str(config_file))
    if meta_file is not None:
        parser.read_meta(f=str(meta_file))
    return parser


def _produce_fake_weights(config_file: Path, meta_file: Path, output: Path) -> None:
    """A plain state dict of an untrained ``network_def`` (model-zoo ci/verify_bundle.py ``_produce_fake_weights``),
    with ImageNet weights off when the definition has a ``pretrained`` argument."""
    import torch

    parser = _parser(config_file, meta_file)
    if isinstance(parser[NET_ID], dict) and "pretrained" in parser[NET_ID]:
        parser[f"{NET_ID}#pretrained"] = False
    with torch.random.fork_rng():  # reproducible weights, the caller's random state untouched
        torch.manual_seed(SEED)
        network = parser.get_parsed_content(NET_ID)
    output.parent.mkdir(parents=True, exist_ok=True)
    torch.save(network.state_dict(), output)


def find_schema(bundle_root: str | os.PathLike, schema: str | os.PathLike | None = None) -> Path | None:
    """The local metadata schema to validate against, or None when there is none.

    Args:
        bundle_root: the bundle.
        schema: an explicit schema file (used as given, even when missing, so that the error names it).

    Without ``schema``: ``<bundle_root>/eval/schema.json`` (where the zoo's ci/prepare_schema.py puts it), then
    ``<bundle_root>/../shared/monai/<file name of the metadata's schema URL>``.
    """
    if schema is not None:
        return Path(schema)
    root = Path(bundle_root)
    name = DEFAULT_SCHEMA_NAME
    with contextlib.suppress(OSError, ValueError, AttributeError):
        url = json.loads((root / "configs" / "metadata.json").read_text(encoding="utf-8")).get("schema")
        name = str(url).rsplit("/", 1)[-1] or DEFAULT_SCHEMA_NAME
    for candidate in (root / ZOO_SCHEMA_FILE, root / SHARED_SCHEMA_DIR / name):
        if candidate.is_file():
            return candidate.resolve()
    return None


# ---------------------------------------------------------------------------------------------------------------
# the files of a bundle, as git (or .gitignore) sees them


def _git_files(root: Path) -> list[str] | None:
    """Files git would commit with ``git add -A`` (tracked + untracked not ignored), relative to ``root``; None
    outside a git work tree."""
    try:
        inside = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-inside-work-tree"], capture_output=True, text=True
        )
        if inside.returncode != 0 or inside.stdout.strip() != "true":
            return None
        listed = subprocess.run(
            ["git", "-C", str(root), "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
            capture_output=True,
            check=True,
        )
    except (OSError, subprocess.CalledProcessError):
        return None
    names = {name for name in listed.stdout.decode("utf-8", "surrogateescape").split("\0") if name}
    return sorted(name for name in names if (root / name).is_file())


def _ignore_patterns(root: Path) -> list[str]:
    patterns = list(ALWAYS_IGNORED)
    gitignore = root / ".gitignore"
    if gitignore.is_file():
        for line in gitignore.read_text(encoding="utf-8").splitlines():
            line = line.strip()
            if line and not line.startswith(("#", "!")):  # negations are not supported by this fallback
                patterns.append(line)
    return patterns


def _ignored(rel: str, is_dir: bool, patterns: Sequence[str]) -> bool:
    """A subset of gitignore matching: ``dir/`` patterns, anchored patterns (containing ``/``), globs on names."""
    name = rel.rsplit("/", 1)[-1]
    for pattern in patterns:
        dir_only = pattern.endswith("/")
        if dir_only and not is_dir:
            continue
        body = pattern.strip("/")
        if "/" in pattern.rstrip("/"):
            if fnmatch.fnmatchcase(rel, body):
                return True
        elif fnmatch.fnmatchcase(name, body):
            return True
    return False


def _walk_files(root: Path) -> list[str]:
    patterns = _ignore_patterns(root)
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        base = Path(dirpath).relative_to(root).as_posix()
        prefix = "" if base == "." else base + "/"
        dirnames[:] = sorted(d for d in dirnames if not _ignored(prefix + d, True, patterns))
        found += [prefix + f for f in filenames if not _ignored(prefix + f, False, patterns)]
    return sorted(found)


def bundle_files(bundle_root: str | os.PathLike) -> tuple[list[str], str]:
    """The bundle's files that would go into git, relative posix paths, and how they were listed.

    Args:
        bundle_root: the bundle.

    In a git work tree: ``git ls-files --cached --others --exclude-standard`` (tracked files and new files that are
    not ignored). Elsewhere: a walk of the tree that skips :data:`ALWAYS_IGNORED` and the patterns of the bundle's
    ``.gitignore``.
    """
    root = Path(bundle_root)
    files = _git_files(root)
    if files is not None:
        return files, "git ls-files (tracked + untracked, not ignored)"
    return _walk_files(root), "file tree minus .gitignore patterns (not a git work tree)"


def _would_be_committed(root: Path, rel: str) -> bool:
    """Whether ``rel`` (present or not) is tracked or not ignored: ``git check-ignore``, else .gitignore patterns.
    A folder outside git without a ``.gitignore`` (an unzipped bundle) says nothing about commits: False."""
    if _git_files(root) is not None:
        tracked = subprocess.run(["git", "-C", str(root), "ls-files", "--error-unmatch", rel], capture_output=True)
        ignored = subprocess.run(["git", "-C", str(root), "check-ignore", "-q", "--no-index", rel])
        return tracked.returncode == 0 or ignored.returncode != 0
    if not (root / ".gitignore").is_file():
        return False
    patterns = _ignore_patterns(root)
    parts = rel.split("/")
    return not any(_ignored("/".join(parts[: i + 1]), i < len(parts) - 1, patterns) for i in range(len(parts)))


def _large_file_entries(root: Path) -> tuple[str | None, list[dict]]:
    name = _find_bundle_file(root, "large_files")
    if name is None:
        return None, []
    entries = _parser(root / name).get().get("large_files")  # as model-zoo ci/utils.py download_large_files
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise _Failed(f"{name}: expected a list of entries under 'large_files'")
    return name, entries


def _listing(names: Sequence[str], limit: int = MAX_LISTED) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" (+{len(names) - limit} more)" if len(names) > limit else "")


# ---------------------------------------------------------------------------------------------------------------
# the checks, each returns its detail or raises _Failed / _Warned / _Skipped


def _check_large_files(bundle: _Bundle) -> str:
    """model-zoo ci/verify_bundle.py step 1 (ci/utils.py download_large_files); offline: format only, no download."""
    from monai.apps.utils import check_hash

    name, entries = _large_file_entries(bundle.root)
    if name is None:
        return "no large_files.yml|yaml|json: nothing to download"
    problems, no_url = [], []
    for i, entry in enumerate(entries):
        path = entry.get("path")
        if not path:
            problems.append(f"entry {i} has no 'path'")
            continue
        hash_type = str(entry.get("hash_type") or DOWNLOAD_HASH_TYPE).lower()
        if hash_type not in HASH_TYPES:
            problems.append(f"{path}: hash_type {hash_type!r} is not one of {HASH_TYPES}")
        if _would_be_committed(bundle.root, str(path)):
            problems.append(f"{path} would be committed: large files must be gitignored, not in git")
        local = bundle.root / path
        if entry.get("hash_val") and local.is_file() and not check_hash(local, entry["hash_val"], hash_type):
            problems.append(f"{path}: the local file does not match its {hash_type} hash_val")
        if not entry.get("url"):
            no_url.append(path)
    if problems:
        raise _Failed(f"{name}: " + "; ".join(problems))
    paths = ", ".join(str(e["path"]) for e in entries)
    if no_url:
        raise _Warned(
            f"{name} lists {paths}; no url for {', '.join(no_url)}: the zoo's CI stops at its first step ('Download "
            "large files ... error': download_url() needs a url) until the weights are hosted with url + hash_val"
        )
    return f"{name} lists {paths} (not downloaded offline)"


def _check_necessary_files(bundle: _Bundle) -> str:
    missing = [f for f in NECESSARY_FILES if not (bundle.root / f).is_file()]
    if missing:
        raise _Failed(f"necessary file(s) missing: {', '.join(missing)}")
    return f"{', '.join(NECESSARY_FILES)} present"


def _check_preferred_files(bundle: _Bundle) -> str:
    config = bundle.require_inference_config()
    model = bundle.model_dir / MODEL_FILE
    found = f"{_rel(config, bundle.root)} present"
    if model.is_file():
        return f"{found}; {_rel(model, bundle.root)} present"
    _, entries = _large_file_entries(bundle.root)
    listed = {str(e.get("path")) for e in entries}
    if _rel(model, bundle.root) not in listed:
        raise _Failed(f"{found}; {_rel(model, bundle.root)} is neither present nor listed in large_files.yml")
    return (
        f"{found}; {_rel(model, bundle.root)} absent here, listed in large_files.yml (the zoo downloads it first); "
        "the export checks use untrained weights"
    )


def _check_version(bundle: _Bundle) -> str:
    metadata = bundle.metadata()
    for key in ("version", "changelog"):
        if key not in metadata:
            raise _Failed(f"'{key}' is missing in configs/metadata.json")
    version = metadata["version"]
    if not isinstance(metadata["changelog"], dict) or version not in metadata["changelog"]:
        raise _Failed(f"version {version} is missing in 'changelog' of configs/metadata.json")
    return f"version {version} is in the changelog (the zoo also rejects a version already in its model_info.json)"


def _check_metadata(bundle: _Bundle) -> str:
    from monai.bundle import verify_metadata

    url = bundle.metadata().get("schema")
    if bundle.schema is None:
        raise _Failed(
            f"schema not available offline: download {url} and pass --schema FILE "
            f"(looked for {ZOO_SCHEMA_FILE} and {SHARED_SCHEMA_DIR.as_posix()}/<schema file name>)"
        )
    if not bundle.schema.is_file():
        raise _Failed(f"schema not available offline: {bundle.schema} does not exist (metadata schema: {url})")
    try:
        # an existing filepath is never downloaded again (monai.apps.utils.download_url)
        verify_metadata(meta_file=str(bundle.meta_file), filepath=str(bundle.schema))
    except ValueError as e:
        raise _Failed(" ".join(str(e).split())) from e
    return f"configs/metadata.json follows {bundle.schema.name} ({bundle.schema})"


def _check_properties(bundle: _Bundle) -> str:
    apps = bundle.metadata().get("supported_apps")
    if not apps:
        raise _Skipped(
            "the zoo checks workflow properties only for the apps in supported_apps (empty here); ConfigWorkflow "
            "check_properties of train and infer runs in tests/test_bundle_train.py and test_bundle_workflows.py"
        )
    raise _Skipped(
        f"supported_apps {sorted(apps)}: the zoo takes each app's bundle_properties.py from its own repository, "
        "which this offline check does not have"
    )


def _check_net_in_out(bundle: _Bundle) -> str:
    from monai.bundle import verify_net_in_out

    config = bundle.require_inference_config()
    # as model-zoo ci/verify_bundle.py verify_data_shape: MONAI's defaults p = n = any = 1
    verify_net_in_out(
        net_id=NET_ID, meta_file=str(bundle.meta_file), config_file=str(config), bundle_root=str(bundle.root)
    )
    shape = _fake_input_shape(bundle)
    return f"{NET_ID} of {_rel(config, bundle.root)} on a random {_shape(shape)} input: channels and dtype match pred"


def _fake_input_shape(bundle: _Bundle, n: int = 1) -> tuple[int, ...]:
    from monai.bundle.scripts import _get_fake_spatial_shape, _get_net_io_info

    channels, spatial, *_ = _get_net_io_info(parser=_parser(meta_file=bundle.meta_file))
    return (1, channels, *_get_fake_spatial_shape(spatial, n=n))


def _shape(shape: Sequence[int]) -> str:
    return "x".join(str(s) for s in shape)


def _eager_network(bundle: _Bundle, ckpt: Path) -> Any:
    import torch

    parser = _parser(bundle.require_inference_config(), bundle.meta_file)
    parser["bundle_root"] = str(bundle.root)
    net = parser.get_parsed_content(NET_ID)
    net.load_state_dict(torch.load(ckpt, map_location="cpu", weights_only=True))
    return net.eval()


def _max_abs_diff(a: Any, b: Any) -> float:
    return float((a - b).abs().max())


def _check_torchscript(bundle: _Bundle) -> str:
    import torch
    from monai.bundle import ckpt_export

    ckpt, origin = bundle.ckpt_file()
    config = bundle.require_inference_config()
    common = dict(
        net_id=NET_ID,
        ckpt_file=str(ckpt),
        meta_file=str(bundle.meta_file),
        config_file=str(config),
        bundle_root=str(bundle.root),
    )
    scripted = bundle.work_dir / "verify_model.ts"
    try:  # exactly the zoo's call (ci/verify_bundle.py verify_torchscript), into the work folder
        ckpt_export(filepath=str(scripted), **common)
        script_error = None
    except Exception as e:  # noqa: B902 - any scripting error means "cannot be scripted"
        script_error = _short(f"{type(e).__name__}: {e}".splitlines()[0], MAX_DETAIL_CHARS // 2)
    if script_error is not None and not TORCHSCRIPT_BY_TRACE:
        raise _Failed(f"ckpt_export (torch.jit.script) fails: {script_error}")
    if script_error is None:
        exported, how = scripted, "scripted"
    else:
        exported, how = bundle.work_dir / "verify_model_traced.ts", "traced"
        # check_trace off: the comparison below replaces torch.jit.trace's own re-run
        ckpt_export(filepath=str(exported), use_trace=True, converter_kwargs={"check_trace": False}, **common)
    net = _eager_network(bundle, ckpt)
    module = torch.jit.load(str(exported), map_location="cpu")
    generator = torch.Generator().manual_seed(SEED)
    diffs = {}
    batch2 = (GENERALISATION_BATCH, *_fake_input_shape(bundle, n=GENERALISATION_N)[1:])
    for shape in (_fake_input_shape(bundle), batch2):
        x = torch.rand(*shape, generator=generator)
        with torch.no_grad():
            diffs[_shape(shape)] = _max_abs_diff(module(x), net(x))
    text = ", ".join(f"{s}: {d:.2e}" for s, d in diffs.items())
    provided = bundle.model_dir / TS_FILE
    if provided.is_file():  # the zoo loads a provided models/model.ts too
        torch.jit.load(str(provided), map_location="cpu")
        text += f"; {_rel(provided, bundle.root)} loads"
    if max(diffs.values()) > EXPORT_ATOL:
        raise _Failed(f"{how} TorchScript differs from eager: max abs diff {text} > {EXPORT_ATOL:g} ({origin})")
    if script_error is None:
        note = "scripted by ckpt_export" + (
            " (scripting works now: TORCHSCRIPT_BY_TRACE and the zoo exclusion can go)" if TORCHSCRIPT_BY_TRACE else ""
        )
    else:
        note = (
            f"torch.jit.script fails as declared ({script_error}; zoo: list the bundle in exclude_verify_torchscript_"
            "list), exported by ckpt_export(use_trace=True)"
        )
    return f"{note}; max abs diff vs eager {text} <= {EXPORT_ATOL:g}; {origin}"


def _check_onnx(bundle: _Bundle) -> str:
    import torch

    missing = [m for m in ("onnx", "onnxruntime") if importlib.util.find_spec(m) is None]
    if missing:
        raise _Failed(f"{' and '.join(missing)} not installed: pip install -e .[test]")
    from axunet_bundle.export import OnnxNetwork, export_onnx  # the bundle's own copy: its root is on sys.path

    ckpt, origin = bundle.ckpt_file()
    net = _eager_network(bundle, ckpt)
    x = torch.rand(*_fake_input_shape(bundle), generator=torch.Generator().manual_seed(SEED))
    path = export_onnx(net, x, bundle.work_dir / "verify_model.onnx")
    with torch.no_grad():
        diff = _max_abs_diff(OnnxNetwork(path)(x), net(x))
    if not diff <= EXPORT_ATOL:
        raise _Failed(f"ONNX Runtime differs from eager: max abs diff {diff:.2e} > {EXPORT_ATOL:g} ({origin})")
    return f"exported, run by onnxruntime (CPU) on {_shape(x.shape)}: max abs diff vs eager {diff:.2e}; {origin}"


def _pins(metadata: dict) -> list[str]:
    """``name==version`` for what the zoo installs (ci/get_bundle_requirements.py): monai, torch, numpy and
    ``required_packages_version``."""
    pins = [
        f"{name}=={metadata[key]}"
        for name, key in (("monai", "monai_version"), ("torch", "pytorch_version"), ("numpy", "numpy_version"))
        if key in metadata
    ]
    return pins + [f"{name}=={version}" for name, version in metadata.get("required_packages_version", {}).items()]


def _check_pins(bundle: _Bundle) -> str:
    """Every pin has a wheel for the zoo's CI Python, from the package index this machine's pip uses."""
    metadata = bundle.metadata()
    deprecated = [key for key in DEPRECATED_METADATA_KEYS if key in metadata]
    if deprecated:
        raise _Failed(
            f"metadata.json has {', '.join(deprecated)}: MONAI reads it as required_packages_version and drops the "
            "real one; name optional packages in the model card instead"
        )
    pins = _pins(metadata)
    queries = {  # all at once: each asks the index over the network
        pin: subprocess.Popen(
            [
                sys.executable,
                "-m",
                "pip",
                "index",
                "versions",
                pin.split("==")[0],
                "--python-version",
                ZOO_PYTHON,
                "--only-binary=:all:",
                "--pre",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for pin in pins
    }
    missing = []
    for pin, query in queries.items():
        name, version = pin.split("==")
        out, err = query.communicate()
        if query.returncode != 0:
            raise _Failed(f"pip index versions {name} failed: {_short(err.strip(), 200)}")
        line = next((x for x in out.splitlines() if x.startswith("Available versions:")), "")
        available = [v.strip() for v in line.partition(":")[2].split(",")]
        if version not in available:
            missing.append(f"{pin} (newest with a wheel for Python {ZOO_PYTHON}: {available[0] or 'none'})")
    if missing:
        raise _Failed(f"no wheel for the zoo's Python {ZOO_PYTHON}: {_listing(missing)}")
    return f"{len(pins)} pins, each with a wheel for Python {ZOO_PYTHON}: {', '.join(pins)}"


def _hook_files(bundle: _Bundle, files: Sequence[str], kind: str, exclude: str | None) -> list[str]:
    import re

    def is_text(name: str) -> bool:
        with open(bundle.root / name, "rb") as f:
            return b"\0" not in f.read(8192)

    chosen = []
    for name in files:
        if exclude and re.search(exclude, name):
            continue
        if kind == "file" or (kind in TYPE_SUFFIXES and name.endswith(TYPE_SUFFIXES[kind])):
            chosen.append(name)
        elif kind == "text" and is_text(name):
            chosen.append(name)
        elif kind == "executable" and is_text(name) and os.access(bundle.root / name, os.X_OK):
            chosen.append(name)
    return chosen


def _check_hooks(bundle: _Bundle) -> str:
    """The zoo's pre-commit hooks (scripts/zoo_ci/pre-commit-config.yaml) on the files git would commit, as
    pre-commit runs them: a hook fails when it exits non-zero or changes a file (fixers run on a copy)."""
    import shutil

    import yaml

    if importlib.util.find_spec("pre_commit_hooks") is None:
        raise _Failed("pre-commit-hooks not installed: pip install -e .[test]")
    config = yaml.safe_load((ZOO_SETTINGS / "pre-commit-config.yaml").read_text(encoding="utf-8"))
    files, how = bundle_files(bundle.root)
    copy = bundle.work_dir / "hooks"
    shutil.rmtree(copy, ignore_errors=True)
    for name in files:
        (copy / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.root / name, copy / name)
    # staged in a repository of their own, as pre-commit sees them (check-case-conflict and the size check ask git)
    for command in (["init", "-q"], ["add", "-A"]):
        subprocess.run(["git", *command], cwd=copy, check=True, capture_output=True)
    problems, ran = [], []
    for hook in config["repos"][0]["hooks"]:
        module, kind = HOOKS[hook["id"]]
        if module is None or hook["id"] in ran:
            continue
        ran.append(hook["id"])
        args = list(hook.get("args", []))
        if hook["id"] == "check-added-large-files":
            args.append("--enforce-all")  # pre-commit passes only newly added files; here every file is new
        chosen = _hook_files(bundle, files, kind, hook.get("exclude"))
        if not chosen:
            continue
        before = {name: (copy / name).read_bytes() for name in chosen}
        entry = f"import sys; from pre_commit_hooks.{module} import main; sys.exit(main())"
        done = subprocess.run([sys.executable, "-c", entry, *args, *chosen], cwd=copy, capture_output=True, text=True)
        changed = [name for name in chosen if (copy / name).read_bytes() != before[name]]
        for name in changed:
            (copy / name).write_bytes(before[name])
        if done.returncode != 0 or changed:
            output = [line.strip() for line in (done.stdout + done.stderr).splitlines() if line.strip()]
            problems.append(f"{hook['id']}: {_listing(output or [f'changes {n}' for n in changed], 3)}")
    if problems:
        raise _Failed("; ".join(problems))
    return f"{len(ran)} hooks pass on {len(files)} files ({how})"


def _problems(tool: str, output: str, root: Path) -> str:
    lines = [
        line.strip()
        for line in output.splitlines()
        if line.startswith(("would reformat", "ERROR", "error")) or (tool == "flake8" and line.strip())
    ]
    lines = [line.replace(f"{root}{os.sep}", "") for line in lines or [output.strip()[-200:]]]
    return f"{tool}: {_listing(lines, 3)}"


def _run_tools(commands: dict[str, list[str]], cwd: Path) -> list[str]:
    running = {
        tool: subprocess.Popen(
            [sys.executable, "-m", *args], cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        for tool, args in commands.items()
    }
    problems = []
    for tool, process in running.items():
        output, _ = process.communicate()
        if process.returncode != 0:
            problems.append(_problems(tool, output, cwd))
    return problems


def _check_code_format(bundle: _Bundle) -> str:
    """The bundle's Python with the zoo's settings, laid out as in the zoo (``models/<name>/``; the zoo's
    runtests.sh --codeformat commands from its root); this project's scripts/ and tests/ with its own settings."""
    import shutil

    missing = [tool for tool in FORMAT_TOOLS if importlib.util.find_spec(tool) is None]
    if missing:
        raise _Failed(f"{', '.join(missing)} not installed: pip install -e .[test]")
    files, _ = bundle_files(bundle.root)
    code = [f for f in files if f.endswith(".py") and not f.startswith(NOT_IN_BUNDLE)]
    zoo = bundle.work_dir / "zoo"
    shutil.rmtree(zoo, ignore_errors=True)
    for name in code:
        target = zoo / "models" / bundle.root.name / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(bundle.root / name, target)
    for settings in ("setup.cfg", "pyproject.toml"):
        shutil.copy2(ZOO_SETTINGS / settings, zoo / settings)
    problems = _run_tools(
        {
            "black": ["black", "--skip-magic-trailing-comma", "--check", "."],
            "isort": ["isort", "--check", "."],
            "flake8": ["flake8", ".", "--count", "--statistics"],
        },
        zoo,
    )
    dirs = [d for d in CODE_DIRS if (bundle.root / d).is_dir()]
    if dirs:
        own_settings = {
            "black": ["black", "--check", *dirs],
            "isort": ["isort", "--check-only", *dirs],
            "flake8": ["flake8", *dirs],  # .flake8: the zoo's settings
        }
        problems += _run_tools(own_settings, bundle.root)
    if problems:
        raise _Failed("; ".join(problems))
    own = f"; {', '.join(d + '/' for d in dirs)} with this project's settings" if dirs else ""
    return f"black, isort, flake8 pass with the zoo's settings on {len(code)} files of the bundle's code{own}"


_CHECK_FUNCTIONS: dict[str, Callable[[_Bundle], str]] = {
    "large_files": _check_large_files,
    "necessary_files": _check_necessary_files,
    "preferred_files": _check_preferred_files,
    "version": _check_version,
    "metadata": _check_metadata,
    "properties": _check_properties,
    "net_in_out": _check_net_in_out,
    "torchscript": _check_torchscript,
    "pins": _check_pins,
    "onnx": _check_onnx,
    "hooks": _check_hooks,
    "code_format": _check_code_format,
}


@contextlib.contextmanager
def _zoo_environment(root: Path, quiet: bool) -> Iterator[None]:
    """The bundle root first on ``sys.path`` (as the zoo's ``verify``), MONAI's INFO logs and export warnings off."""
    saved_path = list(sys.path)
    sys.path.insert(0, str(root))
    loggers = [logging.getLogger(name) for name in list(logging.root.manager.loggerDict) if name.startswith("monai")]
    levels = [lg.level for lg in loggers]
    try:
        with warnings.catch_warnings():
            if quiet:
                warnings.simplefilter("ignore")
                for lg in loggers:
                    lg.setLevel(logging.WARNING)
            yield
    finally:
        sys.path[:] = saved_path
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def run_zoo_checks(
    bundle_root: str | os.PathLike,
    schema: str | os.PathLike | None = None,
    model_dir: str | os.PathLike | None = None,
    work_dir: str | os.PathLike | None = None,
    checks: Sequence[str] | None = None,
    quiet: bool = True,
    progress: Callable[[CheckResult], None] | None = None,
) -> list[CheckResult]:
    """Run the model zoo's checks on a bundle; every check runs, whatever the others find.

    Args:
        bundle_root: the bundle (the folder with configs/, models/, LICENSE).
        schema: the metadata schema file (default: :func:`find_schema`); nothing is downloaded.
        model_dir: where ``model.pt`` (and ``model.ts``) are (default ``<bundle_root>/models``). When there is no
            ``model.pt``, untrained weights of ``network_def`` are written to ``work_dir`` and used instead.
        work_dir: where exports and untrained weights go (default: a temporary folder, removed afterwards).
        checks: names from :data:`CHECKS` to run (default: all), always in the order of :data:`CHECKS`.
        quiet: silence MONAI's INFO logs and warnings during the checks.
        progress: called with each result as soon as it is known.

    Returns:
        one :class:`CheckResult` per check run.
    """
    root = Path(bundle_root).resolve()
    selected = list(CHECKS) if checks is None else list(checks)
    unknown = sorted(set(selected) - set(CHECKS))
    if unknown:
        raise ValueError(f"unknown checks {unknown}; choose from {CHECKS}")
    results = []
    with contextlib.ExitStack() as stack:
        if work_dir is None:
            work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="zoo_check_")))
        else:
            work = Path(work_dir)
            work.mkdir(parents=True, exist_ok=True)
        bundle = _Bundle(
            root=root,
            model_dir=Path(model_dir) if model_dir is not None else root / "models",
            work_dir=work,
            schema=find_schema(root, schema),
        )
        stack.enter_context(_zoo_environment(root, quiet))
        for name in CHECKS:
            if name not in selected:
                continue
            started = time.perf_counter()
            try:
                status, detail = PASS, _CHECK_FUNCTIONS[name](bundle)
            except _Failed as e:
                status, detail = FAIL, str(e)
            except _Warned as e:
                status, detail = WARN, str(e)
            except _Skipped as e:
                status, detail = SKIP, str(e)
            except Exception as e:  # noqa: B902 - a MONAI check's error is that check's failure
                status, detail = FAIL, _short(f"{type(e).__name__}: {e}")
            result = CheckResult(name, status, detail, time.perf_counter() - started)
            results.append(result)
            if progress is not None:
                progress(result)
    return results


def format_results(results: Sequence[CheckResult], strict: bool = False) -> str:
    """The summary line: counts per status and whether the bundle passes."""
    counts = {s: sum(r.status == s for r in results) for s in (PASS, FAIL, WARN, SKIP)}
    failed = counts[FAIL] + (counts[WARN] if strict else 0)
    total = sum(r.seconds for r in results)
    verdict = "zoo checks FAILED" if failed else "zoo checks passed"
    return f"{verdict}: " + ", ".join(f"{n} {s}" for s, n in counts.items() if n) + f" in {total:.0f} s"


def _default_bundle_root() -> Path:
    package_parent = Path(__file__).resolve().parents[1]
    return package_parent if (package_parent / "configs" / "metadata.json").is_file() else Path.cwd()


def zoo_check(
    bundle_root: str | None = None,
    schema: str | None = None,
    model_dir: str | None = None,
    work_dir: str | None = None,
    checks: str | Sequence[str] | None = None,
    strict: bool = False,
    verbose: bool = False,
) -> int:
    """Run the model zoo's checks on the bundle and print one line per check; returns the exit status (0: none
    failed).

    Args:
        bundle_root: the bundle (default: this repository).
        schema: local metadata schema file (default: eval/schema.json, else ../shared/monai/<schema file name>).
        model_dir: folder of model.pt (default: <bundle_root>/models; without model.pt untrained weights are used).
        work_dir: keep the exports and untrained weights here (default: a temporary folder).
        checks: comma-separated subset of the checks (default: all).
        strict: WARN counts as a failure (e.g. weights without a download url).
        verbose: show MONAI's logs and warnings.
    """
    if isinstance(checks, str):
        checks = [c.strip() for c in checks.split(",") if c.strip()]
    root = Path(bundle_root) if bundle_root is not None else _default_bundle_root()
    print(f"model zoo checks of {root.resolve()}", flush=True)
    results = run_zoo_checks(
        root,
        schema=schema,
        model_dir=model_dir,
        work_dir=work_dir,
        checks=checks,
        quiet=not verbose,
        progress=lambda r: print(r.line(), flush=True),
    )
    print(format_results(results, strict=strict))
    return int(any(r.failed or (strict and r.status == WARN) for r in results))


def main(argv: Sequence[str] | None = None) -> int:
    """``python scripts/zoo_check.py [BUNDLE_ROOT] [--schema FILE] ...``: see :func:`zoo_check`."""
    parser = argparse.ArgumentParser(prog="python scripts/zoo_check.py", description=__doc__.splitlines()[0])
    parser.add_argument("bundle_root", nargs="?", default=None, help="the bundle (default: this repository)")
    parser.add_argument("--schema", help="local metadata schema JSON (nothing is downloaded)")
    parser.add_argument("--model-dir", help="folder of model.pt (default: BUNDLE_ROOT/models)")
    parser.add_argument("--work-dir", help="keep exports and untrained weights here (default: a temporary folder)")
    parser.add_argument("--checks", help=f"comma-separated subset of: {','.join(CHECKS)}")
    parser.add_argument("--strict", action="store_true", help="WARN counts as a failure")
    parser.add_argument("--verbose", action="store_true", help="show MONAI's logs and warnings")
    args = parser.parse_args(argv)
    return zoo_check(
        bundle_root=args.bundle_root,
        schema=args.schema,
        model_dir=args.model_dir,
        work_dir=args.work_dir,
        checks=args.checks,
        strict=args.strict,
        verbose=args.verbose,
    )


if __name__ == "__main__":
    sys.exit(main())
