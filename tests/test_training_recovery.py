"""Interrupted training: kill -9 mid-epoch, resume with one override, same result as an uninterrupted run; two runs
with the same seed on CPU give identical losses."""

from __future__ import annotations

import json
import os
import random
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import BUNDLE_ROOT, CONFIGS, TINY_ROI
from monai.transforms import Compose, RandAffined, RandFlipd
from monai.utils import set_determinism

from axunet_bundle.handlers import RandomStates, latest_checkpoint

EPOCHS = 3
#: one volume per batch and two training volumes: two iterations per epoch, so "after iteration 1" is mid-epoch
BATCH_SIZE = 2
SLICES_PER_VOLUME = 2
KILL_AT = (EPOCHS, 1)  # (epoch, iteration) after whose log line the run is killed
RUN_TIMEOUT_S = 600
SEED = 0
ITERATION_LINE = re.compile(r"Epoch: (\d+)/\d+, Iter: (\d+)/\d+ -- train_loss: ([0-9.]+)")


def training_command(dataset_dir: Path, bundle_root: Path, **changes: object) -> list[str]:
    overrides = dict(
        dataset_dir=dataset_dir,
        bundle_root=bundle_root,
        roi_size=TINY_ROI,
        folds=2,
        epochs=EPOCHS,
        batch_size=BATCH_SIZE,
        slices_per_volume=SLICES_PER_VOLUME,
        pretrained=False,
        num_workers=0,
    )
    overrides.update(changes)
    command = [sys.executable, "-m", "monai.bundle", "run", "training"]
    command += ["--config_file", str(CONFIGS / "train.json"), "--meta_file", str(CONFIGS / "metadata.json")]
    command += ["--logging_file", str(CONFIGS / "logging.conf")]
    for key, value in overrides.items():
        command += [f"--{key}", str(value)]
    return command


def environment() -> dict:
    return dict(os.environ, OMP_NUM_THREADS="2", PYTHONUNBUFFERED="1")  # same thread count in every run


def run_to_end(command: list[str]) -> str:
    result = subprocess.run(
        command, cwd=BUNDLE_ROOT, env=environment(), capture_output=True, text=True, timeout=RUN_TIMEOUT_S
    )
    log = result.stdout + result.stderr
    assert result.returncode == 0, log[-3000:]
    return log


def losses(log: str) -> list[tuple[int, int, float]]:
    return [(int(e), int(i), float(v)) for e, i, v in ITERATION_LINE.findall(log)]


def final_weights(bundle_root: Path) -> dict[str, torch.Tensor]:
    return torch.load(latest_checkpoint(bundle_root / "models"), weights_only=True)["model"]


@pytest.fixture(scope="module")
def uninterrupted(tiny_dataset, tmp_path_factory) -> tuple[Path, str]:
    root = tmp_path_factory.mktemp("uninterrupted")
    return root, run_to_end(training_command(tiny_dataset, root))


def test_kill_9_mid_epoch_then_resume_continues_the_same_run(tiny_dataset, tmp_path, uninterrupted):
    process = subprocess.Popen(
        training_command(tiny_dataset, tmp_path),
        cwd=BUNDLE_ROOT,
        env=environment(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    seen = []
    deadline = time.monotonic() + RUN_TIMEOUT_S
    try:
        for line in process.stdout:
            seen.append(line)
            match = ITERATION_LINE.search(line)
            if match and (int(match[1]), int(match[2])) == KILL_AT:
                os.kill(process.pid, signal.SIGKILL)  # no handler runs: as a pre-empted job dies
                break
            assert time.monotonic() < deadline, "training did not reach the kill point"
    finally:
        process.kill()
        process.wait()
    assert process.returncode == -signal.SIGKILL, "".join(seen)[-3000:]
    checkpoint = latest_checkpoint(tmp_path / "models")
    trainer_state = torch.load(checkpoint, weights_only=True)["trainer"]  # ignite keeps iterations, not epochs
    assert trainer_state["iteration"] // trainer_state["epoch_length"] == KILL_AT[0] - 1  # at most one epoch lost

    log = run_to_end(training_command(tiny_dataset, tmp_path, resume=True))
    resumed = losses(log)
    assert resumed[0][:2] == (KILL_AT[0], 1), "the resumed run must start at the interrupted epoch"
    assert {epoch for epoch, _, _ in resumed} == {EPOCHS}
    assert "Engine run finished" in log

    # model, optimizer, scheduler and every random generator restored: the resumed epoch is the uninterrupted one
    reference_root, reference_log = uninterrupted
    reference_last_epoch = [step for step in losses(reference_log) if step[0] == EPOCHS]
    assert resumed == reference_last_epoch  # losses as logged (4 decimals)
    for name, value in final_weights(reference_root).items():
        torch.testing.assert_close(final_weights(tmp_path)[name], value, msg=f"weights differ: {name}")


def test_two_cpu_runs_with_the_same_seed_give_identical_losses(tiny_dataset, tmp_path, uninterrupted):
    _, reference_log = uninterrupted
    again = losses(run_to_end(training_command(tiny_dataset, tmp_path, epochs=1)))
    reference = losses(reference_log)
    assert len(again) == len(reference) // EPOCHS > 0
    assert again == reference[: len(again)]  # exactly equal, not approximately


# ------------------------------------------------------------------------------------ torch.distributed (gloo)
WORLD_SIZE = 2
DRAWS = 4


def _draws(transform) -> list[float]:
    """What the next epoch would draw from every generator a training consumes."""
    values = torch.rand(DRAWS).tolist() + np.random.rand(DRAWS).tolist() + [random.random() for _ in range(DRAWS)]
    return values + [float(t.R.rand()) for t in RandomStates(transform)._randomizables()]


def _rank_worker(rank: int, init_file: str, out_dir: str) -> None:
    """One rank of a 2-process run: the state dict gathers every rank's states, rank 0 saves them, every rank loads the
    checkpoint after its generators were scrambled and records whether its own next draws came back."""
    torch.distributed.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD_SIZE)
    set_determinism(seed=SEED + rank)  # as multi_gpu_train.json seeds each rank
    transform = Compose([RandFlipd(keys="x", prob=0.5), RandAffined(keys="x", prob=0.5, rotate_range=0.1)])
    state = RandomStates(transform).state_dict()  # a collective: ignite's Checkpoint asks every rank for it
    checkpoint = Path(out_dir) / "checkpoint.pt"
    if rank == 0:
        torch.save({"random_states": state}, checkpoint)
    expected = _draws(transform)
    torch.distributed.barrier()
    set_determinism(seed=12345)
    RandomStates(transform).load_state_dict(torch.load(checkpoint, weights_only=True)["random_states"])
    (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps({"expected": expected, "restored": _draws(transform)}))
    torch.distributed.destroy_process_group()


def test_each_rank_resumes_its_own_random_streams(tmp_path, caplog):
    """Only rank 0 writes checkpoints, yet every rank must get its own generators back (not rank 0's, which would
    make all ranks draw the same augmentations after a resume)."""
    torch.multiprocessing.spawn(_rank_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=WORLD_SIZE)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD_SIZE)]
    for rank in ranks:
        assert rank["restored"] == rank["expected"]
    assert ranks[0]["expected"] != ranks[1]["expected"]  # the streams differ per rank
    saved = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["random_states"]
    assert len(saved["ranks"]) == WORLD_SIZE
    # resuming with another number of processes keeps the fresh seeds, and says so
    set_determinism(seed=SEED)
    expected = torch.rand(DRAWS).tolist()
    set_determinism(seed=SEED)
    with caplog.at_level("WARNING"):
        RandomStates().load_state_dict(saved)
    assert torch.rand(DRAWS).tolist() == expected
    assert "saved by 2 processes, resuming with 1" in caplog.text
