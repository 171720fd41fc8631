# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Helpers for the bundle's ignite engines: per-region metric inputs and checkpoint discovery."""

from __future__ import annotations

import glob
import os
from collections.abc import Callable

from monai.handlers import from_engine

__all__ = ["region_output", "latest_checkpoint", "CHECKPOINT_PREFIX"]

#: ``CheckpointSaver(file_prefix=...)`` of the resumable training checkpoint in ``configs/train.json``.
CHECKPOINT_PREFIX = "checkpoint"


def region_output(index: int) -> Callable:
    """An engine ``output_transform`` giving ``(pred, label)`` of one region channel (0 WT, 1 TC, 2 ET)."""
    pred_and_label = from_engine(["pred", "label"])

    def select(output):
        preds, labels = pred_and_label(output)
        return [p[index : index + 1] for p in preds], [y[index : index + 1] for y in labels]

    return select


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """The newest resumable checkpoint (``checkpoint_*.pt``) in ``ckpt_dir``, with a clear error when none."""
    found = glob.glob(os.path.join(os.fspath(ckpt_dir), f"{CHECKPOINT_PREFIX}_*.pt"))
    if not found:
        raise FileNotFoundError(f"resume requested but no {CHECKPOINT_PREFIX}_*.pt in {ckpt_dir}")
    return max(found, key=os.path.getmtime)
