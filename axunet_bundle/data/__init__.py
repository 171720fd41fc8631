# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""BraTS data: case discovery, label conventions, integrity checks, datalists, slice cache, generated cases."""

from . import cases, datalist, integrity, labels, slices, synth
from .cases import DEFAULT_MODALITIES, MODALITIES, Case, CaseError, find_cases
from .datalist import CaseSelection, evaluation_cases, inference_cases, load_datalist, make_datalist, write_datalist
from .integrity import ValidateCased, check_case, check_dataset
from .labels import REGIONS, LabelsToRegionsd, RegionsToLabelsd, labels_to_regions, regions_to_labels
from .slices import SliceCacheDataset, prepare_slice_cache
from .synth import write_synthetic_dataset

__all__ = [
    "Case",
    "CaseError",
    "DEFAULT_MODALITIES",
    "LabelsToRegionsd",
    "MODALITIES",
    "REGIONS",
    "RegionsToLabelsd",
    "SliceCacheDataset",
    "ValidateCased",
    "cases",
    "check_case",
    "check_dataset",
    "datalist",
    "find_cases",
    "CaseSelection",
    "inference_cases",
    "evaluation_cases",
    "integrity",
    "labels",
    "labels_to_regions",
    "load_datalist",
    "make_datalist",
    "prepare_slice_cache",
    "regions_to_labels",
    "slices",
    "synth",
    "write_datalist",
    "write_synthetic_dataset",
]
