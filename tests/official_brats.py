# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The BraTS challenges' own scoring, run as its users run it, for tests to check the bundle's report against: the
package's ``brats-evaluate`` command on folders of BraTS 2023-labelled files, then its ``parse_seg_results``."""

from __future__ import annotations

import csv
import math
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import nibabel as nib
import numpy as np

#: each convention's labels as BraTS 2023 (gli) labels: NCR/NETC 1, ED/SNFH 2, ET 3 (the resection cavity, 4, is in
#: no region the bundle scores, and kept)
TO_GLI = {
    "brats2021": {1: 1, 2: 2, 4: 3},
    "brats2023": {1: 1, 2: 2, 3: 3},
    "brats2024": {1: 1, 2: 2, 3: 3, 4: 4},
    "msd": {1: 2, 2: 1, 3: 3},
}


def _as_gli(source: Path, convention: str, target: Path) -> None:
    image = nib.load(source)
    data = np.asarray(image.dataobj)
    out = np.zeros(data.shape, np.uint8)
    for value, gli in TO_GLI[convention].items():
        out[data == value] = gli
    target.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(out, image.affine, image.header), target)


def official_scores(
    pairs: Sequence[tuple[str, Path, Path]], convention: str, work: Path, config: str = "gli"
) -> dict[str, dict[str, float]]:
    """``{case id: {column: value}}`` of ``brats-evaluate --config <config>`` and ``parse_seg_results`` for the
    ``(case id, prediction file, reference file)`` pairs, both in ``convention``'s labels."""
    names = {}
    for i, (case_id, prediction, reference) in enumerate(pairs):
        subject = f"BraTS-GLI-{i:05d}-000"  # the command matches files by such a number
        _as_gli(reference, convention, work / "ref" / f"{subject}-seg.nii.gz")
        _as_gli(prediction, convention, work / "pred" / f"{subject}.nii.gz")
        names[f"{subject}-seg.nii.gz"] = case_id
    summary, table = work / "panoptica.json", work / "parsed.csv"
    command = [sys.executable, "-m", "brats_evaluation.evaluation", "--config", config]
    command += ["--ref_path", str(work / "ref"), "--pred_path", str(work / "pred"), "--summary_json", str(summary)]
    subprocess.run(command, check=True, capture_output=True, timeout=600)
    parse = "from brats_evaluation import parse_seg_results; import sys; parse_seg_results(sys.argv[1], sys.argv[2])"
    subprocess.run([sys.executable, "-c", parse, str(summary), str(table)], check=True, capture_output=True)
    with open(table, newline="") as f:
        rows = [row for row in csv.DictReader(f) if row["subject_id"] in names]
    return {names[row.pop("subject_id")]: {k: float(v) if v else math.nan for k, v in row.items()} for row in rows}


def assert_same_numbers(ours: Mapping[str, float], theirs: Mapping[str, float], columns: Sequence[str]) -> None:
    """Every column equal to 1e-4 (NaN equals NaN, inf equals inf)."""
    for column in columns:
        a, b = float(ours[column]), float(theirs[column])
        same = (math.isnan(a) and math.isnan(b)) or a == b or abs(a - b) <= 1e-4
        assert same, f"{column}: ours {a}, brats-evaluation {b}"
