"""What the tools say of an option's value they refuse, and how their help names values:
typer 0.29 checks values through pydantic and said so ("Value error, 'zzz' is not one of
'command', 'vps'.", "Input should be greater than or equal to 1"), and its help showed
metavars such as <int range> and <list[str]>."""

from __future__ import annotations

import asyncio
import re
import typing
from pathlib import Path

import pytest

from hakuriver_cli import (
    admin,
    client,
    direct,
    docker,
    docker_shell,
    hakurun,
    init,
    ssh,
    task,
    vps,
)
from hakuriver_common import commands as cli
from hakuriver_common.commands import App
from hakuriver_host import main as host_main
from hakuriver_runner import main as runner_main
from tests.unit.cli_threads import exit_code_later
from tests.unit.local_cluster import LocalCluster

TOOLS: dict[str, App] = {
    "hakuriver.task": task.app,
    "hakuriver.client": client.app,
    "hakuriver.vps": vps.app,
    "hakuriver.admin": admin.app,
    "hakuriver.docker": docker.app,
    "hakuriver.init": init.app,
    "hakuriver.ssh": ssh.app,
    "hakuriver.docker-shell": docker_shell.app,
    "hakuriver.host": host_main.app,
    "hakuriver.runner": runner_main.app,
}


def _usage_error(
    tool: str, argv: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> str:
    """What ``tool`` says of a command line it refuses: one line, exit 2."""
    config = tmp_path / "config.toml"
    config.write_text("")
    with pytest.raises(SystemExit) as exited:
        if tool in ("hakuriver.ssh", "hakuriver.host", "hakuriver.runner"):  # typer alone
            TOOLS[tool](args=["--config", str(config), *argv], prog_name=tool)
        else:
            direct.run(TOOLS[tool], tool, [*argv, "--config", str(config)])
    assert exited.value.code == 2
    printed = capsys.readouterr()
    [line] = printed.err.splitlines()
    assert printed.out == ""
    return line


# A command line, then what the tool says after "error: invalid value for " ({0}: 400 zeros,
# an integer past the range of a float).
REFUSED = (
    """
hakuriver.task list --kind zzz | '--kind': 'zzz' is not one of command, vps
hakuriver.task list --status runing | '--status': 'runing' is not one of pending, assigning, \
running, paused, completed, failed, killed, killed_oom, lost, unknown
hakuriver.task submit --network bridge | '--network': 'bridge' is not one of host, none
hakuriver.admin user add bob --role root | '--role': 'root' is not one of user, operator, admin
hakuriver.admin user set-role bob root | 'ROLE': 'root' is not one of user, operator, admin
hakuriver.task list --limit 0 | '--limit': '0' is out of range (1-1000)
hakuriver.task list --limit many | '--limit': 'many' is not an integer
hakuriver.admin audit --limit 5000 | '--limit': '5000' is out of range (1-1000)
hakuriver.client health --count -1 | '--count': '-1' is out of range (0 or more)
hakuriver.task submit --cores 1.5 | '--cores': '1.5' is not an integer
hakuriver.task submit --cores ٣ | '--cores': '٣' is not an integer
hakuriver.task submit --cores 3000000000 | '--cores': '3000000000' is out of range (1-4096)
hakuriver.task submit --cores 0 | '--cores': '0' is out of range (1-4096)
hakuriver.vps submit --cores -1 | '--cores': '-1' is out of range (0-4096)
hakuriver.vps submit --cores 5000 | '--cores': '5000' is out of range (0-4096)
hakuriver.task list --limit 1{0} | '--limit': '1{0}' is out of range (1-1000)
hakuriver.task submit --cores 1{0} | '--cores': '1{0}' is out of range (1-4096)
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
    shown = _usage_error(tool, argv, tmp_path, capsys)
    assert shown.startswith(f"error: invalid value for {said} (see '")
    assert shown.endswith(" --help')")


# A command line, and the one line its tool says of it.
USAGE_ERRORS = [
    ("hakuriver.task --bogus", "no such option: --bogus (see 'hakuriver.task --help')"),
    (
        "hakuriver.task lst",
        "no such command 'lst'. Did you mean 'list'? (see 'hakuriver.task --help')",
    ),
    ("hakuriver.task stdout", "missing argument 'TASK_ID' (see 'hakuriver.task stdout --help')"),
    (
        "hakuriver.client command 5",
        "missing argument 'ACTION'. Choose from: pause, resume "
        "(see 'hakuriver.client command --help')",
    ),
    (
        "hakuriver.admin user set-role bob",
        "missing argument 'ROLE'. Choose from: user, operator, admin "
        "(see 'hakuriver.admin user set-role --help')",
    ),
    (
        "hakuriver.vps submit --bogus",
        "no such option: --bogus (Possible options: --gpus) (see 'hakuriver.vps submit --help')",
    ),
    (
        "hakuriver.docker list-tars x",
        "got unexpected extra argument(s) (x) (see 'hakuriver.docker list-tars --help')",
    ),
    ("hakuriver.init tls --bogus", "no such option: --bogus (see 'hakuriver.init tls --help')"),
    ("hakuriver.docker-shell", "missing argument 'NAME' (see 'hakuriver.docker-shell --help')"),
    ("hakuriver.ssh", "missing argument 'TASK_ID' (see 'hakuriver.ssh --help')"),
    ("hakuriver.host --bogus", "no such option: --bogus (see 'hakuriver.host --help')"),
    ("hakuriver.runner --bogus", "no such option: --bogus (see 'hakuriver.runner --help')"),
]


@pytest.mark.parametrize(("command", "said"), USAGE_ERRORS)
def test_a_usage_error_is_one_line_naming_the_problem(
    command: str, said: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """click's four lines (the usage, "Try ... --help for help.", a blank line, "Error:
    ..."), where every other error of the tools is one line."""
    tool, *argv = command.split()
    assert _usage_error(tool, argv, tmp_path, capsys) == f"error: {said}"


@pytest.mark.parametrize("argv", [["--"], ["--cores", "2"], ["--", ""]])
async def test_submit_without_a_command_is_a_usage_error_not_a_call(
    argv: list[str], local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The Host refused it (`command: must not be empty`, exit 1) after a connection."""
    config = local_cluster.cli_config(tmp_path / "client.toml")
    argv = ["submit", "--config", str(config), *argv]
    ended = exit_code_later(direct.run, task.app, "hakuriver.task", argv)
    assert await asyncio.wait_for(ended, 30) == 2
    assert capsys.readouterr().err == (
        "error: missing the command to run, after -- (see 'hakuriver.task submit --help')\n"
    )


def test_hakurun_says_a_usage_error_in_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    """argparse printed hakurun's whole usage (three lines) before the error."""
    with pytest.raises(SystemExit) as exited:
        hakurun.main(["--bogus", "echo"])
    assert exited.value.code == 2
    assert capsys.readouterr().err == (
        "error: unrecognized arguments: --bogus (see 'hakurun --help')\n"
    )


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
    ... [1<=x<=1000]; no [-2147483648<=x<=2147483647] for a value the Host bounds. Every
    argument by its name in capitals: `stdout [OPTIONS] TASK_ID`, `TASK_ID  Task id...`,
    not `{task_id}` and `task_id <str>`."""
    seen = 0
    for tool, app in TOOLS.items():
        for argv in _commands(app, []):
            shown = _help(tool, argv, capsys)
            usage = shown.partition("\n")[0].partition("[OPTIONS]")[2]
            assert re.fullmatch(r"( \[?[A-Z_]+\]?(\.\.\.)?)*( COMMAND \[ARGS\]\.\.\.)?", usage), (
                tool,
                argv,
                usage,
            )
            options = shown.partition("\nOptions:\n")[2]
            assert not re.search(r"<[^>]*>|<=x|x>=|x<=", options), (tool, argv, options)
            arguments = shown.partition("\nArguments:\n")[2].partition("\nOptions:\n")[0]
            assert not re.search(r"^  [a-z_{]|<", arguments, re.MULTILINE), (tool, argv, arguments)
            seen += 1
    assert seen > 30
    listing = _help("hakuriver.task", ["list"], capsys)
    assert re.search(r"--limit INTEGER +At most this many tasks\. \(1-1000\)", listing)
    assert "--kind [command|vps]" in listing
    assert "--config PATH" in listing
    submit = _help("hakuriver.task", ["submit"], capsys)
    assert re.search(r"--cores INTEGER +CPU cores to reserve; default 1\. \(1-4096\)\n", submit)
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


@pytest.mark.parametrize("how", ["option", "environment"])
def test_a_config_under_home_is_found(
    how: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No shell expands ``~`` after ``=`` or inside quotes: ``--config=~/lab.toml`` and
    ``HAKURIVER_CONFIG="~/lab.toml"`` said "config file ~/lab.toml does not exist"."""
    monkeypatch.setenv("HOME", str(tmp_path))
    (tmp_path / "lab.toml").write_text("")
    argv = ["nodes"]
    if how == "option":
        argv.append("--config=~/lab.toml")
    else:
        monkeypatch.setenv("HAKURIVER_CONFIG", "~/lab.toml")
    monkeypatch.delenv("HAKURIVER_TOKEN", raising=False)
    with pytest.raises(SystemExit):
        direct.run(client.app, "hakuriver.client", argv)
    said = capsys.readouterr().err
    assert said.startswith("error: no API token"), said  # the file was read: it names none
