# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Slice cache: preprocess each case once into memory-mappable arrays, then serve random 2D slices fast.

Decoding gzipped NIfTI for every training slice would starve the network, so ``prepare_slice_cache`` runs the
bundle's volume preprocessing (the ``volume_transforms`` of ``configs/train.json``) once per case and stores::

    CACHE_DIR/manifest.json          preprocessing parameters and their fingerprint
    CACHE_DIR/<case_id>/image.npy    float16 (D, C, H, W), channels in the configured modality order
    CACHE_DIR/<case_id>/label.npy    uint8 (D, 3, H, W), regions WT, TC, ET
    CACHE_DIR/<case_id>/slices.json  which axial slices hold brain and which hold tumour

The axial slice is the first axis, so a served slice is one contiguous block of the memory-mapped file: with the
preprocessing's (C, H, W, D) order one slice touched every page of its case (46 MB of reads for a 300 kB slice at
224 x 224 x 155). The operating system's page cache keeps the files in memory, shared by every loader worker.

A case directory appears only by an atomic rename once all its files are written, so an interrupted run never
leaves a half-written case that looks complete, and re-running continues with the cases still missing. A changed
parameter changes the fingerprint and invalidates every cached case.
"""

from __future__ import annotations

import hashlib
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
import torch
from monai.data import get_track_meta, set_track_meta
from torch.utils.data import Dataset

from ..atomic import atomic_directory, remove_partials, write_json_atomic
from ..errors import CaseError, ConfigurationError, DatasetError, user_error
from ..progress import progress as show_progress
from .cases import check_case_id

__all__ = ["prepare_slice_cache", "SliceCacheDataset", "CacheReport", "fingerprint", "loader_workers", "MANIFEST"]

logger = logging.getLogger(__name__)

#: 2: axial slices first (format 1 kept the preprocessing's (C, H, W, D) order)
CACHE_FORMAT = 2
MANIFEST = "manifest.json"
IMAGE_FILE = "image.npy"
LABEL_FILE = "label.npy"
SLICES_FILE = "slices.json"


#: loader workers: at least what the configs had (on 2 cores the training, not the loader, is the bottleneck) and at
#: most this many per process (each worker holds its own Python, torch and augmentations, ~0.3 GB)
MIN_LOADER_WORKERS, MAX_LOADER_WORKERS = 2, 32


def loader_workers() -> int:
    """DataLoader worker processes for this process: the CPUs it may use, shared among the processes of this node
    (``LOCAL_WORLD_SIZE``, set by ``torchrun``), less one for the training loop itself, kept within
    [``MIN_LOADER_WORKERS``, ``MAX_LOADER_WORKERS``] (the training configs' default ``num_workers``).

    A GPU trains AXUNet at thousands of slices/s while one worker serves about 100 (2-core AMD EPYC): a fixed 2 would
    leave a 16-core GPU machine's GPU waiting. Neither torch nor MONAI picks a worker count from the machine.
    """
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    processes = max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    return max(MIN_LOADER_WORKERS, min(MAX_LOADER_WORKERS, cpus // processes - 1))


def fingerprint(params: Mapping[str, Any]) -> str:
    """A stable hash of the preprocessing parameters (any JSON-serialisable mapping)."""
    return hashlib.sha256(json.dumps(params, sort_keys=True, default=str).encode()).hexdigest()[:16]


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
    params = json.loads(json.dumps(dict(params), default=str))
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


class SliceCacheDataset(Dataset):
    """Random-access 2D axial slices from a slice cache, as dicts with ``image`` (C, H, W) and ``label`` (3, H, W).

    Args:
        cache_dir: a directory written by :func:`prepare_slice_cache`.
        case_ids: the cases to serve (e.g. the datalist's training cases); all cached cases when None.
        tumour_slice_ratio: None serves every brain slice; a value r in (0, 1] serves every tumour slice plus
            randomly chosen tumour-free brain slices so that tumour slices make up a fraction r.
        transform: applied to each slice dict (the 2D augmentations).
        params: when given, the cache's recorded parameters must equal these (a stale cache is an error).
        seed: chooses the tumour-free slices.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike,
        case_ids: Sequence[str] | None = None,
        tumour_slice_ratio: float | None = None,
        transform: Callable | None = None,
        params: Mapping[str, Any] | None = None,
        seed: int = 0,
    ) -> None:
        self.cache_dir = Path(cache_dir)
        manifest_path = self.cache_dir / MANIFEST
        if not manifest_path.exists():
            raise DatasetError(f"no slice cache at {self.cache_dir}: run `python -m axunet_bundle prepare` first")
        manifest = json.loads(manifest_path.read_text())
        if manifest.get("format") != CACHE_FORMAT:
            raise DatasetError(
                f"slice cache {self.cache_dir} has format {manifest.get('format')}, this version reads {CACHE_FORMAT}: "
                "re-run prepare"
            )
        if params is not None and manifest.get("fingerprint") != fingerprint(
            json.loads(json.dumps(dict(params), default=str))
        ):
            raise DatasetError(
                f"slice cache {self.cache_dir} was prepared with other preprocessing parameters: re-run prepare"
            )
        if tumour_slice_ratio is not None and not 0 < tumour_slice_ratio <= 1:
            raise ConfigurationError(f"tumour_slice_ratio must be in (0, 1] or None, got {tumour_slice_ratio}")
        available = sorted(p.name for p in self.cache_dir.iterdir() if (p / SLICES_FILE).exists())
        if case_ids is not None:
            missing = sorted(set(map(str, case_ids)) - set(available))
            if missing:
                raise ValueError(
                    f"slice cache {self.cache_dir} lacks {len(missing)} case(s), e.g. {missing[:3]}: re-run prepare"
                )
            available = [c for c in available if c in set(map(str, case_ids))]
        rng = np.random.default_rng(seed)
        self.index: list[tuple[str, int]] = []
        for case_id in available:
            flags = json.loads((self.cache_dir / case_id / SLICES_FILE).read_text())
            if tumour_slice_ratio is None:
                chosen = flags["brain"]
            else:
                tumour = set(flags["tumour"])
                healthy = [z for z in flags["brain"] if z not in tumour]
                n_healthy = min(len(healthy), round(len(tumour) * (1 - tumour_slice_ratio) / tumour_slice_ratio))
                chosen = sorted(
                    tumour | set(rng.choice(healthy, n_healthy, replace=False).tolist() if n_healthy else [])
                )
            self.index.extend((case_id, int(z)) for z in chosen)
        self.transform = transform
        self._arrays: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def __len__(self) -> int:
        return len(self.index)

    def _case_arrays(self, case_id: str) -> tuple[np.ndarray, np.ndarray]:
        # memory-mapped and opened lazily, so each DataLoader worker maps the files itself
        if case_id not in self._arrays:
            folder = self.cache_dir / case_id
            self._arrays[case_id] = (
                np.load(folder / IMAGE_FILE, mmap_mode="r"),
                np.load(folder / LABEL_FILE, mmap_mode="r"),
            )
        return self._arrays[case_id]

    def __getitem__(self, index: int) -> dict[str, Any]:
        case_id, z = self.index[index]
        image, label = self._case_arrays(case_id)
        item = {
            "image": torch.from_numpy(image[z].astype(np.float32)),
            "label": torch.from_numpy(label[z].astype(np.float32)),
            "case_id": case_id,
            "slice": z,
        }
        if self.transform is None:
            return item
        # A served slice has nothing to invert: MONAI's metadata tracking (MetaTensor, applied operations) would
        # double the augmentations' cost (4.0-4.6 -> 1.9 ms CPU per 224² slice, 2-core AMD EPYC) and keep nothing.
        tracking = get_track_meta()
        set_track_meta(False)
        try:
            return self.transform(item)
        finally:
            set_track_meta(tracking)
