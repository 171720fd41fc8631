# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""What a network costs: its parameters and the floating-point operations of one forward pass."""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

__all__ = ["count_flops", "count_parameters"]


def count_parameters(network: nn.Module) -> int:
    """All parameters of ``network`` (trainable or not)."""
    return sum(p.numel() for p in network.parameters())


def count_flops(network: nn.Module, shape: Sequence[int]) -> int:
    """FLOPs of one forward pass of ``network`` on an input of ``shape``, counted on the meta device (no compute).

    PyTorch's :class:`~torch.utils.flop_counter.FlopCounterMode` counts 2 FLOPs per multiply-add of convolutions and
    matrix products (element-wise operations are not counted).
    """
    meta = copy.deepcopy(network).to("meta").eval()
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        meta(torch.empty(*shape, device="meta"))
    return int(counter.get_total_flops())
