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
from conftest import BUNDLE_ROOT, TINY_ROI, require
from test_network import timm_weights

from axunet_bundle.networks import AXUNet, TimmEncoder
from axunet_bundle.synthetic import write_synthetic_dataset

require("nvflare", "the [federated] extra (pip install -e '.[test,federated]')")

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


def test_sites_run_train_json_with_the_federated_overrides(tmp_path):
    from axunet_bundle.errors import ConfigurationError

    algo = site_algo("site-1", tmp_path / "data", tmp_path, rounds=3, local_epochs=2, overrides={"batch_size": 4})
    expected = [str(BUNDLE_ROOT / "configs" / "train.json"), str(FEDERATED_CONFIG)]
    assert algo.config_train_filename == algo.config_evaluate_filename == expected
    assert algo.train_kwargs["epochs"] == 6 and algo.train_kwargs["val_interval"] == 2
    assert algo.train_kwargs["ckpt_dir"] == str(tmp_path / "site-1" / "models") != algo.eval_kwargs["ckpt_dir"]
    assert algo.train_kwargs["batch_size"] == algo.eval_kwargs["batch_size"] == 4
    assert job.site_overrides({"pretrained": True, "pretrained_path": "x.pth", "batch_size": 4}) == {"batch_size": 4}
    with pytest.raises(ConfigurationError, match="resume"):
        job.site_overrides({"resume": True})


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
    """One FedAvg round in FLARE's simulator, with the privacy filter; MonaiAlgo drives the bundle's trainer at each
    site with train.json's wiring intact (checkpoints with random states, run settings, validation, the schedule
    over the federation)."""
    workspace = tmp_path / "ws"
    done = run_job(
        "--rounds",
        "1",
        "--workspace",
        str(workspace),
        "--percentile_privacy",
        "10",
        *site_args(two_sites),
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    server_log = (workspace / job.JOB_NAME / "server" / "log.txt").read_text()
    assert "Loading checkpoint from" in server_log and "initial_model.pt" in server_log  # the job's initial model
    for site in two_sites:
        site_log = (workspace / job.JOB_NAME / site / "log.txt").read_text()
        assert "PercentilePrivacy" in site_log and "cutoff" in site_log  # the filter saw the weight difference
        out = workspace / "sites" / site
        records = [json.loads(line) for line in (out / VALIDATION_LOG).open()]
        assert [(r["round"], r["model"]) for r in records] == [(0, "global"), (0, "local")]
        assert all(0 <= r[m] <= 1 for r in records for m in METRICS)
        checkpoint = torch.load(out / "models" / "checkpoint_epoch=1.pt", weights_only=True)
        assert {"model", "optimizer", "lr_scheduler", "random_states", "trainer"} <= set(checkpoint)
        assert checkpoint["lr_scheduler"]["T_max"] == 1  # rounds x local epochs, not train.json's 40
        settings = json.loads((out / "models" / "model_settings.json").read_text())
        assert settings["roi_size"] == TINY_ROI and settings["run"]["dataset_dir"] == str(two_sites[site])
        assert (out / "models" / "model.pt").is_file()  # the local model's validation, after the round
        assert (out / "global" / "model.pt").is_file()  # the global model's, by this site's validation
    final = workspace / "global_model"
    AXUNet().load_state_dict(torch.load(final / "model.pt", weights_only=True))  # the bundle's plain weights
    assert json.loads((final / "model_settings.json").read_text())["roi_size"] == TINY_ROI
    assert "| 0 | site-1 |" in done.stdout and "| 0 | site-2 |" in done.stdout


def test_exported_job_carries_the_client_and_the_privacy_filter(tmp_path, two_sites):
    done = run_job(
        "--job_dir", str(tmp_path / "job"), "--percentile_privacy", "10", *site_args(two_sites), cwd=tmp_path
    )
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


def test_a_site_that_fails_at_its_start_names_itself(tmp_path, monkeypatch):
    """On a real site job.py cannot look at the site's disk: the site's own start fails in one line naming it, which
    it keeps in its folder, and which job.py reports after FLARE ended the simulation."""
    import nvflare.client as flare

    from federated.client import SiteFailed, run_site

    monkeypatch.setattr(flare, "init", lambda *a, **k: None)
    monkeypatch.setattr(flare, "get_site_name", lambda *a, **k: "site-3")
    federation = {"rounds": 1, "local_epochs": 1, "output_dir": str(tmp_path), "sites": {"site-1": "/data/a"}}
    with pytest.raises(SiteFailed, match=r"^site site-3: no dataset folder given for this site"):
        run_site(federation)
    assert job.site_failure(tmp_path, {"site-1": "/data/a", "site-3": "?"}).startswith("site site-3: no dataset")
