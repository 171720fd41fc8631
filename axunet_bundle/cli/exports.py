# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The command line's checks of exported networks (``axunet export``): how far a TorchScript or ONNX file is from the
eager network, refused above :data:`EXPORT_TOLERANCE`. Not in the zoo bundle: its configs run the ONNX network
(:mod:`axunet_bundle.export`), never these.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..errors import AxunetError
from ..export import OnnxNetwork

__all__ = [
    "EXPORT_TOLERANCE",
    "ExportMismatchError",
    "check_difference",
    "max_abs_diff_onnx",
    "max_abs_diff_torchscript",
]

#: the largest absolute difference from the eager network's logits an export may have (float32 round-off)
EXPORT_TOLERANCE = 1e-4


class ExportMismatchError(AxunetError):
    """An exported network's outputs differ from the eager network's by more than :data:`EXPORT_TOLERANCE`."""


def check_difference(kind: str, path: Path, difference: float) -> None:
    """Print how far the exported file at ``path`` is from the eager network; refuse it above the tolerance.

    Raises:
        ExportMismatchError: when ``difference`` exceeds :data:`EXPORT_TOLERANCE`.
    """
    print(f"{kind} {path}: max |eager - exported| = {difference:.2e}")
    if not difference <= EXPORT_TOLERANCE:  # NaN too
        raise ExportMismatchError(
            f"{path}: its outputs differ from the eager network's by {difference:.2e} (more than "
            f"{EXPORT_TOLERANCE:g}): do not use it"
        )


def _eager(net: nn.Module, x: torch.Tensor) -> np.ndarray:
    net.eval()
    with torch.no_grad():
        return net(x).numpy()


def max_abs_diff_torchscript(net: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> float:
    """Largest absolute difference between the eager ``net`` and the TorchScript file at ``path`` on ``x``."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.load(os.fspath(path))
    with torch.no_grad():
        return float(np.abs(scripted(x).numpy() - _eager(net, x)).max())


def max_abs_diff_onnx(net: nn.Module, path: str | os.PathLike, x: torch.Tensor) -> float:
    """Largest absolute difference between the eager ``net`` and the ONNX file at ``path`` (onnxruntime, CPU)."""
    return float(np.abs(OnnxNetwork(path)(x).numpy() - _eager(net, x)).max())
