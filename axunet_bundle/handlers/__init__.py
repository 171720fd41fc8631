# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""MONAI's checkpoint handlers with what they lack here (atomic files, the engine's own state, a file check before
the run), the random generators' states in the checkpoint (for an exact resume) and the run's settings kept with its
weights (:class:`~.checkpoints.RunSettings`)."""

from . import checkpoints
from .checkpoints import *  # noqa: F401,F403 - the handlers are those of checkpoints.__all__

__all__ = list(checkpoints.__all__)
