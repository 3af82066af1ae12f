"""What the tools say of an option's value they refuse, and how their help names values:
typer 0.29 checks values through pydantic and said so ("Value error, 'zzz' is not one of
'command', 'vps'.", "Input should be greater than or equal to 1"), and its help showed
metavars such as <int range> and <list[str]>."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import pytest

from hakuriver_cli import admin, client, direct, docker, docker_shell, init, ssh, task, vps
from hakuriver_common import commands as cli
from hakuriver_common.commands import App

TOOLS: dict[str, App] = {
    "hakuriver.task": task.app,
    "hakuriver.client": client.app,
    "hakuriver.vps": vps.app,
    "hakuriver.admin": admin.app,
    "hakuriver.docker": docker.app,
    "hakuriver.init": init.app,
    "hakuriver.ssh": ssh.app,
    "hakuriver.docker-shell": docker_shell.app,
}


def _usage_error(
    tool: str, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    config = tmp_path / "config.toml"
    config.write_text("")
    with pytest.raises(SystemExit) as exited:
        if tool == "hakuriver.ssh":  # run by typer alone (ssh.run)
            ssh.app(args=["--config", str(config), *argv])
        else:
            direct.run(TOOLS[tool], tool, [*argv, "--config", str(config)])
    assert exited.value.code == 2
    return capsys.readouterr().err.splitlines()[-1]


# A command line, then what the tool says after "Error: Invalid value for " ({0}: 400 zeros,
# an integer past the range of a float).
REFUSED = (
    """
hakuriver.task list --kind zzz | '--kind': 'zzz' is not one of command, vps
hakuriver.task list --status runing | '--status': 'runing' is not one of pending, assigning, \
running, paused, completed, failed, killed, killed_oom, lost, unknown
hakuriver.task submit --network bridge | '--network': 'bridge' is not one of host, none
hakuriver.admin user add bob --role root | '--role': 'root' is not one of user, operator, admin
hakuriver.admin user set-role bob root | 'role': 'root' is not one of user, operator, admin
hakuriver.task list --limit 0 | '--limit': '0' is out of range (1-1000)
hakuriver.task list --limit many | '--limit': 'many' is not an integer
hakuriver.admin audit --limit 5000 | '--limit': '5000' is out of range (1-1000)
hakuriver.client health --count -1 | '--count': '-1' is out of range (0 or more)
hakuriver.task submit --cores 1.5 | '--cores': '1.5' is not an integer
hakuriver.task submit --cores ٣ | '--cores': '٣' is not an integer
hakuriver.task submit --cores 3000000000 | '--cores': '3000000000' is out of range \
(-2147483648 to 2147483647)
hakuriver.task list --limit 1{0} | '--limit': '1{0}' is out of range (1-1000)
hakuriver.task submit --cores 1{0} | '--cores': '1{0}' is out of range \
(-2147483648 to 2147483647)
hakuriver.task submit --poll-interval 0 | '--poll-interval': '0' is out of range (0.1 or more)
hakuriver.task submit --poll-interval soon | '--poll-interval': 'soon' is not a finite number
hakuriver.task submit --poll-interval nan | '--poll-interval': 'nan' is not a finite number
hakuriver.task submit --poll-interval inf | '--poll-interval': 'inf' is not a finite number
hakuriver.ssh --proxy-port 70000 1 | '--proxy-port': '70000' is out of range (0-65535)
""".strip()
    .format("0" * 400)
    .splitlines()
)


@pytest.mark.parametrize("line", REFUSED)
def test_a_refused_value_is_named_with_the_values_allowed(
    line: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    command, _, said = line.partition(" | ")
    tool, *argv = command.split()
    assert _usage_error(tool, argv, tmp_path, capsys) == f"Error: Invalid value for {said}"


def _help(tool: str, argv: list[str], capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(SystemExit) as exited:
        TOOLS[tool](args=[*argv, "--help"])
    assert exited.value.code == 0
    return capsys.readouterr().out


def _commands(app: App, path: list[str]) -> typing.Iterator[list[str]]:
    if len(app.commands) == 1 and not app.groups and app.group_callback is None:
        yield path  # typer runs a tool of one command without its name (hakuriver.ssh)
        return
    for command in app.commands:
        yield [*path, command.command_name]
    for group in app.groups:
        yield from _commands(group.app, [*path, str(group.name)])


def test_no_help_shows_a_type_in_angle_brackets_or_a_range_in_symbols(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every option of every command: --limit INTEGER ... (1-1000), not --limit <int range>
    ... [1<=x<=1000]; no [-2147483648<=x<=2147483647] for a value the Host bounds."""
    seen = 0
    for tool, app in TOOLS.items():
        for argv in _commands(app, []):
            options = _help(tool, argv, capsys).partition("\nOptions:\n")[2]
            assert not re.search(r"<[^>]*>|<=x|x>=|x<=", options), (tool, argv, options)
            seen += 1
    assert seen > 30
    listing = _help("hakuriver.task", ["list"], capsys)
    assert re.search(r"--limit INTEGER +At most this many tasks\. \(1-1000\)", listing)
    assert "--kind [command|vps]" in listing
    assert "--config PATH" in listing
    submit = _help("hakuriver.task", ["submit"], capsys)
    assert re.search(r"--cores INTEGER +CPU cores to reserve \(default 1\)\.\n", submit)
    assert "--network [host|none]" in submit


def test_values_are_read_as_before(tmp_path: Path) -> None:
    """The parsers read what typer read: numbers, choices, repeated choices, defaults."""
    called: dict[str, typing.Any] = {}

    app = cli.App()

    @app.command()
    def probe(
        limit: typing.Annotated[int, cli.Option(min=1, max=10)] = 5,
        ratio: typing.Annotated[float, cli.Option(min=0.5)] = 1,
        kind: typing.Annotated[task.TaskKind | None, cli.Option()] = None,
        status: typing.Annotated[list[task.TaskStatus] | None, cli.Option()] = None,
    ) -> None:
        called.update(limit=limit, ratio=ratio, kind=kind, status=status)

    app(["--limit", "7", "--ratio", "2", "--kind", "vps", "--status", "running", "--status",
         "failed"], standalone_mode=False)  # fmt: skip
    assert called == {
        "limit": 7,
        "ratio": 2.0,
        "kind": task.TaskKind.VPS,
        "status": [task.TaskStatus.RUNNING, task.TaskStatus.FAILED],
    }
    assert type(called["ratio"]) is float
    app([], standalone_mode=False)
    assert called == {"limit": 5, "ratio": 1.0, "kind": None, "status": None}
