"""A call whose work grows with its tasks (an array submitted, a batch killed, paused or
resumed) has a deadline that grows with them: a 100,000-task array outlasted the tools' 30 s
on a slow disk, and its submitter, told only that the Host did not answer in time, submitted
it again. When the deadline passes anyway, a submission is sent again with its request_id
(the Host creates its tasks once), and a kill says the Host may still be at it, and where to
look. (The Host's store is held busy to make it slow.)"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest

from hakuriver_cli import client, connection, direct, task
from hakuriver_common.commands import App
from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, KILLED_EXIT_CODE, FakeRunner, eventually
from tests.unit.local_cluster import LocalCluster, status_of


@pytest.fixture(autouse=True)
def short_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    """1 s for a call (not 30 s), and 2 s more per task for one whose work grows with its
    tasks."""
    monkeypatch.setattr(connection, "RPC_TIMEOUT_SECONDS", 1.0)
    monkeypatch.setattr(connection, "BULK_SECONDS_PER_TASK", 2.0)


def _tool(app: App, name: str, argv: list[str]) -> int:
    try:
        direct.run(app, name, argv)
    except SystemExit as ended:
        return int(ended.code or 0)
    return 0


@contextlib.contextmanager
def _store_held(cluster: LocalCluster) -> Iterator[threading.Event]:
    """The Host's store busy (every write waits) until the event is set."""
    assert cluster.server is not None
    release = threading.Event()
    cluster.server.store.executor.submit(release.wait, 60)
    try:
        yield release
    finally:
        release.set()


async def _run_slowed(cluster: LocalCluster, app: App, name: str, argv: list[str]) -> int:
    """The tool run with the store held for its first 2 s, twice the usual deadline."""
    with _store_held(cluster) as release:
        ran = asyncio.ensure_future(asyncio.to_thread(_tool, app, name, argv))
        await asyncio.sleep(2.0)
        release.set()
        return await ran


async def test_an_array_slower_to_submit_than_a_call_may_take_is_waited_for(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    await local_cluster.add_runner("a", cores=64, answer=HOLD)
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))
    argv = ["submit", "--config", config, "--array", "0-9", "--", "job"]
    assert await _run_slowed(local_cluster, task.app, "hakuriver.task", argv) == 0
    out, err = capsys.readouterr()
    assert out.startswith("submitted array ") and err == ""  # not answered by a retry


async def _running_array(cluster: LocalCluster) -> tuple[FakeRunner, int, list[int]]:
    """An array of 10 running tasks on a Runner that confirms no kill by itself."""
    runner = await cluster.add_runner("a", cores=64, answer=HOLD, answer_kills=False)
    submitted = await cluster.tasks.SubmitTask(
        tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=range(10)))
    )
    ids = [each.task_id for each in submitted.tasks]
    for task_id in ids:
        await cluster.wait_status(task_id, TaskStatus.RUNNING)
    return runner, submitted.batch_id, ids


async def test_a_batch_slower_to_kill_than_a_call_may_take_is_waited_for(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Its Runner confirms the kills 1.5 s after they reach it (the Host waits for that),
    half as long again as the usual deadline."""
    runner, batch_id, ids = await _running_array(local_cluster)
    argv = ["kill", "--config", str(local_cluster.cli_config(tmp_path / "c.toml")), str(batch_id)]
    ran = asyncio.ensure_future(asyncio.to_thread(_tool, client.app, "hakuriver.client", argv))
    await eventually(lambda: len(runner.commands) == 10, what="the 10 kills")
    await asyncio.sleep(1.5)
    for task_id in ids:
        runner.finish(task_id, KILLED_EXIT_CODE)
    assert await ran == 0
    assert capsys.readouterr().out.startswith("killed 10 tasks")


@pytest.mark.parametrize("over_connect", [False, True], ids=["grpc", "connect"])
async def test_an_array_whose_answer_is_lost_is_sent_again_and_created_once(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    over_connect: bool,
) -> None:
    """Its deadline passes while the Host stores it (held 2 s): the tool sends it again with
    its request_id until the Host answers, and reports the array the Host created, once
    (without the id, each retry was a second array; without retries, the submitter, told
    only to look, submitted it again)."""
    monkeypatch.setattr(connection, "BULK_SECONDS_PER_TASK", 0.0)
    monkeypatch.setattr(connection, "SUBMIT_RETRY_SECONDS", 0.5)
    await local_cluster.add_runner("a", cores=64, answer=HOLD)
    config = str(local_cluster.cli_config(tmp_path / "client.toml", over_connect))
    argv = ["submit", "--config", config, "--array", "0-9", "--", "job"]
    assert await _run_slowed(local_cluster, task.app, "hakuriver.task", argv) == 0
    out, err = capsys.readouterr()
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=100))
    batch_ids = {t.batch_id for t in listed.tasks}
    assert len(batch_ids) == 1 and len(listed.tasks) == 10
    assert out == f"submitted array {batch_ids.pop()}: 10 tasks\n"
    target = local_cluster.target
    retry = f"the host at {target} did not answer in time: sending the submission again in "
    assert err.startswith(retry + "0.5 s\n")


async def test_a_submission_never_answered_says_how_to_send_it_again(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """...with its request_id, which then gets the tasks the Host created, once. (Its
    store held, the Host never got to create them: looking for the id waited too.)"""
    monkeypatch.setattr(connection, "BULK_SECONDS_PER_TASK", 0.0)
    monkeypatch.setattr(connection, "SUBMIT_RETRY_SECONDS", 0.01)
    await local_cluster.add_runner("a", cores=64, answer=HOLD)
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))
    argv = ["submit", "--config", config, "--array", "0-9", "--", "job"]
    with _store_held(local_cluster):
        code = await asyncio.to_thread(_tool, task.app, "hakuriver.task", argv)
    assert code == 1
    last = capsys.readouterr().err.splitlines()[-1]
    head = (
        f"error: the host at {local_cluster.target} did not answer in time, 4 times: the tasks "
        "may have been created all the same (hakuriver.task list --since 1h shows them); "
        "submitting again with --request-id "
    )
    assert last.startswith(head) and last.endswith(" creates none twice")
    request_id = last[len(head) :].split()[0]
    again = ["submit", "--config", config, "--request-id", request_id, "--array", "0-9", "--"]
    assert await asyncio.to_thread(_tool, task.app, "hakuriver.task", [*again, "job"]) == 0
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=100))
    assert sorted(t.array_index for t in listed.tasks) == list(range(10))
    assert capsys.readouterr().out == f"submitted array {listed.tasks[0].batch_id}: 10 tasks\n"
    # The same id for another submission is refused, in one line.
    assert await asyncio.to_thread(_tool, task.app, "hakuriver.task", [*again, "other"]) == 1
    assert capsys.readouterr().err.startswith(
        f"error: request_id: {request_id!r} was used within 24 h for another submission "
        f"(batch {listed.tasks[0].batch_id}); use a new request_id"
    )


async def test_a_batch_killed_past_its_deadline_says_the_host_may_still_be_at_it(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """...and the Host kills every task of it all the same (here its Runner confirms the
    kills only after the tool gave up)."""
    monkeypatch.setattr(connection, "BULK_SECONDS_PER_TASK", 0.0)
    runner, batch_id, ids = await _running_array(local_cluster)
    argv = ["kill", "--config", str(local_cluster.cli_config(tmp_path / "c.toml")), str(batch_id)]
    assert await asyncio.to_thread(_tool, client.app, "hakuriver.client", argv) == 1
    assert capsys.readouterr().err == (
        "error: the host did not answer within 1 s, but it may still be killing its "
        f"tasks: see hakuriver.client status {batch_id}\n"
    )
    for task_id in ids:
        runner.finish(task_id, KILLED_EXIT_CODE)
    for task_id in ids:
        assert status_of(await local_cluster.wait_status(task_id)) is TaskStatus.KILLED


async def test_a_task_killed_past_its_deadline_says_the_host_may_still_be_at_it(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """One task as a batch: its Runner slow to confirm (or the Host's database away, the
    kill held), the tool said only that the Host did not answer in time."""
    runner = await local_cluster.add_runner("a", answer=HOLD, answer_kills=False)
    [running] = await local_cluster.submit_running()
    argv = ["kill", "--config", str(local_cluster.cli_config(tmp_path / "c.toml"))]
    code = await asyncio.to_thread(
        _tool, client.app, "hakuriver.client", [*argv, str(running.task_id)]
    )
    assert code == 1
    assert capsys.readouterr().err == (
        "error: the host did not answer within 1 s, but it may still be killing the "
        f"task: see hakuriver.client status {running.task_id}\n"
    )
    runner.finish(running.task_id, KILLED_EXIT_CODE)
    assert status_of(await local_cluster.wait_status(running.task_id)) is TaskStatus.KILLED


async def test_retries_stopped_with_ctrl_c_say_how_to_send_the_submission_again(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while the tool waits to send a submission again ended it silently (exit 130):
    its submitter did not learn the request id that gets its tasks without making more."""
    monkeypatch.setattr(connection, "BULK_SECONDS_PER_TASK", 0.0)

    def interrupted(seconds: float) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(connection, "time", SimpleNamespace(sleep=interrupted))
    await local_cluster.add_runner("a", cores=64, answer=HOLD)
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))
    argv = ["submit", "--config", config, "--", "job"]
    with _store_held(local_cluster):
        code = await asyncio.to_thread(_tool, task.app, "hakuriver.task", argv)
    assert code == 130
    noted, last = capsys.readouterr().err.splitlines()
    assert noted.endswith("did not answer in time: sending the submission again in 1 s")
    head = (
        "error: stopped: the tasks may have been created all the same (hakuriver.task list "
        "--since 1h shows them); submitting again with --request-id "
    )
    assert last.startswith(head) and last.endswith(" creates none twice")


async def test_a_submission_stopped_with_ctrl_c_says_how_to_get_its_tasks(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Ctrl-C while the first call was out (the Host storing a large array) ended the tool
    silently (exit 130), although the Host carries the submission through: its submitter
    did not learn the request id, and submitting again made the tasks twice."""
    real_stub = task.task_stub

    def interrupted_stub(link: object) -> object:
        stub = real_stub(link)  # type: ignore[arg-type]

        def submit(request: tpb.SubmitTaskRequest, timeout: float) -> None:
            stub.SubmitTask(request, timeout=timeout)  # the Host has it: Ctrl-C comes now
            raise KeyboardInterrupt

        return SimpleNamespace(SubmitTask=submit)

    await local_cluster.add_runner("a", cores=64, answer=HOLD)
    config = str(local_cluster.cli_config(tmp_path / "client.toml"))
    with monkeypatch.context() as patched:
        patched.setattr(task, "task_stub", interrupted_stub)
        argv = ["submit", "--config", config, "--", "job"]
        assert await asyncio.to_thread(_tool, task.app, "hakuriver.task", argv) == 130
    [line] = capsys.readouterr().err.splitlines()
    head = (
        "error: stopped: the tasks may have been created all the same (hakuriver.task list "
        "--since 1h shows them); submitting again with --request-id "
    )
    assert line.startswith(head) and line.endswith(" creates none twice")
    request_id = line.removeprefix(head).split()[0]
    again = ["submit", "--config", config, "--request-id", request_id, "--", "job"]
    assert await asyncio.to_thread(_tool, task.app, "hakuriver.task", again) == 0
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert len(listed.tasks) == 1
    assert capsys.readouterr().out.startswith(f"submitted task {listed.tasks[0].task_id} ")
