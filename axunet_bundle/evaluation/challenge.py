# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
The BraTS 2023+ challenges' scores of a case, computed by the challenges' own package, ``brats-evaluation`` (on
``panoptica``; AGPL-3.0, installed with ``pip install "axunet-bundle[brats]"``).

Per region (WT, TC, ET) the package matches the connected lesions (26-connectivity) of the prediction and the
reference one to one (maximum bipartite matching on Dice), and reports, under the column names of its
``metrics_parser.parse_seg_results`` (:data:`CHALLENGE_METRICS`):

- ``all_instance_tp/fp/fn``: matched, false-positive and missed lesions; ``all_instance_f1``: tp / (tp + (fp + fn)/2);
- ``lesionwise_dsc_mean``, ``lesionwise_nsd_mean``, ``lesionwise_hd95_mean``: the mean over the **matched** lesions
  (missed and false-positive lesions count only in the detection columns), with the reference's voxel spacing (mm;
  NSD tolerance: the smallest spacing); no matched lesion gives Dice and NSD 0 and HD95 ``inf``;
- ``global_dsc``, ``global_nsd``, ``global_hd95``: the whole region, in **voxel units** (the package passes no spacing
  to its global metrics; NSD tolerance 0.5 voxel); masks that do not overlap give Dice and NSD 0 and HD95 373
  (the parser's value for its infinite HD95).

A region empty in both gives NaN everywhere. The legacy (BraTS <= 2021) Dice and HD95 are
:mod:`axunet_bundle.evaluation.metrics`'.
"""

from __future__ import annotations

import contextlib
import functools
import io
import logging
import math
import warnings
from collections.abc import Mapping, Sequence
from types import MappingProxyType
from typing import Any

import numpy as np
from monai.utils import optional_import

from ..data.labels import REGIONS
from ..errors import ConfigurationError

__all__ = [
    "AUTO_CHALLENGE",
    "CHALLENGE_LABELS",
    "CHALLENGE_METRICS",
    "GLOBAL_DSC",
    "GLOBAL_HD95_INFINITE",
    "LESIONWISE_DSC",
    "NO_CHALLENGE",
    "challenge_available",
    "challenge_columns",
    "resolve_challenge",
    "score_challenge",
]

logger = logging.getLogger(__name__)

# both optional, and not in configs/metadata.json (panoptica, which brats-evaluation installs, has no release for the
# model zoo's Python 3.10; the model card names the package)
brats_evaluation, _HAS_BRATS_EVALUATION = optional_import("brats_evaluation")
Panoptica_Evaluator, _ = optional_import("panoptica", name="Panoptica_Evaluator")
disable_citation_reminder, _ = optional_import("panoptica.utils.citation_reminder", name="disable_citation_reminder")
set_log_level, _ = optional_import("panoptica.utils.logger", name="set_log_level")

#: the ``challenge`` setting that picks the config fitting the label convention, when the package is installed
AUTO_CHALLENGE = "auto"
#: the ``challenge`` setting that scores the legacy metrics only
NO_CHALLENGE = "none"
#: the config ``auto`` picks: every label convention the bundle reads is adult glioma (BraTS GLI, the Decathlon's)
DEFAULT_CHALLENGE = "gli"
#: the label value each ``brats-evaluation`` config (its ``config_<name>.yaml`` groups) gives the bundle's classes
#: (NCR: necrotic / non-enhancing core, NETC; ED: edema, SNFH; ET); MenRT's one group (GTV) has no WT, TC or ET.
CHALLENGE_LABELS: Mapping[str, Mapping[str, int]] = MappingProxyType(
    {
        **dict.fromkeys(("gli", "mets", "MenPre", "GoAT"), MappingProxyType({"NCR": 1, "ED": 2, "ET": 3})),
        "ped": MappingProxyType({"ET": 1, "NCR": 2, "ED": 4}),
    }
)
GLOBAL_DSC = "global_dsc"
LESIONWISE_DSC = "lesionwise_dsc_mean"
#: report column (``parse_seg_results``' name, before ``_<region>``) -> the key of panoptica's result
CHALLENGE_METRICS: Mapping[str, str] = MappingProxyType(
    {
        "all_instance_tp": "tp",
        "all_instance_fp": "fp",
        "all_instance_fn": "fn",
        "all_instance_f1": "rq",
        LESIONWISE_DSC: "sq_dsc",
        "lesionwise_nsd_mean": "sq_nsd",
        "lesionwise_hd95_mean": "sq_hd95",
        GLOBAL_DSC: "global_bin_dsc",
        "global_nsd": "global_bin_nsd",
        "global_hd95": "global_bin_hd95",
    }
)
#: what ``parse_seg_results`` reports for an infinite global HD95
GLOBAL_HD95_INFINITE = 373.0
_INSTALL = 'pip install "axunet-bundle[brats]" (or brats-evaluation)'


def challenge_available() -> bool:
    """Whether ``brats-evaluation`` can be imported."""
    return bool(_HAS_BRATS_EVALUATION)


def challenge_columns() -> list[str]:
    """The report columns of the challenge metrics: ``all_instance_tp_wt`` ... ``global_hd95_et``."""
    return [f"{metric}_{region.lower()}" for metric in CHALLENGE_METRICS for region in REGIONS]


def resolve_challenge(challenge: str | None) -> str | None:
    """The ``brats-evaluation`` config to score with, or ``None`` for the legacy metrics only.

    Args:
        challenge: a config name (:data:`CHALLENGE_LABELS`), ``"auto"`` (``gli`` when the package is installed, else
            none, with a warning) or ``"none"`` / ``None``.

    Raises:
        ConfigurationError: for a config whose regions are not WT, TC and ET, an unknown one, or a config named
            while the package is not installed.
    """
    if challenge is None or challenge == NO_CHALLENGE:
        return None
    if challenge == AUTO_CHALLENGE:
        if challenge_available():
            return DEFAULT_CHALLENGE
        _warn_unavailable()
        return None
    if challenge == "MenRT":
        raise ConfigurationError(
            "challenge MenRT scores one gross tumour volume, not WT, TC and ET: no BraTS label map maps to it"
        )
    if challenge not in CHALLENGE_LABELS:
        known = ", ".join([AUTO_CHALLENGE, NO_CHALLENGE, *CHALLENGE_LABELS])
        raise ConfigurationError(f"challenge must be one of {known}, got {challenge!r}")
    if not challenge_available():
        raise ConfigurationError(f"challenge {challenge} needs brats-evaluation: {_INSTALL}")
    return challenge


@functools.lru_cache(maxsize=None)
def _warn_unavailable() -> None:
    """Say once per process that the challenge metrics are left out."""
    logger.warning("challenge metrics left out: brats-evaluation is not installed (%s)", _INSTALL)


@functools.lru_cache(maxsize=None)
def _evaluator(challenge: str) -> Any:
    """The package's evaluator of ``challenge``, loaded once, its citation banner and notices kept off the output."""
    disable_citation_reminder()
    set_log_level("WARNING")
    with contextlib.redirect_stdout(io.StringIO()):  # gli prints that its tc and wt groups share labels: by design
        return Panoptica_Evaluator.load_from_config(brats_evaluation.config_path(challenge))


def _challenge_label_map(regions: np.ndarray, labels: Mapping[str, int]) -> np.ndarray:
    """``(3, *spatial)`` WT, TC, ET masks as the config's label map (each voxel its innermost region's class)."""
    wt, tc, et = (np.asarray(regions[i], dtype=bool) for i in range(len(REGIONS)))
    out = np.zeros(wt.shape, dtype=np.uint8)
    out[wt] = labels["ED"]
    out[tc] = labels["NCR"]
    out[et] = labels["ET"]
    return out


def score_challenge(
    prediction: np.ndarray, reference: np.ndarray, spacing: Sequence[float], challenge: str = DEFAULT_CHALLENGE
) -> dict[str, float]:
    """Score one case as ``brats-evaluation``'s ``challenge`` config does (see the module docstring).

    Args:
        prediction: ``(3, *spatial)`` WT, TC, ET masks of the segmentation (bool or 0/1), e.g.
            :func:`~axunet_bundle.data.labels.labels_to_regions` of its label map.
        reference: the reference's masks, same shape.
        spacing: the voxel spacing in mm, one value per spatial axis (the reference file's ``pixdim``).
        challenge: a config of :data:`CHALLENGE_LABELS`.

    Returns:
        ``{"all_instance_tp_wt": ..., "global_hd95_et": ...}`` (:func:`challenge_columns`) as floats; a metric the
        package leaves out (e.g. precision without a predicted lesion) is NaN.

    Raises:
        ConfigurationError: see :func:`resolve_challenge`.
    """
    name = resolve_challenge(challenge)
    if name is None:
        raise ConfigurationError(f"challenge {challenge!r} names no brats-evaluation config to score with")
    evaluator = _evaluator(name)
    groups = {region.lower() for region in REGIONS}
    skip = [g for g in evaluator.segmentation_class_groups_names if g not in groups]
    labels = CHALLENGE_LABELS[name]
    with warnings.catch_warnings():
        # every global NSD warns that its tolerance is the default 0.5 voxel: the config's choice, nothing to act on
        warnings.filterwarnings("ignore", message="The threshold is set to 0.5")
        results = evaluator.evaluate(
            _challenge_label_map(prediction, labels),
            _challenge_label_map(reference, labels),
            voxelspacing=tuple(float(s) for s in spacing),
            skip_groups=skip,
        )
    scores = {}
    for region in REGIONS:
        values = results[region.lower()].to_dict()
        for column, key in CHALLENGE_METRICS.items():
            value = float(values.get(key, math.nan))
            if column == "global_hd95" and math.isinf(value):
                value = GLOBAL_HD95_INFINITE
            scores[f"{column}_{region.lower()}"] = value
    return scores
