# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The command line's checks of exported networks (``axunet export``): how far a TorchScript or ONNX file is from the
eager network. Not in the zoo bundle: its configs run the ONNX network (:mod:`axunet_bundle.export`), never these.

timm's ``features_only`` encoders cannot be compiled by ``torch.jit.script``, so TorchScript export traces the
network at a fixed spatial size (the bundle's ROI).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ..export import OnnxNetwork

__all__ = ["export_torchscript", "max_abs_diff_onnx", "max_abs_diff_torchscript"]


def export_torchscript(net: nn.Module, example: torch.Tensor, path: str | os.PathLike) -> Path:
    """Trace ``net`` (in eval mode) on ``example`` and save it as TorchScript at ``path``."""
    net.eval()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # trace's deprecation and constant-shape warnings: the ROI is fixed
        traced = torch.jit.trace(net, example)
        torch.jit.save(traced, os.fspath(path))
    return Path(path)


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
