"""What the Host does with its Runners, seen through the public API of an in-process Host:
exit codes and output, kill/pause/resume through the runner, runners that go silent, drop
their stream, come back with or without their tasks, or are refused."""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Awaitable, Callable
from contextlib import closing
from typing import Any

import grpc
import pytest

from hakuriver_cli import client
from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    node_pb2,
    node_service_pb2 as npb,
    runner_service_pb2 as rpb,
    ssh_service_pb2 as spb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.roles import Role
from hakuriver_common.statuses import NodeStatus, TaskStatus
from hakuriver_host import group_commit
from hakuriver_host.errors import FailedPrecondition
from hakuriver_host.identity import Kind, Principal
from hakuriver_host.store import DATABASE_LOCKED
from tests.fake_runner import (
    HOLD,
    KILLED_EXIT_CODE,
    NO_ANSWER,
    Answer,
    FakeRunner,
    eventually,
    exit_with,
    start_failure,
)
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import BRIEF_LOCK_WAIT, TIMING, LocalCluster, status_of


def by_command(dispatch: rpb.DispatchCommand) -> Answer:
    return {
        "ok": exit_with(0, stdout=b"all good\n"),
        "bad": exit_with(3, stderr=b"no such file\n"),
        "broken": start_failure("image hakuriver/nope:base not found"),
    }[dispatch.command]


async def test_exit_code_output_and_start_failure_decide_the_final_status(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=by_command)
    ok, bad, broken = [await local_cluster.submit(c) for c in ("ok", "bad", "broken")]

    done = await local_cluster.wait_status(ok.task_id)
    assert status_of(done) is TaskStatus.COMPLETED and done.exit_code == 0
    assert await local_cluster.read_log(ok.task_id) == b"all good\n"

    failed = await local_cluster.wait_status(bad.task_id)
    assert status_of(failed) is TaskStatus.FAILED and failed.exit_code == 3
    assert await local_cluster.read_log(bad.task_id, task_pb2.LOG_STREAM_STDERR) == (
        b"no such file\n"
    )

    unstarted = await local_cluster.wait_status(broken.task_id)
    assert status_of(unstarted) is TaskStatus.FAILED and not unstarted.HasField("exit_code")
    assert unstarted.error_message == "image hakuriver/nope:base not found"

    # Once a final status is stored, the Host releases what the Runner kept of the task.
    await eventually(
        lambda: sorted(runner.released) == sorted([ok.task_id, bad.task_id, broken.task_id]),
        what="the Host to release all three tasks",
    )


async def test_kill_pause_and_resume_go_through_the_runner(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    tasks = local_cluster.tasks

    paused = (await tasks.PauseTask(tpb.PauseTaskRequest(task_id=task.task_id), timeout=5)).task
    assert status_of(paused) is TaskStatus.PAUSED
    assert runner.commands == [("pause", task.task_id)] and runner.running == []

    resumed = (await tasks.ResumeTask(tpb.ResumeTaskRequest(task_id=task.task_id), timeout=5)).task
    assert status_of(resumed) is TaskStatus.RUNNING
    assert runner.running == [task.task_id]

    killed = await local_cluster.kill(task.task_id)
    assert status_of(killed) is TaskStatus.KILLED and killed.exit_code == KILLED_EXIT_CODE
    assert runner.commands[:3] == [
        ("pause", task.task_id),
        ("resume", task.task_id),
        ("kill", task.task_id),
    ]
    await eventually(lambda: runner.released == [task.task_id], what="release after the kill")

    with pytest.raises(grpc.aio.AioRpcError) as again:
        await local_cluster.kill(task.task_id)
    assert again.value.code() == grpc.StatusCode.FAILED_PRECONDITION


async def test_silent_runner_has_its_tasks_unknown_until_it_returns_with_them(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    runner.write(task.task_id, b"before\n")
    await eventually(lambda: local_cluster.read_log(task.task_id), what="output to land")

    runner.go_silent()
    silent_at = time.monotonic()
    await local_cluster.wait_status(task.task_id, TaskStatus.UNKNOWN)
    # The timeout is heartbeat_interval x heartbeat_timeout_factor = 1 s; the last message
    # may have arrived up to one interval before the silence began.
    assert time.monotonic() - silent_at >= 0.7
    await local_cluster.wait_node("a", NodeStatus.OFFLINE)
    runner.write(task.task_id, b"while away\n")  # not sent: the Host closed the stream

    # Back with the task still running: it resumes, its output continues byte-exact.
    ack = await runner.connect()
    assert [a.task_id for a in ack.adopt] == [task.task_id] and not ack.discard_task_ids
    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    runner.finish(task.task_id, 0, stdout=b"after\n")
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    assert await local_cluster.read_log(task.task_id) == b"before\nwhile away\nafter\n"
    statuses = [s for s, _ in await local_cluster.events(task.task_id)]
    assert statuses[-4:] == [
        TaskStatus.RUNNING,
        TaskStatus.UNKNOWN,
        TaskStatus.RUNNING,
        TaskStatus.COMPLETED,
    ]


async def test_pausing_or_resuming_an_unknown_task_says_its_runner_is_away(
    local_cluster: LocalCluster,
) -> None:
    """A user who paused a task finds it unknown while its Runner is away: the refusal of
    resume says why and when to try again, not only that it is not paused."""
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    runner.go_silent()
    await local_cluster.wait_status(task.task_id, TaskStatus.UNKNOWN)
    tasks = local_cluster.tasks
    for call in (
        tasks.ResumeTask(tpb.ResumeTaskRequest(task_id=task.task_id), timeout=5),
        tasks.PauseTask(tpb.PauseTaskRequest(task_id=task.task_id), timeout=5),
    ):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await call
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details().endswith(
            "its Runner a is away (the node is offline): try again once it is back"
        ), refused.value.details()


async def test_runner_away_past_the_limit_has_its_tasks_lost(
    make_local_cluster: MakeCluster,
) -> None:
    cluster = await make_local_cluster(timing={**TIMING, "lost_after_seconds": 2})
    runner = await cluster.add_runner("a", answer=HOLD)
    [task] = await cluster.submit_running()

    runner.go_silent()
    await cluster.wait_status(task.task_id, TaskStatus.UNKNOWN)
    lost = await cluster.wait_status(task.task_id, TaskStatus.LOST)
    assert "runner a was away for more than 2s" in lost.error_message
    await cluster.wait_node("a", NodeStatus.OFFLINE)

    # When it comes back still holding the task, the Host tells it to discard the task.
    await runner.connect()
    await cluster.wait_node("a", NodeStatus.ONLINE)
    assert runner.discarded == [task.task_id] and runner.tasks == {}
    assert status_of(await cluster.get(task.task_id)) is TaskStatus.LOST


async def test_a_killed_tasks_timeline_names_who_killed_it(local_cluster: LocalCluster) -> None:
    """It said `exited with code 143`, not who asked (Slurm: `CANCELLED by`): an operator
    killing another user's task is named, as a user killing their own pending one is."""
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    alice = await local_cluster.add_user("alice")
    olive = await local_cluster.add_user("olive", Role.OPERATOR)
    submit = tpb.SubmitTaskRequest(command="long")
    running = (await alice.tasks.SubmitTask(submit, timeout=5)).tasks[0]
    await local_cluster.wait_status(running.task_id, TaskStatus.RUNNING)
    pending = (await alice.tasks.SubmitTask(submit, timeout=5)).tasks[0]
    await alice.tasks.KillTask(tpb.KillTaskRequest(task_id=pending.task_id), timeout=10)
    kill = tpb.KillTaskRequest(task_id=running.task_id)
    await olive.tasks.KillTask(kill, timeout=10)

    ended = f"killed by olive: exited with code {KILLED_EXIT_CODE}"
    assert (await local_cluster.events(running.task_id))[-1] == (TaskStatus.KILLED, ended)
    assert (await local_cluster.events(pending.task_id))[-1] == (
        TaskStatus.KILLED,
        "killed by alice while pending",
    )


async def test_unknown_task_is_killed_at_once(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    runner.go_silent()
    await local_cluster.wait_status(task.task_id, TaskStatus.UNKNOWN)

    killed = await local_cluster.kill(task.task_id)
    assert status_of(killed) is TaskStatus.KILLED
    # Not sent to the away Runner and waited for: killed on the spot.
    assert (await local_cluster.events(task.task_id))[-1] == (
        TaskStatus.KILLED,
        f"killed by {local_cluster.config.auth.bootstrap_admin} (runner not connected)",
    )
    await runner.connect()
    await eventually(lambda: runner.discarded == [task.task_id], what="the discard")


async def test_runner_that_reconnects_with_its_tasks_keeps_them(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    first, second = await local_cluster.submit_running(2)
    runner.write(first.task_id, b"before the cut\n")
    await eventually(
        lambda: local_cluster.read_log(first.task_id), what="output before the cut to land"
    )

    await runner.drop()
    runner.write(first.task_id, b"while cut off\n")  # not sent: the stream is gone
    ack = await runner.connect()

    adopted = {a.task_id: a.stdout_offset for a in ack.adopt}
    assert adopted == {first.task_id: len(b"before the cut\n"), second.task_id: 0}
    assert list(ack.discard_task_ids) == []
    runner.finish(first.task_id, 0, stdout=b"after\n")
    runner.finish(second.task_id, 4)
    assert status_of(await local_cluster.wait_status(first.task_id)) is TaskStatus.COMPLETED
    assert (await local_cluster.wait_status(second.task_id)).exit_code == 4
    assert await local_cluster.read_log(first.task_id) == b"before the cut\nwhile cut off\nafter\n"
    for task in (first, second):
        statuses = [s for s, _ in await local_cluster.events(task.task_id)]
        assert TaskStatus.LOST not in statuses and statuses.count(TaskStatus.RUNNING) == 1


async def test_a_host_restored_from_a_backup_names_the_tasks_it_has_no_record_of(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    # The Runner stops the tasks started after the backup; the Host's log said only
    # "1 discarded", so the admin could not tell which tasks were gone (QA).
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [before] = await local_cluster.submit_running()
    db_file = local_cluster.config.database.db_file
    backup = db_file.with_name("backup.db")
    with closing(sqlite3.connect(db_file)) as live, closing(sqlite3.connect(backup)) as copy:
        live.backup(copy)  # what `sqlite3 cluster.db ".backup backup.db"` does
    [after] = await local_cluster.submit_running()
    await local_cluster.stop_host()
    backup.replace(db_file)
    caplog.set_level(logging.WARNING, logger="hakuriver_host.runners")
    await local_cluster.start_host()
    await eventually(lambda: runner.discarded == [after.task_id], what="the discard")

    warned = [r.getMessage() for r in caplog.records if "no record of" in r.getMessage()]
    assert warned == [
        "runner a had 1 tasks this Host has no record of (a database restored from an older "
        "backup?); it stops and discards them, their output stays in shared_dir: "
        f"{after.task_id}"
    ]
    assert status_of(await local_cluster.get(before.task_id)) is TaskStatus.RUNNING


async def test_runner_that_comes_back_without_its_tasks_has_them_marked_lost(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()

    await runner.drop()
    await runner.connect(known_task_ids=[])

    lost = await local_cluster.wait_status(task.task_id, TaskStatus.LOST)
    assert "came back without the task" in lost.error_message
    node = await local_cluster.wait_node("a", NodeStatus.ONLINE)
    assert node.available_cores == runner.cores and node.active_tasks == 0


async def test_dispatch_lost_with_the_stream_is_sent_again(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", answer=NO_ANSWER)
    task = await local_cluster.submit("job")
    await eventually(lambda: runner.dispatched == [task.task_id], what="the first dispatch")
    assert status_of(await local_cluster.get(task.task_id)) is TaskStatus.ASSIGNING

    runner.answer = HOLD
    await runner.drop()
    await runner.connect()  # it never started the task, so it names none

    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    assert runner.dispatched == [task.task_id, task.task_id]


async def test_an_assigning_task_of_an_away_runner_is_dispatched_again_on_its_return(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=NO_ANSWER)
    task = await local_cluster.submit("job")
    await eventually(lambda: runner.dispatched == [task.task_id], what="the first dispatch")
    runner.go_silent()
    await local_cluster.wait_node("a", NodeStatus.OFFLINE)
    assert status_of(await local_cluster.get(task.task_id)) is TaskStatus.ASSIGNING

    runner.answer = HOLD
    await runner.connect(known_task_ids=[])  # the dispatch never reached it
    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    assert runner.dispatched == [task.task_id, task.task_id]


async def test_a_runner_with_no_hostname_is_refused(local_cluster: LocalCluster) -> None:
    runner = FakeRunner(local_cluster.config, "", reconnect=False)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await runner.start()
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "hostname" in (refused.value.details() or "")
    await runner.stop()


async def test_every_watch_ends_with_the_final_status(local_cluster: LocalCluster) -> None:
    """Watchers opened just before a task ends each get its final status last. The task
    ends at varying moments after the watches open, so that some of them end it while the
    Host sends the first message (a change made then was once missed)."""
    runner = await local_cluster.add_runner("a", answer=HOLD)
    endings: list[list[TaskStatus]] = []
    for delay in range(0, 40, 2):
        [task] = await local_cluster.submit_running()
        request = tpb.WatchTaskRequest(task_id=task.task_id)

        async def watch(request: tpb.WatchTaskRequest = request) -> list[TaskStatus]:
            call = local_cluster.tasks.WatchTask(request, timeout=5)
            return [status_of(reply.task) async for reply in call]

        watches = [asyncio.create_task(watch()) for _ in range(10)]
        for _ in range(delay):
            await asyncio.sleep(0)
        runner.finish(task.task_id)
        endings += await asyncio.gather(*watches)
    assert [seen for seen in endings if seen[-1:] != [TaskStatus.COMPLETED]] == []


async def test_a_runner_that_does_not_confirm_is_not_waited_for_forever(
    make_local_cluster: Callable[..., Awaitable[LocalCluster]],
) -> None:
    cluster = await make_local_cluster(timing={"control_timeout_seconds": 0.3})
    runner = await cluster.add_runner("a", answer=HOLD, answer_kills=False)
    [paused_one, killed_one] = await cluster.submit_running(count=2)

    runner.go_silent()
    with pytest.raises(grpc.aio.AioRpcError) as unconfirmed:
        await cluster.tasks.PauseTask(tpb.PauseTaskRequest(task_id=paused_one.task_id))
    assert unconfirmed.value.code() == grpc.StatusCode.UNAVAILABLE
    assert unconfirmed.value.details() == "runner a did not confirm; task is running"

    started = time.monotonic()
    killed = await cluster.kill(killed_one.task_id)
    assert time.monotonic() - started < 5
    assert status_of(killed) is TaskStatus.KILLED
    assert (
        TaskStatus.KILLED,
        f"killed by {cluster.config.auth.bootstrap_admin} (runner did not confirm)",
    ) in await cluster.events(killed_one.task_id)


async def test_a_kill_whose_caller_gave_up_is_carried_through(
    make_local_cluster: Callable[..., Awaitable[LocalCluster]],
) -> None:
    """A caller's deadline shorter than the kill's grace and its Runner's confirmation: the
    Host still ends the task killed (here: its Runner never confirms)."""
    cluster = await make_local_cluster(timing={"control_timeout_seconds": 0.5})
    runner = await cluster.add_runner("a", answer=HOLD, answer_kills=False)
    [task] = await cluster.submit_running()
    with pytest.raises(grpc.aio.AioRpcError) as gave_up:
        await cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=0.1)
    assert gave_up.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert ("kill", task.task_id) in runner.commands
    await cluster.wait_status(task.task_id, TaskStatus.KILLED)
    assert (
        TaskStatus.KILLED,
        f"killed by {cluster.config.auth.bootstrap_admin} (runner did not confirm)",
    ) in await cluster.events(task.task_id)


async def test_a_kill_cut_short_by_a_host_restart_is_sent_again_when_the_runner_returns(
    make_local_cluster: Callable[..., Awaitable[LocalCluster]],
) -> None:
    """The kill was stored as asked for, then the Host stopped before the task ended: the
    Runner, adopting the task again, is told to kill it again, and its end counts as
    killed."""
    cluster = await make_local_cluster(timing={"control_timeout_seconds": 30})
    runner = await cluster.add_runner("a", answer=HOLD, answer_kills=False)
    [task] = await cluster.submit_running()
    killing = asyncio.create_task(cluster.kill(task.task_id))
    await eventually(lambda: ("kill", task.task_id) in runner.commands, what="the kill sent")
    await cluster.restart_host()
    with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
        await killing  # the Host it waited on stopped
    await eventually(
        lambda: runner.commands.count(("kill", task.task_id)) == 2, what="the kill sent again"
    )
    runner.finish(task.task_id, KILLED_EXIT_CODE)
    assert status_of(await cluster.wait_status(task.task_id)) is TaskStatus.KILLED


async def test_an_assigning_task_whose_kill_was_cut_short_is_killed_not_dispatched_again(
    make_local_cluster: Callable[..., Awaitable[LocalCluster]],
) -> None:
    """Asked to be killed while its Runner was still starting it (its image loading, here
    never answering), then the Host stopped: the Runner comes back without it, and it is
    killed rather than dispatched again."""
    cluster = await make_local_cluster(timing={"control_timeout_seconds": 30})
    runner = await cluster.add_runner("a", answer=NO_ANSWER, answer_kills=False)
    task = await cluster.submit("long")
    await eventually(lambda: runner.dispatched == [task.task_id], what="the dispatch")
    killing = asyncio.create_task(cluster.kill(task.task_id))
    await eventually(lambda: ("kill", task.task_id) in runner.commands, what="the kill sent")
    await cluster.restart_host()
    with pytest.raises((grpc.aio.AioRpcError, asyncio.CancelledError)):
        await killing  # the Host it waited on stopped
    killed = await cluster.wait_status(task.task_id)
    assert status_of(killed) is TaskStatus.KILLED
    assert runner.dispatched == [task.task_id]


async def test_a_pending_task_killed_twice_at_once_is_killed_once(
    local_cluster: LocalCluster,
) -> None:
    """Two kills in the same turn of the loop: the second finds it killed already (refused,
    and not audited as a kill)."""
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    await local_cluster.submit_running()
    task = await local_cluster.submit("long")  # its core is taken: it stays pending
    assert status_of(task) is TaskStatus.PENDING
    cluster = local_cluster.server.cluster
    admin = Principal(Kind.USER, local_cluster.config.auth.bootstrap_admin, Role.ADMIN)
    first, second = await asyncio.gather(
        cluster.kill(task.task_id, admin), cluster.kill(task.task_id, admin), return_exceptions=True
    )
    assert not isinstance(first, BaseException) and first.status == TaskStatus.KILLED
    assert isinstance(second, FailedPrecondition)


async def test_health_watchers_hear_a_node_go_offline_and_come_back(
    local_cluster: LocalCluster,
) -> None:
    """Live pages learn a node's status from the health stream, not by polling the list."""
    runner = await local_cluster.add_runner("a")
    heard: list[tuple[int, bool]] = []
    call = local_cluster.nodes.WatchHealth(npb.WatchHealthRequest(hostname="a"))

    async def listen() -> None:
        async for update in call:
            heard.append((update.node.status, update.node.HasField("current")))

    listener = asyncio.create_task(listen())
    try:
        await eventually(lambda: heard, what="a first sample")
        runner.go_silent()
        await eventually(
            lambda: (node_pb2.NODE_STATUS_OFFLINE, False) in heard, what="the offline message"
        )
        await runner.connect()
        offline_at = heard.index((node_pb2.NODE_STATUS_OFFLINE, False))
        await eventually(
            lambda: (node_pb2.NODE_STATUS_ONLINE, False) in heard[offline_at:],
            what="the online message",
        )
    finally:
        call.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_a_health_watch_asked_to_says_when_it_is_in_place(
    local_cluster: LocalCluster,
) -> None:
    """GetHealth then WatchHealth could miss a node going offline between the two, and
    nothing told the client when its watch was in place (it waited for a sample). With
    send_watching the first message says so, and a node gone silent at once after it is
    told of."""
    runner = await local_cluster.add_runner("a")
    call = local_cluster.nodes.WatchHealth(npb.WatchHealthRequest(send_watching=True))
    try:
        first = await asyncio.wait_for(call.read(), 30)
        assert first.watching and not first.HasField("node")
        runner.go_silent()
        while (update := await asyncio.wait_for(call.read(), 30)).node.HasField("current"):
            assert not update.watching
        assert (update.node.hostname, update.node.status) == ("a", node_pb2.NODE_STATUS_OFFLINE)
    finally:
        call.cancel()


async def test_a_node_whose_runner_went_is_disconnected_until_it_returns_or_times_out(
    make_local_cluster: MakeCluster,
) -> None:
    """Between a Runner's stream closing and its timeout the node is online (its tasks
    kept) but takes no new tasks: ListNodes says so, and health watchers are told."""
    cluster = await make_local_cluster(timing={**TIMING, "heartbeat_timeout_factor": 15})
    runner = await cluster.add_runner("a", answer=HOLD)
    [task] = await cluster.submit_running()
    samples: list[int] = []
    told: list[tuple[int, bool]] = []
    call = cluster.nodes.WatchHealth(npb.WatchHealthRequest(hostname="a"))

    async def listen() -> None:
        async for update in call:
            if update.node.HasField("current"):
                samples.append(update.node.status)
            else:
                told.append((update.node.status, update.node.disconnected))

    listener = asyncio.create_task(listen())
    try:
        await eventually(lambda: samples, what="a first sample")
        assert not (await cluster.node("a")).disconnected
        await runner.drop()
        await eventually(lambda: told, what="watchers told of the closed stream")
        node = await cluster.node("a")
        assert (node.status, node.disconnected) == (node_pb2.NODE_STATUS_ONLINE, True)
        assert client._node_row(node)[1] == "online (disconnected)"  # hakuriver.client nodes
        assert told == [(node_pb2.NODE_STATUS_ONLINE, True)]  # ... health --watch
        health = await cluster.nodes.GetHealth(npb.GetHealthRequest(hostname="a"), timeout=5)
        assert [n.disconnected for n in health.nodes] == [True]
        assert status_of(await cluster.get(task.task_id)) is TaskStatus.RUNNING

        await runner.connect()
        await eventually(lambda: len(told) == 2, what="watchers told of its return")
        assert told[1] == (node_pb2.NODE_STATUS_ONLINE, False)
        assert not (await cluster.node("a")).disconnected
        await runner.drop()
        offline = await cluster.wait_node("a", NodeStatus.OFFLINE)
        assert not offline.disconnected
    finally:
        call.cancel()
        await asyncio.gather(listener, return_exceptions=True)


async def test_each_report_of_a_message_sees_what_those_before_it_changed(
    local_cluster: LocalCluster,
) -> None:
    """A message whose reports on one task follow each other: a task that exited before its
    Runner got to report it running (its kill came first, say). Each report is judged
    against the task as the reports before it left it: the late "running" is about a task
    that has ended, and the rest of the message is applied as usual."""
    runner = await local_cluster.add_runner("a", cores=4, answer=NO_ANSWER)
    first, second = [await local_cluster.submit("job") for _ in range(2)]
    for task in (first, second):
        await local_cluster.wait_status(task.task_id, TaskStatus.ASSIGNING)

    def report(task_id: int, state: rpb.RunnerTaskState.ValueType) -> rpb.TaskStateReport:
        return rpb.TaskStateReport(task_id=task_id, state=state, exit_code=0)

    runner.send(
        rpb.ConnectRequest(
            task_states=rpb.TaskStateBatch(
                reports=[
                    report(first.task_id, rpb.RUNNER_TASK_STATE_EXITED),
                    report(first.task_id, rpb.RUNNER_TASK_STATE_RUNNING),
                    report(second.task_id, rpb.RUNNER_TASK_STATE_RUNNING),
                ]
            )
        )
    )
    await local_cluster.wait_status(second.task_id, TaskStatus.RUNNING)
    # A running is shown at once, an end once it is stored: the first's may come later.
    await local_cluster.wait_status(first.task_id)
    assert status_of(await local_cluster.get(first.task_id)) is TaskStatus.COMPLETED
    assert [s for s, _ in await local_cluster.events(first.task_id)] == [
        TaskStatus.PENDING,
        TaskStatus.ASSIGNING,
        TaskStatus.COMPLETED,
    ]
    await eventually(lambda: first.task_id in runner.released, what="the first released")
    assert runner.registrations == 1  # the stream stayed open


async def test_a_task_that_ends_while_the_database_is_locked_is_stored_once_it_is_not(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A Runner's report whose write failed (the database locked by another program, or a
    PostgreSQL server away) was dropped: the Host forgot the task, the Runner, reconnecting,
    was told to discard it, and the database kept it running (lost after a restart) (QA).
    The change is held and stored once the database takes writes again; the Runner's task
    is released only then, and its end is stored once."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        runner.finish(task.task_id, 0, stdout=b"done\n")
        await eventually(
            lambda: "database is locked" in caplog.text,
            within=30,
            what="the end's write refused by the locked database",
        )
        assert runner.released == []
    finally:
        other.close()
    done = await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED, within=30)
    assert done.exit_code == 0
    await eventually(lambda: runner.released == [task.task_id], within=30, what="the release")
    assert runner.discarded == []
    await local_cluster.restart_host()
    assert status_of(await local_cluster.get(task.task_id)) is TaskStatus.COMPLETED
    assert [s for s, _ in await local_cluster.events(task.task_id)] == [
        TaskStatus.PENDING,
        TaskStatus.ASSIGNING,
        TaskStatus.RUNNING,
        TaskStatus.COMPLETED,
    ]
    assert await local_cluster.read_log(task.task_id) == b"done\n"


async def _ended_while_locked(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture, **fields: Any
) -> tuple[FakeRunner, task_pb2.Task, sqlite3.Connection]:
    """A HOLD Runner's task (``fields`` as in SubmitTaskRequest) that ended while another
    program holds the database locked (the lock still held: the caller closes ``other``),
    once the Host held its end."""
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running(**fields)  # its running stored
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    other.execute("BEGIN IMMEDIATE")
    runner.finish(task.task_id, 0, stdout=b"done\n")
    await eventually(
        lambda: "changes held in memory" in caplog.text, within=30, what="the end held"
    )
    return runner, task, other


async def test_a_tasks_end_is_shown_once_it_is_stored(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """GetTask, ListTasks, CountTasks, GetBatch and a WatchTask opened meanwhile showed a
    task's end as soon as its Runner reported it, before it was stored: a Host killed then
    showed the task running again after its restart, to a client that had seen it end (QA).
    While its end is held (the database locked) each shows it running, as stored, and a
    kill is refused as 'completed' only once that end is stored (it waits: the caller's
    deadline passes); once the end is stored, each shows it. (A read of the store waits
    for the write being tried, up to its wait for the lock: calls get 30 s.)"""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    array = tpb.TaskArray(indices=[0])
    _, task, other = await _ended_while_locked(local_cluster, caplog, array=array)
    tasks = local_cluster.tasks

    async def shown() -> list[int]:
        got = await tasks.GetTask(tpb.GetTaskRequest(task_id=task.task_id), timeout=30)
        listed = await tasks.ListTasks(tpb.ListTasksRequest(), timeout=30)
        counted = await tasks.CountTasks(tpb.CountTasksRequest(), timeout=30)
        batch = await tasks.GetBatch(tpb.GetBatchRequest(batch_id=task.batch_id), timeout=30)
        return [
            got.task.status,
            *(t.status for t in listed.tasks),
            *(c.status for c in counted.counts if c.count == 1),
            *(c.status for c in batch.batch.counts if c.count == 1),
        ]

    running, completed = task_pb2.TASK_STATUS_RUNNING, task_pb2.TASK_STATUS_COMPLETED
    with closing(other):
        watch = tasks.WatchTask(tpb.WatchTaskRequest(task_id=task.task_id))
        assert (await watch.read()).task.status == running
        assert await shown() == [running] * 4
        kill = tpb.KillTaskRequest(task_id=task.task_id)
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await tasks.KillTask(kill, timeout=1)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    assert (await asyncio.wait_for(watch.read(), 30)).task.status == completed
    assert await shown() == [completed] * 4
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await tasks.KillTask(kill, timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert f"task {task.task_id} is completed" in (refused.value.details() or "")


async def test_a_followed_output_ends_once_the_tasks_end_is_stored(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """ReadLog with follow, asked while a task's end is held (the database locked), ended
    at once, its task ended in memory, while GetTask showed it running (as stored): a
    client following the output took the task for ended. It follows on until the end is
    stored, then ends with every byte."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    _, task, other = await _ended_while_locked(local_cluster, caplog)
    stdout = task_pb2.LOG_STREAM_STDOUT
    request = lpb.ReadLogRequest(task_id=task.task_id, stream=stdout, follow=True)
    with closing(other):
        with pytest.raises(grpc.aio.AioRpcError) as followed:
            [_ async for _ in local_cluster.logs.ReadLog(request, timeout=1)]
        assert followed.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    chunks = [chunk.data async for chunk in local_cluster.logs.ReadLog(request, timeout=30)]
    assert b"".join(chunks) == b"done\n"
    assert status_of(await local_cluster.get(task.task_id)) is TaskStatus.COMPLETED


async def test_an_ssh_ticket_for_a_vps_whose_end_is_held_is_refused_once_it_is_stored(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A VPS whose end is held (the database locked) is shown running; a ticket for it
    was refused at once as 'completed, not running'. It is refused once that end is
    stored, so shown (the caller's deadline passes meanwhile)."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"
    vps = {"kind": task_pb2.TASK_KIND_VPS, "ssh_public_key": key}
    _, task, other = await _ended_while_locked(local_cluster, caplog, **vps)
    ticket = spb.CreateSshTicketRequest(task_id=task.task_id)
    with closing(other):
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await local_cluster.ssh.CreateSshTicket(ticket, timeout=1)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.ssh.CreateSshTicket(ticket, timeout=30)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert refused.value.details() == f"task {task.task_id} is completed, not running"


async def test_a_task_whose_placement_is_held_is_shown_pending_waiting_for_nothing(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A capped array's next task, placed in memory once the first one ended while the
    database was locked, is shown as stored (pending), but not as waiting for its array's
    cap, which it holds (QA: 'its array's cap: 1 of its tasks hold resources')."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    array = tpb.TaskArray(indices=[0, 1], max_running=1)
    _, first, other = await _ended_while_locked(local_cluster, caplog, array=array)
    with closing(other):
        reply = await local_cluster.tasks.ListTasks(
            tpb.ListTasksRequest(batch_id=first.batch_id), timeout=30
        )
        [second] = [t for t in reply.tasks if t.task_id != first.task_id]
        got = await local_cluster.tasks.GetTask(
            tpb.GetTaskRequest(task_id=second.task_id), timeout=30
        )
        watch = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=second.task_id))
        watched = (await watch.read()).task
        for task in (second, got.task, watched):
            assert task.status == task_pb2.TASK_STATUS_PENDING
            assert (task.queue_position, task.status_detail) == (0, "")
        watch.cancel()
    await local_cluster.wait_status(second.task_id, TaskStatus.RUNNING, within=30)


async def test_a_runner_back_before_its_tasks_end_is_stored_keeps_it_until_it_is(
    make_local_cluster: MakeCluster,
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Runner registering once the database was back, before the held end was written
    again (up to 5 s later), was told to discard the task: a Host stopped then lost it. It
    keeps the task until its end is stored, which the registration's write sets going."""
    monkeypatch.setattr(group_commit, "HELD_PAUSE", 600.0)  # held until a write says
    # Nothing else writes meanwhile: no Runner goes silent, no heartbeat is stored.
    cluster = await make_local_cluster(
        timing={**TIMING, "heartbeat_timeout_factor": 1000}, database=BRIEF_LOCK_WAIT
    )
    runner, task, other = await _ended_while_locked(cluster, caplog)
    other.close()
    await runner.connect()  # its registration is written: the database is back
    await eventually(lambda: runner.released == [task.task_id], within=30, what="the release")
    assert runner.discarded == []
    assert status_of(await cluster.get(task.task_id)) is TaskStatus.COMPLETED


async def test_a_host_stopped_while_a_tasks_end_waits_for_the_database_hears_it_again(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A Host stopping does not wait for the database for ever: the end not stored is
    reported again by the Runner, which kept the task, once the Host is back."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    runner, task, other = await _ended_while_locked(local_cluster, caplog)
    with closing(other):
        await local_cluster.stop_host()
    assert runner.released == []
    # Said in one line, for the database away: no bug (QA: an ERROR with the error's repr).
    said = [(r.levelno, r.getMessage()) for r in caplog.records if "reports" in r.getMessage()]
    again = "runner a: reports are not stored (it sends them again when it reconnects)"
    assert said == [(logging.WARNING, f"{again}: {DATABASE_LOCKED}")]
    await local_cluster.start_host()
    done = await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED, within=30)
    assert done.exit_code == 0
    await eventually(lambda: runner.released == [task.task_id], within=30, what="the release")
    assert await local_cluster.read_log(task.task_id) == b"done\n"


async def test_a_runner_whose_environments_change_while_the_database_is_locked_stays_connected(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A heartbeat with new environments whose node row could not be written ended the
    Runner's stream, with a traceback on the Host, as for a bug: the Runner reconnected,
    was refused while the database was away, and its tasks went unknown (QA). The row is
    written once the database is back; the stream stays."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    with closing(sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)) as (
        other
    ):
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        runner.environments.append("loaded-meanwhile")
        await eventually(
            lambda: "database is locked" in caplog.text,
            within=30,
            what="the node row refused by the locked database",
        )
    runner.finish(task.task_id, 0)
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED, within=30)
    assert runner.registrations == 1
    assert "Traceback" not in caplog.text

    def stored_environments() -> str:
        with closing(sqlite3.connect(local_cluster.config.database.db_file)) as database:
            [(environments,)] = database.execute("SELECT environments FROM nodes").fetchall()
        return str(environments)

    await eventually(
        lambda: "loaded-meanwhile" in stored_environments(), what="the node row stored"
    )


async def test_silent_runners_tasks_go_unknown_while_the_database_is_locked(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The check for silent Runners stopped at its first refused write (the rows of the
    nodes gone offline): while the database was away, no silent Runner's tasks went
    unknown, nor lost past lost_after_seconds (QA). Every silent Runner's tasks are made
    unknown then (shown once stored), their changes held and stored once it is back."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    runners = [await local_cluster.add_runner(name, answer=HOLD) for name in ("a", "b")]
    tasks = [
        await local_cluster.submit("long", targets=[task_pb2.Target(hostname=name)])
        for name in ("a", "b")
    ]
    for task in tasks:
        await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    with closing(sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)) as (
        other
    ):
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        for runner in runners:
            await runner.drop()
        await eventually(
            lambda: caplog.text.count("silent for") == 2, within=30, what="both offline"
        )
        await eventually(
            lambda: "changes held in memory" in caplog.text, within=30, what="changes held"
        )
        back = time.time()
    for task in tasks:
        await local_cluster.wait_status(task.task_id, TaskStatus.UNKNOWN, within=30)
        reply = await local_cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=task.task_id))
        [unknown] = [e for e in reply.events if e.status == task_pb2.TASK_STATUS_UNKNOWN]
        assert unknown.at.ToDatetime().timestamp() < back  # made while it was away


async def test_a_node_that_went_offline_while_the_database_was_locked_is_stored_offline(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The check that found the Runner silent could not write the node's row, and no
    later one wrote it: the database kept the node online (a restarted Host took it for
    online until the Runner's timeout) (QA)."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    runner = await local_cluster.add_runner("a")
    with closing(sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)) as (
        other
    ):
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        await runner.drop()
        await eventually(
            lambda: "runner check put off" in caplog.text, within=30, what="the row refused"
        )

    def stored_online() -> list[tuple[int]]:
        with closing(sqlite3.connect(local_cluster.config.database.db_file)) as database:
            return database.execute("SELECT online FROM nodes").fetchall()

    await eventually(lambda: stored_online() == [(0,)], within=30, what="the node stored offline")
