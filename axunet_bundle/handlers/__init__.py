# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""ignite handlers of the bundle's engines that MONAI does not have: atomic checkpoint saving, the random generators'
states in the checkpoint (for an exact resume), and a training's pictures."""

from .checkpoints import AtomicDiskSaver, RandomStates, latest_checkpoint
from .pictures import TrainingCurvesWriter, ValidationOverlayHandler

__all__ = ["AtomicDiskSaver", "RandomStates", "TrainingCurvesWriter", "ValidationOverlayHandler", "latest_checkpoint"]
