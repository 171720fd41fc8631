# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Slice cache: each case preprocessed once into memory-mappable arrays, served as random 2D slices fast.

Decoding gzipped NIfTI for every training slice would starve the network, so ``axunet prepare``
(:func:`axunet_bundle.cli.slice_cache.prepare_slice_cache`) runs the bundle's volume preprocessing (the
``volume_transforms`` of ``configs/train.json``) once per case and stores::

    CACHE_DIR/manifest.json          preprocessing parameters and their fingerprint
    CACHE_DIR/<case_id>/image.npy    float16 (D, C, H, W), channels in the configured modality order
    CACHE_DIR/<case_id>/label.npy    uint8 (D, 3, H, W), regions WT, TC, ET
    CACHE_DIR/<case_id>/slices.json  which axial slices hold brain and which hold tumour

The axial slice is the first axis, so a served slice is one contiguous block of the memory-mapped file: with the
preprocessing's (C, H, W, D) order one slice touched every page of its case (46 MB of reads for a 300 kB slice at
224 x 224 x 155). The operating system's page cache keeps the files in memory, shared by every loader worker. A
changed parameter changes the fingerprint: the dataset refuses the cache until it is prepared again.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from monai.data import get_track_meta, set_track_meta
from torch.utils.data import Dataset

from ..errors import ConfigurationError, DatasetError

__all__ = ["SliceCacheDataset", "fingerprint", "inference_workers", "loader_workers", "MANIFEST"]

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


def inference_workers(device: torch.device | str) -> int:
    """DataLoader worker processes for inference over whole cases (the inference config's default ``num_workers``):
    none on the CPU, where the network's threads use every core and a worker loading the next case competes with them
    (2-core AMD EPYC, ``monai.bundle run`` of 3 cases: 36.8 s with no worker against 38.4 s with 2, median of 3);
    :func:`loader_workers` on a GPU, whose host cores are free to load the next case while it runs this one.

    Args:
        device: where the network runs (the config's ``device``).
    """
    return loader_workers() if torch.device(device).type != "cpu" else 0


def fingerprint(params: Mapping[str, Any]) -> str:
    """A stable hash of the preprocessing parameters as a cache's manifest records them (JSON: keys as strings,
    tuples as lists, a value JSON cannot hold by its ``str``), so the writer and the reader hash the same thing."""
    recorded = json.loads(json.dumps(dict(params), default=str))
    return hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()[:16]


class SliceCacheDataset(Dataset):
    """Random-access 2D axial slices from a slice cache, as dicts with ``image`` (C, H, W) and ``label`` (3, H, W).

    Args:
        cache_dir: a directory written by ``axunet prepare``.
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
        if params is not None and manifest.get("fingerprint") != fingerprint(params):
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
