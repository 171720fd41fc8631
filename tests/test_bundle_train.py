"""The bundle's training workflow through MONAI's own runner pieces: properties, a real run, weights, resume."""

from __future__ import annotations

import pytest
import torch
from conftest import CONFIGS, SCHEMA, TINY_ROI, in_ci
from ignite.engine import Events
from monai.bundle import ConfigParser, ConfigWorkflow, verify_metadata
from monai.transforms import Compose

from axunet_bundle import AXUNet

#: a short run on the tiny generated cases: measured 0.00 -> 0.46 best mean Dice at 25 epochs (2 CPU cores)
LEARNING_EPOCHS = 25
LEARNING_MARGIN = 0.2


def test_tumour_slices_are_centred_on_whole_tumour_voxels():
    """With tumour_slice_ratio 1.0 every training slice holds tumour, also where the tumour is edema alone (WT without
    TC): MONAI's RandCropByPosNegLabeld takes channel 0 of a multi-channel label for background, so the crop centres
    must come from the WT channel alone, not from the regions (which would centre on TC)."""
    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    parser.update({"tumour_slice_ratio": 1.0, "slices_per_volume": 16, "roi_size": [16, 16]})
    sampling = Compose(parser.get_parsed_content("train#slice_sampling"))
    sampling.set_random_state(seed=0)
    regions = torch.zeros(3, 16, 16, 32)
    regions[0, 4:12, 4:12, 20:23] = 1  # WT only: an edema-only tumour on 3 of 32 slices
    image = torch.rand(3, 16, 16, 32) + 1.0  # brain everywhere
    slices = sampling({"image": image, "label": regions})
    assert len(slices) == 16
    assert all(s["label"][0].any() for s in slices)
    assert all("tumour_mask" not in s for s in slices)


def train_workflow(dataset_dir, bundle_root, **overrides) -> ConfigWorkflow:
    settings = dict(
        dataset_dir=str(dataset_dir),
        bundle_root=str(bundle_root),
        roi_size=TINY_ROI,
        folds=2,
        epochs=1,
        batch_size=4,
        slices_per_volume=2,
        pretrained=False,
        num_workers=0,
    )
    settings.update(overrides)
    return ConfigWorkflow(
        workflow_type="train",
        config_file=str(CONFIGS / "train.json"),
        meta_file=str(CONFIGS / "metadata.json"),
        logging_file=str(CONFIGS / "logging.conf"),
        **settings,
    )


def test_metadata_follows_the_schema():
    if not SCHEMA.exists():
        if in_ci():
            pytest.fail(f"CI needs MONAI's schema at {SCHEMA}")
        pytest.skip("MONAI's metadata schema is not beside this checkout (../shared)")
    verify_metadata(meta_file=str(CONFIGS / "metadata.json"), filepath=str(SCHEMA))


def test_training_runs_saves_plain_weights_and_resumes(tiny_dataset, tmp_path):
    workflow = train_workflow(tiny_dataset, tmp_path)
    workflow.initialize()
    assert workflow.check_properties() == []
    workflow.run()
    workflow.finalize()

    weights = torch.load(tmp_path / "models" / "model.pt", weights_only=True)
    assert not any(key.startswith("model.") for key in weights)  # a plain state dict, as ckpt_export needs
    AXUNet().load_state_dict(weights)
    checkpoints = list((tmp_path / "models").glob("checkpoint_*.pt"))
    assert len(checkpoints) == 1
    assert {"model", "optimizer", "lr_scheduler", "trainer"} <= set(torch.load(checkpoints[0], weights_only=True))

    resumed = train_workflow(tiny_dataset, tmp_path, epochs=2, resume=True)
    resumed.initialize()
    trainer = resumed.parser.get_parsed_content("train#trainer")
    started = []
    trainer.add_event_handler(Events.EPOCH_STARTED, lambda engine: started.append(engine.state.epoch))
    resumed.run()
    assert started == [2]  # continues at the next epoch, does not redo epoch 1
    assert trainer.state.epoch == 2
    resumed.finalize()


def test_training_really_learns(tiny_dataset, tmp_path):
    """A short CPU run of the bundle's own recipe (faster learning rate) lifts whole-volume validation Dice well
    above what the untrained network scores."""
    workflow = train_workflow(
        tiny_dataset,
        tmp_path,
        epochs=LEARNING_EPOCHS,
        batch_size=16,
        slices_per_volume=16,
        learning_rate=1e-3,
        val_interval=5,
    )
    workflow.initialize()
    evaluator = workflow.parser.get_parsed_content("validate#evaluator")
    evaluator.run()
    untrained = evaluator.state.metrics["val_mean_dice"]
    workflow.run()
    assert evaluator.state.best_metric >= untrained + LEARNING_MARGIN, (untrained, evaluator.state.best_metric)
    workflow.finalize()


def test_training_loss_is_sigmoid_dice_plus_binary_cross_entropy():
    """The paper's loss: batch Dice on sigmoid probabilities + BCE per channel (regions overlap: no softmax)."""
    from monai.bundle import ConfigParser
    from monai.losses import DiceLoss

    parser = ConfigParser()
    parser.read_config(str(CONFIGS / "train.json"))
    loss = parser.get_parsed_content("loss")
    torch.manual_seed(0)
    logits = torch.randn(4, 3, 16, 16)
    target = (torch.rand(4, 3, 16, 16) > 0.8).float()
    expected = DiceLoss(sigmoid=True, batch=True)(logits, target)
    expected = expected + torch.nn.functional.binary_cross_entropy_with_logits(logits, target)
    assert float(loss(logits, target)) == pytest.approx(float(expected), rel=1e-6)
