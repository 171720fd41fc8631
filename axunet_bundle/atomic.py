# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Atomic writes: every file the bundle produces appears whole or not at all.

A writer is given a path inside a hidden temporary folder beside the target (same file system, so the final
``os.replace`` is an atomic rename; same file name, so writers that infer the format from the extension work). An
exception removes the temporary folder; a killed process leaves only a hidden ``.partial-*`` folder, never a
half-written file under the target's name. Files get the permissions ``open()`` would give them (the umask), not
the private mode of :func:`tempfile.mkstemp`.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

__all__ = [
    "PARTIAL_PREFIX",
    "atomic_directory",
    "atomic_path",
    "remove_partials",
    "write_json_atomic",
    "write_text_atomic",
]

#: prefix of the hidden temporary folders; such folders are left only by a killed process
PARTIAL_PREFIX = ".partial-"
JSON_INDENT = 4


def _fsync(path: Path) -> None:
    """Flush ``path``'s data to disk so that the rename never exposes a file whose content is still in flight."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path with ``path``'s file name; when the block ends normally it is renamed onto ``path``.

    Args:
        path: the file to create or replace; its folder is created when missing.

    Example:
        >>> with atomic_path("out/metrics.csv") as tmp:
        ...     tmp.write_text("case,dice\\n")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=target.parent))
    try:
        tmp = folder / target.name
        yield tmp
        if not tmp.exists():
            raise FileNotFoundError(f"the writer did not create {target}")
        _fsync(tmp)
        os.replace(tmp, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder that replaces the folder ``path`` when the block ends normally.

    Args:
        path: the folder to create; an existing one is replaced (removed first, so a reader sees the old or the
            new folder, or briefly none, never a mix).
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=PARTIAL_PREFIX, dir=target.parent))
    try:
        yield folder
        folder.chmod(0o777 & ~_umask())  # mkdtemp makes it private
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target)
        os.replace(folder, target)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8, newlines as given) to ``path`` atomically; returns ``path``."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8", newline="") as f:
            f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, content: Any) -> Path:
    """Write ``content`` as JSON indented by 4 with a final newline to ``path`` atomically; returns ``path``."""
    return write_text_atomic(path, json.dumps(content, indent=JSON_INDENT) + "\n")


def remove_partials(folder: str | os.PathLike) -> int:
    """Remove the ``.partial-*`` leftovers of killed writers in ``folder``; returns how many were removed."""
    leftovers = list(Path(folder).glob(f"{PARTIAL_PREFIX}*"))
    for leftover in leftovers:
        shutil.rmtree(leftover, ignore_errors=True) if leftover.is_dir() else leftover.unlink(missing_ok=True)
    return len(leftovers)
