# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""``axunet synth | check | datalist | prepare``: generated cases, dataset checks, datalists and the slice cache."""

from __future__ import annotations

import os
import sys
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..atomic import write_json_atomic
from ..data.cases import DEFAULT_MODALITIES, MODALITIES, Case, automated_segmentation, discover
from ..data.integrity import check_case, dataset_problems, file_problems, read_problem
from ..data.labels import AUTO
from ..errors import CaseError
from ..progress import progress as show_progress
from ..settings import AUTO_GRID
from .configs import config_path, read_config

__all__ = [
    "EXIT_OK",
    "EXIT_PROBLEMS",
    "check",
    "check_dataset",
    "datalist",
    "ignored_file_problems",
    "prepare",
    "run_check",
    "split_names",
    "synth",
    "write_datalist",
]

EXIT_OK = 0
EXIT_PROBLEMS = 1


def split_names(values: str | tuple | list) -> list[str]:
    """``"t1ce,t2,flair"`` (or a list fire already parsed) -> ``["t1ce", "t2", "flair"]``."""
    return [v.strip() for v in values.split(",")] if isinstance(values, str) else list(values)


def synth(output_dir: str, n: int = 4, seed: int = 0, layout: str = "2021", size: int = 240, depth: int = 155) -> None:
    """Write N generated BraTS-like cases (4 modalities + labels, gzipped NIfTI) in one of the layouts the bundle reads.

    Args:
        output_dir: folder to write the cases into.
        n: number of cases.
        seed: cases are deterministic per seed.
        layout: "2021" (t1/t1ce/t2/flair, labels 1/2/4), "2023" (t1n/t1c/t2w/t2f, labels 1/2/3), "2024" (the 2023
            names, BraTS 2024 post-treatment labels with a resection cavity, 4) or "msd" (the Decathlon's
            Task01_BrainTumour: dataset.json, one 4D image per case, labels 1 edema / 2 non-enhancing / 3 enhancing).
        size: in-plane size (BraTS: 240).
        depth: number of axial slices (BraTS: 155).

    Example:
        axunet synth data --n 4 --size 64 --depth 32 --layout 2023
    """
    from ..synthetic import write_synthetic_dataset

    paths = write_synthetic_dataset(output_dir, n=n, seed=seed, layout=str(layout), shape=(size, size, depth))
    print(f"wrote {len(paths)} cases to {output_dir}")


def check(
    dataset_dir: str, modalities: str = "t1ce,t2,flair", label_convention: str = "auto", grid_modality: str = "auto"
) -> None:
    """Check every case of a dataset folder (BraTS 2018-2025 names, a Decathlon Task01 folder, one multi-channel
    NIfTI per case) and the folder itself (stray NIfTI files, unlabelled cases among labelled ones); one line per
    problem (case, file, reason); exit 0 only when clean.

    Args:
        dataset_dir: the dataset folder.
        modalities: comma-separated modalities every case must have (default: the model's).
        label_convention: how to read the labels: auto (each dataset's own), brats2021, brats2023, brats2024, msd.
        grid_modality: the modality whose grid the others are resampled onto and the label must lie on (auto: t1ce
            where read, else the first modality).

    Example:
        axunet check /data/BraTS2021
    """
    sys.exit(run_check(dataset_dir, split_names(modalities), label_convention, grid_modality))


def datalist(
    dataset_dir: str,
    output: str = "datalist.json",
    folds: int = 5,
    fold: int = 0,
    val_fraction: float | None = None,
    test_fraction: float = 0.0,
    seed: int = 0,
    modalities: str = "t1ce,t2,flair",
    label_convention: str = "auto",
    grid_modality: str = "auto",
) -> None:
    """Write a MONAI decathlon-style datalist (training / validation / testing), split by patient, seeded; the cases
    `axunet check` refuses are left out, with the same lines.

    Args:
        dataset_dir: the BraTS folder.
        output: JSON file to write.
        folds: number of cross-validation folds.
        fold: which fold is the validation set.
        val_fraction: a random validation fraction instead of folds.
        test_fraction: fraction of labelled patients held out for testing.
        seed: split seed.
        modalities: comma-separated image channels, in order.
        label_convention: how to read the labels: auto (each dataset's own), brats2021, brats2023, brats2024, msd.
        grid_modality: the modality whose grid the others are resampled onto and the label must lie on (auto: t1ce
            where read, else the first modality).

    Example:
        axunet datalist /data/BraTS2021 --output datalist.json --folds 5 --fold 0
    """
    result = write_datalist(
        dataset_dir,
        output,
        modalities=split_names(modalities),
        folds=folds,
        fold=fold,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        label_convention=label_convention,
        grid_modality=grid_modality,
    )
    sizes = ", ".join(f"{len(v)} {k}" for k, v in result.items())
    print(f"wrote {output}: {sizes}")


def write_datalist(dataset_dir: str | os.PathLike, output: str | os.PathLike, **kwargs: Any) -> dict:
    """
    Build a datalist with :func:`~axunet_bundle.data.datalist.make_datalist` and write it as JSON (indent 4),
    atomically: a reader never sees a half-written file, and an existing file is kept if writing fails.

    Args:
        dataset_dir: BraTS dataset directory.
        output: path of the JSON file; its directory is created if needed.
        kwargs: passed to :func:`~axunet_bundle.data.datalist.make_datalist`.

    Returns:
        the datalist written.

    Raises:
        the exceptions of :func:`~axunet_bundle.data.datalist.make_datalist`, and ``OSError`` when the file cannot be
        written.
    """
    from ..data.datalist import make_datalist

    datalist = make_datalist(dataset_dir, **kwargs)
    write_json_atomic(Path(output).expanduser(), datalist)
    return datalist


def prepare(dataset_dir: str, output: str, workers: int = 2, config_file: str | None = None, **overrides) -> None:
    """Preprocess every labelled case once into a slice cache for fast training (resumable, both cores).

    Uses the ``volume_transforms`` of the bundle's ``configs/train.json`` (override its values with
    ``--roi_size "[224,224]"``, ``--modalities "['t1ce','t2','flair']"`` ...). Train from it with
    ``--slice_cache_dir OUTPUT``.

    Args:
        dataset_dir: the BraTS folder.
        output: the cache folder.
        workers: parallel processes.
        config_file: the training config (default: the bundle's configs/train.json).

    Example:
        axunet prepare /data/BraTS2021 cache --workers 2 --roi_size "[224,224]"
    """
    from monai.transforms import Compose

    from ..data.datalist import labelled_cases
    from .slice_cache import prepare_slice_cache

    # a config file of the user's own (an absolute path) or the bundle's train.json
    config = str(config_path(config_file)) if config_file is not None else "train.json"
    parser = read_config(config, dataset_dir=dataset_dir, **overrides)
    modalities = parser.get_parsed_content("modalities")
    # the cases the training can use: those `axunet check` passes, refused with the same lines
    selection = labelled_cases(
        dataset_dir,
        modalities,
        label_convention=parser.get_parsed_content("label_convention"),
        grid_modality=parser.get_parsed_content("grid_modality"),
    )
    incomplete = [str(problem) for problem in selection.left_out]
    report = prepare_slice_cache(
        selection.items,
        output,
        transform=Compose(parser.get_parsed_content("volume_transforms")),
        params=parser.get_parsed_content("preprocessing_params"),
        workers=workers,
    )
    problems = incomplete + list(report.problems)
    print(f"{len(report.prepared)} cases prepared, {len(report.skipped)} already cached, {len(problems)} failed")
    for problem in problems:
        print(problem)
    sys.exit(1 if problems else 0)


def ignored_file_problems(case: Case, read_voxels: bool = True) -> list[CaseError]:
    """
    The problems of a case's ignored files (:attr:`Case.ignored`): warnings, as the model does not read them (an
    80-byte ``t1`` file where the model reads T1CE, T2, FLAIR). A modality's file is checked as a case's (the whole
    volume with `read_voxels`); another file (diffusion, perfusion, masks: any shape) by its header. A case without
    a label but with a program's segmentation (UPenn-GBM's cases without a manual one) is a warning too.

    Args:
        case: the case.
        read_voxels: read a modality file's voxels too.

    Returns:
        one :class:`CaseError` per broken file; empty when none is.
    """
    automated = automated_segmentation(case)
    problems = []
    if case.label is None and automated is not None:
        reason = "no label (this file is a program's segmentation, no reference): the case cannot train or be evaluated"
        problems.append(CaseError(case.case_id, automated, reason))
    for kind, path in case.ignored:
        if kind in MODALITIES:
            reasons = file_problems(path, kind, read_voxels, AUTO, case.convention)[0]
        else:
            reasons = [reason] if (reason := read_problem(path, voxels=False)) else []
        problems += [CaseError(case.case_id, path, f"{r} (a {kind} file the model does not use)") for r in reasons]
    return problems


def check_dataset(
    root: str | os.PathLike,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    read_voxels: bool = True,
    progress: bool = True,
    convention: str = AUTO,
    grid_modality: str = AUTO_GRID,
) -> tuple[list[Case], list[CaseError]]:
    """
    Find and check every case under `root` (:func:`~axunet_bundle.data.integrity.check_case`) and the dataset as a whole
    (:func:`~axunet_bundle.data.integrity.dataset_problems`); a bad case never stops the check of the others.

    Args:
        root: dataset directory.
        modalities: canonical modalities every case must have (default: the model's).
        read_voxels: see :func:`~axunet_bundle.data.integrity.check_case`.
        progress: show a tqdm progress bar, but only when stderr is a terminal.
        convention: the label convention setting, see :func:`~axunet_bundle.data.integrity.check_case`.
        grid_modality: the reference grid's modality, see :func:`~axunet_bundle.data.integrity.check_case`.

    Returns:
        ``(cases, problems)``: all cases found (sorted by case id) and all problems, case by case, then the
        dataset's.

    Raises:
        DatasetError: when `root` does not exist, is a file, holds no case or a case id twice.
        ConfigurationError: for an unknown modality or convention name.
    """
    found = discover(root, modalities)
    problems: list[CaseError] = []
    # a bar on a terminal; no log lines otherwise: the report itself is the check's output
    cases = show_progress(found.cases, desc="checking cases", unit="case", enabled=progress and sys.stderr.isatty())
    for case in cases:
        problems.extend(check_case(case, modalities, read_voxels, convention, grid_modality))
    return found.cases, problems + dataset_problems(found)


def run_check(
    dataset_dir: str | os.PathLike,
    modalities: Sequence[str] = DEFAULT_MODALITIES,
    convention: str = AUTO,
    grid_modality: str = AUTO_GRID,
) -> int:
    """
    Check a dataset fully (headers and voxels) and print the result, for ``axunet check DIR``: one line per problem
    to stdout, one ``"warning: ..."`` line per broken file the model does not use (it stops no case), the files it
    ignores counted by what their names say (``"ignored files (the model does not read them): 4 t1, 4 dwi"``), then
    the summary line ``"N cases checked, M with problems"`` (``", K warnings"`` when there are).

    Args:
        dataset_dir: dataset directory.
        modalities: canonical modalities every case must have (default: the model's).
        convention: the label convention setting, see :func:`~axunet_bundle.data.integrity.check_case`.
        grid_modality: the reference grid's modality, see :func:`~axunet_bundle.data.integrity.check_case`.

    Returns:
        exit code: :data:`EXIT_OK` (0) when clean, :data:`EXIT_PROBLEMS` (1) when any problem was found.

    Raises:
        DatasetError: when the directory cannot be used at all (missing, not a directory, no case, duplicated case
            ids); the command line prints its one line and exits with status 2.
    """
    cases, problems = check_dataset(dataset_dir, modalities, True, True, convention, grid_modality)
    warnings = [warning for case in cases for warning in ignored_file_problems(case)]
    for problem in problems:
        print(problem)
    for warning in warnings:
        print(f"warning: {warning}")
    ignored = Counter(kind for case in cases for kind, _ in case.ignored)
    if ignored:
        counts = ", ".join(f"{n} {kind}" for kind, n in sorted(ignored.items()))
        print(f"ignored files (the model does not read them): {counts}")
    n_bad = len({p.case_id for p in problems})
    print(f"{len(cases)} cases checked, {n_bad} with problems" + (f", {len(warnings)} warnings" if warnings else ""))
    return EXIT_PROBLEMS if problems else EXIT_OK
