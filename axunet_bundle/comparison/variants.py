# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The comparison's variants (the variants file, their network costs) and its runs (the output folder's layout, which
runs are finished, the records a resumed comparison must match)."""

from __future__ import annotations

import json
import logging
import os
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .. import outputs
from ..atomic import write_json_atomic
from ..data.labels import REGIONS
from ..errors import ConfigurationError

logger = logging.getLogger(__name__)

#: a comparison folder holds its shared settings, each variant's record, each run's training record (wall time)...
COMPARISON_SETTINGS = "comparison.json"
VARIANT_JSON = "variant.json"
TRAINING_JSON = "training.json"
#: ... and the table: Markdown, one CSV row per variant, the paired tests, every per-case score, the Dice box plots
COMPARISON_MD = "comparison.md"
COMPARISON_CSV = "comparison.csv"
WILCOXON_CSV = "wilcoxon.csv"
PER_CASE_CSV = "per_case.csv"
COMPARISON_PNG = "comparison_dice.png"


def fold_dir(fold: int) -> str:
    """The folder of a comparison run's fold ``fold``: ``fold<k>``."""
    return f"fold{fold}"


def datalist_file(fold: int) -> str:
    """The datalist of a comparison's fold ``fold``: ``datalist_fold<k>.json``."""
    return f"datalist_fold{fold}.json"


#: the variant the others are tested against, when the variants include it
DEFAULT_REFERENCE = "axunet"
#: what a variant's ``network_def`` instantiates
#: the paper's table and ablations (the command line's default; the zoo bundle does not carry it)
DEFAULT_VARIANTS = Path(__file__).with_name("variants.json")
NETWORK_TARGET = "axunet_bundle.comparison.networks.build_network"
#: bundle ids the comparison sets itself, the same for every variant: data, folds, epochs, seed, where runs go
RESERVED_IDS = frozenset(
    {
        "bundle_root",
        "dataset_dir",
        "datalist",
        "datalist_split",
        "folds",
        "fold",
        "seed",
        "epochs",
        "resume",
        "ckpt_dir",
        "ckpt_path",
        "output_dir",
        "overwrite",
        "network_def",
        "network",
        "pretrained",
        "pretrained_path",
    }
)
#: ids of the preprocessing: they may be given for all variants, never for one
PREPROCESSING_IDS = frozenset(
    {"modalities", "label_convention", "roi_size", "tumour_slice_ratio", "slice_cache_dir", "volume_transforms"}
)
SHARED_IDS = RESERVED_IDS | PREPROCESSING_IDS
#: ids that change how fast a run goes, not what it computes: a resumed comparison may change them
EXECUTION_IDS = frozenset({"num_workers", "device", "val_cache_rate", "sw_batch_size"})
VARIANT_KEYS = ("network", "network_args", "overrides", "description")
#: network arguments a variant may not give: the same for all (``pretrained`` is the comparison's own option)
SHARED_ARGS = ("pretrained", "in_channels", "out_channels")
#: a local encoder weights file fits one backbone only: a variant's ``network_args`` give it, for training only
WEIGHTS_FILE_ARG = "pretrained_path"
_VARIANT_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")


# ------------------------------------------------------------------------------------------------------- variants
@dataclass(frozen=True)
class Variant:
    """One entry of the variants file: a network of :data:`~axunet_bundle.comparison.networks.NETWORKS` with its
    arguments and the bundle ids it changes (e.g. ``learning_rate``); everything else is shared by all variants."""

    name: str
    network: str
    network_args: Mapping[str, Any] = field(default_factory=dict)
    overrides: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""

    def spec(self) -> dict[str, Any]:
        """What its runs depend on: a resumed comparison refuses a variant of the same name with another spec."""
        spec = {"network": self.network, "network_args": self.network_args, "overrides": self.overrides}
        return json.loads(json.dumps(spec))

    def network_def(self) -> dict[str, Any]:
        """The bundle's ``network_def`` for this variant: the architecture only. Encoder weights are the training
        config's first step (``pretrained`` and this variant's :attr:`pretrained_path`), so evaluation builds the
        network without them (the trained weights replace them)."""
        args = {k: v for k, v in self.network_args.items() if k != WEIGHTS_FILE_ARG}
        return {
            "_target_": NETWORK_TARGET,
            "name": self.network,
            "in_channels": "$len(@modalities)",
            "out_channels": len(REGIONS),
            **args,
        }

    @property
    def pretrained_path(self) -> str | None:
        """The variant's local encoder weights file (its ``network_args``), for its training's ``pretrained_path``."""
        return self.network_args.get(WEIGHTS_FILE_ARG)


def _error(where: str, message: str) -> ConfigurationError:
    return ConfigurationError(f"{where}: {message}")


def load_variants(
    path: str | os.PathLike, known_id: Callable[[str], bool], only: Sequence[str] | None = None
) -> list[Variant]:
    """The variants of a variants file (a JSON object ``{name: {"network": ..., "network_args": {...},
    "overrides": {...}, "description": ...}}``, in file order), or only those named in ``only`` (in that order).

    Args:
        path: the JSON file.
        known_id: whether a bundle id exists in the training or evaluation configs (overrides are checked with it).
        only: variant names to keep.

    Raises:
        ConfigurationError: for a missing or malformed file, an unknown network, key or override id, an override of
            a shared id, a variant name that cannot be a folder name, or an unknown name in ``only``.
    """
    from .networks import NETWORKS

    file = Path(path)
    try:
        entries = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigurationError(f"variants file not found: {file}") from None
    except (OSError, ValueError) as err:
        raise ConfigurationError(f"variants file {file} is not readable JSON ({err})") from None
    if not isinstance(entries, dict) or not entries:
        raise _error(str(file), 'a JSON object of variants is expected: {"name": {"network": ...}, ...}')
    variants = []
    for name, entry in entries.items():
        where = f"{file}: variant {name!r}"
        if not _VARIANT_NAME.match(name):
            raise _error(where, "a variant name is a folder name: letters, digits, '_', '.', '-'")
        if not isinstance(entry, dict) or "network" not in entry:
            raise _error(where, 'an object with a "network" is expected')
        unknown = sorted(set(entry) - set(VARIANT_KEYS))
        if unknown:
            raise _error(where, f"unknown key {unknown[0]!r}; the keys are {', '.join(VARIANT_KEYS)}")
        if entry["network"] not in NETWORKS:
            raise _error(where, f"unknown network {entry['network']!r}; choose one of {sorted(NETWORKS)}")
        args, overrides = entry.get("network_args", {}), entry.get("overrides", {})
        if not isinstance(args, dict) or not isinstance(overrides, dict):
            raise _error(where, "network_args and overrides are JSON objects")
        shared_args = sorted(set(args) & set(SHARED_ARGS))
        if shared_args:
            raise _error(where, f"network_args may not set {shared_args[0]!r}: it is the same for every variant")
        check_overrides(overrides, known_id, where, SHARED_IDS)
        variants.append(Variant(name, entry["network"], args, overrides, str(entry.get("description", ""))))
    if only:
        by_name = {v.name: v for v in variants}
        missing = [n for n in only if n not in by_name]
        if missing:
            raise _error(str(file), f"no variant {missing[0]!r}; the variants are {', '.join(by_name)}")
        variants = [by_name[n] for n in dict.fromkeys(only)]
    return variants


def check_overrides(
    overrides: Mapping[str, Any], known_id: Callable[[str], bool], where: str, refused: Iterable[str]
) -> None:
    """Refuse bundle ids that are unknown or among ``refused``.

    Raises:
        ConfigurationError: naming the first such id.
    """
    refused = set(refused)
    for key in overrides:
        if key == WEIGHTS_FILE_ARG:
            raise _error(where, f"an encoder weights file fits one backbone: give {key} in a variant's network_args")
        if key in refused or key.split("#")[0] in refused:
            raise _error(where, f"{key!r} is set by the comparison for every variant alike")
        if not known_id(key):
            raise _error(where, f"unknown bundle id {key!r} (not in train.json, inference.json or evaluate.json)")


def network_cost(variant: Variant, in_channels: int, roi_size: Sequence[int]) -> dict[str, Any]:
    """Parameters and GFLOP of one forward pass on one ``roi_size`` slice of the variant's network (random
    weights); building it also checks its arguments and that it can segment slices of that size.

    Raises:
        ConfigurationError: for network arguments it does not take, or a slice size too small for it.
    """
    from .networks import build_network, count_flops, count_parameters

    where = f"variant {variant.name!r}"
    args = {k: v for k, v in variant.network_args.items() if k != WEIGHTS_FILE_ARG}  # random weights suffice
    try:
        network = build_network(variant.network, in_channels=in_channels, out_channels=len(REGIONS), **args)
    except TypeError as err:
        raise _error(where, f"network {variant.network!r} does not take these network_args ({err})") from None
    except ConfigurationError as err:
        raise _error(where, str(err)) from None
    size = "x".join(map(str, roi_size))
    try:
        flops = count_flops(network, (1, in_channels, *roi_size))
    except RuntimeError as err:
        reason = str(err).splitlines()[0]
        raise _error(where, f"its network cannot segment {size} slices ({reason}); give a larger roi_size") from None
    return {"parameters": count_parameters(network), "gflop_per_slice": flops / 1e9, "roi_size": list(roi_size)}


def check_record(path: Path, record: Mapping[str, Any], what: str, ignore: Iterable[str] = ()) -> None:
    """Write ``record`` to ``path``, or check that the one there matches it (but for the keys ``ignore``).

    Raises:
        ConfigurationError: when an earlier record differs; a resumed comparison must keep its settings.
    """
    record = json.loads(json.dumps(record))
    if path.is_file():
        earlier = json.loads(path.read_text(encoding="utf-8"))
        for key in sorted(set(earlier) | set(record)):
            if key not in ignore and earlier.get(key) != record.get(key):
                raise ConfigurationError(
                    f"{path.parent} holds {what} with {key} = {earlier.get(key)!r}, not {record.get(key)!r}: "
                    "resume it with the same settings, or give another output folder (or variant name)"
                )
    write_json_atomic(path, record)


# ------------------------------------------------------------------------------------------------------------ runs
@dataclass(frozen=True)
class Run:
    """The training and evaluation of one variant on one fold, in ``OUT/<variant>/fold<k>``."""

    variant: Variant
    fold: int
    folder: Path

    @property
    def models(self) -> Path:
        return self.folder / outputs.MODELS_DIR

    @property
    def weights(self) -> Path:
        return self.models / outputs.WEIGHTS

    @property
    def logs(self) -> Path:
        return self.folder / outputs.RUNS_DIR

    @property
    def evaluation(self) -> Path:
        return self.folder / outputs.EVAL_DIR

    @property
    def metrics(self) -> Path:
        return self.evaluation / outputs.METRICS_CSV

    @property
    def training_record(self) -> Path:
        return self.folder / TRAINING_JSON

    @property
    def finished(self) -> bool:
        return self.metrics.is_file()

    @property
    def trained(self) -> bool:
        return self.training_record.is_file() and self.weights.is_file()


def plan_runs(output_dir: str | os.PathLike, variants: Sequence[Variant], folds: Sequence[int]) -> list[Run]:
    """Every (variant, fold) run, fold by fold (all variants of fold 0 first), finished or not."""
    out = Path(output_dir)
    return [Run(v, k, out / v.name / fold_dir(k)) for k in folds for v in variants]


def describe_dataset(dataset_dir: str | os.PathLike, label_files: Sequence[str | os.PathLike]) -> str:
    """What the data is, for the table's title: generated cases say so (:func:`~axunet_bundle.synthetic
    .is_generated` on their label maps), any other dataset is named by its folder."""
    from ..synthetic import is_generated

    generated = sum(is_generated(f) for f in label_files)
    name = Path(dataset_dir).resolve().name
    if label_files and generated == len(label_files):
        return "generated BraTS-like cases (not BraTS)"
    if generated:
        return f"`{name}` ({generated} of its {len(label_files)} cases generated, not patient data)"
    return f"`{name}`"
