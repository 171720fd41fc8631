# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""AXUNet (Attention Xception UNet) brain-tumour segmentation, packaged for a MONAI bundle.

Region channels are always in the order WT (whole tumour), TC (tumour core), ET (enhancing tumour).
"""

from . import data, errors, evaluation, export, handlers, inferers, networks, outputs, progress, transforms, weights
from .networks import AXUNet

__version__ = "0.4.0"
__all__ = [
    "AXUNet",
    "__version__",
    "data",
    "errors",
    "evaluation",
    "export",
    "handlers",
    "inferers",
    "networks",
    "outputs",
    "progress",
    "transforms",
    "weights",
]
