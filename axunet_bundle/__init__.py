# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""AXUNet (Attention Xception UNet) brain-tumour segmentation, packaged for a MONAI bundle.

Region channels are always in the order WT (whole tumour), TC (tumour core), ET (enhancing tumour).

The submodules are imported when first used (``axunet_bundle.networks``, ``axunet_bundle.AXUNet``): the command
line's ``--help`` and option checks then run without importing torch and MONAI.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.6.2"
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
    "settings",
    "transforms",
    "weights",
]


def __getattr__(name: str) -> Any:
    # PEP 562: import a submodule (or the network class) on first access
    if name == "AXUNet":
        return importlib.import_module(".networks", __name__).AXUNet
    if name in __all__ and name != "__version__":
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
