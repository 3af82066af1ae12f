"""The tools' commands declared as plain data, run without typer when that is certain.

Why: importing typer (and the click it vendors) costs about 30 ms, more than the rest of a
small command; ``hakuriver_cli/direct.py`` reads an everyday command line itself and calls
the command, so typer is only needed to print help, report a usage error, complete a word,
or read a command line ``direct`` is not sure of. A tool declares its commands with this
module's ``App``, ``Option`` and ``Argument``, which take exactly the arguments of
``typer.Typer``, ``typer.Option`` (in ``Annotated``) and ``typer.Argument`` and only record
them; ``App.typer()`` builds the same typer app from that record when it is needed.

``Exit`` ends the tool with a status (a SystemExit, which typer and click let through);
``echo`` prints a line as ``typer.echo`` does; ``Context`` stands for ``typer.Context`` in a
callback's parameters (the same class to type checkers).
"""

from __future__ import annotations

import contextlib
import math
import sys
import typing
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from inspect import Parameter, signature
from pathlib import Path
from types import UnionType
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

if TYPE_CHECKING:
    import typer
    from typer import Context as Context
else:

    class Context:
        """Stands for typer.Context in a parameter's annotation (see ``App.typer``)."""


F = TypeVar("F", bound=Callable[..., Any])

# The bounds of an option whose value goes into a proto int32 or int64 field: a value out of
# them is a usage error, not protobuf's ValueError from inside the command.
INT32: dict[str, int] = {"min": -(2**31), "max": 2**31 - 1}
INT64: dict[str, int] = {"min": -(2**63), "max": 2**63 - 1}


# The status of a tool stopped by Ctrl-C (128 + SIGINT, as a shell reports it): every waiter,
# follower and watcher ends so, and so does a command run without typer.
INTERRUPTED = 130


class Exit(SystemExit):
    """End the tool with ``code`` (typer.Exit's place)."""

    def __init__(self, code: int = 0) -> None:
        super().__init__(code)
        self.exit_code = code


def echo(message: str = "", err: bool = False) -> None:
    """``message`` and a newline on stdout (stderr when ``err``), flushed."""
    stream = sys.stderr if err else sys.stdout
    stream.write(f"{message}\n")
    stream.flush()


class Option:
    """``typer.Option``'s arguments as used in ``Annotated``: option names, then settings."""

    def __init__(self, *param_decls: str, **settings: Any) -> None:
        self.param_decls = param_decls
        self.settings = settings


class Argument:
    """``typer.Argument``'s settings."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings


@dataclass
class Command:
    """A command (or a group's callback) and the settings of its ``command()`` call."""

    callback: Callable[..., Any]
    name: str | None
    settings: dict[str, Any]

    @property
    def command_name(self) -> str:
        """The name typer gives it: its own, or the function's with ``-`` for ``_``."""
        return self.name or self.callback.__name__.lower().replace("_", "-")


@dataclass
class Group:
    app: App
    name: str | None
    settings: dict[str, Any]


class App:
    """``typer.Typer``'s settings and what is registered on it. Help and usage errors are
    plain text: typer's rich rendering (boxes, colours) costs about 60 ms per start."""

    def __init__(self, **settings: Any) -> None:
        self.settings = settings
        self.commands: list[Command] = []
        self.groups: list[Group] = []
        self.group_callback: Command | None = None

    def command(self, name: str | None = None, **settings: Any) -> Callable[[F], F]:
        def register(callback: F) -> F:
            self.commands.append(Command(callback, name, settings))
            return callback

        return register

    def callback(self, **settings: Any) -> Callable[[F], F]:
        def register(callback: F) -> F:
            self.group_callback = Command(callback, None, settings)
            return callback

        return register

    def add_typer(self, app: App, name: str | None = None, **settings: Any) -> None:
        self.groups.append(Group(app, name, settings))

    def typer(self) -> typer.Typer:
        """The typer app this declares (built on each call)."""
        import typer

        from hakuriver_common import usage_errors

        built = typer.Typer(rich_markup_mode=None, cls=usage_errors.Group, **self.settings)
        if self.group_callback is not None:
            built.callback(**self.group_callback.settings)(_for_typer(self.group_callback.callback))
        for command in self.commands:
            built.command(command.name, cls=usage_errors.Command, **command.settings)(
                _for_typer(command.callback)
            )
        for group in self.groups:
            built.add_typer(group.app.typer(), name=group.name, **group.settings)
        return built

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        """Run the tool through typer (typer.Typer's call: ``args``, ``prog_name``...)."""
        return self.typer()(*args, **kwargs)


def _for_typer(callback: Callable[..., Any]) -> Callable[..., Any]:
    """``callback`` as typer reads a function: its parameters' ``Option``/``Argument`` made
    typer's, ``Context`` made typer.Context (and an option's own callback likewise)."""
    hints = typing.get_type_hints(callback, include_extras=True)
    parameters = []
    for parameter in signature(callback).parameters.values():
        annotation = hints.get(parameter.name, parameter.annotation)
        made = _typer_annotation(annotation, parameter.name)
        parameters.append(parameter.replace(annotation=made))

    def call(*args: Any, **kwargs: Any) -> Any:
        return callback(*args, **kwargs)

    call.__name__ = callback.__name__
    call.__qualname__ = callback.__qualname__
    call.__doc__ = callback.__doc__
    call.__module__ = callback.__module__
    call.__signature__ = signature(callback).replace(parameters=parameters)  # type: ignore[attr-defined]
    call.__annotations__ = {
        p.name: p.annotation for p in parameters if p.annotation is not Parameter.empty
    }
    return call


def _typer_annotation(annotation: Any, name: str) -> Any:
    """typer's annotation of parameter ``name``: an argument is shown as its name in capitals
    (TASK_ID, COMMAND...), not as ``task_id <str>``."""
    import typer

    if annotation is Context:
        return typer.Context
    if typing.get_origin(annotation) is not Annotated:
        return annotation
    base, *extras = typing.get_args(annotation)
    made = []
    for extra in extras:
        if isinstance(extra, Option):
            settings = _value_settings(base, extra.settings, option=True)
            if settings.get("callback") is not None:
                settings["callback"] = _for_typer(settings["callback"])
            made.append(typer.Option(*extra.param_decls, **settings))
        elif isinstance(extra, Argument):
            settings = _value_settings(base, extra.settings, option=False)
            settings.setdefault("metavar", name.upper())
            made.append(typer.Argument(**settings))
        else:
            made.append(extra)
    return Annotated[(base, *made)]


# typer 0.29 checks values through pydantic, and said so: "Invalid value for '--kind': Value
# error, 'zzz' is not one of 'command', 'vps'.", "Input should be greater than or equal to 1",
# with metavars such as <int range> and <list[str]> and ranges as [-2147483648<=x<=2147483647]
# in the help. A number or a choice is read here instead, its help and errors in words.
_TECHNICAL = ((INT32["min"], INT32["max"]), (INT64["min"], INT64["max"]))
_METAVARS = {str: "TEXT", int: "INTEGER", float: "NUMBER", Path: "PATH"}


def _value_type(base: Any) -> Any:
    """The type of one value of an option: ``X`` of ``X | None``, ``list[X]``."""
    if typing.get_origin(base) in (typing.Union, UnionType):
        base = next(arg for arg in typing.get_args(base) if arg is not type(None))
    if typing.get_origin(base) is list:
        base = typing.get_args(base)[0]
    return base


def _value_settings(base: Any, given: dict[str, Any], option: bool) -> dict[str, Any]:
    """typer's settings of a parameter of type ``base``: a readable metavar (an option's),
    and a parser of our own for a number or a choice."""
    settings = dict(given)
    kind = _value_type(base)
    if kind is bool:
        return settings
    if isinstance(kind, type) and issubclass(kind, Enum):
        settings.setdefault("parser", _ChoiceParser(kind))
        metavar = "[" + "|".join(str(member.value) for member in kind) + "]"
    elif kind in (int, float):
        low, high = settings.pop("min", None), settings.pop("max", None)
        settings.setdefault("parser", _NumberParser(kind, low, high))
        if (low, high) not in _TECHNICAL and (low is not None or high is not None):
            settings["help"] = f"{settings.get('help', '')} ({_range(low, high)})".lstrip()
        metavar = _METAVARS[kind]
    else:
        metavar = _METAVARS.get(kind, "TEXT")
    if option:
        settings.setdefault("metavar", metavar)
    return settings


def _range(low: float | None, high: float | None) -> str:
    if low is None:
        return f"{high} at most"
    if high is None:
        return f"{low} or more"
    return f"{low}-{high}" if low >= 0 else f"{low} to {high}"


@dataclass(frozen=True)
class _NumberParser:
    """An integer or number within its bounds; a usage error in words if not."""

    kind: type
    low: float | None
    high: float | None

    def __call__(self, value: Any) -> Any:
        import typer

        number: float = math.nan
        # The text given (in ASCII digits: int() reads other scripts' too), or the default.
        if not isinstance(value, str) or value.isascii():
            with contextlib.suppress(ValueError):
                number = self.kind(value)
        # inf was taken (an endless wait between attempts); an integer too long for a
        # float raised OverflowError here, a traceback.
        if isinstance(number, float) and not math.isfinite(number):
            word = "an integer" if self.kind is int else "a finite number"
            raise typer.BadParameter(f"{value!r} is not {word}")
        if (self.low is not None and number < self.low) or (
            self.high is not None and number > self.high
        ):
            raise typer.BadParameter(f"{value!r} is out of range ({_range(self.low, self.high)})")
        return number


@dataclass(frozen=True)
class _ChoiceParser:
    """A member of the choices by its value; a usage error naming every choice if none."""

    kind: type[Enum]

    def __call__(self, value: Any) -> Any:
        import typer

        if isinstance(value, self.kind):
            return value
        for member in self.kind:
            if member.value == value:
                return member
        choices = ", ".join(str(member.value) for member in self.kind)
        raise typer.BadParameter(f"{value!r} is not one of {choices}")
