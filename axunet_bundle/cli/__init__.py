# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The ``axunet`` command line (``python -m axunet_bundle``), built with fire: one function per command.

The configs never import this package: the model-zoo bundle (``axunet bundle``) carries the runtime code only.
"""

from __future__ import annotations

import logging

import fire

from .data import check, datalist, prepare, synth
from .demo import demo
from .pictures import attention, network, overlay
from .workflows import evaluate, export, infer, train
from .zoo_bundle import bundle

__all__ = ["COMMANDS", "main"]

COMMANDS = {
    "demo": demo,
    "network": network,
    "synth": synth,
    "check": check,
    "datalist": datalist,
    "prepare": prepare,
    "train": train,
    "evaluate": evaluate,
    "infer": infer,
    "export": export,
    "overlay": overlay,
    "attention": attention,
    "bundle": bundle,
}


def main() -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    fire.Fire(COMMANDS, name="axunet")
