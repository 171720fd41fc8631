# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""ignite handlers of the bundle's engines that MONAI does not have: atomic checkpoint saving and the random
generators' states in the checkpoint (for an exact resume)."""

from .checkpoints import AtomicDiskSaver, RandomStates, latest_checkpoint

__all__ = ["AtomicDiskSaver", "RandomStates", "latest_checkpoint"]
