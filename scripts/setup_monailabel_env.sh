#!/usr/bin/env bash
# Creates (or refreshes) .venv-monailabel at the repository root: the real MONAI Label server package from PyPI
# plus the packages the bundle's configs/metadata.json requires, in a virtual environment of its own (reading the
# packages it shares with .venv from there, see SHARED_VENV). This package itself is NOT installed there: MONAI Label
# runs the model-zoo bundle folder that `axunet bundle` writes, which carries its own code, as a MONAI Label user would.
#
#   bash scripts/setup_monailabel_env.sh          # idempotent: a second run with nothing changed takes seconds
#   .venv-monailabel/bin/python scripts/monailabel_check.py --bundle BUNDLE_FOLDER
#
# Why a venv of its own: monailabel drags in a large set of server dependencies (fastapi, uvicorn, pydicom,
# dicomweb-client, girder-client, sam2, mlflow, ...) that the bundle itself does not need, and one of them
# (pydicom-seg) pins old numpy/jsonschema.  monailabel 0.8.5 needs monai>=1.4, as the bundle does.
#
# torch is NOT pinned: it comes from the shared .venv, or else pip resolves torch and torchvision together from the
# registry (an exact torch pin can select a torch for which no importable torchvision exists).  A CUDA build of
# torch runs fine on a CPU-only host.
#
# Environment knobs:
#   MONAILABEL_SPEC   pip requirement for monailabel (default below)
#   MONAILABEL_VENV   path of the venv (default: .venv-monailabel at the repository root)
#   SHARED_VENV       an environment whose packages this one reads where their versions do (default: .venv at the
#                     repository root, where it exists; empty: share nothing)
#   PYTHON            interpreter that creates the venv (default: python3)
set -euo pipefail
cd "$(dirname "$0")/.."

MONAILABEL_SPEC="${MONAILABEL_SPEC:-monailabel==0.8.5}"
VENV="${MONAILABEL_VENV:-.venv-monailabel}"
PYTHON="${PYTHON:-python3}"
SHARED_VENV="${SHARED_VENV-.venv}"
STAMP="$VENV/.axunet-setup-stamp"

# What the venv was built from: a change to any of these re-runs pip.
want_stamp="$(
    {
        echo "$MONAILABEL_SPEC"
        cat configs/metadata.json
        cat scripts/setup_monailabel_env.sh
        echo "$SHARED_VENV"
        # what the shared environment holds (not this checkout's editable install, whose line names the commit)
        if [ -n "$SHARED_VENV" ] && [ -x "$SHARED_VENV/bin/python" ]; then
            "$SHARED_VENV/bin/python" -m pip list --format=freeze --exclude-editable 2>/dev/null
        fi
    } | sha256sum | cut -d' ' -f1
)"

imports_ok() {
    "$VENV/bin/python" - <<'EOF' >/dev/null 2>&1
import importlib.util, json, os, sys
import monailabel, monai, torch, torchvision  # noqa: F401
from monailabel.tasks.infer.bundle import BundleInferTask  # noqa: F401
from monailabel.tasks.train.bundle import BundleTrainTask  # noqa: F401
import monailabel.interfaces.app  # noqa: F401  (the server's imports, pydicom-seg included)
from importlib.metadata import version
for name in json.load(open("configs/metadata.json"))["required_packages_version"]:
    version(name)  # installed
sys.path = [p for p in sys.path if p not in ("", os.getcwd())]  # this checkout's own folder does not count
assert importlib.util.find_spec("axunet_bundle") is None, "axunet_bundle must come from the bundle folder only"
EOF
}

if [ -x "$VENV/bin/python" ] && [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want_stamp" ] && imports_ok; then
    echo "setup_monailabel_env: $VENV is up to date"
    exit 0
fi

start=$(date +%s)
if [ ! -x "$VENV/bin/python" ]; then
    "$PYTHON" -m venv "$VENV"
fi
rm -f "$STAMP"
site_packages() { "$1/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])'; }
site="$(site_packages "$VENV")"
# Disk: torch with its CUDA libraries, triton and itk take ~7 GB in each environment. Where the shared environment
# exists (the README's test command makes .venv first), a .pth file puts its site-packages after this one's, so pip
# counts its packages as installed and adds here only what MONAI Label needs otherwise (its server packages, the
# older numpy pydicom-seg pins), which then come first on sys.path. pip never removes a package outside this venv.
rm -f "$site/axunet-shared-venv.pth"
if [ -n "$SHARED_VENV" ] && [ -x "$SHARED_VENV/bin/python" ]; then
    shared="$(site_packages "$(cd "$SHARED_VENV" && pwd)")"
    if [ "$(basename "$(dirname "$shared")")" = "$(basename "$(dirname "$site")")" ]; then  # same pythonX.Y
        echo "$shared" >"$site/axunet-shared-venv.pth"
        echo "setup_monailabel_env: reads the packages it shares with $SHARED_VENV from $shared"
    else
        echo "setup_monailabel_env: $SHARED_VENV has another Python than $VENV: sharing nothing (torch and the rest, ~8 GB)"
    fi
elif [ -n "$SHARED_VENV" ]; then
    echo "setup_monailabel_env: no $SHARED_VENV to share packages with: installing torch and the rest here (~8 GB)"
fi
# pip alone first: the venv's pip 23.2 prints a spurious "ERROR: Exception" when it also upgrades packaging/wheel.
"$VENV/bin/python" -m pip install --upgrade pip
# pydicom<3: pydicom-seg 0.4.1 imports pydicom._storage_sopclass_uids, which pydicom 3 removed, and the server
# imports pydicom-seg at start-up (monailabel.datastore.utils.convert), so with pydicom 3 `monailabel
# start_server` dies with ModuleNotFoundError.  monailabel's metadata says only pydicom>=2.4.4.
# torch/torchvision come in with monailabel (monai[torchvision]), resolved together.
"$VENV/bin/python" -m pip install "$MONAILABEL_SPEC" "pydicom<3"
# What the bundle's code needs, by name as configs/metadata.json lists them (the versions there are the ones it was
# tested with; pinning them here could fight monailabel's own pins).
required=$("$VENV/bin/python" -c 'import json; print(" ".join(json.load(open("configs/metadata.json"))["required_packages_version"]))')
# shellcheck disable=SC2086
"$VENV/bin/python" -m pip install $required
# An environment made by an earlier version of this script had this package installed: remove it (from this venv
# only; the shared environment's editable install stays, and is not on this one's import path: a .pth file read
# from a shared directory is not run).
if compgen -G "$site/axunet_bundle-*.dist-info" >/dev/null; then
    "$VENV/bin/python" -m pip uninstall -y axunet_bundle >/dev/null
fi
# (`pip check` is not run: it crashes on itk 5.4.7's wheel tag "cp311-abi3", InvalidTag.)

if ! imports_ok; then
    echo "setup_monailabel_env: imports fail in $VENV" >&2
    "$VENV/bin/python" -c "import monailabel, torch, torchvision" || true
    exit 1
fi
echo "$want_stamp" >"$STAMP"
"$VENV/bin/python" - <<'EOF'
import monai, monailabel, numpy, torch, torchvision
print(f"setup_monailabel_env: monailabel {monailabel.__version__}, monai {monai.__version__}, "
      f"torch {torch.__version__}, torchvision {torchvision.__version__}, numpy {numpy.__version__}")
EOF
echo "setup_monailabel_env: done in $(($(date +%s) - start)) s"
