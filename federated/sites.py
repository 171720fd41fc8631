# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Generated site data for a federation that is not homogeneous: each site its own layout (the BraTS 2021 names,
the 2023 names, the Decathlon's 4D files) and its own scanner contrast (``intensity_gamma`` of the generator),
with training cases in ``<site>/data`` and held-out cases in ``<site>/holdout``."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Sequence

#: how the generated sites differ, in site order: layout and intensity gamma
SITE_STYLES = (
    {"layout": "2021", "intensity_gamma": 1.0},
    {"layout": "2023", "intensity_gamma": 0.5},
    {"layout": "msd", "intensity_gamma": 2.0},
)
#: seeds of the sites' cases: site i draws from SEED_STRIDE * i on (no two sites share a case)
SEED_STRIDE = 1000


def write_sites(
    out_dir: str | os.PathLike, n_sites: int, cases: int, holdout: int, shape: Sequence[int], seed: int = 0
) -> dict[str, tuple[Path, Path]]:
    """Write ``n_sites`` sites (``site-1``, ...) of ``cases`` training and ``holdout`` held-out generated cases.

    Returns:
        ``{site: (dataset folder, held-out folder)}``.

    Raises:
        ConfigurationError: more sites than :data:`SITE_STYLES`.
    """
    from axunet_bundle.errors import ConfigurationError
    from axunet_bundle.synthetic import write_synthetic_dataset

    if not 1 <= n_sites <= len(SITE_STYLES):
        raise ConfigurationError(f"n_sites must be 1 to {len(SITE_STYLES)}, got {n_sites}")
    sites = {}
    for i, style in enumerate(SITE_STYLES[:n_sites]):
        root = Path(out_dir) / f"site-{i + 1}"
        folders = root / "data", root / "holdout"
        for folder, n, offset in zip(folders, (cases, holdout), (0, SEED_STRIDE // 2)):
            write_synthetic_dataset(
                folder, n, seed=seed + SEED_STRIDE * i + offset, shape=shape, progress=False, **style
            )
        sites[root.name] = folders
    return sites
