#!/usr/bin/env bash
# Downloads into .whl/ (git-ignored) the wheels scripts/gpu_check.sh installs on the device machine: what the bundle
# needs there besides its PyTorch, timm, TensorBoard, SciPy and tqdm (MONAI, nibabel, pytorch-ignite, and fire with
# termcolor for `python -m monai.bundle`), at the versions configs/metadata.json pins, for its CPython 3.12 on
# manylinux x86-64 (the device tool's README). Then carry .whl in the device run: `bash scripts/gpu_check.sh`.
set -euo pipefail
cd "$(dirname "$0")/.."
exclude="$(git rev-parse --git-path info/exclude)"
mkdir -p "$(dirname "$exclude")"
grep -qxF '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
pins="$(python3 -c '
import json
meta = json.load(open("configs/metadata.json"))
pins = {"monai": meta["monai_version"], **meta["required_packages_version"]}
print(" ".join(f"{name}=={pins[name]}" for name in ("monai", "nibabel", "pytorch-ignite")))
')"
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
    platforms+=(--platform "$p")
done
# shellcheck disable=SC2086  # the pins are separate words
python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${platforms[@]}" \
    -d .whl $pins fire==0.7.1 termcolor==3.3.0
ls -l .whl
