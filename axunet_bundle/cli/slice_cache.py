# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Preparing the slice cache that :class:`~axunet_bundle.data.slices.SliceCacheDataset` serves (``axunet prepare``):
the bundle's volume preprocessing run once per case, each case written as its folder of the layout
:mod:`axunet_bundle.data.slices` describes.

A case directory appears only by an atomic rename once all its files are written, so an interrupted run never
leaves a half-written case that looks complete, and re-running continues with the cases still missing. A changed
parameter changes the fingerprint and invalidates every cached case.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import numpy as np

from ..atomic import atomic_directory, remove_partials, write_json_atomic
from ..data.cases import check_case_id
from ..data.slices import CACHE_FORMAT, IMAGE_FILE, LABEL_FILE, MANIFEST, SLICES_FILE, fingerprint
from ..errors import CaseError, user_error
from ..progress import progress as show_progress

__all__ = ["CacheReport", "prepare_slice_cache"]

logger = logging.getLogger(__name__)


def _slice_flags(image: np.ndarray, label: np.ndarray | None) -> dict[str, list[int]]:
    """Axial slices (first axis) that contain brain (any non-zero channel) and tumour (any region)."""
    brain = np.flatnonzero(np.any(image != 0, axis=(1, 2, 3)))
    tumour = np.flatnonzero(np.any(label > 0, axis=(1, 2, 3))) if label is not None else np.array([], dtype=int)
    return {"brain": brain.tolist(), "tumour": tumour.tolist()}


def _prepare_case(args: tuple[Mapping[str, Any], str, Callable]) -> tuple[str, str | None]:
    """Preprocess one case into ``output_dir/<case_id>``; returns ``(case_id, problem or None)``."""
    item, output_dir, transform = args
    case_id = str(item["case_id"])
    try:
        data = transform(dict(item))
        slices_first = (3, 0, 1, 2)  # (C, H, W, D) -> (D, C, H, W): each slice contiguous on disk
        image = np.ascontiguousarray(np.asarray(data["image"], dtype=np.float16).transpose(slices_first))
        label = (
            np.ascontiguousarray(np.asarray(data["label"], dtype=np.uint8).transpose(slices_first))
            if "label" in data
            else None
        )
        with atomic_directory(Path(output_dir) / case_id) as partial:  # the case becomes visible only when complete
            np.save(partial / IMAGE_FILE, image)
            if label is not None:
                np.save(partial / LABEL_FILE, label)
            write_json_atomic(partial / SLICES_FILE, _slice_flags(image, label))
    except Exception as err:  # one bad case must not stop the others; report it precisely
        error = user_error(err)  # a case's problem, also when MONAI's Compose wrapped it in a RuntimeError
        if error is not None:
            return case_id, str(error)
        return case_id, f"{case_id}: {type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
    return case_id, None


@dataclass
class CacheReport:
    """What ``prepare_slice_cache`` did."""

    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    invalidated: bool = False


def prepare_slice_cache(
    items: Sequence[Mapping[str, Any]],
    output_dir: str | os.PathLike,
    transform: Callable,
    params: Mapping[str, Any],
    workers: int = 2,
    progress: bool = True,
) -> CacheReport:
    """Preprocess every case of ``items`` once into ``output_dir`` (resumable; see the module docstring).

    Args:
        items: datalist items with ``case_id``, ``image`` (modality files) and optionally ``label``.
        output_dir: the cache directory (created if missing).
        transform: the volume preprocessing: item dict -> dict with ``image`` (C, H, W, D) and ``label``
            (3, H, W, D) region masks.
        params: preprocessing parameters recorded in the manifest; when they differ from the cached ones, the
            cache is invalidated and rebuilt.
        workers: processes preprocessing cases in parallel (1 runs in this process).
        progress: show a progress bar when stderr is a terminal, log lines with rate and ETA otherwise.

    Returns:
        a :class:`CacheReport`; cases whose preprocessing fails are listed in ``problems``, the others are still
        prepared.
    """
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    manifest_path = out / MANIFEST
    params = json.loads(json.dumps(dict(params), default=str))  # as the manifest records them
    wanted = fingerprint(params)
    report = CacheReport()
    if manifest_path.exists():
        previous = json.loads(manifest_path.read_text())
        if previous.get("fingerprint") != wanted or previous.get("format") != CACHE_FORMAT:
            changed = sorted(
                k
                for k in set(params) | set(previous.get("params", {}))
                if params.get(k) != previous.get("params", {}).get(k)
            )
            logger.warning(
                "slice cache %s was prepared with other parameters (%s): rebuilding it", out, ", ".join(changed)
            )
            for child in out.iterdir():
                if child.is_dir():
                    shutil.rmtree(child)
            report.invalidated = True
    remove_partials(out)  # left by an interrupted run
    write_json_atomic(manifest_path, {"format": CACHE_FORMAT, "fingerprint": wanted, "params": params})

    todo = []
    for item in items:
        try:
            check_case_id(item["case_id"])  # the id names the case's folder: it must not point outside the cache
        except CaseError as err:
            report.problems.append(str(err))
            logger.error(err)
            continue
        if (out / str(item["case_id"]) / SLICES_FILE).exists():
            report.skipped.append(str(item["case_id"]))
        else:
            todo.append((item, str(out), transform))
    if workers > 1 and len(todo) > 1:
        pool = get_context("spawn").Pool(min(workers, len(todo)))
        results = pool.imap_unordered(_prepare_case, todo)
    else:
        pool, results = None, map(_prepare_case, todo)
    try:
        for case_id, problem in show_progress(results, total=len(todo), desc="prepare", unit="case", enabled=progress):
            if problem is None:
                report.prepared.append(case_id)
            else:
                report.problems.append(problem)
                logger.error(problem)
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return report
