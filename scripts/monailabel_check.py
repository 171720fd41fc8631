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
Check the bundle with the real MONAI Label (the ``monailabel`` package from PyPI), offline and on CPU.

Run it with the interpreter of the MONAI Label environment (``bash scripts/setup_monailabel_env.sh`` makes it), on the
model-zoo bundle folder that ``axunet bundle OUT`` writes::

    axunet synth cases --n 3 --size 64 --depth 16
    .venv-monailabel/bin/python scripts/monailabel_check.py --bundle OUT/brats_axunet_2d_segmentation --brats cases \
        [--workdir DIR] [--studies STUDIES --file-ext '["*_t1ce.nii.gz"]']

That environment has MONAI Label and the packages the bundle's ``metadata.json`` requires, but not the
``axunet_bundle`` package: the bundle's own code runs, from the app's model folder, as it would for a MONAI Label
user who downloaded the bundle.

What it does, in a temporary folder (nothing in the repository or the given folder changes):

1. copies MONAI Label's own ``monaibundle`` sample app out of the installed package
   (``monailabel apps --download --name monaibundle``; it ships in the wheel, no GitHub needed) and places a copy
   of the bundle folder at ``<app>/model/<bundle folder name>``. When the bundle has no ``models/model.pt``, an
   untrained plain state dict is written, its last-layer bias calibrated so that the label maps hold all of 1, 2
   and 4;
2. writes the given BraTS cases (``--brats``) as MONAI Label's local datastore wants them: one 4D NIfTI per case
   (the bundle's ``modalities``, T1CE, T2, FLAIR, stacked on the last axis) in the studies folder and the BraTS
   label map in ``labels/final``;
3. checks, each printed as PASS or FAIL:

   a. ``BundleInferTask`` infers a case: a 3D label file with the input's shape and affine, values in
      {0, 1, 2, 4}, identical to what the bundle's own inference workflow writes for the per-modality files, and
      the task's label names -> values (MONAI Label takes them from ``metadata.json``
      ``network_data_format#outputs#pred#channel_def``) name exactly the values written, and the result's params
      carry the volumes of its labels and regions in mL (voxel counts times the voxel volume);
   c. ``monailabel start_server`` (the sample app, 127.0.0.1, a free port, auth off) lists the model and its
      trainer in ``/info/``, and ``POST /infer/<name>?image=<id>&output=image`` returns a NIfTI label map equal
      to (a)'s;
   b. ``BundleTrainTask`` runs one epoch on the datastore (2 training cases, 1 validation case; small sizes and
      ``pretrained: false`` through its ``_update_overrides`` hook, as an app would set them) and
      ``models/model.pt`` changes, stays a plain state dict, and moved only a little from the previous weights
      (so MONAI Label's CheckpointLoader did start training from them).

   d. with ``--studies`` (a flat folder of per-modality studies that ``axunet monailabel-studies`` laid out from a
      copy of ``--brats`` whose one case has no label) and ``--file-ext`` (the ``MONAI_LABEL_DATASTORE_FILE_EXT`` it
      printed): 3D Slicer's loop over REST with MONAI Label's own client: ``/info`` names the model, its labels and
      trainer; ``/datastore`` lists one image per case; ``/infer`` with Slicer's params returns an NRRD label map on
      the study's grid in the bundle's values; ``PUT /datastore/label`` stores the unlabelled case's label;
      ``/train`` runs one small epoch (the bundle copy's train.json gets the small sizes) and changes
      ``models/model.pt``; the next ``/infer`` differs. Each call and its answer is printed (``REST: ...``).

   (c) runs before (b) because training changes ``model.pt``; (d) runs last.

Exit status 0 when every check passed, 1 otherwise.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import traceback
import urllib.error
import urllib.request
from pathlib import Path

import nibabel as nib
import numpy as np

#: the label values channel_def names: the BraTS 2021 ones and 3, the enhancing tumour of a BraTS 2023+ case
NAMED_VALUES = {1, 2, 3, 4}
BRATS_VALUES = {0} | NAMED_VALUES
DEFAULT_MODALITIES = ("t1ce", "t2", "flair")  # input channels, in order, when inference.json names none
SAMPLE_APP = "monaibundle"

# Keeps training on CPU small: 64 x 64 slices, few per volume, no worker processes, no ImageNet download.
TRAIN_OVERRIDES = {
    "pretrained": False,
    "roi_size": [64, 64],
    "slices_per_volume": 2,
    "batch_size": 4,
    "num_workers": 0,
    "val_interval": 1,
}

log = logging.getLogger("monailabel_check")


# ---------------------------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------------------------
class CheckFailed(AssertionError):
    pass


def require(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


class Problems:
    """Collects the failures of the independent parts of one check, so that one failure does not hide the next."""

    def __init__(self) -> None:
        self.messages: list[str] = []

    @contextlib.contextmanager
    def part(self, what: str):
        try:
            yield
        except CheckFailed as err:
            log.error("%s", err.args[0])
            self.messages.append(str(err.args[0]))
        except Exception as err:  # noqa: BLE001 - an error in one part is that part's failure
            log.error("%s failed:\n%s", what, traceback.format_exc())
            self.messages.append(f"{what}: {type(err).__name__}: {err}")

    def raise_any(self) -> None:
        if self.messages:
            raise CheckFailed(" | ".join(m.splitlines()[0] for m in self.messages))


def root_cause(err: BaseException) -> str:
    """``Type: first line`` of the innermost exception of a chain (a config expression's error, not the wrapper)."""
    seen = {id(err)}
    while (err.__cause__ or err.__context__) is not None and id(err.__cause__ or err.__context__) not in seen:
        err = err.__cause__ or err.__context__
        seen.add(id(err))
    lines = str(err).strip().splitlines()
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def free_port() -> int:
    with contextlib.closing(socket.socket(socket.AF_INET, socket.SOCK_STREAM)) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def label_summary(data: np.ndarray) -> str:
    values, counts = np.unique(data, return_counts=True)
    return ", ".join(f"{int(v)}: {int(c)}" for v, c in zip(values, counts))


def read_label_map(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The voxels (``X, Y, Z``) and RAS affine of a NIfTI or NRRD label map (NRRD: what 3D Slicer asks for), read by
    MONAI's ``LoadImage`` (ITK for NRRD; a downloaded file may have no suffix, so NRRD is told by its magic)."""
    from monai.transforms import LoadImage

    with path.open("rb") as f:
        nrrd = f.read(4) == b"NRRD"
    if nrrd and not path.name.endswith(".nrrd"):
        path = path.rename(path.with_name(path.name + ".nrrd"))
    image = LoadImage(image_only=True)(str(path))
    return np.asarray(image), np.asarray(image.affine)


def check_label_file(path: Path, image_path: Path, what: str) -> np.ndarray:
    """A 3D label map on the input's grid (shape and affine) with BraTS values only; returns its voxels."""
    require(path.is_file(), f"{what}: no label file at {path}")
    ref = nib.load(str(image_path))
    data, affine = read_label_map(path)
    require(data.ndim == 3, f"{what}: label map has shape {data.shape}, expected 3D")
    require(
        tuple(data.shape) == tuple(ref.shape[:3]), f"{what}: label shape {data.shape} != image shape {ref.shape[:3]}"
    )
    require(
        np.allclose(affine, ref.affine, atol=1e-3),
        f"{what}: label affine differs from the image's:\n{affine}\nvs\n{ref.affine}",
    )
    require(np.allclose(data, np.round(data)), f"{what}: label map holds non-integer values")
    values = {int(v) for v in np.unique(data)}
    require(values <= BRATS_VALUES, f"{what}: label values {sorted(values)} not within {sorted(BRATS_VALUES)}")
    log.info("%s: %s %s, values {%s}", what, path.name, tuple(data.shape), label_summary(data))
    return data.astype(np.int64)


def compare_labels(a: np.ndarray, b: np.ndarray, what: str, tolerance: float = 1e-3) -> None:
    """Two label maps of the same case agree (all but a ``tolerance`` fraction of voxels, for float round-off at the
    threshold; a geometry error - flip, shift, crop - changes far more)."""
    require(a.shape == b.shape, f"{what}: shapes differ, {a.shape} vs {b.shape}")
    mismatch = int(np.count_nonzero(a != b))
    require(mismatch <= tolerance * a.size, f"{what}: label maps differ in {mismatch} of {a.size} voxels")
    log.info("%s: label maps agree (%d of %d voxels differ)", what, mismatch, a.size)


def check_label_names(labels: dict, written: np.ndarray, what: str) -> None:
    """MONAI Label's label names -> values must be the BraTS values the bundle writes."""
    require(isinstance(labels, dict) and labels, f"{what}: no label names reported ({labels!r})")
    named = {int(v) for v in labels.values()}
    require(
        0 not in named,
        f"{what}: label {[k for k, v in labels.items() if int(v) == 0]} has value 0, the background; MONAI Label "
        f"takes label values from metadata.json network_data_format#outputs#pred#channel_def keys, which must be "
        f"the values written (1, 2, 4; 3 in BraTS 2023+ values), got {labels}",
    )
    require(named <= NAMED_VALUES, f"{what}: reported label values {sorted(named)} are not BraTS values 1-4 ({labels})")
    present = {int(v) for v in np.unique(written)} - {0}
    require(present <= named, f"{what}: the label map holds values {sorted(present - named)} with no name ({labels})")
    log.info("%s: label names %s", what, labels)


#: the region volumes the bundle's inference puts into MONAI Label's result params, and the BraTS 2021 labels of each
REGION_VOLUMES = {"WT_region_mL": (1, 2, 4), "TC_region_mL": (1, 4), "ET_region_mL": (4,)}


def check_volumes(params: dict, written: np.ndarray, image_path: Path, what: str) -> None:
    """The result's params carry the volume of each region in mL: the returned label map's voxel count times the
    voxel volume (|det| of the image's affine, mm^3 -> mL), to 1e-6 mL; and one volume per label."""
    voxel_ml = abs(np.linalg.det(nib.load(str(image_path)).affine[:3, :3])) / 1000
    for column, values in REGION_VOLUMES.items():
        require(column in params, f"{what}: no {column} in the result's params (keys: {sorted(params)})")
        expected = int(np.isin(written, values).sum()) * voxel_ml
        require(abs(float(params[column]) - expected) <= 1e-6, f"{what}: {column} {params[column]} != {expected} mL")
    labels = sorted(k for k in params if "_label" in k and k.endswith("_mL"))
    require(len(labels) == 3, f"{what}: expected the volumes of the 3 labels, got {labels}")
    log.info("%s: volumes %s", what, {k: round(float(params[k]), 3) for k in [*labels, *REGION_VOLUMES]})


# ---------------------------------------------------------------------------------------------------------------
# setup: data, bundle, app
# ---------------------------------------------------------------------------------------------------------------
def write_studies(root: Path, brats: Path, modalities: tuple[str, ...]) -> tuple[Path, list[str], Path]:
    """The labelled BraTS 2021-named cases of ``brats`` as 4D NIfTI images in ``studies/`` plus labels in
    ``studies/labels/final`` (MONAI Label's datastore layout)."""
    case_dirs = sorted(d for d in brats.iterdir() if d.is_dir() and (d / f"{d.name}_seg.nii.gz").is_file())
    require(len(case_dirs) >= 2, f"--brats {brats}: at least 2 labelled BraTS 2021-named case folders are needed")
    n, shape = len(case_dirs), nib.load(str(case_dirs[0] / f"{case_dirs[0].name}_seg.nii.gz")).shape
    studies = root / "studies"
    final = studies / "labels" / "final"
    final.mkdir(parents=True, exist_ok=True)
    ids = []
    for case_dir in case_dirs:
        case_id = case_dir.name
        channels = [nib.load(str(case_dir / f"{case_id}_{m}.nii.gz")) for m in modalities]
        stacked = np.stack([np.asarray(c.dataobj) for c in channels], axis=-1)
        img = nib.Nifti1Image(stacked, channels[0].affine)
        img.set_qform(channels[0].affine, code=1)
        img.set_sform(channels[0].affine, code=1)
        nib.save(img, str(studies / f"{case_id}.nii.gz"))
        shutil.copyfile(case_dir / f"{case_id}_seg.nii.gz", final / f"{case_id}.nii.gz")
        ids.append(case_id)
    log.info("studies: %d cases of shape %s, channels %s, in %s", n, shape, "/".join(modalities), studies)
    return studies, ids, brats


def install_app(root: Path) -> Path:
    """MONAI Label's ``monaibundle`` sample app, copied out of the installed package (no download)."""
    out = root / "apps"
    cmd = [sys.executable, "-m", "monailabel.main", "apps", "--download", "--name", SAMPLE_APP, "--output", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    app = out / SAMPLE_APP
    require(
        proc.returncode == 0 and (app / "main.py").is_file(),
        f"`monailabel apps --download --name {SAMPLE_APP}` failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
    )
    log.info("app: %s (from the monailabel package)", app)
    return app


# fraction of the brain that each output region (WT, TC, ET) covers with the calibrated untrained weights
CALIBRATED_COVERAGE = (0.6, 0.35, 0.15)


def make_untrained_weights(bundle: Path, case_files: list[Path]) -> None:
    """
    An untrained plain state dict of the bundle's ``network_def`` (ImageNet weights off: offline).

    A random network's region logits barely vary over the image, so every voxel would get the same label. To make
    the label maps worth comparing (all of 1, 2, 4 present), the bias of the last layer is shifted so that each
    region channel covers a set fraction of the brain of the first case (:data:`CALIBRATED_COVERAGE`).
    """
    import torch
    from monai.bundle import ConfigParser

    parser = ConfigParser()
    parser.read_config(str(bundle / "configs" / "inference.json"))
    parser["bundle_root"] = str(bundle)
    parser["device"] = "$torch.device('cpu')"
    if "pretrained" in parser.config:
        parser["pretrained"] = False
    if isinstance(parser.config.get("network_def"), dict) and "pretrained" in parser["network_def"]:
        parser["network_def"]["pretrained"] = False
    with torch.random.fork_rng():
        torch.manual_seed(20250325)  # not a seed a workflow would use, so a fresh network never equals this one
        net = parser.get_parsed_content("network_def", instantiate=True).eval()
    state = net.state_dict()
    note = "not calibrated"
    try:
        image = parser.get_parsed_content("preprocessing", instantiate=True)({"image": [str(f) for f in case_files]})
        x = torch.as_tensor(image["image"]).float()  # (C, H, W, D)
        depth = x.shape[-1]
        x = x[..., max(0, depth // 2 - 2) : depth // 2 + 2].permute(3, 0, 1, 2)  # a few middle slices
        with torch.no_grad():
            logits = net(x)
        brain = x.abs().sum(1) > 0
        bias_key = [k for k, v in state.items() if k.endswith("bias") and tuple(v.shape) == (logits.shape[1],)][-1]
        for channel, fraction in enumerate(CALIBRATED_COVERAGE[: logits.shape[1]]):
            state[bias_key][channel] -= torch.quantile(logits[:, channel][brain], 1.0 - fraction)
        note = f"last-layer bias {bias_key} calibrated to region coverage {CALIBRATED_COVERAGE}"
    except Exception as err:  # noqa: BLE001 - calibration is a nicety; the checks work without it
        log.warning(
            "could not calibrate the untrained weights (%s: %s); using them as they are", type(err).__name__, err
        )
    torch.save(state, bundle / "models" / "model.pt")
    log.info(
        "models/model.pt: none in the bundle; wrote an untrained plain state dict (%s; %s)", type(net).__name__, note
    )


def apply_config_edits(bundle: Path, edits: list[str]) -> None:
    """
    ``--set FILE:ID=JSON`` edits of the bundle *copy*, e.g. ``inference.json:preprocessing#transforms#0#keys="image"``:
    a development aid to try a config change under MONAI Label before making it; the repository is not touched.
    An ID whose last part is missing is added; a JSON value that does not parse is taken as a string.
    """
    for edit in edits:
        target, _, value = edit.partition("=")
        file_name, _, config_id = target.partition(":")
        require(bool(file_name and config_id and _), f"--set {edit!r}: expected FILE:ID=JSON")
        path = bundle / "configs" / file_name
        config = json.loads(path.read_text())
        parts = config_id.split("#")
        node = config
        for part in parts[:-1]:
            node = node[int(part)] if isinstance(node, list) else node[part]
        try:
            parsed = json.loads(value)
        except json.JSONDecodeError:
            parsed = value
        last = parts[-1]
        if isinstance(node, list):
            node[int(last)] = parsed
        else:
            node[last] = parsed
        path.write_text(json.dumps(config, indent=4) + "\n")
        log.info("bundle copy: %s: %s = %s", file_name, config_id, json.dumps(parsed))


def install_bundle(app: Path, source: Path) -> Path:
    """A copy of the bundle folder at ``<app>/model/<its name>``, with its code first on ``sys.path`` (as MONAI Label
    puts it there for its tasks), so that this script, too, uses only the bundle's own code."""
    bundle = app / "model" / source.name
    shutil.copytree(source, bundle, ignore=shutil.ignore_patterns("__pycache__", "*.ts", "*.onnx"))
    (bundle / "models").mkdir(exist_ok=True)
    sys.path.insert(0, str(bundle))
    log.info("bundle: %s (copied from %s)", bundle, source)
    return bundle


def ensure_weights(bundle: Path, case_files: list[Path]) -> None:
    if (bundle / "models" / "model.pt").is_file():
        log.info("models/model.pt: the bundle's own")
    else:
        make_untrained_weights(bundle, case_files)


# ---------------------------------------------------------------------------------------------------------------
# checks
# ---------------------------------------------------------------------------------------------------------------
def check_infer_task(ctx: dict) -> None:
    from monailabel.tasks.infer.bundle import BundleInferTask

    task = BundleInferTask(str(ctx["bundle"]), {"preload": "false"})
    require(task.is_valid(), "BundleInferTask is not valid (see the log: missing inference.json or model.pt?)")
    info = task.info()
    log.info("BundleInferTask: type=%s dimension=%s labels=%s", info.get("type"), info.get("dimension"), task.labels)
    image = ctx["studies"] / f"{ctx['ids'][0]}.nii.gz"
    t0 = time.time()
    result_file, result_json = task({"image": str(image), "device": "cpu"})
    log.info("BundleInferTask: inferred %s in %.1f s", image.name, time.time() - t0)
    require(isinstance(result_file, str), f"BundleInferTask returned no file: {result_file!r}")
    out = ctx["root"] / "infer_task_label.nii.gz"
    shutil.move(result_file, out)
    data = check_label_file(out, image, "BundleInferTask")
    ctx["infer_task_label"] = data
    problems = Problems()
    with problems.part("bundle inference workflow"):
        native = native_inference(ctx, image)
        compare_labels(data, native, "BundleInferTask vs the bundle's own inference workflow")
    with problems.part("label names"):
        check_label_names(result_json.get("label_names", task.labels), data, "BundleInferTask")
    with problems.part("volumes"):
        check_volumes(result_json, data, image, "BundleInferTask")
    problems.raise_any()


def native_inference(ctx: dict, image: Path) -> np.ndarray:
    """
    The bundle's own inference workflow on the same case, for comparison: ``configs/inference.json`` run as
    ``monai.bundle run`` would, reading the case as a BraTS folder of per-modality files (not the 4D file).
    """
    from monai.bundle import ConfigWorkflow

    from axunet_bundle.outputs import segmentation_path

    bundle, case_id = ctx["bundle"], ctx["ids"][0]
    dataset_dir = ctx["root"] / "native_in"
    shutil.copytree(ctx["brats"] / case_id, dataset_dir / case_id)
    output_dir = ctx["root"] / "native_out"
    workflow = ConfigWorkflow(
        workflow_type="infer",
        config_file=str(bundle / "configs" / "inference.json"),
        meta_file=str(bundle / "configs" / "metadata.json"),
        bundle_root=str(bundle),
        dataset_dir=str(dataset_dir),
        output_dir=str(output_dir),
        device="$torch.device('cpu')",
        num_workers=0,
    )
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    out = segmentation_path(output_dir, case_id)
    return check_label_file(out, image, "bundle inference workflow")


def check_train_task(ctx: dict) -> None:
    from monailabel.datastore.local import LocalDatastore
    from monailabel.tasks.train.bundle import BundleTrainTask

    class SmallBundleTrainTask(BundleTrainTask):
        """The real BundleTrainTask; only its override hook adds the small-size settings for a CPU smoke run."""

        def _update_overrides(self, overrides):
            overrides.update(TRAIN_OVERRIDES)
            return overrides

    import torch

    bundle = ctx["bundle"]
    weights = bundle / "models" / "model.pt"
    before = sha256(weights)
    start_state = torch.load(weights, map_location="cpu", weights_only=True)
    datastore = LocalDatastore(str(ctx["studies"]), extensions=("*.nii.gz", "*.nii"), auto_reload=False)
    labelled = datastore.datalist()
    require(len(labelled) == len(ctx["ids"]), f"datastore lists {len(labelled)} labelled cases, not {len(ctx['ids'])}")
    task = SmallBundleTrainTask(str(bundle), {})
    require(task.is_valid(), "BundleTrainTask is not valid (configs/train.json missing?)")
    request = {
        "model": ctx["name"],
        "max_epochs": 1,
        "device": "cpu",
        "multi_gpu": False,
        "val_split": 1.0 / len(ctx["ids"]) + 0.01,  # one validation case, the rest train
        "pretrained": True,  # MONAI Label's: start from models/model.pt (it inserts a CheckpointLoader)
    }
    t0 = time.time()
    task(request, datastore)
    log.info("BundleTrainTask: one epoch in %.1f s", time.time() - t0)
    require(weights.is_file(), "BundleTrainTask: models/model.pt is gone")
    after = sha256(weights)
    require(after != before, "BundleTrainTask: models/model.pt did not change after one epoch")

    state = torch.load(weights, map_location="cpu", weights_only=True)
    require(
        isinstance(state, dict) and all(torch.is_tensor(v) for v in state.values()),
        "BundleTrainTask: models/model.pt is not a plain state dict",
    )
    require(set(state) == set(start_state), "BundleTrainTask: model.pt has other keys than before training")
    # One epoch of fine-tuning moves the weights a little from where they started. A network that did not start
    # from model.pt (MONAI Label's CheckpointLoader not applied) differs by about its whole size.
    floats = [k for k, v in start_state.items() if v.is_floating_point() and v.numel() > 1]
    change = sum(float((state[k] - start_state[k]).abs().sum()) for k in floats)
    size = sum(float(start_state[k].abs().sum()) for k in floats)
    relative = change / max(size, 1e-12)
    require(relative > 0, "BundleTrainTask: no weight changed")
    require(
        relative < 0.1,
        f"BundleTrainTask: weights moved by {relative:.2f} of their size in one epoch; "
        "training did not start from models/model.pt (CheckpointLoader not applied?)",
    )
    log.info(
        "BundleTrainTask: models/model.pt updated (plain state dict, %d tensors; mean relative change %.2e, "
        "so training started from the previous model.pt)",
        len(state),
        relative,
    )


def start_server(ctx: dict, port: int, studies: Path | None = None, env_extra: dict | None = None) -> subprocess.Popen:
    """``monailabel start_server`` on the sample app with the bundle, serving ``studies`` (default: the 4D studies),
    its log in ``<root>/server.log`` (``server_<n>.log`` for a later server)."""
    cmd = [
        sys.executable,
        "-m",
        "monailabel.main",  # what the `monailabel` launcher execs
        "start_server",
        "--app",
        str(ctx["app"]),
        "--studies",
        str(studies or ctx["studies"]),
        "--conf",
        "models",
        ctx["name"],
        "--conf",
        "preload",
        "false",
        "--conf",
        "sam2",
        "false",
        # the default source "monaihosting" lists the online model zoo first, even for a local bundle
        "--conf",
        "zoo_source",
        "ngc",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = dict(os.environ)
    env.update(
        PYTHONUNBUFFERED="1",  # the log file is read while the server runs
        MONAI_LABEL_AUTH_ENABLE="false",
        MONAI_LABEL_DATASTORE_AUTO_RELOAD="false",
        MONAI_LABEL_TRACKING_ENABLED="false",
        MONAI_LABEL_SESSIONS="false",
        MONAI_LABEL_AUTO_UPDATE_SCORING="false",
        **(env_extra or {}),
    )
    log_path = ctx["root"] / ("server.log" if "server_log" not in ctx else f"server_{port}.log")
    ctx["server_log"] = log_path
    log.info("server: %s", " ".join(cmd))
    return subprocess.Popen(
        cmd,
        stdout=open(log_path, "wb"),
        stderr=subprocess.STDOUT,
        env=env,
        cwd=str(ctx["root"]),
        start_new_session=True,
    )


def stop_server(proc: subprocess.Popen) -> None:
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=20)


def http(method: str, url: str, timeout: float) -> tuple[int, dict, bytes]:
    req = urllib.request.Request(url, method=method, data=b"" if method == "POST" else None)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, dict(resp.headers), resp.read()
    except urllib.error.HTTPError as err:
        return err.code, dict(err.headers), err.read()


def server_tail(ctx: dict, lines: int = 60) -> str:
    path = ctx.get("server_log")
    if not path or not Path(path).is_file():
        return ""
    text = Path(path).read_text(errors="replace").splitlines()
    return "\n".join(text[-lines:])


def server_error(ctx: dict) -> str:
    """The last exception line in the server log (``KeyError: 'label'``), or ``""``."""
    path = ctx.get("server_log")
    if not path or not Path(path).is_file():
        return ""
    pattern = re.compile(r"^[A-Za-z_][\w.]*(Error|Exception|Exit|Interrupt)\b.*")
    for _ in range(10):  # the server logs the traceback after it has sent the 500
        lines = [ln.strip() for ln in Path(path).read_text(errors="replace").splitlines()]
        found = [ln for ln in lines if pattern.match(ln)]
        if found:
            return found[-1]
        time.sleep(0.5)
    return ""


def wait_for_server(ctx: dict, proc: subprocess.Popen, base: str, startup_timeout: float) -> dict:
    """``GET /info/`` once the server answers; fails when it exits or does not answer in time."""
    t0 = time.time()
    while time.time() - t0 < startup_timeout:
        if proc.poll() is not None:
            raise CheckFailed(
                f"server exited with {proc.returncode} while starting: {server_error(ctx) or '?'}\n{server_tail(ctx)}"
            )
        try:
            status, _, body = http("GET", f"{base}/info/", timeout=10)
            if status == 200:
                log.info("server: up on %s after %.1f s", base, time.time() - t0)
                return json.loads(body)
        except (urllib.error.URLError, ConnectionError, TimeoutError, socket.timeout):
            pass
        time.sleep(2)
    raise CheckFailed(f"server not up after {startup_timeout:.0f} s:\n{server_tail(ctx)}")


def check_server(ctx: dict, startup_timeout: float, infer_timeout: float) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(ctx, port)
    try:
        info = wait_for_server(ctx, proc, base, startup_timeout)
        models = info.get("models", {})
        require(ctx["name"] in models, f"server /info/ lists models {list(models)}, not {ctx['name']!r}")
        labels = models[ctx["name"]].get("labels")
        trainers = info.get("trainers", {})
        require(ctx["name"] in trainers, f"server /info/ lists trainers {list(trainers)}, not {ctx['name']!r}")
        status = info.get("datastore", {})
        n = len(ctx["ids"])
        require(
            status.get("total") == n and status.get("completed") == n,
            f"server datastore status {status}, expected {n} images, all labelled",
        )
        log.info("server: /info/ lists model and trainer %r; datastore %s", ctx["name"], status)

        image_id = ctx["ids"][0]
        t0 = time.time()
        status, headers, body = http("POST", f"{base}/infer/{ctx['name']}?image={image_id}&output=image", infer_timeout)
        require(
            status == 200,
            f"POST /infer/{ctx['name']}?image={image_id} -> {status}: {body[:300]!r}; server error: "
            f"{server_error(ctx) or '?'}\nserver log:\n{server_tail(ctx)}",
        )
        log.info(
            "server: /infer answered %s (%d bytes) in %.1f s", headers.get("content-type"), len(body), time.time() - t0
        )
        out = ctx["root"] / "server_label.nii.gz"
        out.write_bytes(body)
        data = check_label_file(out, ctx["studies"] / f"{image_id}.nii.gz", "server /infer")
        problems = Problems()
        if ctx.get("infer_task_label") is not None:
            with problems.part("server vs BundleInferTask"):
                compare_labels(data, ctx["infer_task_label"], "server vs BundleInferTask")
        with problems.part("label names"):
            check_label_names(labels, data, "server /info/")
        problems.raise_any()
    finally:
        stop_server(proc)


#: what 3D Slicer's MONAI Label module asks ``/infer`` for (its client sends these params): an NRRD label map
SLICER_INFER_PARAMS = {"result_extension": ".nrrd", "result_dtype": "uint8", "result_compress": False, "device": "cpu"}


def rest(ctx: dict, call: str, answer: str) -> None:
    """Logs a REST call and what it answered, and keeps it for the summary."""
    ctx.setdefault("rest_calls", []).append(f"{call} -> {answer}")
    log.info("REST %s -> %s", call, answer)


def check_slicer_loop(ctx: dict, startup_timeout: float, infer_timeout: float, train_timeout: float) -> None:
    """
    The loop a 3D Slicer user runs, over REST with MONAI Label's own client (the one Slicer's module carries), on the
    flat studies folder ``axunet monailabel-studies`` laid out (``--studies``, served with its
    ``MONAI_LABEL_DATASTORE_FILE_EXT``): ``/info`` names the model, its labels and trainer; ``/datastore`` lists one
    image per case; ``/infer`` on the case without a label returns a label map on the study's grid in the bundle's
    values, as NRRD (Slicer's request; NIfTI is (c)'s); its label (the BraTS folder's, standing for the user's
    correction) saved through ``PUT /datastore/label`` is stored; ``/train`` runs one small epoch on the labelled
    cases and changes ``models/model.pt``; the next ``/infer`` uses the new weights (its label map changes).
    """
    from monailabel.client import MONAILabelClient

    name, patterns = ctx["name"], ctx["file_ext"]
    studies = ctx["root"] / "slicer_studies"
    shutil.copytree(ctx["slicer_source"], studies, symlinks=True)  # the server writes into its studies folder
    # small sizes for a CPU run, as an app would set them: the server's BundleTrainTask runs the bundle's train.json
    train_json = ctx["bundle"] / "configs" / "train.json"
    config = json.loads(train_json.read_text())
    config.update(TRAIN_OVERRIDES)
    train_json.write_text(json.dumps(config, indent=4) + "\n")
    weights = ctx["bundle"] / "models" / "model.pt"
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    proc = start_server(ctx, port, studies, {"MONAI_LABEL_DATASTORE_FILE_EXT": json.dumps(patterns)})
    try:
        wait_for_server(ctx, proc, base, startup_timeout)
        client = MONAILabelClient(base, tmpdir=str(ctx["root"] / "client"))
        info = client.info()
        require(name in info.get("models", {}), f"/info/ lists models {list(info.get('models', {}))}, not {name}")
        require(name in info.get("trainers", {}), f"/info/ lists trainers {list(info.get('trainers', {}))}")
        labels = info["models"][name].get("labels")
        rest(ctx, "GET /info/", f"200; model {name} (labels {labels}), trainer {name}")

        objects = client.datastore().get("objects", {})
        expected = sorted(d.name for d in Path(ctx["slicer_dataset"]).iterdir() if d.is_dir())
        require(sorted(objects) == expected, f"/datastore lists images {sorted(objects)}, not one per case {expected}")
        unlabelled = sorted(i for i, o in objects.items() if "final" not in o.get("labels", {}))
        require(len(unlabelled) == 1, f"/datastore: expected one case without a label, got {unlabelled}")
        image_id = unlabelled[0]
        study = studies / objects[image_id]["image"]["info"]["name"]
        rest(
            ctx,
            f"GET /datastore/?output=all (MONAI_LABEL_DATASTORE_FILE_EXT={json.dumps(patterns)})",
            f"200; images {sorted(objects)} ({len(objects) - 1} labelled; {image_id} is {study.name})",
        )

        t0 = time.time()
        result, params = client.infer(name, image_id, dict(SLICER_INFER_PARAMS))
        seconds = time.time() - t0
        require(result is not None, f"/infer/{name}?image={image_id} returned no label map (params {params})")
        with open(result, "rb") as f:
            require(f.read(4) == b"NRRD", f"/infer with result_extension .nrrd: {result} is no NRRD file")
        first = check_label_file(Path(result), study, "Slicer's /infer (.nrrd)")
        check_label_names(labels, first, "/info/ labels")
        rest(
            ctx,
            f"POST /infer/{name}?image={image_id} params {json.dumps(SLICER_INFER_PARAMS)}",
            f"200; NRRD label map {first.shape} on {study.name}'s grid, values {{{label_summary(first)}}}, "
            f"{seconds:.1f} s; WT {float(params.get('WT_region_mL', float('nan'))):.2f} mL",
        )

        correction = ctx["brats"] / image_id / f"{image_id}_seg.nii.gz"  # the user's corrected label
        response = client.save_label(image_id, str(correction), tag="final")
        stored = [p for p in (studies / "labels" / "final").iterdir() if p.name.startswith(f"{image_id}.")]
        require(len(stored) == 1, f"PUT /datastore/label: no label {image_id}.* in labels/final ({response})")
        require(stored[0].read_bytes() == correction.read_bytes(), f"{stored[0]} is not the label sent")
        labelled = client.datastore()["objects"][image_id].get("labels", {})
        require("final" in labelled, f"/datastore does not list the saved label of {image_id}: {labelled}")
        rest(ctx, f"PUT /datastore/label?image={image_id}&tag=final", f"200 {response}; stored as {stored[0].name}")

        digest = sha256(weights)
        request = {"max_epochs": 1, "val_split": 1.0 / len(objects) + 0.01, "device": "cpu", "multi_gpu": False}
        t0 = time.time()
        task = client.train_start(name, {**request, "pretrained": True})
        state = task
        while time.time() - t0 < train_timeout:
            state = client.train_status()
            if state.get("status") not in ("SUBMITTED", "RUNNING"):
                break
            time.sleep(2)
        seconds = time.time() - t0
        details = "\n".join(state.get("details") or [])
        require(state.get("status") == "DONE", f"/train/{name}: {state.get('status')} after {seconds:.0f} s\n{details}")
        require(sha256(weights) != digest, f"/train/{name} finished but models/model.pt did not change")
        rest(
            ctx,
            f"POST /train/{name} {json.dumps(request)}",
            f"200 (task {task.get('status')}); GET /train/ -> {state['status']} after {seconds:.1f} s "
            f"({len(objects)} labelled cases: {len(objects) - 1} train, 1 validates); models/model.pt changed",
        )

        result, _ = client.infer(name, image_id, dict(SLICER_INFER_PARAMS))
        require(result is not None, f"/infer/{name}?image={image_id} after training returned no label map")
        after = check_label_file(Path(result), study, "Slicer's /infer after training")
        changed = int(np.count_nonzero(after != first))
        require(changed > 0, "/infer after training returned the same label map: the new weights were not used")
        rest(
            ctx,
            f"POST /infer/{name}?image={image_id} (after training, the same params)",
            f"200; NRRD, values {{{label_summary(after)}}}; {changed} of {after.size} voxels changed",
        )
    finally:
        stop_server(proc)


# ---------------------------------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--workdir", help="folder for the app, data and outputs (default: a new temporary folder)")
    p.add_argument("--keep", action="store_true", help="keep the temporary folder")
    p.add_argument("--bundle", required=True, help="the bundle folder (from `axunet bundle OUT`), copied into the app")
    p.add_argument(
        "--brats",
        required=True,
        help="a folder of labelled BraTS 2021-named case folders (e.g. `axunet synth DIR --n 3 --size 64 --depth 16`;\n"
        "this environment has no axunet_bundle package to generate them): the first ones train, the last validates",
    )
    p.add_argument(
        "--studies",
        help="a flat studies folder that `axunet monailabel-studies DATASET OUT` laid out, all its cases labelled but\n"
        "one, DATASET's case folders being those of --brats: runs (d), the 3D Slicer loop over REST",
    )
    p.add_argument("--file-ext", help="the MONAI_LABEL_DATASTORE_FILE_EXT the command printed (a JSON list)")
    p.add_argument("--train-timeout", type=float, default=600.0)
    p.add_argument("--skip-train", action="store_true", help="skip the BundleTrainTask check")
    p.add_argument("--skip-server", action="store_true", help="skip the start_server + REST check")
    p.add_argument("--startup-timeout", type=float, default=300.0)
    p.add_argument("--infer-timeout", type=float, default=300.0)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="FILE:ID=JSON",
        help="edit the bundle copy's config before the checks (development aid), e.g.\n"
        "--set 'inference.json:preprocessing#transforms#0#keys=\"image\"'",
    )
    args = p.parse_args(argv)

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s", force=True)
    for noisy in ("monailabel", "monai", "ignite", "urllib3", "PIL", "matplotlib"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("OMP_NUM_THREADS", "2")

    import monai
    import monailabel
    import torch

    torch.set_num_threads(min(2, torch.get_num_threads()))
    log.info(
        "monailabel %s, monai %s, torch %s, numpy %s, python %s",
        monailabel.__version__,
        monai.__version__,
        torch.__version__,
        np.__version__,
        sys.version.split()[0],
    )
    source = Path(args.bundle).resolve()
    inference = source / "configs" / "inference.json"
    require(inference.is_file(), f"{inference} is missing: --bundle must be a bundle folder")
    require("segmentation" in source.name, f"{source.name}: MONAI Label wants 'segmentation' in the bundle's name")

    tmp = None
    if args.workdir:
        root = Path(args.workdir).resolve()
        require(not root.exists() or not any(root.iterdir()), f"--workdir {root} exists and is not empty")
        root.mkdir(parents=True, exist_ok=True)
    else:
        tmp = tempfile.mkdtemp(prefix="monailabel_check_")
        root = Path(tmp)
    ctx: dict = {"root": root, "name": source.name}

    # (c) runs before (b): training changes models/model.pt, and (c) compares with (a)'s label map
    checks = [("(a) BundleInferTask infers a case", check_infer_task)]
    if not args.skip_server:
        checks.append(
            (
                "(c) start_server + POST /infer returns a label map",
                lambda c: check_server(c, args.startup_timeout, args.infer_timeout),
            )
        )
    if not args.skip_train:
        checks.append(("(b) BundleTrainTask runs one epoch and updates model.pt", check_train_task))
    if args.studies:  # last: it trains, and sets the bundle copy's training sizes
        ctx["slicer_source"] = Path(args.studies).resolve()
        ctx["slicer_dataset"] = Path(args.brats).resolve()
        ctx["file_ext"] = json.loads(args.file_ext or '["*_t1ce.nii.gz"]')
        checks.append(
            (
                "(d) 3D Slicer's loop over REST on per-modality studies: info, datastore, infer, save label, train",
                lambda c: check_slicer_loop(c, args.startup_timeout, args.infer_timeout, args.train_timeout),
            )
        )

    results: list[tuple[str, bool, str]] = []
    try:
        configured = json.loads(inference.read_text()).get("modalities", DEFAULT_MODALITIES)
        # the config takes the trained weights' modalities (settings.trained_setting), else its default: the check's
        # untrained weights have no settings file
        modalities = tuple(configured["default"] if isinstance(configured, dict) else configured)
        ctx["app"] = install_app(root)
        ctx["bundle"] = install_bundle(ctx["app"], source)
        ctx["studies"], ctx["ids"], ctx["brats"] = write_studies(root, Path(args.brats).resolve(), modalities)
        import axunet_bundle

        code = Path(axunet_bundle.__file__).resolve()
        require(code.is_relative_to(ctx["bundle"].resolve()), f"axunet_bundle came from {code}, not the bundle")
        log.info("bundle code: %s", code.parent)
        first = ctx["brats"] / ctx["ids"][0]
        ensure_weights(ctx["bundle"], [first / f"{first.name}_{m}.nii.gz" for m in modalities])
        apply_config_edits(ctx["bundle"], args.set)
        for title, fn in checks:
            t0 = time.time()
            log.info("=== %s", title)
            try:
                fn(ctx)
                results.append((title, True, f"{time.time() - t0:.1f} s"))
            except Exception as err:  # noqa: BLE001 - report every check
                if isinstance(err, CheckFailed):
                    detail = str(err.args[0])
                    note = detail.strip().splitlines()[0]
                else:
                    detail = traceback.format_exc()
                    note = root_cause(err)
                log.error("%s: %s", title, detail)
                results.append((title, False, note[:400]))
    except Exception:  # setup failed
        log.error("setup failed:\n%s", traceback.format_exc())
        results.append(("setup (data, app, bundle)", False, traceback.format_exc().strip().splitlines()[-1]))
    finally:
        if tmp and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp:
            log.info("kept %s", tmp)

    print()
    for call in ctx.get("rest_calls", []):
        print(f"REST: {call}")
    for title, ok, note in results:
        print(f"{'PASS' if ok else 'FAIL'}: {title} ({note})")
    n_pass = sum(ok for _, ok, _ in results)
    print(f"monailabel_check: {n_pass} passed, {len(results) - n_pass} failed")
    return 0 if results and n_pass == len(results) else 1


if __name__ == "__main__":
    sys.exit(main())
