"""Shared fixtures: tiny generated BraTS-like datasets and the bundle's configs."""

from __future__ import annotations

from pathlib import Path

import pytest

from axunet_bundle.data.synth import write_synthetic_dataset

BUNDLE_ROOT = Path(__file__).resolve().parents[1]
CONFIGS = BUNDLE_ROOT / "configs"
#: small enough for 2 CPU cores, large enough for Xception's stride-32 map (64 -> 2x2)
TINY_SHAPE = (64, 64, 16)
TINY_ROI = [64, 64]


@pytest.fixture(scope="session")
def tiny_dataset(tmp_path_factory) -> Path:
    """Four generated cases in the BraTS 2021 layout, 64 x 64 x 16."""
    root = tmp_path_factory.mktemp("brats")
    write_synthetic_dataset(root, n=4, seed=0, shape=TINY_SHAPE, progress=False)
    return root
