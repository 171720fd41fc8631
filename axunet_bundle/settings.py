# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The settings of a run: what each bundle id may be, and what travels with the weights.

- :func:`check_setting` / :func:`check_settings`: a value of a bundle id (``epochs``, ``roi_size`` ...) of the wrong
  type or out of range is one line naming the id, the value and what is allowed. The ``axunet`` command line checks
  every option before any work; the configs' ``initialize`` checks the values ``python -m monai.bundle run`` resolved.
- ``models/model_settings.json`` (:data:`~axunet_bundle.outputs.MODEL_SETTINGS`), written by the training beside
  ``models/model.pt`` (which stays a plain state dict): slice size, modalities, label convention, the network and its
  arguments, the bundle version and the run (dataset, datalist, folds, fold). Inference reads its slice size and
  modalities by default (:func:`trained_setting`); resuming checks that the checkpoint belongs to this run
  (:func:`check_resume`).

Imports only the standard library and the package's light modules: the command line uses it before it imports torch.
"""

from __future__ import annotations

import glob
import json
import logging
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from . import outputs
from .errors import ConfigurationError

__all__ = [
    "AUTO_GRID",
    "LIMITS",
    "MIN_SLICE_SIZE",
    "RUN_KEYS",
    "at_least",
    "fraction",
    "is_integer",
    "is_number",
    "check_resume",
    "check_setting",
    "check_settings",
    "class_name",
    "latest_checkpoint",
    "network_record",
    "read_model_settings",
    "resolve_grid_modality",
    "run_identity",
    "trained_setting",
]

logger = logging.getLogger(__name__)

#: the smallest slice whose stride-32 feature map is still 2 x 2 (Xception's valid-padded stem)
MIN_SLICE_SIZE = 64
#: the grid_modality setting's default: T1CE where the run reads it, else the run's first modality
AUTO_GRID = "auto"
#: the modality whose grid AUTO_GRID picks where the run reads it
PREFERRED_GRID_MODALITY = "t1ce"
#: what identifies a training run: a checkpoint resumes only the run whose values these are
RUN_KEYS = ("dataset_dir", "datalist", "folds", "fold", "modalities", "roi_size", "network")


def is_integer(value: Any) -> bool:
    """An ``int`` that is not a ``bool``."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
    """An ``int`` or ``float`` that is not a ``bool``."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def at_least(low: int) -> tuple[Callable[[Any], bool], str]:
    """The rule "an integer >= low": a test and its text."""
    return (lambda v: is_integer(v) and v >= low), f"an integer >= {low}"


def fraction(low_open: bool, high_open: bool) -> tuple[Callable[[Any], bool], str]:
    """The rule "a number in [0, 1]", each end open or closed: a test and its text."""

    def ok(v: Any) -> bool:
        return is_number(v) and (v > 0 if low_open else v >= 0) and (v < 1 if high_open else v <= 1)

    return ok, f"a number in {'(' if low_open else '['}0, 1{')' if high_open else ']'}"


def _slice_size(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) == 2 and all(is_integer(s) and s >= MIN_SLICE_SIZE for s in v)


def _names(v: Any) -> bool:
    return isinstance(v, (list, tuple)) and len(v) > 0 and all(isinstance(s, str) and s for s in v)


#: the bundle ids with a rule beyond their default's type: id -> (test, what is allowed)
LIMITS: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": at_least(1),
    "batch_size": at_least(1),
    "slices_per_volume": at_least(1),
    "val_interval": at_least(1),
    "folds": at_least(2),
    "fold": at_least(0),
    "seed": at_least(0),
    "num_workers": at_least(0),
    "et_min_voxels": at_least(0),
    "sw_batch_size": ((lambda v: v is None or (is_integer(v) and v >= 1)), "an integer >= 1, or None"),
    "learning_rate": ((lambda v: is_number(v) and v > 0), "a number > 0"),
    "tumour_slice_ratio": fraction(False, False),
    "val_cache_rate": fraction(False, False),
    "threshold": fraction(True, True),
    "roi_size": (_slice_size, f"two integers >= {MIN_SLICE_SIZE}, e.g. [224,224]"),
    "modalities": (_names, "a list of modality names, e.g. ['t1ce','t2','flair']"),
    "grid_modality": ((lambda v: isinstance(v, str) and bool(v)), "auto or a modality name, e.g. 't1ce'"),
    "output_ext": ((lambda v: v in outputs.SEGMENTATION_EXTENSIONS), ", ".join(outputs.SEGMENTATION_EXTENSIONS)),
}


def check_setting(
    name: str, value: Any, rule: tuple[Callable[[Any], bool], str] | None = None, option: str | None = None
) -> None:
    """Check one bundle id's value against its rule in :data:`LIMITS`, else ``rule`` (the command line passes the one
    the id's config default implies).

    Args:
        name: the bundle id, e.g. ``"epochs"``.
        value: its value (after the command line's literal parsing: ``"[64,64]"`` is a list).
        rule: a test and its text, for ids without a limit.
        option: how the message names it (``"--epochs"`` on the command line; default ``name``).

    Raises:
        ConfigurationError: ``"<option>: got <value>, expected <what is allowed>"``.
    """
    rule = LIMITS.get(name) or rule
    if rule is not None and not rule[0](value):
        raise ConfigurationError(f"{option or name}: got {value!r}, expected {rule[1]}")


def resolve_grid_modality(grid_modality: str, modalities: Any) -> str:
    """The modality whose grid is a run's reference (the ``grid_modality`` setting: the others are resampled onto its
    grid, labels must lie on it, segmentations are written on it): :data:`AUTO_GRID` is T1CE where the run reads it
    (the 1 mm series of a clinical protocol, beside thick-slice T2 and FLAIR), else the run's first modality.

    Args:
        grid_modality: the setting, :data:`AUTO_GRID` or one of ``modalities``.
        modalities: the run's modalities, in channel order.

    Returns:
        the modality.

    Raises:
        ConfigurationError: ``"grid_modality: got 't1', expected auto or one of the modalities t1ce, t2, flair"``.
    """
    mods = list(modalities)
    if grid_modality == AUTO_GRID and mods:
        return PREFERRED_GRID_MODALITY if PREFERRED_GRID_MODALITY in mods else mods[0]
    if grid_modality not in mods:
        names = ", ".join(map(str, mods))
        raise ConfigurationError(
            f"grid_modality: got {grid_modality!r}, expected {AUTO_GRID} or one of the modalities {names}"
        )
    return grid_modality


def check_settings(**values: Any) -> None:
    """Check the resolved values of bundle ids (:data:`LIMITS`), that ``fold`` is one of ``folds`` and that
    ``grid_modality`` is one of ``modalities``: the configs' ``initialize`` calls it, so ``python -m monai.bundle
    run`` refuses what the command line refuses.

    Raises:
        ConfigurationError: one line naming the first id whose value is not allowed.
    """
    for name, value in values.items():
        check_setting(name, value)
    folds, fold = values.get("folds"), values.get("fold")
    if is_integer(folds) and is_integer(fold) and fold >= folds:
        raise ConfigurationError(f"fold: got {fold}, expected a fold number in [0, {folds - 1}] (folds={folds})")
    if "grid_modality" in values and "modalities" in values:
        resolve_grid_modality(values["grid_modality"], values["modalities"])


def latest_checkpoint(ckpt_dir: str | os.PathLike) -> str:
    """The newest resumable checkpoint (``checkpoint_*.pt``) in ``ckpt_dir``.

    Raises:
        ConfigurationError: there is none.
    """
    found = glob.glob(os.path.join(glob.escape(os.fspath(ckpt_dir)), f"{outputs.CHECKPOINT_PREFIX}_*.pt"))
    if not found:
        raise ConfigurationError(
            f"resume requested but no {outputs.CHECKPOINT_PREFIX}_*.pt in {ckpt_dir}: start without --resume"
        )
    return max(found, key=os.path.getmtime)


def network_record(network: Any) -> dict[str, Any]:
    """``{"_target_": "<module>.<class>", **arguments}`` of a network: its class and the constructor arguments it
    keeps in ``init_args`` (AXUNet does; a network that keeps none is recorded by its class)."""
    network = getattr(network, "module", network)  # DistributedDataParallel's wrapped network
    kind = type(network)
    return {"_target_": f"{kind.__module__}.{kind.__qualname__}", **dict(getattr(network, "init_args", {}))}


def class_name(target: str | None) -> str | None:
    """The class a ``_target_`` names, without its module: a config's ``axunet_bundle.networks.AXUNet`` and the
    recorded ``axunet_bundle.networks.axunet.AXUNet`` are one network."""
    return target.rsplit(".", 1)[-1] if target else None


def _settings_file(weights: str | os.PathLike) -> Path:
    path = Path(weights)
    return (path if path.is_dir() else path.parent) / outputs.MODEL_SETTINGS


def read_model_settings(weights: str | os.PathLike) -> dict[str, Any] | None:
    """The settings beside a weights file (or in a checkpoint folder), ``None`` when there are none.

    Raises:
        ConfigurationError: the file is not a JSON object.
    """
    path = _settings_file(weights)
    if not path.is_file():
        return None
    try:
        settings = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ConfigurationError(f"{path}: not a settings file ({err})") from None
    if not isinstance(settings, dict):
        raise ConfigurationError(f"{path}: not a settings file (a JSON object is expected)")
    return settings


def trained_setting(ckpt_path: str, name: str, default: Any) -> Any:
    """The value of ``name`` the weights ``ckpt_path`` were trained with (their ``model_settings.json``), else
    ``default``: the inference config's ``roi_size`` and ``modalities``, so that weights trained at 64 x 64 are
    evaluated at 64 x 64 without an option."""
    settings = read_model_settings(ckpt_path) or {}
    return settings.get(name, default)


def trained_network(ckpt_path: str, **arguments: Any) -> Any:
    """AXUNet as the weights ``ckpt_path`` were trained: the network arguments their ``model_settings.json`` records
    (e.g. ``attention: pam``), completed by ``arguments`` (the inference config's ``network_def``); without the file,
    AXUNet of ``arguments``. The inference config's ``network_def``, so the zoo bundle, MONAI Label and
    ``monai.bundle.load`` build the trained network without options.

    Args:
        ckpt_path: the weights file (``models/model.pt``).
        arguments: :class:`~axunet_bundle.networks.AXUNet` arguments, e.g. ``in_channels``, ``out_channels``.

    Raises:
        ConfigurationError: an argument AXUNet does not take (naming the closest one), one that contradicts the
            recorded one, or weights of another network.
    """
    import difflib
    import inspect

    from .networks import AXUNet

    known = list(inspect.signature(AXUNet).parameters)
    for name in arguments:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=1)
            hint = f"; did you mean network_def#{close[0]}?" if close else f"; AXUNet takes {', '.join(known)}"
            raise ConfigurationError(f"network_def#{name}: AXUNet has no argument {name!r}{hint}")

    recorded = dict((read_model_settings(ckpt_path) or {}).get("network", {}))
    target = class_name(recorded.pop("_target_", None))
    if target not in (None, AXUNet.__name__):
        raise ConfigurationError(
            f"{ckpt_path}: weights of the network {target} ({outputs.MODEL_SETTINGS}); give that network as network_def"
        )
    for name, value in arguments.items():
        if name in recorded and json.dumps(recorded[name]) != json.dumps(_plain(value)):
            raise ConfigurationError(
                f"network_def#{name} {value!r} contradicts the weights' {name} {recorded[name]!r} "
                f"({outputs.MODEL_SETTINGS} beside {ckpt_path}): leave it out to use theirs"
            )
    return AXUNet(**{**recorded, **arguments})


def _plain(value: Any) -> Any:
    """Tuples as the lists a JSON file holds, for comparing a value with its recorded one."""
    return [_plain(v) for v in value] if isinstance(value, (list, tuple)) else value


def run_identity(
    dataset_dir: str | None,
    datalist: str | None,
    folds: int,
    fold: int,
    modalities: Any,
    roi_size: Any,
    network: Mapping[str, Any],
) -> dict[str, Any]:
    """The values of :data:`RUN_KEYS` for a training, with its paths made absolute (the same folder named from
    elsewhere is the same run)."""
    return {
        "dataset_dir": os.path.abspath(dataset_dir) if dataset_dir else None,
        "datalist": os.path.abspath(datalist) if datalist else None,
        "folds": folds,
        "fold": fold,
        "modalities": list(modalities),
        "roi_size": list(roi_size),
        "network": dict(network),
    }


def _differences(recorded: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    def same(a: Any, b: Any) -> bool:
        return json.loads(json.dumps(a)) == json.loads(json.dumps(b))  # tuples and lists alike

    return [
        f"{key} {recorded[key]!r} there, {current[key]!r} here"
        for key in RUN_KEYS
        if key in recorded and key in current and not same(recorded[key], current[key])
    ]


def check_resume(ckpt_dir: str | os.PathLike, run: Mapping[str, Any]) -> str:
    """The checkpoint a resumed training continues, checked to belong to ``run`` (the values of :data:`RUN_KEYS`
    given; a network only by its ``_target_`` when the other's has no more).

    Returns:
        the newest ``checkpoint_*.pt`` of ``ckpt_dir``.

    Raises:
        ConfigurationError: there is no checkpoint, or its ``model_settings.json`` names another run.
    """
    checkpoint = latest_checkpoint(ckpt_dir)
    recorded = read_model_settings(ckpt_dir)
    if recorded is None:
        logger.warning(
            "resuming %s: no %s beside it to check that it is this run's", checkpoint, outputs.MODEL_SETTINGS
        )
        return checkpoint
    recorded = dict(recorded.get("run", {}), **{k: recorded[k] for k in RUN_KEYS if k in recorded})
    current = dict(run)
    if isinstance(current.get("network"), Mapping) and isinstance(recorded.get("network"), Mapping):
        if len(current["network"]) == 1 or len(recorded["network"]) == 1:  # only a class on one side: compare those
            current["network"] = class_name(current["network"].get("_target_"))
            recorded["network"] = class_name(recorded["network"].get("_target_"))
    differences = _differences(recorded, current)
    if differences:
        raise ConfigurationError(
            f"cannot resume {checkpoint}: it belongs to another run ({'; '.join(differences)}); "
            "start without --resume or give another --ckpt_dir"
        )
    return checkpoint
