# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Generated BraTS-like cases (not patient data): the brain phantom (:mod:`.phantom`) and the datasets written from it
in every layout the bundle reads (:mod:`.datasets`). For the demo, the tests and the comparison on generated data;
the model-zoo bundle does not carry it."""

from .datasets import GENERATED_DESCRIP, case_seed, is_generated, write_synthetic_dataset
from .phantom import synth_case

__all__ = ["GENERATED_DESCRIP", "case_seed", "is_generated", "synth_case", "write_synthetic_dataset"]
