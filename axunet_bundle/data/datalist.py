# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""
MONAI decathlon-style datalists for a BraTS dataset directory, split by patient.

The result can be read back with :func:`monai.data.load_decathlon_datalist`; every path is absolute.
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
from monai.data import DataLoader, list_data_collate, load_decathlon_datalist
from monai.utils import ensure_tuple

from ..errors import CaseError, ConfigurationError, DatasetError, LeftOutCasesError, user_error
from ..outputs import segmentation_path
from ..settings import AUTO_GRID
from .cases import DEFAULT_MODALITIES, Case, case_id_from_path, check_case_id, discover, validate_modalities
from .integrity import check_case, dataset_problems, read_problem
from .labels import AUTO, resolve_convention
from .pipeline import CASE_ID_KEY, CHANNELS_KEY, CONVENTION_KEY, REFERENCE_KEY

__all__ = [
    "TRAINING",
    "VALIDATION",
    "TESTING",
    "case_item",
    "make_datalist",
    "load_datalist",
    "CaseLoader",
    "CaseSelection",
    "inference_cases",
    "evaluation_cases",
    "labelled_cases",
]

TRAINING = "training"
VALIDATION = "validation"
TESTING = "testing"

MIN_FOLDS = 2

logger = logging.getLogger(__name__)


def _check_fraction(name: str, value: float) -> float:
    if not 0.0 <= value < 1.0:
        raise ConfigurationError(f"{name} must be in [0, 1), got {value}")
    return float(value)


def _n_of(fraction: float, n: int) -> int:
    # a non-zero fraction always takes at least one patient, so that asking for a split never yields an empty one
    return max(1, round(fraction * n)) if fraction > 0 else 0


def case_item(case: Case, modalities: Sequence[str]) -> dict[str, Any]:
    """A case as a MONAI datalist item: its image file(s) (and, for a multi-channel file named by ``dataset.json``,
    the channels of the model's modalities), its label, id and its dataset's label convention."""
    item: dict[str, Any] = {"image": case.image_files(modalities)}
    channels = case.channel_indices(modalities)
    if channels is not None:
        item[CHANNELS_KEY] = channels
    if case.label is not None:
        item["label"] = str(case.label)
    item[CASE_ID_KEY] = case.case_id
    item[CONVENTION_KEY] = case.convention
    return item


def _discover(dataset_dir: str | os.PathLike, modalities: tuple[str, ...], labels_needed: bool) -> list[Case]:
    """:func:`discover`, with the dataset's own problems (stray files; unlabelled cases among labelled ones, where
    labels are needed) logged, one line each: they leave no case out."""
    found = discover(dataset_dir, modalities)
    for problem in dataset_problems(found, labels_needed=labels_needed):
        logger.warning("%s", problem)
    return found.cases


def _sound_cases(
    cases: Sequence[Case], modalities: tuple[str, ...], read_voxels: bool, convention: str, grid_modality: str
) -> tuple[list[Case], list[CaseError]]:
    """The cases with no problem, and the problems of the others, each logged in one line: the lines ``axunet
    check`` prints, so that every step refuses the same cases for the same reasons."""
    sound, problems = [], []
    for case in cases:
        found = check_case(case, modalities, read_voxels, convention, grid_modality)
        for problem in found:
            logger.warning("leaving out case %s", problem)
        problems.extend(found)
        if not found:
            sound.append(case)
    conventions = sorted({resolve_convention(convention, case.convention) for case in sound})
    logger.info("%d cases; label convention %s", len(sound), " and ".join(conventions) or "-")
    return sound, problems


def make_datalist(
    dataset_dir: str | os.PathLike,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    folds: int = 5,
    fold: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    label_convention: str = AUTO,
    grid_modality: str = AUTO_GRID,
) -> dict[str, list[dict[str, Any]]]:
    """
    Build a decathlon-style datalist ``{"training": [...], "validation": [...], "testing": [...]}``.

    Labelled items are :func:`case_item`'s ``{"image": [paths in modalities order], "label": path, "case_id": id,
    "label_convention": ...}``; unlabelled (inference) cases go to ``"testing"`` without ``"label"``. The split is
    by patient, so the timepoints of one BraTS 2023+ patient (``BraTS-GLI-00000-000``, ``BraTS-GLI-00000-001``)
    always stay together. Patients are shuffled once by `seed`; the optional test hold-out is taken first, so it is
    the same for every fold, then the rest is split k-fold (or at random by `val_fraction`). Cases failing the case
    check (:func:`check_case`, the one ``axunet check`` runs) are left out with one logged line per problem, and so
    are the dataset's stray files and unlabelled cases among labelled ones named.

    Args:
        dataset_dir: BraTS dataset directory.
        modalities: canonical modalities, in the model's channel order.
        folds: number of cross-validation folds (at least 2); ignored when `val_fraction` is given.
        fold: which fold is the validation set, ``0 <= fold < folds``.
        val_fraction: if given, replaces k-fold with a random split keeping this fraction of the patients (after
            the test hold-out) for validation.
        test_fraction: fraction of the labelled patients held out into ``"testing"`` (with their labels).
        seed: seed of the patient shuffle; the same seed gives the same split.
        label_convention: the label convention setting (``"auto"``: each case's dataset's).
        grid_modality: the modality whose grid the others are resampled onto and labels must lie on.

    Returns:
        the datalist; each list is sorted by case id.

    Raises:
        DatasetError: when `dataset_dir` cannot be used (missing, no case).
        ConfigurationError: for arguments out of range or too few labelled patients for the split.
    """
    mods = validate_modalities(modalities)
    test_fraction = _check_fraction("test_fraction", test_fraction)
    if val_fraction is None:
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < MIN_FOLDS:
            raise ConfigurationError(f"folds must be an integer >= {MIN_FOLDS}, got {folds!r}")
        if isinstance(fold, bool) or not isinstance(fold, int) or not 0 <= fold < folds:
            raise ConfigurationError(f"fold must be an integer in [0, {folds - 1}] for {folds} folds, got {fold!r}")
    else:
        val_fraction = _check_fraction("val_fraction", val_fraction)
        if val_fraction + test_fraction >= 1.0:
            raise ConfigurationError(
                f"val_fraction + test_fraction must leave patients for training, got {val_fraction} + {test_fraction}"
            )

    # the full check (voxels too): every step that uses the dataset refuses the same cases, for the same reasons
    usable, _ = _sound_cases(_discover(dataset_dir, mods, True), mods, True, label_convention, grid_modality)

    patients: dict[str, list[Case]] = {}
    for case in usable:
        if case.label is not None:
            patients.setdefault(case.patient_id, []).append(case)
    order = sorted(patients)
    np.random.default_rng(seed).shuffle(order)

    n_test = _n_of(test_fraction, len(order))
    test_ids, rest = order[:n_test], order[n_test:]
    if val_fraction is None:
        if len(rest) < folds:
            raise ConfigurationError(
                f"too few labelled patients for {folds}-fold cross-validation: {len(rest)} left after the test hold-out"
            )
        val_ids = rest[fold::folds]  # folds partition the shuffled patients, sizes differ by at most one
    else:
        val_ids = rest[: _n_of(val_fraction, len(rest))]
    held_out = set(val_ids)
    train_ids = [p for p in rest if p not in held_out]
    if not train_ids:
        raise ConfigurationError(f"too few labelled patients ({len(order)}) to leave any for training")

    def items(patient_ids: Sequence[str]) -> list[dict[str, Any]]:
        cases = [c for p in patient_ids for c in patients[p]]
        return [case_item(c, mods) for c in sorted(cases, key=lambda c: c.case_id)]

    unlabelled = [c for c in usable if c.label is None]
    testing = sorted(items(test_ids) + [case_item(c, mods) for c in unlabelled], key=lambda i: i["case_id"])
    return {TRAINING: items(train_ids), VALIDATION: items(val_ids), TESTING: testing}


def load_datalist(
    dataset_dir: str | os.PathLike | None, datalist: str | os.PathLike | None = None, **kwargs: Any
) -> dict[str, list[dict[str, Any]]]:
    """
    The datalist the bundle's workflows use: read from the ``datalist`` JSON file when one is given (relative
    paths in it are resolved against ``dataset_dir``, as MONAI's ``load_decathlon_datalist`` does), otherwise built
    from the BraTS folder ``dataset_dir`` with :func:`make_datalist`.

    Args:
        dataset_dir: BraTS dataset directory (base directory for a datalist file's relative paths).
        datalist: optional decathlon-style JSON file.
        kwargs: passed to :func:`make_datalist` (modalities, folds, fold, seed, ...).
    """
    if datalist is None:
        if dataset_dir is None:
            raise ConfigurationError("give dataset_dir (a BraTS folder) or datalist (a datalist JSON file)")
        return make_datalist(dataset_dir, **kwargs)
    path = Path(datalist).expanduser()
    if not path.is_file():
        raise DatasetError(f"datalist file not found: {path}")
    base = os.fspath(dataset_dir) if dataset_dir is not None else None
    sections = json.loads(path.read_text())
    loaded = {
        key: load_decathlon_datalist(path, data_list_key=key, base_dir=base) if sections.get(key) else []
        for key in (TRAINING, VALIDATION, TESTING)
    }
    for key, items in loaded.items():
        for raw, item in zip(sections.get(key) or [], items):
            if CASE_ID_KEY not in raw:  # the id is worked out here, once: later steps read it from the item
                item[CASE_ID_KEY] = case_id_from_path(ensure_tuple(item["image"])[0])
                continue
            try:
                check_case_id(raw[CASE_ID_KEY])  # ids name outputs (slice cache folders): none may point elsewhere
            except CaseError as err:
                raise CaseError(err.case_id, path, err.reason) from None
            # MONAI joins base_dir to any value naming an existing path, and a case id names its case folder
            item[CASE_ID_KEY] = raw[CASE_ID_KEY]
    return loaded


@dataclass
class CaseSelection:
    """
    The cases a run will process (``items``, MONAI datalist items) and those it leaves out (``left_out``: one
    :class:`~axunet_bundle.errors.CaseError` per problem found), so that a run over many cases processes every
    good one and still ends by naming the bad ones.
    """

    items: list[dict[str, Any]] = field(default_factory=list)
    left_out: list[CaseError] = field(default_factory=list)

    def report(self) -> None:
        """End of a run: list the left-out cases again.

        Raises:
            LeftOutCasesError: when there are any (exit status 1 at the error boundary).
        """
        if not self.left_out:
            return
        cases = sorted({p.case_id for p in self.left_out})
        logger.error("%d case(s) were not processed (the other %d were):", len(cases), len(self.items))
        for problem in self.left_out:
            logger.error("  %s", problem)
        raise LeftOutCasesError(f"{len(cases)} case(s) were not processed: {', '.join(cases)}")


class _Loaded:
    """A dataset that returns a case's :class:`CaseError` instead of raising it, so that the loader can leave the case
    out. MONAI's ``apply_transform`` wraps what a transform raised (:func:`~axunet_bundle.errors.user_error` finds
    it); a reader's error (a ``.nii.gz`` cut short: its header and gzip trailer can look whole) is the case's only
    when one of its files is then found unreadable, which names the file."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        try:
            return self.dataset[index]
        except Exception as exc:  # only a case's problem is caught; a bug keeps its traceback
            error = user_error(exc) or _unreadable_file(getattr(self.dataset, "data", None), index)
            if isinstance(error, CaseError):
                return error
            raise


def _unreadable_file(items: Sequence[Mapping[str, Any]] | None, index: int) -> CaseError | None:
    """The first unreadable file of ``items[index]``, as a case's problem; ``None`` when all read."""
    item = items[index] if items is not None else {}
    for file in [*ensure_tuple(item.get("image")), *ensure_tuple(item.get("label"))]:
        reason = read_problem(file)
        if reason is not None:
            return CaseError(str(item.get(CASE_ID_KEY)), file, reason)
    return None


def _collate_loaded(batch: list[Any]) -> tuple[list[CaseError], Any]:
    """The problems of a batch's failed cases, and the others collated (``None`` when none is left)."""
    sound = [item for item in batch if not isinstance(item, CaseError)]
    return [item for item in batch if isinstance(item, CaseError)], list_data_collate(sound) if sound else None


class CaseLoader(DataLoader):
    """
    MONAI's ``DataLoader`` over the cases of a :class:`CaseSelection`, leaving out a case whose loading raises a
    :class:`~axunet_bundle.errors.CaseError` (the chain's :class:`~axunet_bundle.data.pipeline.ValidateCased` finds
    NaN/inf, all-zero images and labels outside their convention as it loads the voxels: the one read that checks
    them). The case is logged in one line and added to ``cases.left_out``, which ``cases.report()`` lists at the end;
    the other cases run. PyTorch's loader has no way to skip an item, hence this class.

    Its length is unknown until every case is loaded (``len()`` raises ``TypeError``, as for an iterable dataset),
    so that MONAI's engines end the epoch when the cases do; ``operator.length_hint`` gives the number of cases
    (PEP 424), which progress reports use.

    Args:
        dataset: a map-style dataset of the cases' items (MONAI ``Dataset`` with the loading chain).
        cases: the selection whose ``left_out`` collects the failed cases.
        kwargs: MONAI ``DataLoader``'s (``batch_size``, ``num_workers``, ...); no ``collate_fn``. Cases that fit
            in one batch are loaded in the calling process (``num_workers`` 0): workers load the next batch while
            the network runs this one, and with no next batch a worker only adds its start and the copy of the
            batch between processes (about 0.3 s for a BraTS case on 2 cores).
    """

    def __init__(self, dataset: Any, cases: CaseSelection, **kwargs: Any) -> None:
        if len(dataset) <= kwargs.get("batch_size", 1):
            kwargs = {k: v for k, v in kwargs.items() if k not in ("prefetch_factor", "persistent_workers")}
            kwargs["num_workers"] = 0
        super().__init__(_Loaded(dataset), collate_fn=_collate_loaded, **kwargs)
        self.cases = cases

    def __len__(self) -> int:
        raise TypeError("the number of cases that load is known once they are loaded")

    def __length_hint__(self) -> int:
        return len(self.dataset)

    def __iter__(self) -> Any:
        for failed, batch in super().__iter__():
            for error in failed:
                logger.warning("leaving out case %s", error)
                self.cases.left_out.append(error)
            if batch is not None:
                yield batch


def _select(
    cases: Sequence[Case], modalities: tuple[str, ...], read_voxels: bool, convention: str, grid_modality: str
) -> CaseSelection:
    """The sound cases as items, and the problems of the others."""
    sound, problems = _sound_cases(cases, modalities, read_voxels, convention, grid_modality)
    return CaseSelection([case_item(case, modalities) for case in sound], problems)


def inference_cases(
    dataset_dir: str | os.PathLike,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    output_dir: str | os.PathLike | None = None,
    read_voxels: bool = False,
    label_convention: str = AUTO,
    output_ext: str = ".nii.gz",
    grid_modality: str = AUTO_GRID,
) -> CaseSelection:
    """
    Every case of a folder as an inference item ``{"image": [files], "case_id": id, "label_convention": ...}`` (labels
    are neither needed nor checked; the convention is the one the segmentation is written in). Cases with a problem
    (missing or unreadable file, shapes or affines that differ, NaN/inf or all-zero images, ...) are left out with one
    line each and listed in ``left_out``.

    Args:
        dataset_dir: the BraTS folder.
        modalities: image channels, in order.
        output_dir: when given, cases whose segmentation already exists there are skipped (a re-run continues
            where the last one stopped); ``None`` processes every case.
        read_voxels: check the voxel data too (one extra read of each image), not only the headers; by default the
            voxels are checked once, as the chain loads them (:class:`CaseLoader`).
        label_convention: the convention to write the segmentations in: ``"auto"`` for each case's dataset's.
        output_ext: the segmentations' file-name ending (which ones exist in ``output_dir``).
        grid_modality: the modality whose grid the others are resampled onto (and the segmentation written on).
    """
    mods = validate_modalities(modalities)
    cases = [replace(case, label=None) for case in _discover(dataset_dir, mods, labels_needed=False)]
    todo = [
        c for c in cases if output_dir is None or not segmentation_path(output_dir, c.case_id, output_ext).is_file()
    ]
    if len(todo) < len(cases):
        logger.info(
            "%d cases already have a segmentation in %s; skipped (set overwrite to redo them)",
            len(cases) - len(todo),
            output_dir,
        )
    return _select(todo, mods, read_voxels, label_convention, grid_modality)  # labels were dropped: items hold no label


def labelled_cases(
    dataset_dir: str | os.PathLike,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    read_voxels: bool = False,
    label_convention: str = AUTO,
    grid_modality: str = AUTO_GRID,
) -> CaseSelection:
    """Every sound labelled case of a folder as an item (the cases a training or a slice cache can use), and the
    problems of the others: the lines ``axunet check`` prints.

    Raises:
        DatasetError: for a folder that cannot be used, or holds no labelled case.
    """
    mods = validate_modalities(modalities)
    labelled = [case for case in _discover(dataset_dir, mods, labels_needed=True) if case.label is not None]
    if not labelled:
        raise DatasetError(f"no labelled cases found in {dataset_dir}")
    return _select(labelled, mods, read_voxels, label_convention, grid_modality)


def evaluation_cases(
    dataset_dir: str | os.PathLike | None,
    datalist: str | os.PathLike | None = None,
    split: str = VALIDATION,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    read_voxels: bool = False,
    label_convention: str = AUTO,
    grid_modality: str = AUTO_GRID,
) -> CaseSelection:
    """
    The labelled cases to evaluate: the ``split`` section of a datalist file when one is given (taken as it is),
    else every labelled case of the BraTS folder ``dataset_dir``, checked as :func:`inference_cases` does, labels
    included. Each item holds its label map's path under ``"reference"`` (not ``"label"``): the inference chain
    segments the images and the evaluation scores the written segmentation against that file.

    Args:
        dataset_dir: the BraTS folder (base directory of a datalist's relative paths).
        datalist: optional decathlon-style JSON file.
        split: the datalist section to evaluate.
        modalities: image channels, in order.
        read_voxels: check the voxel data too, not only the headers (see :func:`inference_cases`).
        label_convention: the label convention setting (``"auto"``: each case's dataset's).
        grid_modality: the modality whose grid the others are resampled onto and labels must lie on.

    Raises:
        ConfigurationError: for an unknown split, or neither a folder nor a datalist.
        DatasetError: for a folder without labelled cases, or a datalist file that is missing.
    """
    if datalist is None and dataset_dir is not None:
        selection = labelled_cases(dataset_dir, modalities, read_voxels, label_convention, grid_modality)
    else:  # load_datalist refuses neither a folder nor a datalist
        items = load_datalist(dataset_dir, datalist)
        if split not in items:
            raise ConfigurationError(f"datalist split must be one of {sorted(items)}, got {split!r}")
        selection = CaseSelection(items=items[split])
    unlabelled = [item[CASE_ID_KEY] for item in selection.items if "label" not in item]
    if unlabelled:
        raise DatasetError(f"datalist {split} items without a label to evaluate against: {unlabelled[0]}")
    selection.items = [{REFERENCE_KEY if k == "label" else k: v for k, v in item.items()} for item in selection.items]
    return selection
