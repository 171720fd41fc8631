"""The bundle's training workflow through MONAI's own runner pieces: properties, a real run, weights, resume."""

from __future__ import annotations

import os

import pytest
import torch
from conftest import CONFIGS, TINY_ROI
from ignite.engine import Events
from monai.bundle import ConfigWorkflow, verify_metadata

from axunet_bundle import AXUNet

SCHEMA = CONFIGS.parents[1] / "shared" / "monai" / "meta_schema_20240725.json"


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
        if os.environ.get("CI"):
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
