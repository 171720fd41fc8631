# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Checkpointing the training: an atomic save handler for ignite's ``Checkpoint``, the random generators' states as a
checkpointable object, and the newest checkpoint to resume from."""

from __future__ import annotations

import glob
import logging
import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.transforms import Randomizable, Transform

from .. import outputs
from ..atomic import atomic_path

__all__ = ["AtomicDiskSaver", "RandomStates", "latest_checkpoint"]

logger = logging.getLogger(__name__)


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """The newest resumable checkpoint (``checkpoint_*.pt``) in ``ckpt_dir``, with a clear error when none."""
    found = glob.glob(os.path.join(os.fspath(ckpt_dir), f"{outputs.CHECKPOINT_PREFIX}_*.pt"))
    if not found:
        raise FileNotFoundError(f"resume requested but no {outputs.CHECKPOINT_PREFIX}_*.pt in {ckpt_dir}")
    return max(found, key=os.path.getmtime)


class AtomicDiskSaver(BaseSaveHandler):
    """ignite save handler (for ``ignite.handlers.Checkpoint``) whose files appear whole or not at all, optionally
    always under one name (``model.pt``, which the model zoo and MONAI Label read).

    Why not the existing ones: MONAI's ``CheckpointSaver`` writes in place, so a process killed while saving leaves a
    truncated ``checkpoint_*.pt`` that resuming would pick; ignite's ``DiskSaver(atomic=True)`` leaves its files with
    ``mkstemp``'s owner-only permissions. This one writes a temporary file beside the target and renames it
    (:func:`axunet_bundle.atomic.atomic_path`: the permissions ``open()`` would give).

    Args:
        dirname: the folder of the checkpoints (created when missing).
        filename: one fixed file name for every save (the newest replaces the last), or ``None`` for ignite's names
            (``checkpoint_epoch=3.pt``).
        save_on_rank: the process that writes, under ``torch.distributed``.
    """

    def __init__(self, dirname: str | os.PathLike, filename: str | None = None, save_on_rank: int = 0) -> None:
        self.dirname = Path(dirname)
        self.filename = filename
        self.save_on_rank = save_on_rank

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.save_on_rank:
            return
        with atomic_path(self.dirname / (self.filename or filename)) as tmp:
            torch.save(checkpoint, tmp)

    def remove(self, filename: str) -> None:
        # ignite removes the file a new one displaces before saving it; under a fixed name the save itself replaces it
        if idist.get_rank() != self.save_on_rank or self.filename is not None:
            return
        (self.dirname / filename).unlink(missing_ok=True)


class RandomStates:
    """The random number generators' states as a checkpointable object (``state_dict`` / ``load_state_dict``).

    Resuming an interrupted training with these restored continues the same random stream as the uninterrupted
    run: Python's ``random``, NumPy's global generator, torch (CPU and every CUDA device; torch's state also seeds
    the data-loader workers of the next epoch) and the private generators of the randomizable transforms of
    ``transform`` (used when transforms run in the main process, ``num_workers=0``). Everything is stored as
    tensors and plain numbers, so checkpoints still load with ``torch.load(weights_only=True)``.

    Under ``torch.distributed`` every process draws its own streams (``set_determinism(seed + rank)``) but only
    rank 0 saves checkpoints: :meth:`attach` the object to the trainer on every rank, before the checkpoint saver,
    and each epoch's checkpoint holds every rank's states; on resume each rank restores its own.

    Args:
        transform: a transform (for example ``Compose``) whose randomizable transforms' states are included.
    """

    def __init__(self, transform: Any = None) -> None:
        self.transform = transform
        #: every rank's states, gathered at the end of the last epoch (``None`` outside ``torch.distributed``)
        self._gathered: list[dict] | None = None

    def _randomizables(self) -> list[Randomizable]:
        """Every randomizable object of the chain, in a stable order: dictionary transforms keep their generator in
        an inner array transform (``RandAffined.rand_affine.rand_affine_grid``), so attributes are searched too."""
        found: list[Randomizable] = []
        seen: set[int] = set()
        todo = [self.transform]
        while todo:
            item = todo.pop(0)
            if id(item) in seen:
                continue
            seen.add(id(item))
            if isinstance(item, (list, tuple)):
                todo.extend(item)
            elif isinstance(item, Mapping):
                todo.extend(item.values())
            elif isinstance(item, (Transform, Randomizable)):
                if isinstance(item, Randomizable):
                    found.append(item)
                todo.extend(vars(item).values())
        return found

    def attach(self, engine: Engine) -> None:
        """Gather every rank's states at each epoch's end (a collective: attach on every rank, after the other
        epoch-end handlers such as validation, and before the checkpoint saver, so the states are those saved)."""
        engine.add_event_handler(Events.EPOCH_COMPLETED, self.gather)

    def gather(self, engine: Engine | None = None) -> None:
        """Collect every rank's states (no-op in a single process)."""
        if idist.get_world_size() > 1:
            gathered: list[Any] = [None] * idist.get_world_size()
            torch.distributed.all_gather_object(gathered, self.local_state_dict())
            self._gathered = gathered

    def local_state_dict(self) -> dict:
        """This process's states."""
        return {
            "python": random.getstate(),
            "numpy": _numpy_state(np.random.get_state()),
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "transforms": [_numpy_state(t.R.get_state()) for t in self._randomizables()],
        }

    def state_dict(self) -> dict:
        if self._gathered is not None:
            return {"ranks": self._gathered}
        return self.local_state_dict()

    def load_state_dict(self, state: Mapping) -> None:
        if "ranks" in state:
            ranks, world, rank = state["ranks"], idist.get_world_size(), idist.get_rank()
            if len(ranks) != world:
                logger.warning(
                    "checkpoint saved by %d processes, resuming with %d: random states not restored (each process "
                    "keeps its fresh seed)",
                    len(ranks),
                    world,
                )
                return
            state = ranks[rank]
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        np.random.set_state(_numpy_state_back(state["numpy"]))
        torch.set_rng_state(state["torch"])
        if state["cuda"] and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(state["cuda"])
        randomizables = self._randomizables()
        if len(randomizables) == len(state["transforms"]):  # same transform chain as the saved run
            for t, saved in zip(randomizables, state["transforms"]):
                t.R.set_state(_numpy_state_back(saved))


def _numpy_state(state: tuple) -> dict:
    name, keys, pos, has_gauss, cached_gaussian = state
    return {
        "name": name,
        "keys": torch.from_numpy(keys.astype(np.int64)),
        "pos": int(pos),
        "gauss": (has_gauss, cached_gaussian),
    }


def _numpy_state_back(state: Mapping) -> tuple:
    has_gauss, cached_gaussian = state["gauss"]
    return state["name"], state["keys"].numpy().astype(np.uint32), state["pos"], has_gauss, cached_gaussian
