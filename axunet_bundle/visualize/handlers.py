# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Pictures of a training, as ignite handlers: a validation case's contours in TensorBoard at each validation, and the
loss and Dice curves drawn into a PNG when the training ends."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import ignite.distributed as idist
from ignite.engine import Engine, Events

from .. import outputs
from .overlays import TENSORBOARD_PIXELS_PER_VOXEL, axial_overlay
from .plots import training_curves

__all__ = ["TrainingCurvesWriter", "ValidationOverlayHandler"]


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
        tag: str = outputs.VALIDATION_IMAGE_TAG,
        pixels_per_voxel: int | None = None,
        output_transform: Callable = _last_case,
    ) -> None:
        self.log_dir = os.fspath(log_dir)
        self.writer = summary_writer
        self._own_writer = summary_writer is None
        self.tag = tag
        self.pixels_per_voxel = TENSORBOARD_PIXELS_PER_VOXEL if pixels_per_voxel is None else pixels_per_voxel
        self.output_transform = output_transform

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.EPOCH_COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
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
        self.output_png = Path(output_png) if output_png is not None else self.log_dir / outputs.CURVES_PNG
        self.title = title

    def attach(self, engine: Engine) -> None:
        engine.add_event_handler(Events.COMPLETED, self)

    def __call__(self, engine: Engine) -> None:
        if idist.get_rank() > 0:
            return
        try:
            png = training_curves(self.log_dir, self.output_png, title=self.title)
        except (FileNotFoundError, ValueError) as err:
            engine.logger.warning("no training curves drawn: %s", err)
            return
        engine.logger.info("training curves written to %s", png)
