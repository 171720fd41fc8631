# Copyright (c) AXUNet bundle developers
# Licensed under the Apache License, Version 2.0 (the "License");
# you may not use this file except in compliance with the License.
# You may obtain a copy of the License at
#     http://www.apache.org/licenses/LICENSE-2.0
# Unless required by applicable law or agreed to in writing, software
# distributed under the License is distributed on an "AS IS" BASIS,
# WITHOUT WARRANTIES OR CONDITIONS OF ANY KIND, either express or implied.
# See the License for the specific language governing permissions and
# limitations under the License.
"""
The model-zoo bundle that ``axunet bundle`` writes, unzipped, under the real MONAI Label: BundleInferTask,
BundleTrainTask and ``monailabel start_server`` + REST ``/infer`` from ``<app>/model/<bundle folder>`` on 4D studies, and
3D Slicer's loop over REST (info, datastore, infer as NRRD, save a label, train, infer again) on the per-modality
studies folder ``axunet monailabel-studies`` lays out (see ``scripts/monailabel_check.py``).

MONAI Label lives in its own environment, ``.venv-monailabel`` (``bash scripts/setup_monailabel_env.sh``), because
its dependencies conflict with this package's (pydicom-seg pins jsonschema<4 and numpy<2); that environment has the
packages the bundle's metadata.json requires but not this package, so only the bundle's own code can run. The check
runs there in a subprocess. Without that environment the test is skipped locally and fails in CI (``CI`` set), so
CI cannot pass without running it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import in_ci

from axunet_bundle.cli.studies import lay_out_studies
from axunet_bundle.synthetic import write_synthetic_dataset

REPO = Path(__file__).resolve().parents[1]
VENV = Path(os.environ.get("MONAILABEL_VENV", REPO / ".venv-monailabel"))
PYTHON = VENV / ("Scripts/python.exe" if sys.platform == "win32" else "bin/python")
SCRIPT = REPO / "scripts" / "monailabel_check.py"
TIMEOUT_S = int(os.environ.get("MONAILABEL_CHECK_TIMEOUT", "1500"))


@pytest.fixture(scope="module")
def monailabel_python() -> Path:
    if not PYTHON.is_file():
        message = f"no MONAI Label environment at {VENV}: run `bash scripts/setup_monailabel_env.sh`"
        if in_ci():
            pytest.fail(message + " (CI must run this test)")
        pytest.skip(message)
    return PYTHON


def test_bundle_under_monailabel(monailabel_python: Path, unzipped_bundle: Path, tmp_path: Path) -> None:
    env = dict(os.environ)
    env.pop("PYTHONPATH", None)  # the MONAI Label venv has its own packages
    # generated cases, written here: the MONAI Label environment has the bundle's code only, not this package
    cases = write_synthetic_dataset(tmp_path / "brats", n=3, seed=0, shape=(64, 64, 16), progress=False)
    # the same cases as a BraTS folder whose last case has no label yet, laid out as `axunet monailabel-studies` does:
    # check (d) labels that case over REST, as a 3D Slicer user would, then trains
    dataset = shutil.copytree(tmp_path / "brats", tmp_path / "dataset")
    (dataset / cases[-1].name / f"{cases[-1].name}_seg.nii.gz").unlink()
    studies = lay_out_studies(dataset, tmp_path / "studies")
    command = [
        str(monailabel_python),
        str(SCRIPT),
        "--bundle",
        str(unzipped_bundle),
        "--brats",
        str(tmp_path / "brats"),
        "--studies",
        str(studies.root),
        "--file-ext",
        json.dumps(sorted(studies.patterns)),
    ]
    proc = subprocess.run(
        [*command, "--workdir", str(tmp_path / "work")],
        cwd=str(tmp_path),
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    output = proc.stdout + "\n" + proc.stderr
    summary = [line for line in proc.stdout.splitlines() if line.startswith(("PASS:", "FAIL:"))]
    print(output[-20000:])
    if proc.returncode != 0:
        pytest.fail(f"MONAI Label check failed (exit {proc.returncode}):\n" + "\n".join(summary), pytrace=False)
    assert len(summary) == 4 and all(line.startswith("PASS:") for line in summary), "\n".join(summary)
