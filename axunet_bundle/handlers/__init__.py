# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""MONAI's checkpoint handlers with what they lack here (atomic files, the engine's own state, a file check before
the run) and the random generators' states in the checkpoint (for an exact resume)."""

from .checkpoints import AtomicCheckpointSaver, AtomicDiskSaver, PlainCheckpointLoader, RandomStates, latest_checkpoint

__all__ = ["AtomicCheckpointSaver", "AtomicDiskSaver", "PlainCheckpointLoader", "RandomStates", "latest_checkpoint"]
