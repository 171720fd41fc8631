# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The ``axunet`` command line (``python -m axunet_bundle``), built with fire: one function per command.

:func:`main` is the error boundary: a user's mistake (an :class:`~axunet_bundle.errors.AxunetError`, raised anywhere
below, also inside a workflow) ends in one line and its exit status, never a traceback. The configs never import
this package: the model-zoo bundle (``axunet bundle``) carries the runtime code only.
"""

from __future__ import annotations

import logging

import fire

from ..errors import exit_with_message, user_error
from .compare import compare
from .data import check, datalist, prepare, synth
from .demo import demo
from .pictures import attention, network, overlay
from .score import score
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
    "score": score,
    "infer": infer,
    "export": export,
    "overlay": overlay,
    "attention": attention,
    "bundle": bundle,
    "compare": compare,
}


def main(argv: list[str] | None = None) -> None:
    """Run ``axunet ARGV`` (default: the process's arguments).

    Raises:
        SystemExit: with the error's one line and status for a user's mistake; fire's for bad arguments.
    """
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    try:
        fire.Fire(COMMANDS, command=argv, name="axunet")
    except Exception as err:
        error = user_error(err)
        if error is None:
            raise  # a bug: its traceback is what a report needs
        exit_with_message(error)
