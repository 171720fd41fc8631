# Copyright (c) AXUNet bundle developers. Licensed under the Apache License, Version 2.0.
"""The ``axunet`` commands' options, read from the command functions' signatures and docstrings, and checked before
a command runs: help, unknown names, types, ranges, input paths.

A command's module is read with :mod:`ast`, not imported: its imports (torch, MONAI) take seconds, and ``--help`` or
a mistyped option must answer at once. The function is imported only to run it. argparse parses the options (its
errors are turned into one line); the bundle ids a workflow command takes (``--epochs 2``) are checked against the
ids of its config files and their defaults' types (:func:`axunet_bundle.settings.check_setting`).
"""

from __future__ import annotations

import argparse
import ast
import difflib
import json
import os
import re
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigurationError
from ..outputs import MODEL_SETTINGS
from ..settings import LIMITS, MIN_SLICE_SIZE, at_least, check_setting, fraction, is_integer, is_number
from .configs import config_dir
from .workflows import OPTION_CONFIGS, OPTION_WORKFLOWS, PICTURES_CONFIGS, WORKFLOW_CONFIGS

__all__ = ["COMMANDS", "Command", "Param", "UsageError", "command_help", "command_spec", "overview", "parse_command"]

#: each command's module in this package (the function has the command's name)
COMMANDS = {
    "demo": "demo",
    "network": "pictures",
    "synth": "data",
    "check": "data",
    "datalist": "data",
    "prepare": "data",
    "train": "workflows",
    "evaluate": "workflows",
    "score": "score",
    "infer": "workflows",
    "export": "workflows",
    "overlay": "pictures",
    "attention": "pictures",
    "report": "pictures",
    "bundle": "zoo_bundle",
    "compare": "compare",
    "monailabel-studies": "studies",
}
#: the workflows whose config ids a command takes as options (its ``**overrides``)
COMMAND_WORKFLOWS = {
    "train": ("training",),
    "prepare": ("training",),
    "evaluate": ("evaluating",),
    "infer": ("inference",),
    "export": ("inference",),
    "compare": ("training", "evaluating"),
}
#: options that name an input that must exist (a command's own and the bundle ids alike)
INPUT_PATHS = frozenset(
    {
        "case_dir",
        "dataset_dir",
        "prediction_dir",
        "reference_dir",
        "seg",
        "ckpt_path",
        "datalist",
        "weights",
        "variants",
        "pretrained_path",
        "slice_cache_dir",
    }
)
#: ranges of the commands' own options (the bundle ids' are :data:`axunet_bundle.settings.LIMITS`); a command's own
#: entry first
OPTION_LIMITS = {
    "n": at_least(1),
    "cases": at_least(1),
    "depth": at_least(1),
    "workers": at_least(1),
    "batch": at_least(1),
    "slice_index": at_least(0),
    "size": at_least(MIN_SLICE_SIZE),
    "synth.size": at_least(16),
    "val_fraction": fraction(True, True),
    "test_fraction": fraction(False, True),
}
#: config ids that are structure, not settings: not listed in help
_STRUCTURE = {"imports", "+imports", "initialize", "+initialize", "run", "finalize", "training", "evaluating"}
_REQUIRED = object()


class UsageError(ConfigurationError):
    """A command line that cannot be run: an unknown command or option, a missing argument, a value not allowed."""


@dataclass
class Param:
    """One option of a command: its name, annotation text, default (``_REQUIRED`` for a positional) and help."""

    name: str
    annotation: str
    default: Any
    help: str = ""

    @property
    def positional(self) -> bool:
        return self.default is _REQUIRED


@dataclass
class Command:
    """A command as its function declares it."""

    name: str
    module: str
    text: str
    params: list[Param]
    example: str
    overrides: bool  # takes bundle ids (``**overrides``)
    override_help: str = ""
    settings: dict[str, Any] = field(default_factory=dict)  # the ids of its configs and their defaults

    @property
    def function(self) -> str:
        """The name of the command's function."""
        return function_name(self.name)

    @property
    def summary(self) -> str:
        first = self.text.split(". ")[0].split("\n\n")[0].replace("\n", " ").rstrip(".")
        return first if len(first) <= 90 else first[:87] + "..."


def function_name(command: str) -> str:
    """The function a command runs: its name with ``_`` for ``-`` (``monailabel-studies`` -> ``monailabel_studies``)."""
    return command.replace("-", "_")


def _constants(tree: ast.Module) -> dict[str, Any]:
    values = {}
    for node in tree.body:
        targets = (
            node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) else []
        )
        if len(targets) == 1 and isinstance(targets[0], ast.Name) and getattr(node, "value", None) is not None:
            try:
                values[targets[0].id] = ast.literal_eval(node.value)
            except ValueError:
                pass
    return values


def _default(node: ast.expr, constants: dict[str, Any]) -> Any:
    if isinstance(node, ast.Name) and node.id in constants:
        return constants[node.id]
    return ast.literal_eval(node)


def _sections(doc: str) -> tuple[str, dict[str, str], str]:
    """A Google-style docstring's text, its ``Args:`` (name -> text) and its ``Example:``."""
    text, args, example, section, name = [], {}, [], None, None
    for line in doc.splitlines():
        stripped = line.strip()
        if stripped in ("Args:", "Example:"):
            section = stripped
            continue
        if section == "Args:":
            match = re.match(r"^    (\w+): (.*)$", line)
            if match:
                name = match.group(1)
                args[name] = match.group(2)
            elif stripped and name:
                args[name] += " " + stripped
        elif section == "Example:":
            if stripped:
                example.append(stripped)
        else:
            text.append(line)
    return "\n".join(text).strip(), args, " ".join(example)


def config_ids(workflows: tuple[str, ...], bundle_root: str | None = None) -> dict[str, Any]:
    """Every id of the workflows' config files (nested ones as ``a#b``) with its value in the files, read as JSON."""
    ids: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        ids.setdefault(prefix, value)
        children = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for key, child in children:
            walk(f"{prefix}#{key}", child)

    folder = config_dir(bundle_root)
    for workflow in workflows:
        files = [folder / name for name in WORKFLOW_CONFIGS[workflow]] + [PICTURES_CONFIGS.get(workflow)]
        for path in filter(None, files):
            for key, value in json.loads(Path(path).read_text(encoding="utf-8")).items():
                walk(key.lstrip("+"), value)
    return ids


def command_spec(name: str) -> Command:
    """The command ``name`` as its function declares it (read from its module's source, not imported).

    Raises:
        UsageError: an unknown command, with the closest known one.
    """
    if name not in COMMANDS:
        raise UsageError(f"unknown command {name!r}{_closest(name, COMMANDS)}; the commands: {', '.join(COMMANDS)}")
    tree = ast.parse(Path(__file__).with_name(f"{COMMANDS[name]}.py").read_text(encoding="utf-8"))
    function = next(n for n in tree.body if isinstance(n, ast.FunctionDef) and n.name == function_name(name))
    constants = _constants(tree)
    text, helps, example = _sections(ast.get_docstring(function) or "")
    args = function.args
    defaults = [_REQUIRED] * (len(args.args) - len(args.defaults)) + [_default(d, constants) for d in args.defaults]
    params = [
        Param(a.arg, ast.unparse(a.annotation) if a.annotation else "str", d, helps.get(a.arg, ""))
        for a, d in zip(args.args, defaults)
    ]
    overrides = args.kwarg is not None
    settings = config_ids(COMMAND_WORKFLOWS[name]) if overrides else {}
    return Command(name, COMMANDS[name], text, params, example, overrides, helps.get("overrides", ""), settings)


def _closest(word: str, known: Any, prefix: str = "") -> str:
    match = difflib.get_close_matches(word, list(known), n=1)
    return f" (did you mean {prefix}{match[0]}?)" if match else ""


def _show(value: Any) -> str:
    text = json.dumps(value) if not isinstance(value, str) else value
    return text if len(text) <= 60 else text[:57] + "..."


def command_help(command: Command) -> str:
    """The text ``axunet COMMAND --help`` prints: usage, what it does, each option with its default, the bundle ids
    it takes with theirs, and an example."""
    positionals = " ".join(p.name.upper() for p in command.params if p.positional)
    usage = f"usage: axunet {command.name} {positionals} [--option VALUE ...]".replace("  ", " ")
    lines = [usage, "", command.text, ""]
    options = list(command.params)
    if options:
        lines.append("options:")
        for p in options:
            shown = p.name.upper() if p.positional else f"--{p.name} ({p.annotation}, default: {_show(p.default)})"
            lines.append(f"  {shown}\n      {p.help}".rstrip())
    if command.overrides:
        workflows = ", ".join(" + ".join(WORKFLOW_CONFIGS[w]) for w in COMMAND_WORKFLOWS[command.name])
        lines += ["", f'bundle ids (of {workflows}; --id value, e.g. --epochs 2 --roi_size "[64,64]"):']
        if command.override_help:
            lines.append(f"  {command.override_help}")
        top = {k: v for k, v in command.settings.items() if "#" not in k and k not in _STRUCTURE}
        settings = [f"--{k} {_setting(v)}" for k, v in top.items() if _setting(v) is not None]
        settings += [f"--{k}" for k, ws in OPTION_WORKFLOWS.items() if set(ws) & set(COMMAND_WORKFLOWS[command.name])]
        lines += textwrap.wrap(", ".join(settings), 116, initial_indent="  ", subsequent_indent="  ")
    lines += ["", f"example:\n  {command.example}" if command.example else ""]
    return "\n".join(lines).rstrip() + "\n"


def _setting(value: Any) -> str | None:
    """How help shows a config id's default; ``None`` for the workflow's components (the network, the loaders)."""
    if isinstance(value, dict) and value.get("_target_", "").endswith(".trained_setting"):
        return f"(the weights' {MODEL_SETTINGS}, else {_show(value.get('default'))})"
    if isinstance(value, dict) and value.get("_target_", "").endswith(".loader_workers"):
        return "(from the CPUs: their number less one, 2 to 32)"
    if isinstance(value, dict) and value.get("_target_", "").endswith(".inference_workers"):
        return "(0 on the CPU, else from the CPUs: their number less one, 2 to 32)"
    if isinstance(value, dict) or (isinstance(value, list) and any(isinstance(v, (dict, list)) for v in value)):
        return None
    return _show(value)


def overview() -> str:
    """``axunet --help``: every command with its first sentence."""
    lines = [
        "usage: axunet COMMAND [ARGS] [--option VALUE ...]   (axunet COMMAND --help: its options)",
        "",
        "commands:",
    ]
    width = max(map(len, COMMANDS))
    lines += [f"  {name:<{width}} {command_spec(name).summary}" for name in COMMANDS]
    return "\n".join(lines) + "\n"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line instead of argparse's usage and message
        raise UsageError(f"{self.prog}: {message} (see {self.prog} --help)")


def _literal(raw: str) -> Any:
    # as the command line always read values (fire): a Python literal where it is one, else the text
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, MemoryError, RecursionError):
        return raw


_BOOLS = {"true": True, "false": False}


def _convert(command: str, param: Param, raw: str, label: str) -> Any:
    """``raw`` as the type ``param`` declares; one line naming option, value and what is allowed otherwise."""
    kinds = [k.strip() for k in param.annotation.split("|")]
    if "None" in kinds and raw in ("None", "none", "null"):
        return None
    allowed = []
    for kind in (k for k in kinds if k != "None"):
        if kind == "bool":
            allowed.append("True or False")
            if raw.lower() in _BOOLS:
                return _BOOLS[raw.lower()]
        elif kind == "int":
            allowed.append("an integer")
            if re.fullmatch(r"[+-]?\d+", raw.strip()):
                return int(raw)
        elif kind == "float":
            allowed.append("a number")
            try:
                return float(raw)
            except ValueError:
                pass
        elif kind == "str":
            return raw
        elif "[int]" in kind:
            allowed.append("a list of integers")
            value = _literal(raw)
            if isinstance(value, (list, tuple)) and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
                return list(value)
        else:  # a sequence of names: "a,b" or "['a','b']"
            value = _literal(raw)
            return list(value) if isinstance(value, (list, tuple)) else raw
    if "None" in kinds:
        allowed.append("None")
    raise UsageError(f"axunet {command} {label}: got {raw!r}, expected {' or '.join(allowed)}")


def _check_limit(command: str, param: Param, value: Any, label: str) -> None:
    name = param.name
    # a bundle id's rule holds for a command's option of that name unless the option is text ("t1ce,t2,flair")
    shared = LIMITS.get(name) if "str" not in param.annotation else None
    rule = OPTION_LIMITS.get(f"{command}.{name}") or OPTION_LIMITS.get(name) or shared
    if rule is not None and value is not None and not rule[0](value):
        raise UsageError(f"axunet {command} {label}: got {value!r}, expected {rule[1]}")


def _check_input(command: str, name: str, value: Any, label: str) -> None:
    if name not in INPUT_PATHS or value is None or (isinstance(value, str) and value[:1] in "$@%"):
        return
    for path in value if isinstance(value, (list, tuple)) else [value]:
        if not isinstance(path, (str, os.PathLike)):
            raise UsageError(f"axunet {command} {label}: got {path!r}, expected a path")
        if not os.path.exists(path):
            raise UsageError(f"axunet {command} {label}: {path} does not exist")


def parse_command(command: Command, argv: list[str], check_paths: bool = True) -> tuple[list[Any], dict[str, Any]]:
    """The positional arguments and options of ``axunet COMMAND ARGV``, converted and checked: unknown names (with
    the closest known one), types, ranges, input paths that do not exist (unless not ``check_paths``), bundle ids
    that are not in the command's configs or whose values do not fit their defaults' types.

    Raises:
        UsageError: one line naming the option, the value and what is allowed.
    """
    parser = _Parser(prog=f"axunet {command.name}", add_help=False, allow_abbrev=False)
    for p in command.params:
        if p.positional:
            parser.add_argument(p.name)
        else:
            bare = "True" if p.annotation.startswith("bool") else None  # --overwrite alone is True
            parser.add_argument(f"--{p.name}", dest=p.name, default=argparse.SUPPRESS, nargs="?", const=bare)
    known, extra = parser.parse_known_args(argv)
    values = vars(known)
    names = [p.name for p in command.params]
    overrides: dict[str, Any] = {}
    i = 0
    while i < len(extra):
        token = extra[i]
        if not token.startswith("--") or token == "--":
            raise UsageError(f"axunet {command.name}: unexpected argument {token!r} (see axunet {command.name} --help)")
        key, _, raw = token[2:].partition("=")
        if not _:
            has_value = i + 1 < len(extra) and not extra[i + 1].startswith("--")
            raw = extra[i + 1] if has_value else "True"
            i += has_value
        i += 1
        if not command.overrides or not _known_id(command, key):
            candidates = names + (list(command.settings) + list(OPTION_CONFIGS) if command.overrides else [])
            candidates = [c for c in candidates if "#" not in c or "#" in key]
            raise UsageError(
                f"axunet {command.name}: unknown option --{key}{_closest(key, candidates, '--')}"
                f" (see axunet {command.name} --help)"
            )
        overrides[key] = _literal(raw)
    positional, options = [], {}
    for p in command.params:
        if p.name not in values:
            continue
        raw, label = values[p.name], p.name.upper() if p.positional else f"--{p.name}"
        if raw is None:
            raise UsageError(f"axunet {command.name} {label}: a value is needed")
        value = _convert(command.name, p, raw, label)
        _check_limit(command.name, p, value, label)
        if check_paths:
            _check_input(command.name, p.name, value, label)
        if p.positional:
            positional.append(value)
        else:
            options[p.name] = value
    for key, value in overrides.items():
        if not _expression(value):  # evaluated by MONAI's config parser, not checked here
            check_setting(key, value, _kind(command.settings.get(key)), option=f"axunet {command.name} --{key}")
        if check_paths:
            _check_input(command.name, key, value, f"--{key}")
    return positional, {**options, **overrides}


def _expression(value: Any) -> bool:
    """A MONAI expression, reference or macro (``$...``, ``@...``, ``%...``)."""
    return isinstance(value, str) and value[:1] in ("$", "@", "%")


def _kind(default: Any) -> tuple[Callable[[Any], bool], str] | None:
    """The rule a config default implies for its id (:func:`~axunet_bundle.settings.check_setting`'s ``rule``): the
    same type (an integer for a number where the default is one), a list of the same length for a list of numbers;
    ``None`` (no rule) for expressions, null and objects."""
    if isinstance(default, bool):
        return (lambda v: isinstance(v, bool)), "True or False"
    if is_integer(default):
        return is_integer, "an integer"
    if isinstance(default, float):
        return is_number, "a number"
    if isinstance(default, str) and not _expression(default):
        return (lambda v: isinstance(v, str)), "a text"
    if isinstance(default, list) and default and all(is_integer(v) for v in default):
        return (lambda v: isinstance(v, (list, tuple)) and len(v) == len(default) and all(map(is_integer, v))), (
            f"a list of {len(default)} integers"
        )
    return None


def _known_id(command: Command, key: str) -> bool:
    if key in command.settings or key in OPTION_CONFIGS or key in ("bundle_root", "config_file"):
        return True
    parent = key.rsplit("#", 1)[0]
    return "#" in key and isinstance(command.settings.get(parent), dict)  # a new argument of a component
