# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""BraTS data: case discovery in every layout, label conventions, integrity checks, the chains' loading transforms,
datalists, slice cache."""

from . import cases, datalist, decathlon, integrity, labels, pipeline, slices
from .cases import DEFAULT_MODALITIES, MODALITIES, Case, CaseError, discover, find_cases
from .datalist import CaseSelection, evaluation_cases, inference_cases, load_datalist, make_datalist, write_datalist
from .integrity import check_case, check_dataset
from .labels import REGIONS, LabelsToRegionsd, RegionsToLabelsd, labels_to_regions, regions_to_labels
from .pipeline import SelectModalitiesd, ValidateCased
from .slices import SliceCacheDataset, prepare_slice_cache

__all__ = [
    "Case",
    "CaseError",
    "CaseSelection",
    "DEFAULT_MODALITIES",
    "LabelsToRegionsd",
    "MODALITIES",
    "REGIONS",
    "RegionsToLabelsd",
    "SelectModalitiesd",
    "SliceCacheDataset",
    "ValidateCased",
    "cases",
    "check_case",
    "check_dataset",
    "datalist",
    "decathlon",
    "discover",
    "evaluation_cases",
    "find_cases",
    "inference_cases",
    "integrity",
    "labels",
    "labels_to_regions",
    "load_datalist",
    "make_datalist",
    "pipeline",
    "prepare_slice_cache",
    "regions_to_labels",
    "slices",
    "write_datalist",
]
