"""Running a tool's command without typer, when the arguments are plain.

typer costs about 30 ms to import, and (0.29 here) checks the value of every parameter of the
command it runs through pydantic: together more than everything else a small command does.
The tools declare their commands with hakuriver_common/commands.py, which needs no typer,
and ``run`` reads the command line itself when every token is one it is sure of (a known
subcommand, its long options with plain values, its flags, positional arguments, ``--``, and
``--config``/``--json`` before the subcommand) and calls the command with exactly the values
typer would have passed. Anything else goes to typer as before: ``--help``, a
short or unknown option, a value that needs checking (a negative number, a value that starts
with ``-``, one out of range or not among the choices), an option given twice, a missing or
extra argument, a command group, shell completion. typer then prints the help or the error it
always did. A command run directly ends as it would under typer: ``commands.Exit`` is a
SystemExit, Ctrl-C exits 130, the end of stdin prints "Aborted!" and exits 1, a closed
stdout exits 1 quietly.

tests/unit/test_cli_direct.py runs both on generated command lines and fails when they differ.
"""

from __future__ import annotations

import errno
import os
import re
import shlex
import sys
import types
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from enum import Enum
from inspect import Parameter, signature
from pathlib import Path
from typing import Annotated, Any

from hakuriver_common import service
from hakuriver_common.commands import INTERRUPTED, App, Argument, Option, echo


class _Unsure(Exception):
    """Only typer can say what this command line means."""


@dataclass(frozen=True)
class Param:
    """One parameter of a command, as far as ``parse`` reads it."""

    name: str
    option: bool  # else a positional argument
    kind: type  # str, int, float, bool (a flag), Path, or an Enum
    many: bool  # a list: a repeatable option, or an argument taking the rest
    default: Any  # Parameter.empty when required
    low: float | None
    high: float | None
    resolve: Callable[[Any, service.GlobalOptions], Any] | None  # --config / --json callbacks


@dataclass(frozen=True)
class Call:
    """A command and the values typer would have called it with."""

    callback: Callable[..., Any]
    kwargs: dict[str, Any]


# What a parameter's Option / Argument may set for ``parse`` to read it: help texts and
# display settings, bounds, the --config/--json callbacks; anything else (a parser, envvar,
# prompt, path checks, a callback of its own...) is left to typer.
_DISPLAY = frozenset({"help", "show_default", "rich_help_panel", "metavar", "show_choices"})
_READ = _DISPLAY | {"min", "max", "callback"}
_CALLBACKS: dict[Any, Callable[[Any, service.GlobalOptions], Any]] = {
    service._config_after_or_before: lambda value, before: (
        value if value is not None else before.config
    ),
    service._json_after_or_before: lambda value, before: value or before.json,
}
_INT = re.compile(r"[0-9]{1,18}")
_FLOAT = re.compile(r"[0-9]{1,15}(\.[0-9]{1,15})?")


def _info(annotation: Any) -> tuple[Any, Option | Argument]:
    """A parameter's type and its Option or Argument (``Annotated`` only)."""
    if typing.get_origin(annotation) is not Annotated:
        raise _Unsure
    base, *extras = typing.get_args(annotation)
    if len(extras) != 1 or type(extras[0]) not in (Option, Argument):
        raise _Unsure
    info = extras[0]
    if set(info.settings) - _READ:
        raise _Unsure
    return base, info


def _kind(base: Any) -> tuple[type, bool]:
    """(element type, is a list) of a parameter's type, optional or not."""
    origin, args = typing.get_origin(base), typing.get_args(base)
    if origin in (typing.Union, types.UnionType):
        kept = [a for a in args if a is not type(None)]
        if len(kept) != 1 or len(args) != 2:
            raise _Unsure
        return _kind(kept[0])
    if origin is list:
        [element] = args
        kind, many = _kind(element)
        if many or kind in (bool, Path):
            raise _Unsure
        return kind, True
    if base in (str, int, float, bool, Path) or (
        isinstance(base, type) and issubclass(base, Enum) and base is not Enum
    ):
        return base, False
    raise _Unsure


def _params(callback: Callable[..., Any]) -> tuple[list[Param], dict[str, tuple[Param, Any]]]:
    """The command's parameters, and its option names -> (parameter, value for flags)."""
    hints = typing.get_type_hints(callback, include_extras=True)
    params: list[Param] = []
    names: dict[str, tuple[Param, Any]] = {}
    for parameter in signature(callback).parameters.values():
        if parameter.kind not in (Parameter.POSITIONAL_OR_KEYWORD, Parameter.KEYWORD_ONLY):
            raise _Unsure
        base, info = _info(hints[parameter.name])
        kind, many = _kind(base)
        given, low, high = (info.settings.get(key) for key in ("callback", "min", "max"))
        if given is not None and given not in _CALLBACKS:
            raise _Unsure
        if (low is not None or high is not None) and kind not in (int, float):
            raise _Unsure
        option = isinstance(info, Option)
        if option and kind is bool and parameter.default is Parameter.empty:
            raise _Unsure
        param = Param(
            name=parameter.name,
            option=option,
            kind=kind,
            many=many,
            default=parameter.default,
            low=low,
            high=high,
            resolve=_CALLBACKS.get(given),
        )
        params.append(param)
        if isinstance(info, Option):
            for name, value in _option_names(parameter.name, kind, info.param_decls):
                if name in names:
                    raise _Unsure
                names[name] = (param, value)
    return params, names


def _option_names(name: str, kind: type, decls: Sequence[str]) -> list[tuple[str, Any]]:
    """Each name of an option, with the value a flag's name sets (as typer declares them)."""
    flag = f"--{name.replace('_', '-')}"
    if not decls:
        return [(flag, True), (f"--no-{flag[2:]}", False)] if kind is bool else [(flag, None)]
    found: list[tuple[str, Any]] = []
    for decl in decls:
        on, slash, off = decl.partition("/")
        if not _is_option_name(on) or (slash and not (kind is bool and _is_option_name(off))):
            raise _Unsure
        found.append((on, True if kind is bool else None))
        if slash:
            found.append((off, False))
    return found


def _is_option_name(text: str) -> bool:
    return bool(re.fullmatch(r"--[a-z0-9][a-z0-9-]*|-[a-zA-Z]", text))


def _value(param: Param, text: str) -> Any:
    """The value typer makes of ``text``, when certain."""
    kind = param.kind
    if kind is str:
        return text
    if kind is Path and text:
        return Path(text)
    if isinstance(kind, type) and issubclass(kind, Enum):
        for member in kind:
            if str(member.value) == text:
                return member
        raise _Unsure
    if kind is int and _INT.fullmatch(text):
        number: float = int(text)
    elif kind is float and _FLOAT.fullmatch(text):
        number = float(text)
    else:
        raise _Unsure
    if (param.low is not None and number < param.low) or (
        param.high is not None and number > param.high
    ):
        raise _Unsure
    return number


def _group(app: App, tokens: list[str]) -> tuple[service.GlobalOptions, int]:
    """--config and --json before the subcommand, and where the subcommand's name is."""
    info = app.group_callback
    takes_json = info is not None and info.callback is service._with_config_and_json
    if info is None or not (takes_json or info.callback is service._with_config):
        raise _Unsure
    config: Path | None = None
    json, at = False, 0
    while at < len(tokens) and tokens[at].startswith("-"):
        name, eq, text = tokens[at].partition("=")
        if name == "--config" and config is None:
            if not eq:
                at += 1
                text = tokens[at] if at < len(tokens) else "-"
            if text.startswith("-") or not text:
                raise _Unsure
            config = Path(text)
        elif tokens[at] == "--json" and takes_json and not json:
            json = True
        else:
            raise _Unsure
        at += 1
    if at == len(tokens):
        raise _Unsure
    return service.GlobalOptions(config, json), at


def _command(app: App, name: str) -> tuple[Callable[..., Any], bool]:
    """The subcommand's function, and whether options may follow its arguments."""
    if any(group.name == name or group.name is None for group in app.groups):
        raise _Unsure
    found = [command for command in app.commands if command.command_name == name]
    if len(found) != 1 or found[0].settings.get("no_args_is_help"):
        raise _Unsure
    settings = dict(found[0].settings.get("context_settings") or {})
    if set(settings) - {"allow_interspersed_args"}:
        raise _Unsure
    return found[0].callback, bool(settings.get("allow_interspersed_args", True))


def _read(
    tokens: list[str], names: dict[str, tuple[Param, Any]], interspersed: bool
) -> tuple[dict[str, Any], list[str]]:
    """The command's options (name -> value or values) and its positional arguments."""
    given: dict[str, Any] = {}
    positional: list[str] = []
    at = 0
    while at < len(tokens):
        token = tokens[at]
        if token == "--":
            positional += tokens[at + 1 :]
            break
        if not token.startswith("-") or token == "-":
            if not interspersed:
                positional += tokens[at:]
                break
            positional.append(token)
            at += 1
            continue
        name, eq, text = token.partition("=")
        if name not in names or (eq and (not name.startswith("--") or not text)):
            raise _Unsure
        param, flag_value = names[name]
        if param.kind is bool:
            if eq:
                raise _Unsure
            value = flag_value
        else:
            if not eq:
                at += 1
                text = tokens[at] if at < len(tokens) else "-"
            if text.startswith("-"):
                raise _Unsure
            value = _value(param, text)
        if param.many:
            given.setdefault(param.name, []).append(value)
        elif param.name in given:
            raise _Unsure
        else:
            given[param.name] = value
        at += 1
    return given, positional


def _arguments(params: list[Param], positional: list[str]) -> dict[str, Any]:
    values: dict[str, Any] = {}
    arguments = [p for p in params if not p.option]
    for index, param in enumerate(arguments):
        if param.many:
            if index != len(arguments) - 1 or (not positional and param.default is Parameter.empty):
                raise _Unsure
            values[param.name] = [_value(param, text) for text in positional]
            positional = []
        elif positional:
            values[param.name] = _value(param, positional.pop(0))
        elif param.default is Parameter.empty:
            raise _Unsure
    if positional:
        raise _Unsure
    return values


def parse(app: App, argv: Sequence[str]) -> Call | None:
    """The command ``argv`` runs and its values, when sure to be typer's; else None."""
    tokens = list(argv)
    try:
        before, at = _group(app, tokens)
        callback, interspersed = _command(app, tokens[at])
        params, names = _params(callback)
        given, positional = _read(tokens[at + 1 :], names, interspersed)
        given.update(_arguments(params, positional))
        taken = {p.name for p in params}
        if (before.config is not None and "config" not in taken) or (
            before.json and "json" not in taken
        ):
            raise _Unsure  # typer refuses it, in its words
        kwargs: dict[str, Any] = {}
        for param in params:
            if param.name in given:
                value = given[param.name]
            elif param.default is Parameter.empty:
                raise _Unsure
            else:
                value = param.default
                if param.many and value is not None:
                    raise _Unsure
            if param.many and value == [] and param.default is None:
                value = None
            if param.resolve is not None:
                value = param.resolve(value, before)
            kwargs[param.name] = value
    except _Unsure:
        return None
    return Call(callback, kwargs)


# Each tool's commands (tests/unit/test_cli_direct.py checks them against the tools): a
# command typed to the wrong tool (``hakuriver.task status 5``) is pointed at the tools that
# have it, without importing them.
TOOL_COMMANDS: dict[str, frozenset[str]] = {
    "hakuriver.task": frozenset({"list", "stderr", "stdout", "submit", "wait"}),
    "hakuriver.client": frozenset(
        {"command", "drain", "health", "kill", "nodes", "status", "undrain"}
    ),
    "hakuriver.vps": frozenset({"command", "kill", "status", "submit"}),
    "hakuriver.admin": frozenset({"audit", "runner", "task", "token", "user", "whoami"}),
    "hakuriver.docker": frozenset(
        {
            "create-container",
            "create-tar",
            "delete-container",
            "delete-tar",
            "import-rootfs",
            "list-containers",
            "list-tars",
            "start-container",
            "stop-container",
        }
    ),
    "hakuriver.init": frozenset({"config", "service", "tls"}),
}


# What users type as a command that is the argument of one: `command ID pause`.
ACTIONS = frozenset({"pause", "resume"})


def elsewhere(app: App, tool: str, argv: Sequence[str]) -> str:
    """What to say when the command named is not ``tool``'s but another tool's ("" if it
    is ``tool``'s, or nobody's: typer says so)."""
    tokens = list(argv)
    try:
        _, at = _group(app, tokens)
    except _Unsure:
        return ""
    name = tokens[at]
    if name in TOOL_COMMANDS.get(tool, (name,)):
        return ""
    if name in ACTIONS:  # `pause 5` for `command 5 pause`
        owner = tool if "command" in TOOL_COMMANDS.get(tool, ()) else "hakuriver.client"
        said = shlex.join(["command", *tokens[at + 1 :], name])
        return f"{tool} has no command {name!r}; did you mean: {owner} {said}"
    rest = shlex.join(tokens[at:])
    others = [f"{other} {rest}" for other, names in TOOL_COMMANDS.items() if name in names]
    if not others:
        return ""
    also = f" (or: {', '.join(others[1:])})" if len(others) > 1 else ""
    return f"{tool} has no command {name!r}; did you mean: {others[0]}{also}"


def _completing() -> bool:
    """A shell asks click to complete a word (``_<PROG>_COMPLETE`` set)."""
    return any(k.startswith("_") and k.endswith("_COMPLETE") for k in os.environ)


def _not_utf8(argv: Sequence[str]) -> None:
    """A request could not carry an argument (bytes the shell gave that are not UTF-8, as
    ``--owner $'\\xff'``): one line naming it; nothing if every argument is text."""
    from hakuriver_cli.connection import utf8_or_fail

    utf8_or_fail(argv)


def run(app: App, tool: str, argv: Sequence[str] | None = None) -> None:
    """Run the tool (named ``tool``): the command directly when ``parse`` reads the command
    line, else through typer, unless it names another tool's command."""
    given = sys.argv[1:] if argv is None else argv
    call = None if _completing() else parse(app, given)
    if call is None:
        wrong = "" if _completing() else elsewhere(app, tool, given)
        if wrong:
            echo(f"error: {wrong}", err=True)
            sys.exit(2)
        try:
            app(args=list(given), prog_name=tool)
        except UnicodeEncodeError:
            _not_utf8(given)
            raise
        return
    try:
        call.callback(**call.kwargs)
    except UnicodeEncodeError:
        _not_utf8(given)
        raise
    except KeyboardInterrupt:
        sys.exit(INTERRUPTED)
    except EOFError:
        echo(err=True)
        echo("Aborted!", err=True)
        sys.exit(1)
    except OSError as exc:
        if exc.errno != errno.EPIPE:
            raise
        # stdout went (``| head``): nothing more is written there, and no traceback
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
