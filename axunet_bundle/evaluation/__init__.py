# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""BraTS evaluation of label maps: the legacy (BraTS <= 2021) Dice and HD95 (:mod:`.metrics`), the BraTS 2023+
challenges' own metrics (:mod:`.challenge`), and the per-case report (:mod:`.report`)."""

from . import challenge, metrics, report
from .challenge import resolve_challenge
from .report import (
    CASE_ID,
    LEGACY_DICE,
    LEGACY_HD95,
    REFERENCE_KEY,
    ReportExistsError,
    check_report_absent,
    evaluation_report,
    report_columns,
)

__all__ = [
    "CASE_ID",
    "LEGACY_DICE",
    "LEGACY_HD95",
    "REFERENCE_KEY",
    "ReportExistsError",
    "challenge",
    "check_report_absent",
    "evaluation_report",
    "metrics",
    "report",
    "report_columns",
    "resolve_challenge",
]
