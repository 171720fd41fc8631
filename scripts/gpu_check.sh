#!/usr/bin/env bash
# The one GPU check (docs/benchmarks.md, scripts/gpu_check.py): bash scripts/gpu_check.sh [OUTPUT] [--dry-run].
# On the device machine, which has PyTorch, timm and TensorBoard but not MONAI, nibabel or ignite, it first installs
# the wheels carried in .whl/ (written here by scripts/gpu_check_wheels.sh) into a folder of their own; elsewhere
# (no .whl/) it runs with the current Python's packages. OUTPUT defaults to $OUT (the device machine's folder that
# comes back), else gpu_check_out. PYTHON picks the interpreter (default python3).
set -euo pipefail
cd "$(dirname "$0")/.."
out="${OUT:-gpu_check_out}"
if [[ $# -gt 0 && "$1" != --* ]]; then
    out="$1"
    shift
fi
python="${PYTHON:-python3}"
if compgen -G ".whl/*.whl" >/dev/null; then
    site="${TMPDIR:-/tmp}/gpu_check_site"
    "$python" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$site" .whl/*.whl
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
exec "$python" scripts/gpu_check.py "$out" "$@"
