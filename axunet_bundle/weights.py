# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Reading weights: refuse files that carry pickled code, with one clear line naming the file, and check that a local
encoder weights file fits its timm backbone.

Every loader in the bundle reads ``.pt`` files with ``torch.load(..., weights_only=True)`` (or safetensors), which
never runs code from the file; this module turns PyTorch's long "Weights only load failed" text (which suggests
retrying with ``weights_only=False``, i.e. running the code) into :class:`UnsafeWeightsError`, and checks a
checkpoint before an engine starts (MONAI's ``CheckpointLoader`` would fail only once the engine runs).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterable

import torch

from .errors import AxunetError, ConfigurationError

__all__ = [
    "PretrainedWeightsError",
    "UnsafeWeightsError",
    "check_encoder_weights",
    "check_plain_weights",
    "check_checkpoint_loaders",
    "load_plain_weights",
]

#: weights formats that hold tensors only and cannot carry code
SAFE_SUFFIXES = (".safetensors",)
#: at most this many offending globals are named in a message
MAX_LISTED_GLOBALS = 5


#: the input channels of an ImageNet stem (timm adapts it to other counts when loading)
IMAGENET_CHANNELS = 3


class UnsafeWeightsError(AxunetError, RuntimeError):
    """A weights or checkpoint file holds pickled Python objects beyond tensors and plain containers."""


class PretrainedWeightsError(AxunetError, RuntimeError):
    """Pretrained encoder weights could not be obtained or do not fit the backbone."""


def _unsafe_globals(path: str | os.PathLike) -> list[str] | None:
    """Pickle globals of a ``torch.save`` zip file that ``weights_only`` loading refuses, found by torch without
    running anything; ``None`` when the file is not such a zip (legacy format, TorchScript, not a checkpoint)."""
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - any failure means "cannot tell statically"; the weights-only load decides
        return None


def _refusal(path: str | os.PathLike, what: str, unsafe: Iterable[str] | None = None) -> UnsafeWeightsError:
    """The one-line refusal of ``path`` (a ``what``, e.g. ``"checkpoint"``), naming the offending pickle globals
    (``unsafe``, e.g. ``builtins.exec``; looked up when not given)."""
    names = sorted(unsafe if unsafe is not None else _unsafe_globals(path) or ())
    shown = ", ".join(names[:MAX_LISTED_GLOBALS]) + (" ..." if len(names) > MAX_LISTED_GLOBALS else "")
    found = f" ({shown})" if shown else ""
    return UnsafeWeightsError(
        f"cannot read {what} {os.fspath(path)}: not a plain weights file, it holds pickled Python objects{found} "
        "that could run code when loaded; use a state dict saved with torch.save(model.state_dict(), ...) or a "
        ".safetensors file, from a source you trust"
    )


def check_plain_weights(path: str | os.PathLike, what: str = "weights file") -> None:
    """Raise :class:`UnsafeWeightsError` when ``path`` holds more than tensors and plain containers.

    A ``.safetensors`` file passes unread. A ``torch.save`` file is disassembled without running anything; a file in
    another format is loaded with ``weights_only=True`` (which cannot run code) to see whether it is refused.
    Files that are missing or unreadable for other reasons are left to the loader that follows, which reports them.

    Args:
        path: a weights or checkpoint file.
        what: what the file is meant to be, for the message.

    Raises:
        UnsafeWeightsError: the file carries pickled objects that ``weights_only`` loading refuses.
    """
    path = os.fspath(path)
    if not os.path.isfile(path) or path.lower().endswith(SAFE_SUFFIXES):
        return
    unsafe = _unsafe_globals(path)
    if unsafe:
        raise _refusal(path, what, unsafe)
    if unsafe is None:
        try:
            load_plain_weights(path, what=what, map_location="cpu")
        except UnsafeWeightsError:
            raise
        except Exception:  # noqa: BLE001 - not a pickle problem: the real loader gives its own error
            return


def check_checkpoint_loaders(handlers: Iterable[object]) -> None:
    """Check that the file of every MONAI ``CheckpointLoader`` among ``handlers`` exists before an engine runs (the
    first step of the inference and evaluation configs' ``run``, so a workflow can be built before its weights
    exist), so that a missing file is one line. What the file holds is checked once, when the
    :class:`~axunet_bundle.handlers.PlainCheckpointLoader` is attached to its engine (:func:`check_plain_weights`).

    Args:
        handlers: engine handlers, e.g. the bundle config's ``@handlers``.

    Raises:
        ConfigurationError: a checkpoint file does not exist.
    """
    from monai.handlers import CheckpointLoader

    for handler in handlers:
        if isinstance(handler, CheckpointLoader) and not os.path.isfile(handler.load_path):
            raise ConfigurationError(f"no weights at {handler.load_path}: train first, or give --ckpt_path")


def load_plain_weights(path: str | os.PathLike, what: str = "checkpoint", **load_kwargs: object) -> object:
    """``torch.load(path, weights_only=True)``, with one clear line (:class:`UnsafeWeightsError`) for a crafted file.

    Args:
        path: a ``torch.save`` weights or checkpoint file.
        what: what the file is meant to be, for the message.
        load_kwargs: other arguments of ``torch.load`` (``map_location``, ``mmap``).
    """
    try:
        return torch.load(path, weights_only=True, **load_kwargs)
    except pickle.UnpicklingError as err:  # a weights-only refusal: name the file and what it carries, briefly
        raise _refusal(path, what) from err


def check_encoder_weights(backbone: str, path: str) -> None:
    """Check that ``path`` holds timm weights of ``backbone``, with a clear error naming what does not fit.

    Loads with ``weights_only=True`` (through timm), so a file carrying pickled code is refused, never run.

    Args:
        backbone: timm model name.
        path: the weights file.

    Raises:
        PretrainedWeightsError: the file is missing, unreadable, carries pickled objects beyond tensors ("not a
            plain weights file"), or does not fit the backbone.
    """
    import timm

    if not os.path.isfile(path):
        raise PretrainedWeightsError(f"pretrained weights file not found: {path}")
    try:
        check_plain_weights(path, what="pretrained weights file")
        state = timm.models.load_state_dict(path, weights_only=True)
    except UnsafeWeightsError as err:
        raise PretrainedWeightsError(str(err)) from err
    except Exception as err:  # torch/safetensors raise many types for a corrupt file
        raise PretrainedWeightsError(f"cannot read pretrained weights file {path}: {err}") from err
    reference = timm.create_model(backbone, pretrained=False, num_classes=0)
    expected = reference.state_dict()
    classifier = reference.pretrained_cfg.get("classifier", "")
    first_conv = reference.pretrained_cfg.get("first_conv", "")
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(k for k in set(state) - set(expected) if not k.startswith(f"{classifier}."))
    mismatched = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape and k != f"{first_conv}.weight"
    ]
    stem = state.get(f"{first_conv}.weight")
    if stem is not None and stem.ndim == 4 and stem.shape[1] != IMAGENET_CHANNELS:
        mismatched.append(f"{first_conv}.weight has {stem.shape[1]} input channels, expected ImageNet's 3")
    if missing or unexpected or mismatched:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")
                details.append(f"{label}: {shown}")
        raise PretrainedWeightsError(f"{path} does not hold timm '{backbone}' weights ({'; '.join(details)})")
