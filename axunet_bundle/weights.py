# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Reading weights: refuse files that carry pickled code, with one clear line naming the file, and check that a local
encoder weights file fits its timm backbone.

Every loader in the bundle reads ``.pt`` files with ``torch.load(..., weights_only=True)`` (or safetensors), which
never runs code from the file; this module turns PyTorch's long "Weights only load failed" text (which suggests
retrying with ``weights_only=False``, i.e. running the code) into :class:`UnsafeWeightsError`.
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
    "unsafe_weights_message",
    "find_unsafe_globals",
    "refused_as_unsafe",
    "check_plain_weights",
    "check_checkpoint_loaders",
    "load_plain_weights",
]

#: weights formats that hold tensors only and cannot carry code
SAFE_SUFFIXES = (".safetensors",)
#: at most this many offending globals are named in a message
MAX_LISTED_GLOBALS = 5


#: the input channels of an ImageNet stem (timm adapts it to other counts when loading)
_IMAGENET_CHANNELS = 3


class UnsafeWeightsError(AxunetError, RuntimeError):
    """A weights or checkpoint file holds pickled Python objects beyond tensors and plain containers."""


class PretrainedWeightsError(AxunetError, RuntimeError):
    """Pretrained encoder weights could not be obtained or do not fit the backbone."""


def unsafe_weights_message(
    path: str | os.PathLike, unsafe_globals: Iterable[str] = (), what: str = "weights file"
) -> str:
    """The one-line refusal for ``path``, naming the offending pickle globals when they are known.

    Args:
        path: the refused file.
        unsafe_globals: names such as ``builtins.exec`` found in its pickle.
        what: what the file was meant to be, e.g. ``"checkpoint"``.
    """
    names = sorted(unsafe_globals)
    shown = ", ".join(names[:MAX_LISTED_GLOBALS]) + (" ..." if len(names) > MAX_LISTED_GLOBALS else "")
    found = f" ({shown})" if shown else ""
    return (
        f"cannot read {what} {os.fspath(path)}: not a plain weights file, it holds pickled Python objects{found} "
        "that could run code when loaded; use a state dict saved with torch.save(model.state_dict(), ...) or a "
        ".safetensors file, from a source you trust"
    )


def find_unsafe_globals(path: str | os.PathLike) -> list[str] | None:
    """Pickle globals of a ``torch.save`` zip file that ``weights_only`` loading refuses; ``None`` when the file is
    not such a zip (legacy format, TorchScript, not a checkpoint). Only disassembles the pickle: nothing is run.

    Args:
        path: the file to inspect.
    """
    try:
        return torch.serialization.get_unsafe_globals_in_checkpoint(path)
    except Exception:  # noqa: BLE001 - any failure means "cannot tell statically"; the weights-only load decides
        return None


def refused_as_unsafe(err: BaseException) -> bool:
    """Whether ``err`` (or an exception it was raised from, e.g. timm's wrapper) is a ``weights_only`` refusal.

    Args:
        err: an exception raised while loading weights.
    """
    visited: set[int] = set()  # a chain can loop when an exception is re-raised inside its own handler
    current: BaseException | None = err
    while current is not None and id(current) not in visited:
        if isinstance(current, pickle.UnpicklingError):
            return True
        visited.add(id(current))
        current = current.__cause__ or current.__context__
    return False


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
    unsafe = find_unsafe_globals(path)
    if unsafe:
        raise UnsafeWeightsError(unsafe_weights_message(path, unsafe, what))
    if unsafe is None:
        try:
            load_plain_weights(path, what=what, map_location="cpu")
        except UnsafeWeightsError:
            raise
        except Exception:  # noqa: BLE001 - not a pickle problem: the real loader gives its own error
            return


def check_checkpoint_loaders(handlers: Iterable[object]) -> None:
    """Check the file of every MONAI ``CheckpointLoader`` among ``handlers`` before an engine runs (called from the
    inference config's ``initialize``), so a crafted checkpoint stops the run with :class:`UnsafeWeightsError`.

    Args:
        handlers: engine handlers, e.g. the bundle config's ``@handlers``.

    Raises:
        ConfigurationError: a checkpoint file does not exist.
        UnsafeWeightsError: a checkpoint carries pickled objects that ``weights_only`` loading refuses.
    """
    from monai.handlers import CheckpointLoader

    for handler in handlers:
        if isinstance(handler, CheckpointLoader):
            if not os.path.isfile(handler.load_path):
                raise ConfigurationError(f"no weights at {handler.load_path}: train first, or give --ckpt_path")
            check_plain_weights(handler.load_path, what="checkpoint")


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
        raise UnsafeWeightsError(unsafe_weights_message(path, find_unsafe_globals(path) or (), what)) from err


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
        state = timm.models.load_state_dict(path, weights_only=True)
    except Exception as err:  # torch/safetensors raise many types for a corrupt or unsafe file
        if refused_as_unsafe(err):
            raise PretrainedWeightsError(
                unsafe_weights_message(path, find_unsafe_globals(path) or (), "pretrained weights file")
            ) from err
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
    if stem is not None and stem.ndim == 4 and stem.shape[1] != _IMAGENET_CHANNELS:
        mismatched.append(f"{first_conv}.weight has {stem.shape[1]} input channels, expected ImageNet's 3")
    if missing or unexpected or mismatched:
        details = []
        for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if keys:
                shown = ", ".join(keys[:5]) + (f" ... ({len(keys)} in all)" if len(keys) > 5 else "")
                details.append(f"{label}: {shown}")
        raise PretrainedWeightsError(f"{path} does not hold timm '{backbone}' weights ({'; '.join(details)})")
