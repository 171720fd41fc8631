"""Federated training (federated/, the ``[federated]`` extra): the bundle as MONAI's FL client, the FLARE FedAvg job
in the simulator, its privacy filter, and the one line a federation that cannot start ends with."""

from __future__ import annotations

import json
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT, TINY_ROI
from test_network import timm_weights

from axunet_bundle.networks import AXUNet, TimmEncoder
from axunet_bundle.synthetic import write_synthetic_dataset

pytest.importorskip("nvflare", reason="the [federated] extra (pip install -e '.[test,federated]')")

from federated import job  # noqa: E402
from federated.client import FEDERATED_CONFIG, METRICS, VALIDATION_LOG, site_algo  # noqa: E402

#: what every federated test trains with: the smallest run that still trains and validates
SMALL = {
    "roi_size": TINY_ROI,
    "pretrained": False,
    "num_workers": 0,
    "batch_size": 4,
    "slices_per_volume": 4,
    "folds": 2,
}
SHAPE = (64, 64, 8)


@pytest.fixture(scope="module")
def two_sites(tmp_path_factory):
    """Two sites of two cases each (one trains, one validates), in different layouts and contrasts."""
    root = tmp_path_factory.mktemp("sites")
    write_synthetic_dataset(root / "a", 2, seed=0, shape=SHAPE, progress=False)
    write_synthetic_dataset(root / "b", 2, seed=7, shape=SHAPE, layout="2023", intensity_gamma=0.5, progress=False)
    return {"site-1": root / "a", "site-2": root / "b"}


def test_intensity_gamma_changes_contrast_not_anatomy(tmp_path):
    plain = write_synthetic_dataset(tmp_path / "plain", 1, seed=3, shape=SHAPE, progress=False)[0]
    other = write_synthetic_dataset(tmp_path / "gamma", 1, seed=3, shape=SHAPE, intensity_gamma=0.5, progress=False)[0]
    a, b = (nib.load(next(case.glob("*_flair.nii.gz"))).get_fdata() for case in (plain, other))
    seg_a, seg_b = (nib.load(next(case.glob("*_seg.nii.gz"))).get_fdata() for case in (plain, other))
    np.testing.assert_array_equal(seg_a, seg_b)
    np.testing.assert_array_equal(a > 0, b > 0)
    ratio = b[a > 0] / a[a > 0]
    assert ratio.max() / ratio.min() > 1.5  # not a scale, which the training's z-score would undo


def seeded_timm_file(path, seed: int) -> dict[str, torch.Tensor]:
    """A local timm weights file (what ``pretrained_path`` reads) of a randomly initialised Xception; returns those
    weights under AXUNet's key names."""
    torch.manual_seed(seed)
    encoder = TimmEncoder(in_channels=3)
    torch.save(timm_weights(encoder), path)
    return {f"encoder.{k}": v for k, v in encoder.state_dict().items()}


@pytest.mark.parametrize("pretrained", [True, False])
def test_initial_global_model_carries_the_encoder_weights_step(tmp_path, pretrained):
    """MONAI's FL client never runs train.json's ``run`` (where the ImageNet weights load): the job's initial model
    must carry them, or not, as the settings say."""
    expected = seeded_timm_file(tmp_path / "xception.pth", seed=11)
    overrides = {**SMALL, "pretrained_path": str(tmp_path / "xception.pth") if pretrained else None}
    description = job.initial_model(tmp_path / "initial.pt", overrides)
    weights = torch.load(tmp_path / "initial.pt", weights_only=True)
    assert description == {"path": "axunet_bundle.networks.AXUNet", "args": {"in_channels": 3, "out_channels": 3}}
    AXUNet(**description["args"]).load_state_dict(weights)
    kernels = [k for k, v in expected.items() if v.ndim == 4]  # batch-norm buffers start equal anyway
    same = [torch.equal(weights[k], expected[k]) for k in kernels]
    assert len(same) > 50 and all(same) == pretrained and any(same) == pretrained


def test_site_algo_runs_the_bundles_wiring(tmp_path, two_sites):
    """MonaiAlgo over train.json + federated.json: checkpoints, random states, settings, the schedule over the whole
    federation and the validation metrics, all under the site's folder, with bundle_root the bundle's."""
    from monai.fl.utils.constants import ExtraItems, WeightType
    from monai.fl.utils.exchange_object import ExchangeObject

    algo = site_algo("site-1", two_sites["site-1"], tmp_path, rounds=3, local_epochs=1, overrides=SMALL)
    algo.initialize(extra={ExtraItems.CLIENT_NAME: "site-1"})
    parser = algo.train_workflow.parser
    assert parser.get_parsed_content("bundle_root") == str(BUNDLE_ROOT)  # configs, code: the bundle's
    assert parser.get_parsed_content("ckpt_dir") == str(tmp_path / "site-1" / "models")
    assert parser.get_parsed_content("lr_scheduler").T_max == 3  # the cosine schedule spans all rounds
    assert parser["resume"] is False and parser["pretrained"] is False  # federated.json
    assert sys.excepthook.__module__ == "axunet_bundle.errors"  # train.json's initialize ran

    start = job.initial_model(tmp_path / "initial.pt", SMALL)
    assert start["path"] == "axunet_bundle.networks.AXUNet"
    global_weights = torch.load(tmp_path / "initial.pt", weights_only=True)
    metrics = algo.evaluate(ExchangeObject(weights=global_weights)).metrics
    assert set(METRICS) <= set(metrics)
    algo.train(ExchangeObject(weights=global_weights))
    update = algo.get_weights()
    assert update.weight_type == WeightType.WEIGHT_DIFF and set(update.weights) == set(global_weights)
    assert any(v.abs().sum() > 0 for v in update.weights.values())

    models = tmp_path / "site-1" / "models"
    checkpoint = torch.load(next(models.glob("checkpoint_epoch=1.pt")), weights_only=True)
    assert {"model", "optimizer", "lr_scheduler", "random_states", "trainer"} <= set(checkpoint)
    assert json.loads((models / "model_settings.json").read_text())["roi_size"] == TINY_ROI
    assert (models / "model.pt").is_file()  # the local model's validation ran after the round's training
    assert (tmp_path / "site-1" / "global" / "model.pt").is_file()  # the global model's, by this site's cases
    algo.finalize()


def run_job(*args: str, cwd) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(BUNDLE_ROOT / "federated" / "job.py"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=900,
    )


def site_args(sites) -> list[str]:
    return [f"--site={name}={folder}" for name, folder in sites.items()] + [
        f"--set={key}={json.dumps(value)}" for key, value in SMALL.items()
    ]


@pytest.mark.slow
def test_simulator_trains_two_sites_end_to_end(tmp_path, two_sites):
    done = run_job("--rounds", "1", "--workspace", str(tmp_path / "ws"), *site_args(two_sites), cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    for site in two_sites:
        records = [json.loads(line) for line in (tmp_path / "ws" / "sites" / site / VALIDATION_LOG).open()]
        assert [(r["round"], r["model"]) for r in records] == [(0, "global"), (0, "local")]
        assert all(0 <= r[m] <= 1 for r in records for m in METRICS)
    final = tmp_path / "ws" / "global_model"
    AXUNet().load_state_dict(torch.load(final / "model.pt", weights_only=True))  # the bundle's plain weights
    assert json.loads((final / "model_settings.json").read_text())["roi_size"] == TINY_ROI
    assert "| 0 | site-1 |" in done.stdout and "| 0 | site-2 |" in done.stdout


def test_exported_job_carries_the_client_and_the_privacy_filter(tmp_path, two_sites):
    done = run_job("--export", str(tmp_path / "job"), "--percentile_privacy", "10", *site_args(two_sites), cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    app = next((tmp_path / "job").rglob("config_fed_client.json")).parent.parent
    client = json.loads((app / "config" / "config_fed_client.json").read_text())
    filters = [f["path"] for chain in client["task_result_filters"] for f in chain["filters"]]
    assert filters == ["nvflare.app_common.filters.percentile_privacy.PercentilePrivacy"]
    custom = {p.name for p in (app / "custom").iterdir()}
    assert {"client.py", FEDERATED_CONFIG.name, "federation.json"} <= custom
    assert "axunet_bundle" not in custom  # the sites run their installed bundle, not a partial copy
    federation = json.loads((app / "custom" / "federation.json").read_text())
    assert federation["sites"] == {name: str(folder) for name, folder in two_sites.items()}


@pytest.mark.parametrize("problem", ["empty", "missing"])
def test_a_site_that_cannot_start_ends_the_run_in_one_line(tmp_path, two_sites, problem):
    broken = tmp_path / "hospital_b"
    if problem == "empty":
        broken.mkdir()
    done = run_job(
        "--workspace", str(tmp_path / "ws"), *site_args({"site-1": two_sites["site-1"], "site-2": broken}), cwd=tmp_path
    )
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: site site-2: ") and str(broken) in lines[0]
    assert not (tmp_path / "ws" / job.JOB_NAME).exists()  # refused before the simulator started
