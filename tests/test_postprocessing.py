"""Inference post-processing options: small enhancing components relabelled, flip test-time augmentation, tracking."""

from __future__ import annotations

import pytest
import torch
from monai.inferers import SliceInferer

from axunet_bundle.inferers import FlipInferer
from axunet_bundle.transforms import ET_CHANNEL, RemoveSmallEnhancingd


def regions_with_two_enhancing_blobs() -> torch.Tensor:
    regions = torch.zeros(3, 20, 20, 10)
    regions[:2, 2:12, 2:12, 2:8] = 1  # WT and TC
    regions[ET_CHANNEL, 3:9, 3:9, 3:7] = 1  # 144 voxels
    regions[ET_CHANNEL, 10, 10, 5] = 1  # one isolated voxel
    return regions


def test_small_enhancing_components_become_necrosis():
    regions = regions_with_two_enhancing_blobs()
    out = RemoveSmallEnhancingd("pred", min_voxels=10)({"pred": regions})["pred"]
    assert out[ET_CHANNEL, 10, 10, 5] == 0  # the single voxel is no longer ET ...
    assert out[1, 10, 10, 5] == 1  # ... but still tumour core: necrosis in the label map
    assert int(out[ET_CHANNEL].sum()) == 144  # the large component is kept
    torch.testing.assert_close(out[:2], regions[:2])


def test_small_enhancing_relabelling_is_off_by_default_and_checks_its_argument():
    regions = regions_with_two_enhancing_blobs()
    torch.testing.assert_close(RemoveSmallEnhancingd("pred")({"pred": regions})["pred"], regions)
    with pytest.raises(ValueError):
        RemoveSmallEnhancingd("pred", min_voxels=-1)


def test_flip_tta_averages_the_probabilities_of_the_mirrored_passes():
    torch.manual_seed(0)
    net = torch.nn.Conv2d(3, 3, kernel_size=3, padding=1).eval()  # not mirror-symmetric: the passes differ
    volume = torch.randn(1, 3, 16, 16, 4)
    base = SliceInferer(roi_size=(16, 16), spatial_dim=2, sw_batch_size=4)
    with torch.no_grad():
        got = FlipInferer(base)(volume, net)
        passes = [torch.sigmoid(base(volume, net))]
        for dim in (2, 3):
            passes.append(torch.sigmoid(torch.flip(base(torch.flip(volume, [dim]), net), [dim])))
        with_uncertainty = FlipInferer(base, uncertainty=True)(volume, net)
    expected = torch.stack(passes).mean(0)
    torch.testing.assert_close(torch.sigmoid(got), expected, atol=1e-5, rtol=1e-4)
    assert not torch.allclose(passes[0], expected, atol=1e-3)  # TTA changed something
    # uncertainty=True: the same logits, then the passes' variance (population), averaged over the three regions
    assert with_uncertainty.shape == (1, 4, 16, 16, 4)
    torch.testing.assert_close(with_uncertainty[:, :3], got)
    variance = torch.stack(passes).var(0, unbiased=False).mean(1, keepdim=True)
    torch.testing.assert_close(with_uncertainty[:, 3:], variance, atol=1e-6, rtol=1e-4)
    assert float(variance.max()) > 1e-4  # the passes disagree somewhere


def test_training_logs_to_mlflow_with_monais_tracking_option(tiny_dataset, tmp_path):
    import mlflow
    from test_bundle_train import train_workflow

    workflow = train_workflow(tiny_dataset, tmp_path, tracking="mlflow")
    workflow.initialize()
    workflow.run()
    workflow.finalize()
    client = mlflow.tracking.MlflowClient(tracking_uri=f"sqlite:///{tmp_path / 'runs' / 'mlruns.db'}")
    runs = [run for exp in client.search_experiments() for run in client.search_runs([exp.experiment_id])]
    assert runs, "no MLflow run recorded"
    logged = set().union(*(run.data.metrics for run in runs))
    assert {"train_loss", "val_mean_dice"} <= logged, logged
