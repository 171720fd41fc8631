# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Checkpointing the training with MONAI's handlers: ``CheckpointSaver`` with atomic files, ``CheckpointLoader`` that
checks its file before the engine runs, and the random generators' states as a checkpointable object (exact resume)."""

from __future__ import annotations

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
from monai.handlers import CheckpointLoader, CheckpointSaver
from monai.transforms import Randomizable, Transform

from .. import outputs
from ..atomic import atomic_path, write_json_atomic
from ..settings import check_resume, latest_checkpoint, network_record, run_identity
from ..weights import check_plain_weights

__all__ = [
    "AtomicCheckpointSaver",
    "AtomicDiskSaver",
    "PlainCheckpointLoader",
    "RandomStates",
    "RunSettings",
    "latest_checkpoint",
]

logger = logging.getLogger(__name__)


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


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` with three additions it lacks: its files appear whole or not at all
    (:class:`AtomicDiskSaver`: a training killed while saving leaves no truncated checkpoint to resume from); it can
    save the engine it is attached to (``save_engine_as="trainer"``: a config cannot name the trainer inside the
    trainer's own handler list); and its best-metric record is checkpointable (``state_dict``), so a resumed
    training replaces ``model.pt`` only with a better model than the best before the interruption. MONAI keeps its
    ignite ``Checkpoint`` objects in private attributes (``_final_checkpoint``, ``_key_metric_checkpoint``,
    ``_interval_checkpoint``, as of MONAI 1.6); their save handlers are replaced here, so a MONAI upgrade is checked
    by tests/test_atomic_writes.py.

    Args:
        save_dir: the folder of the checkpoints (created when missing).
        save_dict: the objects to save, e.g. ``{"model": net, "optimizer": opt}``.
        save_engine_as: key of the engine itself in the saved checkpoint (``None``: not saved).
        kwargs: MONAI ``CheckpointSaver``'s other arguments (``save_key_metric``, ``key_metric_filename``,
            ``save_interval``, ``n_saved`` ...).
    """

    def __init__(self, save_dir: str, save_dict: dict, save_engine_as: str | None = None, **kwargs: Any) -> None:
        super().__init__(save_dir, save_dict, **kwargs)
        self.save_engine_as = save_engine_as
        for checkpoint in self._checkpoints():
            checkpoint.save_handler = AtomicDiskSaver(save_dir, filename=checkpoint.save_handler.filename)

    def _checkpoints(self) -> list:
        return [c for c in (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint) if c]

    def attach(self, engine: Engine) -> None:
        if self.save_engine_as is not None:
            self.save_dict[self.save_engine_as] = engine  # ignite's Checkpoint holds this dict: saved from now on
        super().attach(engine)

    def state_dict(self) -> dict:
        """The best-metric record (ignite ``Checkpoint.state_dict``), empty when no key metric is saved."""
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


class PlainCheckpointLoader(CheckpointLoader):
    """MONAI's ``CheckpointLoader`` that checks its file when attached, before the engine runs: one holding pickled
    objects stops with :class:`~axunet_bundle.weights.UnsafeWeightsError` (one line, where a failing engine logs a
    traceback; a missing file is left to ``axunet_bundle.weights.check_checkpoint_loaders`` in the config's ``run``,
    so that a workflow can be built before its weights exist). A folder stands for its newest resumable checkpoint
    (:func:`latest_checkpoint`), and ``load_engine_as`` restores the engine it is attached to (see
    :class:`AtomicCheckpointSaver`).

    Args:
        load_path: the checkpoint file, or the folder of the training's checkpoints (resume).
        load_dict: the objects to restore, by their keys in the checkpoint.
        load_engine_as: key of the engine itself in the checkpoint (``None``: not restored).
        kwargs: MONAI ``CheckpointLoader``'s other arguments (``map_location``, ``strict`` ...).

    Raises:
        ConfigurationError: ``load_path`` is a folder without a checkpoint (when attached).
        UnsafeWeightsError: the file carries pickled objects (when attached).
    """

    def __init__(self, load_path: str, load_dict: dict, load_engine_as: str | None = None, **kwargs: Any) -> None:
        super().__init__(load_path, load_dict, **kwargs)
        self.load_engine_as = load_engine_as

    def attach(self, engine: Engine) -> None:
        if os.path.isdir(self.load_path):
            self.load_path = latest_checkpoint(self.load_path)
        check_plain_weights(self.load_path, what="checkpoint")  # a missing file passes: a workflow may be built first
        if self.load_engine_as is not None:
            self.load_dict[self.load_engine_as] = engine
        super().attach(engine)


class RunSettings:
    """Keeps a training's settings with its weights: when attached to the trainer, checks that a resumed checkpoint
    belongs to this run (:func:`~axunet_bundle.settings.check_resume`, before anything is loaded) and says what it
    resumes; when the training starts, writes ``model_settings.json`` into ``ckpt_dir`` beside ``model.pt``
    (:mod:`axunet_bundle.settings`). Not in MONAI: its bundles keep such values in the config, which the weights
    leave behind.

    Args:
        ckpt_dir: the folder of the weights and checkpoints.
        network: the trained network (its class and ``init_args`` are recorded).
        modalities, roi_size, label_convention: the input channels, slice size and label convention.
        dataset_dir, datalist, folds, fold: which cases train and validate.
        resume: whether the training resumes (then the newest checkpoint must be this run's).
        version: the bundle's version.

    Raises:
        ConfigurationError: resuming without a checkpoint, or with another run's (when attached).
    """

    def __init__(
        self,
        ckpt_dir: str,
        network: torch.nn.Module,
        modalities: list[str],
        roi_size: list[int],
        label_convention: str,
        dataset_dir: str | None,
        datalist: str | None,
        folds: int,
        fold: int,
        resume: bool = False,
        version: str | None = None,
    ) -> None:
        self.ckpt_dir = ckpt_dir
        self.resume = resume
        self.run = run_identity(dataset_dir, datalist, folds, fold, modalities, roi_size, network_record(network))
        self.settings = {
            "version": version,
            "roi_size": self.run["roi_size"],
            "modalities": self.run["modalities"],
            "label_convention": label_convention,
            "network": self.run["network"],
            "run": {key: self.run[key] for key in ("dataset_dir", "datalist", "folds", "fold")},
        }

    def attach(self, engine: Engine) -> None:
        if self.resume:
            logger.info("resuming %s (the same dataset, fold and network)", check_resume(self.ckpt_dir, self.run))
        engine.add_event_handler(Events.STARTED, self._write)

    def _write(self, engine: Engine) -> None:
        if idist.get_rank() == 0:
            write_json_atomic(Path(self.ckpt_dir) / outputs.MODEL_SETTINGS, self.settings)


class RandomStates:
    """The random number generators' states as a checkpointable object (``state_dict`` / ``load_state_dict``).

    Resuming an interrupted training with these restored continues the same random stream as the uninterrupted
    run: Python's ``random``, NumPy's global generator, torch (CPU and every CUDA device; torch's state also seeds
    the data-loader workers of the next epoch) and the private generators of the randomizable transforms of
    ``transform`` (used when transforms run in the main process, ``num_workers=0``). Everything is stored as
    tensors and plain numbers, so checkpoints still load with ``torch.load(weights_only=True)``.

    Under ``torch.distributed`` every process draws its own streams (``set_determinism(seed + rank)``) but only
    rank 0 writes checkpoints: :meth:`state_dict` gathers every rank's states (a collective: ignite's ``Checkpoint``
    asks every rank for the state dicts, rank 0 saves them), and on resume each rank restores its own.

    Args:
        transform: a transform (for example ``Compose``) whose randomizable transforms' states are included.
    """

    def __init__(self, transform: Any = None) -> None:
        self.transform = transform

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
        """This process's states, or under ``torch.distributed`` every rank's (``{"ranks": [...]}``)."""
        if idist.get_world_size() == 1:
            return self.local_state_dict()
        gathered: list[Any] = [None] * idist.get_world_size()
        torch.distributed.all_gather_object(gathered, self.local_state_dict())
        return {"ranks": gathered}

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
