"""hakuriver_cli/direct.py against typer: for any command line, what ``direct.parse`` reads
is the command and values typer would have called (same values, same types), and a command
line typer refuses (a usage error, --help, an option the subcommand does not take) is left
to typer. The everyday command lines are read directly."""

from __future__ import annotations

import contextlib
import enum
import functools
import io
import typing
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import typer
import typer.main
from hypothesis import given, settings, strategies as st

from hakuriver_cli import admin, client, direct, docker, init, task, vps
from hakuriver_common import commands as cli, service
from hakuriver_common.commands import App

TOOLS: dict[str, App] = {
    "task": task.app,
    "client": client.app,
    "vps": vps.app,
    "admin": admin.app,
    "docker": docker.app,
}


class _Called(Exception):
    def __init__(self, callback: Callable[..., Any], kwargs: dict[str, Any]) -> None:
        self.callback = callback
        self.kwargs = kwargs


def _recorder(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def record(**kwargs: Any) -> None:
        raise _Called(original, kwargs)

    return record


def _apps(app: App) -> Iterator[App]:
    yield app
    for group in app.groups:
        yield from _apps(group.app)


@contextlib.contextmanager
def _recording(app: App) -> Iterator[typer.core.TyperGroup]:
    """The tool's click command as typer builds it, each command replaced by a recorder."""
    saved = [(info, info.callback) for a in _apps(app) for info in a.commands]
    for info, callback in saved:
        info.callback = _recorder(callback)
    try:
        yield typer.main.get_command(app.typer())
    finally:
        for info, callback in saved:
            info.callback = callback


@dataclass
class Outcome:
    call: direct.Call | None
    output: str


def _typer_call(command: typer.core.TyperGroup, argv: list[str]) -> Outcome:
    """What typer runs for ``argv``: the command function and its values, or None."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            command.main(argv, prog_name="tool", standalone_mode=False)
        except _Called as called:
            return Outcome(direct.Call(called.callback, called.kwargs), out.getvalue())
        except (Exception, SystemExit):  # a usage error, --help, Exit, Abort
            pass
    return Outcome(None, out.getvalue())


def _typed(kwargs: dict[str, Any]) -> dict[str, Any]:
    def typed(value: Any) -> Any:
        if isinstance(value, list):
            return ("list", [typed(v) for v in value])
        return (type(value), value)

    return {key: typed(value) for key, value in kwargs.items()}


def _agree(app: App, command: typer.core.TyperGroup, argv: list[str]) -> direct.Call | None:
    ours = direct.parse(app, argv)
    theirs = _typer_call(command, argv)
    if ours is not None:
        assert theirs.call is not None, (argv, theirs.output)
        # (read while the recorders stand in for the commands)
        assert getattr(ours.callback, "__wrapped__", None) is theirs.call.callback, argv
        assert _typed(ours.kwargs) == _typed(theirs.call.kwargs), argv
    return ours


# ----- everyday command lines are read directly, as typer reads them ---------------------

EVERYDAY = [
    ("task", ["submit", "--wait", "--", "true"]),
    ("task", ["--config", "/etc/h.toml", "submit", "--wait", "--", "true"]),
    ("task", ["submit", "--cores", "2", "--memory", "512M", "--env", "N=3", "--", "sh", "-c", "x"]),
    ("task", ["submit", "--target", "node1:0", "--cores", "2", "--", "./numa_job"]),
    ("task", ["submit", "--container", "NULL", "--network", "none", "--", "nvidia-smi"]),
    ("task", ["submit", "--array", "1-10%2", "--priority", "5", "--", "echo", "x"]),
    ("task", ["submit", "--json", "--poll-interval", "0.5", "--wait", "echo", "hi"]),
    ("task", ["list", "--status", "running", "--status", "pending", "--json"]),
    ("task", ["--json", "list", "--since", "24h", "--limit", "10"]),
    ("task", ["stdout", "12", "--follow"]),
    ("task", ["stderr", "-f", "12_3"]),
    ("task", ["wait", "12", "--poll-interval=2"]),
    ("client", ["nodes"]),
    ("client", ["--json", "nodes"]),
    ("client", ["status", "7"]),
    ("client", ["kill", "7"]),
    ("client", ["command", "7", "pause"]),
    ("client", ["health", "--watch", "--count", "3"]),
    ("client", ["drain", "node1"]),
    ("vps", ["submit", "--public-key-string", "ssh-ed25519 AAAA"]),
    ("vps", ["submit", "--env", "DATA=/shared/my project", "--env", "N=3"]),
    ("vps", ["status"]),
    ("admin", ["whoami"]),
    ("admin", ["audit", "--limit", "10", "--refused"]),
    ("docker", ["list-tars"]),
    ("docker", ["create-container", "hakuriver/hakuriver-base:base", "myenv"]),
]


@pytest.mark.parametrize(("tool", "argv"), EVERYDAY)
def test_everyday_command_lines_are_read_directly(tool: str, argv: list[str]) -> None:
    app = TOOLS[tool]
    with _recording(app) as command:
        assert _agree(app, command, argv) is not None, argv


# ----- what typer refuses or prints, or reads in ways direct does not, is left to it --------

REFUSED = [
    ("task", []),
    ("task", ["--help"]),
    ("task", ["submit", "--help"]),
    ("task", ["submit", "--cores", "two", "--", "true"]),
    ("task", ["submit", "--cores", "0", "--", "true"]),  # below the range
    ("task", ["submit", "--network", "bridge", "--", "true"]),
    ("task", ["submit", "--poll-interval", "0.05", "--", "true"]),
    ("task", ["submit", "--bogus", "--", "true"]),
    ("task", ["stdout"]),
    ("task", ["stdout", "1", "2"]),
    ("task", ["--json", "stdout", "1"]),  # --json does not apply to stdout
    ("client", ["command", "7", "stop"]),
    ("admin", ["audit", "--limit", "0"]),
    ("task", ["list", "--limit", "0"]),  # not the Host's default of 100
]
TYPERS_OWN = [
    ("task", ["submit", "--priority", "-1", "--", "true"]),  # a value that starts with '-'
    ("task", ["submit", "--cores", "2", "--cores", "3", "--", "true"]),  # the last wins
    ("task", ["submit", "--wait", "--wait", "--", "true"]),
    ("task", ["submit", "--cores", "1_000", "--", "true"]),  # pydantic reads it as 1000
    ("admin", ["user", "list"]),  # a command group
]


@pytest.mark.parametrize(("tool", "argv"), REFUSED)
def test_what_typer_refuses_or_prints_is_left_to_it(tool: str, argv: list[str]) -> None:
    app = TOOLS[tool]
    with _recording(app) as command:
        assert direct.parse(app, argv) is None
        assert _typer_call(command, argv).call is None


@pytest.mark.parametrize(("tool", "argv"), TYPERS_OWN)
def test_what_only_typer_reads_is_left_to_it(tool: str, argv: list[str]) -> None:
    app = TOOLS[tool]
    with _recording(app) as command:
        assert direct.parse(app, argv) is None
        assert _typer_call(command, argv).call is not None


# ----- generated command lines ----------------------------------------------------------

VALUES = [
    *("2", "0", "07", "1", "1.5", "0.05", "0.1", "1_000", " 3", "abc", "", "-", "-1", "--"),
    *("host", "none", "running", "completed", "pending", "pause", "resume", "user", "admin"),
    *("/etc/h.toml", "N=3", "node1:0", "1-10%2", "24h", "12_3", "--help", "-h", "x y"),
]


def _option_names(command: typer.core.TyperGroup, name: str) -> list[str]:
    assert isinstance(command, typer.core.TyperGroup)
    sub = command.commands.get(name)
    if sub is None:
        return ["--config", "--json"]
    return [o for p in sub.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")]


@st.composite
def command_lines(draw: st.DrawFn, command: typer.core.TyperGroup) -> list[str]:
    assert isinstance(command, typer.core.TyperGroup)
    names = [*command.commands, "bogus"]
    argv: list[str] = draw(
        st.sampled_from(
            [[], ["--json"], ["--config", "/etc/h.toml"], ["--config=/x"], ["--config"], ["-x"]]
        )
    )
    name = draw(st.sampled_from(names))
    argv.append(name)
    options = [*_option_names(command, name), "--bogus", "-z", "--"]
    for _ in range(draw(st.integers(0, 6))):
        choice = draw(st.integers(0, 3))
        if choice == 0:
            argv.append(draw(st.sampled_from(options)))
        elif choice == 1:
            argv += [draw(st.sampled_from(options)), draw(st.sampled_from(VALUES))]
        elif choice == 2:
            argv.append(f"{draw(st.sampled_from(options))}={draw(st.sampled_from(VALUES))}")
        else:
            argv.append(draw(st.sampled_from(VALUES)))
    return argv


def _candidates(annotation: Any) -> list[str]:
    """Values for a parameter of this type: mostly right, some not."""
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if args and typing.get_origin(annotation) is not None:
        return _candidates(args[0])
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return [
            *(str(m.value) for m in annotation),
            "bogus",
            str(next(iter(annotation)).value).upper(),
        ]
    if annotation is int:
        return ["0", "2", "10", "1000", "-1", "x", "1_0", "1.5"]
    if annotation is float:
        return ["0.1", "0.5", "2", "10", "0.05", "x", "1e1"]
    return ["x", "/p", "N=3", "node1:0", "12", "12_3", "", "-", "sh -c x"]


@st.composite
def plausible_lines(draw: st.DrawFn, command: typer.core.TyperGroup) -> list[str]:
    """A command line built from the subcommand's own parameters."""
    argv: list[str] = draw(st.sampled_from([[], ["--json"], ["--config", "/etc/h.toml"]]))
    name = draw(st.sampled_from(sorted(command.commands)))
    argv.append(name)
    sub = command.commands[name]
    if isinstance(sub, typer.core.TyperGroup):
        return argv
    options: list[str] = []
    positional: list[str] = []
    for param in draw(st.permutations(sub.params)):
        annotation = param.type_descriptor.annotation  # type: ignore[attr-defined]
        if param.param_type_name == "argument":
            for _ in range(draw(st.integers(0, 2)) if param.nargs == -1 else 1):
                positional.append(draw(st.sampled_from(_candidates(annotation))))
            continue
        if draw(st.integers(0, 2)) == 0:
            continue
        names = [*param.opts, *param.secondary_opts]
        for _ in range(draw(st.integers(1, 2)) if param.multiple else 1):
            flag = draw(st.sampled_from(names))
            if param.is_flag:
                options.append(flag)
            elif draw(st.booleans()):
                options += [flag, draw(st.sampled_from(_candidates(annotation)))]
            else:
                options.append(f"{flag}={draw(st.sampled_from(_candidates(annotation)))}")
    if draw(st.booleans()):
        return [*argv, *options, "--", *positional]
    return [*argv, *options, *positional]


@pytest.mark.parametrize("tool", sorted(TOOLS))
def test_generated_command_lines_agree_with_typer(tool: str) -> None:
    app = TOOLS[tool]
    with _recording(app) as command:

        @settings(max_examples=200, deadline=None, derandomize=True)
        @given(argv=st.one_of(command_lines(command), plausible_lines(command)))
        def agree(argv: list[str]) -> None:
            _agree(app, command, argv)

        agree()


def test_a_command_run_directly_ends_as_under_typer(capsys: pytest.CaptureFixture[str]) -> None:
    """Exit codes and messages as typer's: Exit, an interrupt, a closed stdin."""
    app = App()
    app.callback()(service._with_config)
    seen: list[Path | None] = []

    @app.command()
    def go(config: service.ConfigOption = None) -> None:
        seen.append(config)
        raise cli.Exit(3)

    @app.command()
    def interrupted() -> None:
        raise KeyboardInterrupt

    @app.command()
    def no_input() -> None:
        raise EOFError

    for argv, code in (
        (["--config", "/x.toml", "go"], 3),
        (["interrupted"], 130),
        (["no-input"], 1),
    ):
        for through in ("direct", "typer"):
            if through == "direct":
                assert direct.parse(app, argv) is not None, argv
            with pytest.raises(SystemExit) as exited:
                direct.run(app, "tool", argv) if through == "direct" else app(args=argv)
            assert exited.value.code == code, (argv, through)
    assert seen == [Path("/x.toml")] * 2
    assert capsys.readouterr().err.count("Aborted!") == 2


def test_the_tools_commands_are_the_ones_named_for_the_wrong_tool_hint() -> None:
    assert {f"hakuriver.{name}": _names(app) for name, app in TOOLS.items()} | {
        "hakuriver.init": _names(init.app)
    } == direct.TOOL_COMMANDS


def _names(app: App) -> frozenset[str]:
    return frozenset(
        {c.command_name for c in app.commands} | {g.name for g in app.groups if g.name}
    )


def test_a_command_typed_to_the_wrong_tool_names_the_tool_that_has_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``hakuriver.task status 5``: one line naming ``hakuriver.client status 5`` (and
    ``hakuriver.vps status 5``), exit 2; a command nobody has is typer's usage error."""
    with pytest.raises(SystemExit) as exited:
        direct.run(task.app, "hakuriver.task", ["--json", "status", "5", "--x y"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "error: hakuriver.task has no command 'status'; did you mean: "
        "hakuriver.client status 5 '--x y' (or: hakuriver.vps status 5 '--x y')\n"
    )
    with pytest.raises(SystemExit) as exited:
        direct.run(docker.app, "hakuriver.docker", ["submit", "--", "true"])
    assert (
        "did you mean: hakuriver.task submit -- true (or: hakuriver.vps" in capsys.readouterr().err
    )
    for tool, app, owner in (
        ("hakuriver.task", task.app, "hakuriver.client"),
        ("hakuriver.client", client.app, "hakuriver.client"),
        ("hakuriver.vps", vps.app, "hakuriver.vps"),
    ):
        with pytest.raises(SystemExit) as exited:  # it was "No such command 'pause'"
            direct.run(app, tool, ["pause", "5"])
        assert exited.value.code == 2
        assert capsys.readouterr().err == (
            f"error: {tool} has no command 'pause'; did you mean: {owner} command 5 pause\n"
        )
    with pytest.raises(SystemExit) as exited:
        direct.run(task.app, "hakuriver.task", ["frobnicate"])
    assert exited.value.code == 2
    assert "no such command 'frobnicate'" in capsys.readouterr().err


@pytest.mark.parametrize(
    "argv",
    [
        ["submit", "--", "cat", "/data/caf\udce9.csv"],  # a Latin-1 name a glob found
        ["submit", "--env", "A=\udcff", "--", "true"],
        ["list", "--owner", "\udcff"],
    ],
)
def test_an_argument_that_is_not_utf8_is_one_line_not_a_traceback(
    argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Bytes the shell passes that are not UTF-8 reach Python as surrogates, which no
    request can carry: the tools ended with a UnicodeEncodeError traceback."""
    config = tmp_path / "config.toml"
    config.write_text("")
    with pytest.raises(SystemExit) as exited:
        direct.run(task.app, "hakuriver.task", [argv[0], "--config", str(config), *argv[1:]])
    assert exited.value.code == 2
    [line] = capsys.readouterr().err.splitlines()
    assert line.endswith("is not UTF-8 text, which is all a request to the Host carries")
    assert line.startswith("error: '") and ("\\xe9" in line or "\\xff" in line)
