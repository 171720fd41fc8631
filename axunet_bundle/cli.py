# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The ``axunet`` command line (``python -m axunet_bundle``), built with fire: one function per command."""

from __future__ import annotations

import time

import fire

__all__ = ["main"]

DEMO_SLICE_SIZE = 224


def demo(batch: int = 2, size: int = DEMO_SLICE_SIZE) -> None:
    """Build the paper's AXUNet and run it on random slices; print its size and speed.

    Args:
        batch: slices per forward pass.
        size: slice height and width.
    """
    import torch

    from .networks import AXUNet

    net = AXUNet().eval()
    params = sum(p.numel() for p in net.parameters()) / 1e6
    x = torch.randn(batch, 3, size, size)
    with torch.inference_mode():
        net(x)  # warm-up
        start = time.perf_counter()
        out = net(x)
        seconds = time.perf_counter() - start
    print(f"AXUNet: {params:.2f} M parameters; input {tuple(x.shape)} (T1CE, T2, FLAIR) -> logits {tuple(out.shape)}")
    print(
        f"output channels: WT, TC, ET; {seconds / batch * 1e3:.0f} ms per {size}x{size} slice on {torch.get_num_threads()} threads"
    )


COMMANDS = {"demo": demo}


def main() -> None:
    fire.Fire(COMMANDS, name="axunet")
