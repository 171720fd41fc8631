# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The ``axunet`` command line (``python -m axunet_bundle``): one function per command, its options read from its
signature and docstring (:mod:`.options`) and checked before it runs.

:func:`main` is the error boundary: a user's mistake (an :class:`~axunet_bundle.errors.AxunetError`, raised anywhere
below, also inside a workflow) ends in one line and its exit status, never a traceback. A command's module is
imported only to run it, so ``--help`` and a refused option answer without loading torch. The configs never import
this package: the model-zoo bundle (``axunet bundle``) carries the runtime code only.
"""

from __future__ import annotations

import importlib
import logging
import sys

from ..errors import exit_with_message, user_error
from .options import COMMANDS, command_help, command_spec, overview, parse_command

__all__ = ["COMMANDS", "main"]

_HELP = ("-h", "--help")


def main(argv: list[str] | None = None) -> None:
    """Run ``axunet ARGV`` (default: the process's arguments); ``axunet COMMAND --help`` prints the command's
    options, defaults and an example and runs nothing.

    Raises:
        SystemExit: 0 after help; with the error's one line and status for a user's mistake (2 for a command line
            that cannot run, 1 for a run that left cases out).
    """
    argv = [str(arg) for arg in (sys.argv[1:] if argv is None else argv)]
    try:
        if not argv or argv[0] in _HELP:
            print(overview(), end="")
            raise SystemExit(0 if argv else 2)
        command = command_spec(argv[0])
        if any(arg in _HELP for arg in argv[1:]):
            print(command_help(command), end="")
            raise SystemExit(0)
        args, options = parse_command(command, argv[1:])
        logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        function = getattr(importlib.import_module(f".{command.module}", __name__), command.function)
        function(*args, **options)
    except Exception as err:
        error = user_error(err)
        if error is None:
            raise  # a bug: its traceback is what a report needs
        exit_with_message(error)
