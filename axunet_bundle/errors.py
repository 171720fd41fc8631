# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""Errors a user can fix, and the one boundary that turns them into one line and an exit status.

Library code raises an :class:`AxunetError` subclass whose message is a single line saying what is wrong and where
(case, file, argument). Two entry points catch them: the ``axunet`` command line, and, for ``python -m monai.bundle
run`` and every other host of the bundle's configs, :func:`install_error_boundary`, which the configs' ``initialize``
calls first. Both print ``error: <message>`` to stderr and exit with the error's :attr:`~AxunetError.exit_code`;
anything else keeps its traceback, as a bug should.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from types import TracebackType

__all__ = [
    "AxunetError",
    "CaseError",
    "ConfigurationError",
    "DatasetError",
    "LeftOutCasesError",
    "exit_with_message",
    "install_error_boundary",
    "user_error",
]

#: exit status of a user's mistake (bad argument, path, dataset, file), as argparse and fire use
EXIT_USAGE = 2
#: exit status of a run that processed every good case but had to leave some out
EXIT_CASES_LEFT_OUT = 1


class AxunetError(Exception):
    """A problem the user can fix; ``str()`` is one line that names what is wrong and where.

    Attributes:
        exit_code: the process exit status at the error boundary.
    """

    exit_code = EXIT_USAGE


class ConfigurationError(AxunetError, ValueError):
    """A setting that cannot work: an unknown label convention or backend, too few cases for the folds, ..."""


class DatasetError(AxunetError, ValueError):
    """A dataset folder that cannot be used at all: missing, a file, holding no case, or holding one case twice."""


class CaseError(AxunetError, ValueError):
    """
    A problem with one file of one case: what a case check finds, and what a step that reads the case raises.

    ``str()`` is a single line ``"<case_id>: <file name>: <reason>"`` so that it can be printed as-is in logs.

    Args:
        case_id: id of the case (the shared file-name prefix).
        file: the file concerned (only its name is shown), or ``None`` when no single file is to blame.
        reason: what is wrong, in a few words.
    """

    def __init__(self, case_id: str, file: str | os.PathLike | None, reason: str) -> None:
        self.case_id = case_id
        self.file = file
        self.reason = reason
        super().__init__(self._message())

    def _message(self) -> str:
        parts = [self.case_id] + ([Path(self.file).name] if self.file is not None else []) + [self.reason]
        return ": ".join(str(p) for p in parts)

    def __str__(self) -> str:
        return self._message()

    def __reduce__(self):
        # keeps the exception picklable (e.g. raised in a DataLoader worker process)
        return type(self), (self.case_id, self.file, self.reason)


class LeftOutCasesError(AxunetError):
    """A run over many cases ended with some left out (each was logged with its reason); the others were processed."""

    exit_code = EXIT_CASES_LEFT_OUT


def user_error(exc: BaseException | None) -> AxunetError | None:
    """The :class:`AxunetError` that ``exc`` is, or was raised from (MONAI's config parser wraps what it evaluates in
    ``RuntimeError("Failed to evaluate ...")``); ``None`` when there is none."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, AxunetError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def exit_with_message(error: AxunetError) -> None:
    """Print ``error: <message>`` to stderr and exit with the error's status.

    Raises:
        SystemExit: always.
    """
    sys.stdout.flush()
    print(f"error: {error}", file=sys.stderr, flush=True)
    raise SystemExit(error.exit_code)


def _excepthook(kind: type[BaseException], value: BaseException, traceback: TracebackType | None) -> None:
    error = user_error(value)
    if error is None:
        _previous_hook(kind, value, traceback)
        return
    exit_with_message(error)


_previous_hook = sys.excepthook


def install_error_boundary() -> None:
    """Make an uncaught :class:`AxunetError` (or an error raised from one) end the process with its one line and exit
    status instead of a traceback; every other exception is left to the hook that was there. Idempotent.

    The bundle's configs call it first in ``initialize``, so ``python -m monai.bundle run ...`` gets the boundary
    the ``axunet`` command line has.
    """
    global _previous_hook
    if sys.excepthook is not _excepthook:
        _previous_hook = sys.excepthook
        sys.excepthook = _excepthook
