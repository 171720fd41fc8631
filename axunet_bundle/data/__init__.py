# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""BraTS data, each module importing only those before it: label values and regions (:mod:`.labels`); case
discovery in every layout (:mod:`.cases`); file checks (:mod:`.integrity`); the chains' loading transforms
(:mod:`.pipeline`); datalists, case selection and the loader that leaves out a failing case (:mod:`.datalist`); the
slice cache (:mod:`.slices`)."""

from ..errors import CaseError
from . import cases, datalist, integrity, labels, pipeline, slices
from .cases import DEFAULT_MODALITIES, MODALITIES, Case, discover, find_cases
from .datalist import (
    CaseLoader,
    CaseSelection,
    evaluation_cases,
    inference_cases,
    load_datalist,
    make_datalist,
    write_datalist,
)
from .integrity import check_case
from .labels import REGIONS, labels_to_regions, regions_to_labels
from .pipeline import LabelsToRegionsd, RegionsToLabelsd, SelectModalitiesd, ValidateCased
from .slices import SliceCacheDataset, prepare_slice_cache

__all__ = [
    "Case",
    "CaseError",
    "CaseLoader",
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
    "datalist",
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
