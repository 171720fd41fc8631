# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Helpers for the bundle's ignite engines: per-region metric inputs, checkpoint discovery, evaluation report."""

from __future__ import annotations

import csv
import glob
import io
import logging
import os
import random
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import ignite.distributed as idist
import numpy as np
import torch
from ignite.engine import Engine, Events
from ignite.handlers import Checkpoint, DiskSaver
from ignite.handlers.checkpoint import BaseSaveHandler
from monai.handlers import CheckpointSaver, from_engine
from monai.transforms import Randomizable, Transform

from .atomic import atomic_path, write_json_atomic, write_text_atomic
from .data.labels import REGIONS

__all__ = [
    "AtomicCheckpointSaver",
    "RandomStates",
    "region_output",
    "latest_checkpoint",
    "CHECKPOINT_PREFIX",
    "BratsReportWriter",
    "METRICS_CSV",
    "SUMMARY_JSON",
    "ValidationOverlayHandler",
    "TrainingCurvesWriter",
    "VALIDATION_IMAGE_TAG",
    "CURVES_PNG",
]

logger = logging.getLogger(__name__)

#: ``CheckpointSaver(file_prefix=...)`` of the resumable training checkpoint in ``configs/train.json``.
CHECKPOINT_PREFIX = "checkpoint"
#: files of the evaluation report
METRICS_CSV = "metrics.csv"
SUMMARY_JSON = "summary.json"
#: the BraTS metrics of ``configs/evaluate.json``
REPORT_METRICS = ("dice", "hd95")


def region_output(index: int) -> Callable:
    """An engine ``output_transform`` giving ``(pred, label)`` of one region channel (0 WT, 1 TC, 2 ET)."""
    pred_and_label = from_engine(["pred", "label"])

    def select(output):
        preds, labels = pred_and_label(output)
        return [p[index : index + 1] for p in preds], [y[index : index + 1] for y in labels]

    return select


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """The newest resumable checkpoint (``checkpoint_*.pt``) in ``ckpt_dir``, with a clear error when none."""
    found = glob.glob(os.path.join(os.fspath(ckpt_dir), f"{CHECKPOINT_PREFIX}_*.pt"))
    if not found:
        raise FileNotFoundError(f"resume requested but no {CHECKPOINT_PREFIX}_*.pt in {ckpt_dir}")
    return max(found, key=os.path.getmtime)


class AtomicCheckpointSaver(CheckpointSaver):
    """MONAI's ``CheckpointSaver`` whose files appear whole or not at all, and whose best-metric bookkeeping can be
    checkpointed (``state_dict``) so that a resumed training does not overwrite a better ``model.pt``.

    MONAI writes checkpoints in place (``atomic=False``), so a process killed while saving leaves a truncated
    ``checkpoint_*.pt`` that resuming would pick. Takes the arguments of ``CheckpointSaver``.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # CheckpointSaver builds up to three ignite Checkpoints (final, key metric, interval) with in-place savers
        for checkpoint in self._checkpoints():
            checkpoint.save_handler = _AtomicSaveHandler(checkpoint.save_handler)

    def _checkpoints(self) -> list[Checkpoint]:
        found = (self._final_checkpoint, self._key_metric_checkpoint, self._interval_checkpoint)
        return [c for c in found if c is not None]

    def state_dict(self) -> dict:
        """Which files the best-metric tracking has saved, with their scores (see ``load_state_dict``)."""
        return self._key_metric_checkpoint.state_dict() if self._key_metric_checkpoint is not None else {}


class _AtomicSaveHandler(BaseSaveHandler):
    """Wraps an ignite ``DiskSaver`` (keeping its folder, fixed file name and saving rank) to save atomically."""

    def __init__(self, disk_saver: DiskSaver) -> None:
        self.disk_saver = disk_saver

    def __call__(self, checkpoint: Mapping, filename: str, metadata: Mapping | None = None) -> None:
        if idist.get_rank() != self.disk_saver.save_on_rank:
            return
        fixed = getattr(self.disk_saver, "filename", None)  # MONAI's saver may give every checkpoint one name
        with atomic_path(Path(self.disk_saver.dirname) / (fixed or filename)) as tmp:
            torch.save(checkpoint, tmp)

    def remove(self, filename: str) -> None:
        self.disk_saver.remove(filename)


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


class BratsReportWriter:
    """
    Writes the evaluation report when an evaluator's epoch completes: ``metrics.csv`` with one row per case
    (``case_id, dice_wt, dice_tc, dice_et, hd95_wt, hd95_tc, hd95_et``) and ``summary.json`` with the mean, median
    and standard deviation per metric and region. Both files are written atomically.

    Reads the per-case scores that :class:`axunet_bundle.metrics.BratsDice` / ``BratsHD95`` store in
    ``engine.state.metric_details`` (``save_details=True``) and the case ids from each batch.

    Args:
        output_dir: folder of the two files.
        metric_names: names of the metrics in the evaluator (and the CSV column prefixes).
        case_id_key: batch key holding the case ids.
        overwrite: replace the files of an earlier evaluation; without it, existing files stop the run before any
            case is evaluated (nothing is lost and no time is spent on results that could not be written).

    Raises:
        SystemExit: with one line, when ``metrics.csv`` or ``summary.json`` exists in ``output_dir`` and not
            ``overwrite``.
    """

    def __init__(
        self,
        output_dir: str | os.PathLike,
        metric_names: Sequence[str] = REPORT_METRICS,
        case_id_key: str = "case_id",
        overwrite: bool = False,
    ) -> None:
        existing = [
            Path(output_dir) / name for name in (METRICS_CSV, SUMMARY_JSON) if (Path(output_dir) / name).exists()
        ]
        if existing and not overwrite:
            # SystemExit: MONAI's config parser wraps every Exception in its own, burying this one line
            raise SystemExit(
                f"{existing[0]} exists: an earlier evaluation's results are not overwritten; "
                "pass --overwrite True or another --output_dir"
            )
        self.output_dir = Path(output_dir)
        self.metric_names = tuple(metric_names)
        self.case_id_key = case_id_key
        self._case_ids: list[str] = []

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_STARTED, self._reset)
        engine.add_event_handler(Events.ITERATION_COMPLETED, self._collect)
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def _reset(self, engine: Engine) -> None:
        self._case_ids = []

    def _collect(self, engine: Engine) -> None:
        # MONAI's engines decollate the batch into a list of per-case dicts after each iteration
        batch = engine.state.batch
        items = batch if isinstance(batch, Sequence) and not isinstance(batch, Mapping) else [batch]
        for item in items:
            case_id = item.get(self.case_id_key) if isinstance(item, Mapping) else None
            self._case_ids.append(str(case_id) if case_id is not None else f"case_{len(self._case_ids)}")

    def __call__(self, engine: Engine) -> None:
        details = {name: engine.state.metric_details.get(name) for name in self.metric_names}
        missing = [name for name, value in details.items() if value is None]
        if missing:
            raise RuntimeError(f"no per-case scores for {missing}: give the metrics save_details=True")
        scores = {
            name: np.asarray(value.detach().cpu() if hasattr(value, "detach") else value, dtype=float)
            for name, value in details.items()
        }
        rows = []
        for index, case_id in enumerate(self._case_ids):
            row = {"case_id": case_id}
            for name, values in scores.items():
                row.update({f"{name}_{r.lower()}": float(values[index, c]) for c, r in enumerate(REGIONS)})
            rows.append(row)
        summary = {"n_cases": len(rows)}
        for name, values in scores.items():
            summary[name] = {
                r: {
                    "mean": float(np.mean(values[:, c])),
                    "median": float(np.median(values[:, c])),
                    "std": float(np.std(values[:, c])),
                }
                for c, r in enumerate(REGIONS)
            }
        self.output_dir.mkdir(parents=True, exist_ok=True)
        header = list(rows[0]) if rows else ["case_id"]
        write_text_atomic(self.output_dir / METRICS_CSV, _csv_text(header, rows))
        write_json_atomic(self.output_dir / SUMMARY_JSON, summary)
        engine.logger.info("evaluation of %d cases written to %s", len(rows), self.output_dir / METRICS_CSV)


def _csv_text(header: list[str], rows: list[dict]) -> str:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=header)
    writer.writeheader()
    writer.writerows(rows)
    return buffer.getvalue()


#: TensorBoard tag of the validation overlay image
VALIDATION_IMAGE_TAG = "val_overlay"
#: the training's loss and Dice curves, written into its TensorBoard folder
CURVES_PNG = "training_curves.png"


def _last_case(output: Sequence | Mapping) -> tuple:
    """``(image, label or None, pred)`` of the last case of an engine output: MONAI's decollated list of per-case
    dicts, or one dict of batched tensors."""
    item = output[-1] if isinstance(output, Sequence) and not isinstance(output, Mapping) else output
    image, label, pred = item["image"], item.get("label"), item["pred"]
    if image.ndim == 5:  # not decollated: (B, C, x, y, z)
        image, pred = image[-1], pred[-1]
        label = None if label is None else label[-1]
    return image, label, pred


class ValidationOverlayHandler:
    """
    Logs one validation case to TensorBoard at the end of each validation: its modalities side by side on the axial
    slice with the most tumour, ground-truth WT/TC/ET contours solid and the predicted ones dashed (see
    :func:`axunet_bundle.visualize.axial_overlay`), with the evaluator's epoch (the trainer's epoch under MONAI's
    ``ValidationHandler``) as the step.

    The case is the last one the validation ran (the engine's last output, so nothing runs again): the same case at
    every validation when the loader does not shuffle, which shows how its prediction evolves. MONAI's
    ``TensorBoardImageHandler`` was not used: it logs raw channels and label maps as separate grey images, where
    contours on the image show at a glance where the prediction is wrong.

    Args:
        log_dir: TensorBoard folder (unused when `summary_writer` is given).
        summary_writer: a ``SummaryWriter`` to log with.
        tag: the image's tag.
        pixels_per_voxel: magnification of the slice.
        output_transform: engine output -> ``(image, label or None, pred)`` of one case, ``(C, x, y, z)`` image and
            WT/TC/ET masks; default: the last case's ``image``, ``label`` and ``pred``.
    """

    def __init__(
        self,
        log_dir: str | os.PathLike = "./runs",
        summary_writer: object | None = None,
        tag: str = VALIDATION_IMAGE_TAG,
        pixels_per_voxel: int | None = None,
        output_transform: Callable = _last_case,
    ) -> None:
        from .visualize import TENSORBOARD_PIXELS_PER_VOXEL

        self.log_dir = os.fspath(log_dir)
        self.writer = summary_writer
        self._own_writer = summary_writer is None
        self.tag = tag
        self.pixels_per_voxel = TENSORBOARD_PIXELS_PER_VOXEL if pixels_per_voxel is None else pixels_per_voxel
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from .visualize import axial_overlay

        if engine.state.output is None:  # an empty validation
            return
        if self.writer is None:  # made at the first validation: a config instantiated on every rank makes no file
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(log_dir=self.log_dir)
        image, label, pred = self.output_transform(engine.state.output)
        rgb, z = axial_overlay(image, label=label, pred=pred, pixels_per_voxel=self.pixels_per_voxel)
        self.writer.add_image(self.tag, rgb, global_step=engine.state.epoch, dataformats="HWC")
        self.writer.flush()
        engine.logger.debug("validation overlay (axial slice %d) logged to TensorBoard as %s", z, self.tag)

    def close(self) -> None:
        """Close the writer if this handler made it."""
        if self._own_writer and self.writer is not None:
            self.writer.close()


class TrainingCurvesWriter:
    """
    Draws every scalar the training logged to TensorBoard (loss per iteration, validation Dice per epoch; see
    :func:`axunet_bundle.visualize.training_curves`) into a PNG when the training completes, so that every run leaves
    a picture of how it went. Only rank 0 draws (in a multi-process run all ranks would write the same file). A
    folder without scalars gives a warning, not a failed training.

    Args:
        log_dir: the training's TensorBoard folder (``output_dir`` of ``configs/train.json``).
        output_png: the PNG (default: ``<log_dir>/training_curves.png``).
        title: figure title.
    """

    def __init__(
        self, log_dir: str | os.PathLike, output_png: str | os.PathLike | None = None, title: str | None = None
    ) -> None:
        self.log_dir = Path(log_dir)
        self.output_png = Path(output_png) if output_png is not None else self.log_dir / CURVES_PNG
        self.title = title

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        from .visualize import training_curves

        if idist.get_rank() > 0:
            return
        try:
            png = training_curves(self.log_dir, self.output_png, title=self.title)
        except (FileNotFoundError, ValueError) as err:
            engine.logger.warning("no training curves drawn: %s", err)
            return
        engine.logger.info("training curves written to %s", png)
