"""Every output appears whole or not at all: a crash between writing and renaming leaves no valid-looking file and
keeps the previous one."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint

from axunet_bundle import atomic
from axunet_bundle.atomic import PARTIAL_PREFIX, atomic_directory, remove_partials, write_json_atomic, write_text_atomic
from axunet_bundle.errors import ConfigurationError
from axunet_bundle.handlers import AtomicDiskSaver, latest_checkpoint
from axunet_bundle.transforms import AtomicNibabelWriter
from axunet_bundle.visualize import dice_boxplot


class CrashError(Exception):
    """Stands for the process dying between writing the temporary file and renaming it."""


def write_segmentation(path: Path) -> None:
    writer = AtomicNibabelWriter(output_dtype=np.uint8)
    writer.set_data_array(np.ones((4, 4, 2), np.uint8), channel_dim=None)
    writer.set_metadata({"affine": np.eye(4), "original_affine": np.eye(4)}, resample=False)
    writer.write(path)


def write_checkpoint(path: Path) -> None:
    model = torch.nn.Linear(2, 2)
    to_save = {"model": model, "optimizer": torch.optim.SGD(model.parameters(), lr=0.1)}  # named "checkpoint_*"
    # as configs/train.json's resumable checkpoint
    saver = Checkpoint(
        to_save, AtomicDiskSaver(path.parent), score_function=lambda e: e.state.epoch, score_name="epoch"
    )
    engine = Engine(lambda engine, batch: None)
    engine.add_event_handler(Events.EPOCH_COMPLETED, saver)
    engine.run([0], max_epochs=1)  # saves checkpoint_epoch=1.pt


WRITERS = {
    "metrics CSV": ("metrics.csv", lambda p: write_text_atomic(p, "case,dice_wt\nA,0.9\n")),
    "summary JSON": ("summary.json", lambda p: write_json_atomic(p, {"dice_wt": 0.9})),
    "segmentation": ("BraTS2021_00000_seg.nii.gz", write_segmentation),
    "Dice box plot": (
        "dice.png",
        lambda p: dice_boxplot([{"dice_wt": 0.9, "dice_tc": 0.8, "dice_et": 0.7}], p, {"dice": "Dice"}),
    ),
    "checkpoint": ("checkpoint_epoch=1.pt", write_checkpoint),
}


@pytest.mark.parametrize("kind", WRITERS)
def test_writer_produces_the_file(kind, tmp_path):
    name, write = WRITERS[kind]
    write(tmp_path / name)
    assert (tmp_path / name).stat().st_size > 0
    assert [p.name for p in tmp_path.iterdir()] == [name]  # nothing left beside it


@pytest.mark.parametrize("kind", WRITERS)
def test_crash_before_rename_leaves_nothing_and_keeps_the_old_file(kind, tmp_path, monkeypatch):
    name, write = WRITERS[kind]
    target = tmp_path / name
    target.write_bytes(b"previous run")

    def crash(*args, **kwargs):
        raise CrashError

    monkeypatch.setattr(atomic.os, "replace", crash)
    with pytest.raises(CrashError):
        write(target)
    assert target.read_bytes() == b"previous run"
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_crash_inside_a_directory_write_leaves_no_folder(tmp_path):
    with pytest.raises(CrashError):
        with atomic_directory(tmp_path / "case") as partial:
            (partial / "image.npy").write_bytes(b"half")
            raise CrashError
    assert list(tmp_path.iterdir()) == []


def test_kill_9_between_write_and_rename_leaves_only_a_hidden_partial_folder(tmp_path):
    """A real SIGKILL: no ``finally`` runs. What remains must not be mistaken for a checkpoint or a segmentation."""
    script = textwrap.dedent(f"""
        import os, signal, sys
        sys.path.insert(0, {str(BUNDLE_ROOT / "tests")!r})
        from axunet_bundle import atomic
        from test_atomic_writes import write_checkpoint, write_segmentation
        from pathlib import Path
        atomic.os.replace = lambda *a: os.kill(os.getpid(), signal.SIGKILL)
        {{"checkpoint": write_checkpoint, "segmentation": write_segmentation}}[sys.argv[1]](Path(sys.argv[2]))
        """)
    for kind, name in (("checkpoint", "checkpoint_epoch=1.pt"), ("segmentation", "BraTS2021_00000_seg.nii.gz")):
        folder = tmp_path / kind
        folder.mkdir()
        result = subprocess.run([sys.executable, "-c", script, kind, str(folder / name)], cwd=BUNDLE_ROOT)
        assert result.returncode == -9
        leftovers = list(folder.iterdir())
        assert len(leftovers) == 1 and leftovers[0].name.startswith(PARTIAL_PREFIX) and leftovers[0].is_dir()
        assert not list(folder.glob("*.pt")) and not list(folder.glob("*.nii.gz"))
        assert remove_partials(folder) == 1 and not list(folder.iterdir())
    with pytest.raises(ConfigurationError, match="no checkpoint"):
        latest_checkpoint(tmp_path / "checkpoint")


def test_files_get_the_usual_permissions_not_private_ones(tmp_path):
    path = write_text_atomic(tmp_path / "metrics.csv", "x\n")
    other = tmp_path / "plain.csv"
    other.write_text("x\n")
    assert path.stat().st_mode == other.stat().st_mode


def test_the_checkpoint_saver_writes_each_of_monais_checkpoints_atomically(tmp_path):
    """MONAI's CheckpointSaver keeps its ignite Checkpoints in private attributes; AtomicCheckpointSaver replaces
    their save handlers, so a MONAI release that renames them must fail here, not leave plain (non-atomic) saving."""
    from axunet_bundle.handlers import AtomicCheckpointSaver

    saver = AtomicCheckpointSaver(
        str(tmp_path), {"model": torch.nn.Linear(1, 1)}, save_final=True, save_key_metric=True, save_interval=1
    )
    checkpoints = [saver._final_checkpoint, saver._key_metric_checkpoint, saver._interval_checkpoint]
    assert all(isinstance(c.save_handler, AtomicDiskSaver) for c in checkpoints)
