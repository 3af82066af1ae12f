"""Usage errors in one line, as every other error of the tools is.

click prints one as four lines: the usage, ``Try '... --help' for help.``, a blank line and
``Error: ...``; a tool's own errors are one line, ``error: ...``. The click classes of the
tools' typer apps (``commands.App.typer``) turn a usage error raised while the command line
is read (an unknown option or command, a missing argument, a value refused) into one that
prints ``error: MESSAGE (see 'TOOL COMMAND --help')``, still exit 2. The help printed for a
tool or group run without arguments (click's NoArgsIsHelpError) stays as it is. A command's
arguments are shown in its help by name (``Argument``).

Imported with typer, when a command line goes to typer (see hakuriver_cli/direct.py).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import IO, Any, TypeVar

import typer
from typer.core import TyperArgument, TyperCommand, TyperGroup

# typer vendors click, and exports only this subclass of its UsageError.
UsageError: type[Exception] = typer.BadParameter.__mro__[1]

T = TypeVar("T")


class OneLineUsageError(UsageError):  # type: ignore[misc, valid-type]
    def show(self, file: IO[Any] | None = None) -> None:
        said = " ".join(self.format_message().split()).rstrip(".")  # click's are multi-line
        if said[1:2].islower():  # "No such option" as the tools' own errors begin
            said = said[0].lower() + said[1:]
        hint = f" (see '{self.ctx.command_path} --help')" if self.ctx is not None else ""
        typer.echo(f"error: {said}{hint}", err=True)


def _in_one_line(read: Callable[[], T]) -> T:
    try:
        return read()
    except UsageError as exc:
        if isinstance(exc, OneLineUsageError) or type(exc).__name__ == "NoArgsIsHelpError":
            raise
        raise OneLineUsageError(exc.format_message(), exc.ctx) from None  # type: ignore[attr-defined]


class Argument(TyperArgument):
    """An argument in the usage line and help as its name in capitals (the metavar
    commands.App gives it): ``TASK_ID``, ``[COMMAND]...``, a choice's values as an option's
    (``ROLE [user|operator|admin]``), not typer's ``{task_id}`` and ``task_id <str>``."""

    def _usage_display_name(self) -> str:
        name = self.display_name_raw if self.required else f"[{self.display_name_raw}]"
        return name + ("..." if self.nargs != 1 else "")

    def _rich_display_name(self) -> str:
        return self.display_name_raw + ("..." if self.nargs != 1 else "")

    def display_type_rich(self, ctx: Any) -> str | None:
        if not self.type_descriptor.is_choice:
            return None
        return f"[{self.display_type(ctx)[1:-1]}]"


class Command(TyperCommand):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        for param in self.params:
            if type(param) is TyperArgument:
                param.__class__ = Argument

    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        return _in_one_line(lambda: super(Command, self).make_context(*args, **kwargs))


class Group(TyperGroup):
    def make_context(self, *args: Any, **kwargs: Any) -> Any:
        return _in_one_line(lambda: super(Group, self).make_context(*args, **kwargs))

    def invoke(self, ctx: Any) -> Any:
        """A missing or unknown command (and the reading of a command's line)."""
        return _in_one_line(lambda: super(Group, self).invoke(ctx))
