"""`hakuriver.task list` names each task's job array and index (Slurm's ARRAY_ID_INDEX);
its `--since` is an age or a time, and one before the year 1 an error line."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from hakuriver_cli import direct, task
from hakuriver_cli.render import TASK_COLUMNS, print_task_detail, table, task_row
from hakuriver_cli.task import _ended_line, _since
from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.fake_runner import HOLD, eventually
from tests.unit.cli_threads import exit_code_later
from tests.unit.local_cluster import LocalCluster


def test_a_listed_task_shows_its_array_and_index() -> None:
    column = TASK_COLUMNS.index("array[index]")
    element = task_pb2.Task(task_id=12, batch_id=10, array_index=0, command="job")
    assert task_row(element)[column] == "10[0]"  # index 0 is an index, not "none"
    plain = task_pb2.Task(task_id=13, batch_id=13, command="job")
    assert task_row(plain)[column] == "-"
    assert len(task_row(plain)) == len(TASK_COLUMNS)


def test_a_listed_command_is_printed_as_typed_not_read_as_rich_markup(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`[/x]` failed every listing holding the task with a MarkupError traceback, and
    `d[key]` lost its `[key]` (hakurun's `'span:[a,b]'` showed as `'span:'`, the column
    `array[index]` as `array`)."""
    task = task_pb2.Task(task_id=15, command="echo", arguments=["[/x]", "d[key]", "span:[a,b]"])
    table("tasks", TASK_COLUMNS, [task_row(task)])
    out = capsys.readouterr().out
    assert "echo [/x] d[key] span:[a,b]" in out
    assert "array[index]" in out


def test_status_shows_how_many_gpus_a_task_asked_for(capsys: pytest.CaptureFixture[str]) -> None:
    print_task_detail(task_pb2.Task(task_id=14, command="train", gpu_count=2), [])
    [line] = [x for x in capsys.readouterr().out.splitlines() if x.startswith("gpu_count ")]
    assert line.split() == ["gpu_count", "2"]


@pytest.mark.parametrize("since", ["99999999999d", "0001-01-01", "3000000w"])
def test_a_since_too_far_back_is_an_error_line_not_a_traceback(
    since: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as ended:
        _since(since)
    assert ended.value.code == 2
    assert capsys.readouterr().err == f"error: --since {since!r} is too far back\n"


def test_since_takes_an_age_or_a_time() -> None:
    assert _since("2h").ToDatetime(tzinfo=UTC) < datetime.now(UTC)
    assert _since("2026-11-22T08:00+00:00").ToDatetime(tzinfo=UTC) == datetime(
        2026, 11, 22, 8, tzinfo=UTC
    )


def test_another_users_control_characters_never_reach_the_terminal(
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A task's command, a token's description, a name in a refused call are written by
    other users: an escape sequence in them cleared the operator's or admin's terminal, set
    its title or moved its cursor when listed. They are written out instead."""
    evil = "echo \x1b[2J\x1b]0;pwned\x07\x9b31m\tx\ny"
    task = task_pb2.Task(task_id=16, command="sh", arguments=["-c", evil], error_message=evil)
    event = task_pb2.TaskEvent(status=task_pb2.TASK_STATUS_FAILED, detail=evil)
    table("tasks", TASK_COLUMNS, [task_row(task)])
    print_task_detail(task, [event])
    out = capsys.readouterr().out
    assert not any((ord(c) < 0x20 and c != "\n") or 0x7F <= ord(c) <= 0x9F for c in out), out
    written = "echo \\x1b[2J\\x1b]0;pwned\\x07\\x9b31m\\tx\\ny"
    # The table's command; the details' arguments and error; the timeline's line.
    assert out.count(written) == 4
    # wait and submit --wait: the task's end in one line.
    assert _ended_line(task) == f"task 16: unspecified: {written}"


@pytest.mark.parametrize(
    ("argv", "says"),
    [
        (
            ["--batch", "123_4"],
            "error: --batch takes an array's id (123), not one of its tasks (123_4): "
            "hakuriver.client status 123_4 shows that task",
        ),
        (["--batch", "abc"], "error: --batch: task id must be a decimal integer, got 'abc'"),
        (["--before", "x"], "error: --before: task id must be a decimal integer, got 'x'"),
    ],
)
def test_list_names_the_option_whose_id_it_refuses(
    argv: list[str], says: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`list --batch ARRAY_ID_INDEX` said `task id must be a decimal integer, got '123_4'`,
    naming neither the option nor what it takes."""
    config = tmp_path / "config.toml"
    config.write_text("")
    with pytest.raises(SystemExit) as ended:
        direct.run(task.app, "hakuriver.task", ["list", "--config", str(config), *argv])
    assert ended.value.code == 2
    assert capsys.readouterr().err == says + "\n"


@pytest.mark.parametrize("lag", ["0", "0M"])
def test_a_max_lag_of_nothing_is_refused_not_read_as_every_byte(
    lag: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`stdout ID --follow --max-lag 0` (stay at the very end) printed the task's whole
    output from its first byte: 0 is the API's "no bound"."""
    config = tmp_path / "config.toml"
    config.write_text("")
    with pytest.raises(SystemExit) as ended:
        direct.run(
            task.app, "hakuriver.task", ["stdout", "5", "--max-lag", lag, "--config", str(config)]
        )
    assert ended.value.code == 2
    assert capsys.readouterr().err == (
        f"error: --max-lag {lag}: at least 1 byte; leave it out for every byte\n"
    )


class _Printed:
    """What a tool running in a thread printed so far (capsys), line by line."""

    def __init__(self, capsys: pytest.CaptureFixture[str]) -> None:
        self.capsys = capsys
        self.out: list[str] = []
        self.err: list[str] = []

    def lines(self) -> list[str]:
        printed = self.capsys.readouterr()
        self.out += printed.out.splitlines()
        self.err += printed.err.splitlines()
        return self.out


@pytest.mark.parametrize("over_connect", [False, True], ids=["grpc", "connect"])
async def test_list_watch_prints_the_list_then_each_change_its_filters_take(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    over_connect: bool,
) -> None:
    """`list --watch` (WatchTasks had no command): the list as `list` prints it, then a
    line per change of a task the filters take, until the Host goes away (one line, exit
    1)."""
    a = await local_cluster.add_runner("a", answer=HOLD)
    await local_cluster.add_runner("b", answer=HOLD)
    on_a = {"targets": [task_pb2.Target(hostname="a")]}
    [before] = await local_cluster.submit_running(**on_a)
    config = local_cluster.cli_config(tmp_path / "client.toml", over_connect)
    argv = ["list", "--watch", "--node", "a", "--json", "--config", str(config)]
    watching = exit_code_later(direct.run, task.app, "hakuriver.task", argv)
    printed = _Printed(capsys)
    await eventually(printed.lines, what="the list")
    assert [json.loads(line)["task_id"] for line in printed.out] == [str(before.task_id)]

    await local_cluster.submit_running(targets=[task_pb2.Target(hostname="b")])  # not on a
    [later] = await local_cluster.submit_running(**on_a)
    a.finish(later.task_id, 3)
    await local_cluster.wait_status(later.task_id)

    def ended() -> bool:
        return any(json.loads(line).get("exit_code") == 3 for line in printed.lines())

    await eventually(ended, what="the task's end watched")
    changes = [json.loads(line) for line in printed.out[1:]]
    assert {c["task_id"] for c in changes} == {str(later.task_id)}
    assert [c["status"] for c in changes][-2:] == ["running", "failed"]

    await local_cluster.stop_host()
    assert await asyncio.wait_for(watching, 30) == 1
    printed.lines()
    target = f"127.0.0.1:{local_cluster.config.network.host_port}"
    assert printed.err == [
        f"error: lost the host at {target}: the watch ended (it stopped, or the network failed)"
    ]


async def test_list_watch_prints_a_line_per_change_under_the_table(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    a = await local_cluster.add_runner("a", answer=HOLD)
    [shown] = await local_cluster.submit_running()
    config = local_cluster.cli_config(tmp_path / "client.toml")
    argv = ["list", "--watch", "--status", "failed", "--config", str(config)]
    watching = exit_code_later(direct.run, task.app, "hakuriver.task", argv)
    printed = _Printed(capsys)
    await eventually(lambda: any("task_id" in line for line in printed.lines()), what="a table")
    a.finish(shown.task_id, 3, stderr=b"")
    line = f"task {shown.task_id}: failed on a, exit code 3"
    await eventually(lambda: line in printed.lines(), what="its end watched")
    assert not any("running" in line for line in printed.out)  # not a status it takes
    await local_cluster.stop_host()
    assert await asyncio.wait_for(watching, 30) == 1


async def test_list_watch_of_a_list_of_several_pages_shows_the_changes_after_it(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The list read first took the request's before_task_id along as it paged (the Host
    cuts a page of large tasks short), and the watch then took every newer task as outside
    the filters: nothing more was printed."""
    await local_cluster.add_runner("a", cores=4)
    large = ["x" * 85_000] * 3  # 255 KB a task: 16 of them are over the Host's 3 MiB page
    for _ in range(16):
        await local_cluster.wait_status((await local_cluster.submit("true", *large)).task_id)
    config = local_cluster.cli_config(tmp_path / "client.toml")
    argv = ["list", "--watch", "--json", "--config", str(config)]
    watching = exit_code_later(direct.run, task.app, "hakuriver.task", argv)
    printed = _Printed(capsys)
    await eventually(lambda: len(printed.lines()) == 16, what="the list of 16")
    later = await local_cluster.submit("true")
    await local_cluster.wait_status(later.task_id)
    ended = f'"task_id": "{later.task_id}"'
    await eventually(lambda: any(ended in line for line in printed.lines()), what="its change")
    await local_cluster.stop_host()
    assert await asyncio.wait_for(watching, 30) == 1
