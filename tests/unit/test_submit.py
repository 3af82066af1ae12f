"""SubmitTask answers after the placement pass that considered the new tasks: a task placed at
once comes back assigning on its node; one that must wait comes back pending with its queue
position. Either way the task is stored before the answer; a lone task placed at once is
stored placed, in one write ordered after its node's earlier changes."""

from __future__ import annotations

import asyncio
import gc
import logging
import sqlite3
import threading
import warnings
import weakref
from pathlib import Path
from typing import Any

import grpc
import pytest
from sqlalchemy import event

from hakuriver_common.proto.hakuriver.v1 import (
    audit_service_pb2 as aupb,
    node_pb2,
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import NodeStatus, TaskStatus
from hakuriver_host.store import DATABASE_LOCKED
from hakuriver_host.web_server import GRACE_SECONDS as WEB_GRACE_SECONDS
from tests.connect_http import Endpoint
from tests.fake_runner import HOLD, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import BRIEF_LOCK_WAIT, LocalCluster, status_of
from tests.unit.test_ssh_tickets import SSH_KEY


async def test_a_task_that_fits_comes_back_placed(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    task = await local_cluster.submit("job", cores=2)
    assert status_of(task) is TaskStatus.ASSIGNING
    assert (task.assigned_node, task.queue_position) == ("a", 0)
    assert len(task.assigned_cpus) == 2


async def test_a_task_that_must_wait_comes_back_queued(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    await local_cluster.submit_running(cores=2)
    task = await local_cluster.submit("job", cores=1)
    assert status_of(task) is TaskStatus.PENDING
    assert (task.assigned_node, task.queue_position) == ("", 1)


async def test_a_batch_reports_each_task_as_placed_or_queued(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=1, answer=HOLD)
    await local_cluster.add_runner("b", cores=1, answer=HOLD)
    await local_cluster.submit_running(targets=[task_pb2.Target(hostname="b")])
    request = tpb.SubmitTaskRequest(
        command="job",
        targets=[task_pb2.Target(hostname="a"), task_pb2.Target(hostname="b")],
    )
    reply = await local_cluster.tasks.SubmitTask(request, timeout=5)
    on_a, on_b = reply.tasks
    assert reply.batch_id
    assert (status_of(on_a), on_a.assigned_node) == (TaskStatus.ASSIGNING, "a")
    assert (status_of(on_b), on_b.queue_position) == (TaskStatus.PENDING, 1)


def _events_in_commit_order(local_cluster: LocalCluster) -> list[tuple[int, str, str]]:
    """Every stored event as (task_id, status, detail), in the order they were committed
    (their ids)."""
    assert local_cluster.server is not None
    engine = local_cluster.server.store.engine
    with engine.connect() as connection:
        rows = connection.exec_driver_sql(
            "SELECT task_id, status, detail FROM task_events ORDER BY id"
        ).all()
    return [(task_id, status, detail) for task_id, status, detail in rows]


async def test_one_task_placed_at_once_is_stored_placed_in_one_transaction(
    local_cluster: LocalCluster,
) -> None:
    """Its row goes in already assigning, with its "submitted" and "placed" events in the
    same transaction: a lone task waits for one write before its dispatch, not two."""
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    assert local_cluster.server is not None
    store = local_cluster.server.store
    commits: list[list[int]] = []

    def seen(connection: object) -> None:
        commits.append(list(pending))
        pending.clear()

    pending: list[int] = []

    def inserting(
        _c: object, _cur: object, sql: str, params: object, _x: object, _m: object
    ) -> None:
        if sql.startswith("INSERT INTO task_events"):  # one "(?" per row it inserts
            pending.append(sql.count("(?") if isinstance(params, tuple) else len(params))

    event.listen(store.engine, "before_cursor_execute", inserting)
    event.listen(store.engine, "commit", seen)
    try:
        task = await local_cluster.submit("job", cores=1)
        await eventually(lambda: task.task_id in runner.tasks, what="the dispatch")
    finally:
        event.remove(store.engine, "before_cursor_execute", inserting)
        event.remove(store.engine, "commit", seen)
    assert status_of(task) is TaskStatus.ASSIGNING
    # The first transaction with events holds both (then the running report's).
    assert next(n for n in commits if n) == [2]
    assert (await local_cluster.events(task.task_id))[:2] == [
        (TaskStatus.PENDING, "submitted by admin"),
        (TaskStatus.ASSIGNING, "placed on a"),
    ]


async def test_a_task_placed_on_cores_just_freed_is_stored_after_their_release(
    local_cluster: LocalCluster,
) -> None:
    """The release of a core and the new task that takes it are stored in that order even
    when the release waits in the store's queue: a crash between the two writes must not
    leave two tasks holding the core."""
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    other = await local_cluster.add_runner("b", cores=1, answer=HOLD)
    [first] = await local_cluster.submit_running(targets=[task_pb2.Target(hostname="a")])
    [busy] = await local_cluster.submit_running(targets=[task_pb2.Target(hostname="b")])
    assert local_cluster.server is not None
    store, scheduler = local_cluster.server.store, local_cluster.server.cluster.scheduler
    held = threading.Event()
    store.executor.submit(held.wait, 10)  # the store's one thread is busy
    try:
        # A change of another node takes the store's next transaction; the first task's
        # end (its core free at once, in memory) queues behind it.
        other.finish(busy.task_id, 0)
        await eventually(lambda: scheduler.nodes["b"].free_cores == 1, what="b's release")
        runner.finish(first.task_id, 0)
        await eventually(lambda: scheduler.nodes["a"].free_cores == 1, what="a's release")
        second = asyncio.create_task(
            local_cluster.submit("job", targets=[task_pb2.Target(hostname="a")])
        )
        await asyncio.sleep(0.2)  # the submission's write is queued by now
        assert not second.done()
    finally:
        held.set()
    placed = await second
    assert (status_of(placed), placed.assigned_node) == (TaskStatus.ASSIGNING, "a")
    order = [(task_id, status) for task_id, status, _ in _events_in_commit_order(local_cluster)]
    assert order.index((first.task_id, "completed")) < order.index((placed.task_id, "assigning"))


async def test_a_task_placed_at_once_whose_submitter_gave_up_still_runs_on_its_cores(
    local_cluster: LocalCluster,
) -> None:
    """A submission cancelled (its deadline passed) while its placed row waits to be
    stored: the row is stored anyway, so the task is known, dispatched and holds its core;
    the next task waits instead of getting the same core."""
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    assert local_cluster.server is not None
    store = local_cluster.server.store
    held = threading.Event()
    store.executor.submit(held.wait, 10)
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await local_cluster.tasks.SubmitTask(tpb.SubmitTaskRequest(command="job"), timeout=0.3)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        held.set()
    await eventually(lambda: len(runner.tasks) == 1, what="the dispatch")
    [first] = runner.tasks
    assert status_of(await local_cluster.wait_status(first, TaskStatus.RUNNING)) is (
        TaskStatus.RUNNING
    )
    second = await local_cluster.submit("job")
    assert (status_of(second), second.queue_position) == (TaskStatus.PENDING, 1)


async def test_tasks_whose_submitter_gave_up_while_they_were_stored_are_queued_and_run(
    local_cluster: LocalCluster,
) -> None:
    """A submission of many tasks cancelled (its deadline passed) while its rows wait to be
    stored, or while its tasks are being queued (in slices, taking turns with other bulk
    work): the rows are stored anyway, so each task is queued, placed and run."""
    runner = await local_cluster.add_runner("a", cores=64, answer=HOLD)
    assert local_cluster.server is not None
    store = local_cluster.server.store
    held = threading.Event()
    store.executor.submit(held.wait, 10)
    request = tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=range(40)))
    try:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await local_cluster.tasks.SubmitTask(request, timeout=0.3)
        assert raised.value.code() is grpc.StatusCode.DEADLINE_EXCEEDED
    finally:
        held.set()
    await eventually(lambda: len(runner.tasks) == 40, what="the 40 dispatches")
    for task_id in runner.tasks:
        await local_cluster.wait_status(task_id, TaskStatus.RUNNING)


async def test_a_submission_being_stored_when_the_host_stops_is_answered(
    local_cluster: LocalCluster,
) -> None:
    """The Host stops (SIGTERM) while a submission's rows wait to be stored: the stop lets
    it finish, its submitter gets the answer, and its tasks are there after a restart; a
    submission arriving meanwhile is refused as unavailable."""
    runner = await local_cluster.add_runner("a", cores=64, answer=HOLD)
    server = local_cluster.server
    assert server is not None
    held = threading.Event()
    server.store.executor.submit(held.wait, 10)
    request = tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=range(40)))
    call = asyncio.ensure_future(local_cluster.tasks.SubmitTask(request, timeout=30))
    await eventually(lambda: bool(server.cluster._adding), what="the submission being stored")
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0.1)  # the stop has begun, and waits for the submission
    # A submission arriving now is refused, nothing of it written: its client may retry.
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.tasks.SubmitTask(tpb.SubmitTaskRequest(command="late"), timeout=5)
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    assert "stopping" in (refused.value.details() or "")
    held.set()
    reply = await call
    await stopping
    assert reply.created == 40
    local_cluster.server = None
    await local_cluster.start_host()
    for task in reply.tasks:
        await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    assert len(runner.tasks) == 40
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=100))
    assert "late" not in {task.command for task in listed.tasks}


async def test_a_submission_over_connect_under_way_when_the_host_stops_is_answered(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The same over the dashboard's port, where the CLI sends its calls (with a
    request_id), the submission not yet at its write (its request_id being looked up): the
    stop lets it finish before the web server closes its connections, so its submitter gets
    the answer rather than an HTTP 500 for tasks stored all the same."""
    await local_cluster.add_runner("a", cores=64, answer=HOLD)
    alice = await local_cluster.add_user("alice")
    server = local_cluster.server
    assert server is not None
    dashboard = f"https://127.0.0.1:{server.dashboard_port}"
    api = Endpoint(dashboard, Path(local_cluster.config.tls.ca_file))
    looking, held = threading.Event(), threading.Event()
    find_request = server.store.find_request

    def slow_lookup(*key: Any) -> Any:
        looking.set()
        held.wait(10)
        return find_request(*key)

    monkeypatch.setattr(server.store, "find_request", slow_lookup)
    request = {"command": "job", "array": {"indices": list(range(40))}, "requestId": "r-1"}
    call = asyncio.ensure_future(
        asyncio.to_thread(api.call, "hakuriver.v1.TaskService/SubmitTask", request, alice.token)
    )
    await eventually(looking.is_set, what="the submission's request_id being looked up")
    stopping = asyncio.ensure_future(server.stop())
    # Past the web server's grace for open responses.
    await asyncio.sleep(WEB_GRACE_SECONDS + 0.5)
    held.set()
    reply = await call
    await stopping
    assert reply.status == 200, reply.body
    assert reply.json()["created"] == 40


async def test_a_task_placed_at_once_being_stored_when_the_host_stops_is_answered(
    local_cluster: LocalCluster,
) -> None:
    """The Host stops while a lone task placed at once waits for its row to be stored: its
    submitter gets the answer, and the task runs after a restart."""
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    server = local_cluster.server
    assert server is not None
    held = threading.Event()
    server.store.executor.submit(held.wait, 10)
    call = asyncio.ensure_future(
        local_cluster.tasks.SubmitTask(tpb.SubmitTaskRequest(command="job"), timeout=30)
    )
    await eventually(lambda: bool(server.cluster._adding), what="the task being stored")
    stopping = asyncio.ensure_future(server.stop())
    await asyncio.sleep(0.1)  # the stop has begun, and waits for the submission
    held.set()
    reply = await call
    await stopping
    [task] = reply.tasks
    assert status_of(task) is TaskStatus.ASSIGNING
    local_cluster.server = None
    await local_cluster.start_host()
    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    assert list(runner.tasks) == [task.task_id]


async def test_a_queued_task_says_why_it_waits_when_it_is_not_its_turn(
    local_cluster: LocalCluster,
) -> None:
    """A queued task's status_detail names what holds it back, when a user can act on it or
    wait for it: its node offline or draining (a task waiting its turn says nothing)."""
    await local_cluster.add_runner("busy", cores=1, answer=HOLD)
    await local_cluster.add_runner("drained", cores=1, answer=HOLD)
    gone = await local_cluster.add_runner("gone", cores=1, answer=HOLD)
    await local_cluster.submit_running(1, targets=[task_pb2.Target(hostname="busy")])
    turn = await local_cluster.submit("job", targets=[task_pb2.Target(hostname="busy")])
    await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="drained"), timeout=5)
    drained = await local_cluster.submit("job", targets=[task_pb2.Target(hostname="drained")])
    await gone.stop()
    await local_cluster.wait_node("gone", NodeStatus.OFFLINE)
    offline = await local_cluster.submit("job", targets=[task_pb2.Target(hostname="gone")])
    assert [t.status_detail for t in (turn, drained, offline)] == [
        "",
        "node drained is draining",
        "node gone is not connected",
    ]
    watch = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=drained.task_id))
    first = await anext(aiter(watch))
    watch.cancel()
    assert first.task.status_detail == "node drained is draining"
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(statuses=[turn.status]))
    assert {t.task_id: t.status_detail for t in listed.tasks}[offline.task_id] == (
        "node gone is not connected"
    )


def _gpus(*ids: int) -> list[node_pb2.Gpu]:
    return [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in ids]


async def test_a_gpu_task_says_when_the_nodes_with_its_gpus_are_draining(
    local_cluster: LocalCluster,
) -> None:
    """An untargeted GPU task whose only nodes with enough GPUs drain says so, naming them,
    though another node takes work; it starts once one of them is undrained."""
    await local_cluster.add_runner("cpu", cores=4, answer=HOLD)
    await local_cluster.add_runner("gpu", cores=4, gpus=_gpus(0, 1), answer=HOLD)
    await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="gpu"), timeout=5)
    task = await local_cluster.submit("train", gpus=2)
    reason = "no node with 2 GPUs is taking work: gpu is draining"
    assert (status_of(task), task.status_detail) == (TaskStatus.PENDING, reason)
    assert (await local_cluster.get(task.task_id)).status_detail == reason
    await local_cluster.nodes.UndrainNode(npb.UndrainNodeRequest(hostname="gpu"), timeout=5)
    started = await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    assert (started.assigned_node, list(started.required_gpus)) == ("gpu", [0, 1])


async def test_a_task_for_gpus_its_node_no_longer_reports_says_which_and_waits(
    local_cluster: LocalCluster,
) -> None:
    """A task queued for GPU ids its node's Runner no longer reports (it restarted and
    registered without them) is not failed: it says which ids the node lacks, in the words a
    new submission naming them is refused with, and starts once the Runner reports them again
    (docs/scheduling.md, "The queue")."""
    runner = await local_cluster.add_runner("gpu", cores=1, gpus=_gpus(0, 1), answer=HOLD)
    [busy] = await local_cluster.submit_running()
    named = [task_pb2.Target(hostname="gpu", gpu_ids=[0, 1])]
    task = await local_cluster.submit("train", targets=named)
    assert (status_of(task), task.status_detail) == (TaskStatus.PENDING, "")
    runner.gpus = _gpus(0)
    runner.instance_id = "restarted"  # the same process reconnecting keeps GPU 1, unread
    await runner.connect()
    reason = "node gpu has no GPU 1 (GPU ids: [0])"
    assert (await local_cluster.get(task.task_id)).status_detail == reason
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.submit("train", targets=named)
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details() == f"target: {reason.removeprefix('node ')}"
    runner.finish(busy.task_id, 0)  # its core is free: still no GPU 1
    await local_cluster.wait_status(busy.task_id)
    waiting = await local_cluster.get(task.task_id)
    assert (status_of(waiting), waiting.status_detail) == (TaskStatus.PENDING, reason)
    runner.gpus = _gpus(0, 1)
    await runner.connect()
    started = await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    assert list(started.required_gpus) == [0, 1]


async def test_a_task_killed_while_its_placement_is_being_stored_is_never_dispatched(
    local_cluster: LocalCluster,
) -> None:
    """A kill that comes between a placement decided in memory and its write: the task
    must not be sent to its Runner once stored (its command would start, then be killed)."""
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    [first] = await local_cluster.submit_running()
    queued = await local_cluster.submit("job")
    assert status_of(queued) is TaskStatus.PENDING
    assert local_cluster.server is not None
    book = local_cluster.server.cluster.book
    held = threading.Event()
    local_cluster.server.store.executor.submit(held.wait, 10)  # the store's one thread is busy
    try:
        runner.finish(first.task_id, 0)  # its core is free in memory: the queued task placed
        await eventually(
            lambda: book.active[queued.task_id].status == TaskStatus.ASSIGNING,
            what="the placement decided in memory",
        )
        killing = asyncio.create_task(local_cluster.kill(queued.task_id))
        await eventually(lambda: book.active[queued.task_id].kill_requested, what="the kill")
    finally:
        held.set()
    killed = await killing
    assert status_of(killed) is TaskStatus.KILLED
    assert status_of(await local_cluster.wait_status(queued.task_id)) is TaskStatus.KILLED
    assert queued.task_id not in runner.dispatched


async def test_a_gpu_id_named_twice_is_refused(local_cluster: LocalCluster) -> None:
    """The CLI refuses ``HOST::1,1``; the API must too, or the task holds GPU 1 "twice":
    it waits for two free GPUs and gets CUDA_VISIBLE_DEVICES=0,1 with one device."""
    await local_cluster.add_runner("gpu", cores=2, gpus=_gpus(0, 1, 2), answer=HOLD)
    twice = [task_pb2.Target(hostname="gpu", gpu_ids=[1, 1])]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.submit("train", targets=twice)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == "target gpu: GPU ids repeat: [1, 1]"


async def test_a_public_key_on_a_command_task_is_refused(local_cluster: LocalCluster) -> None:
    """SubmitTask took ssh_public_key on a command task and dropped it: the task ran, and
    its submitter was left to find out that nothing listens for their key."""
    await local_cluster.add_runner("a")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.submit("sleep", "60", ssh_public_key=key)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "ssh_public_key: only a VPS takes a public key (kind VPS: hakuriver.vps submit); a "
        "command task runs no sshd to log in to"
    )
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert not listed.tasks


async def test_arguments_for_a_vps_are_refused(local_cluster: LocalCluster) -> None:
    """A VPS runs sshd, not the submitted command: SubmitTask took its arguments, stored
    them (GetTask showed them) and the Runner never ran them."""
    await local_cluster.add_runner("a")
    key = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.submit("", "--setup", kind=task_pb2.TASK_KIND_VPS, ssh_public_key=key)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == (
        "arguments: a VPS runs sshd, not a command of yours: leave arguments empty"
    )
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert not listed.tasks


@pytest.mark.parametrize(
    ("env", "why"),
    [
        (
            {"NOTE": "two\nlines"},
            "env: 'NOTE': a VPS's SSH sessions read their variables one a line: a value must "
            "not contain a newline (put it in a file instead)",
        ),
        (
            {f"V{i}": "" for i in range(513)},
            "env: a VPS takes at most 512 variables of 65,536 bytes in all, got 513 of 1,942 bytes",
        ),
        (
            {"BIG": "x" * 65536},
            "env: a VPS takes at most 512 variables of 65,536 bytes in all, got 1 of 65,539 bytes",
        ),
    ],
    ids=["newline", "count", "bytes"],
)
async def test_vps_variables_its_sessions_cannot_get_are_refused(
    local_cluster: LocalCluster, env: dict[str, str], why: str
) -> None:
    """A VPS's sessions read its variables from ~/.ssh/environment, one a line, where a
    newline would end a value and start a variable of the text after it; sshd ends a session
    with more than 1,000 variables."""
    await local_cluster.add_runner("a")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.submit("", kind=task_pb2.TASK_KIND_VPS, ssh_public_key=SSH_KEY, env=env)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == why
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert not listed.tasks


async def test_a_submit_while_another_program_locks_the_database_is_unavailable(
    make_local_cluster: MakeCluster,
) -> None:
    """Refused as UNAVAILABLE, nothing of it kept; it was 'internal error (INTERNAL)'."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    await local_cluster.add_runner("a")
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # after the Host's 0.2 s wait
            await local_cluster.tasks.SubmitTask(tpb.SubmitTaskRequest(command="job"), timeout=30)
    finally:
        other.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert refused.value.details() == (
        "the Host's database is locked by another program: try again once it is not"
    )
    kept = await local_cluster.submit("job")
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert [t.task_id for t in listed.tasks] == [kept.task_id]


async def test_a_write_waits_database_busy_timeout_seconds_for_a_lock(
    make_local_cluster: MakeCluster,
) -> None:
    """How long a write waits for a lock another program holds is the config's
    (database.busy_timeout_seconds; 5 s by default): refused before the caller's 4 s
    deadline."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    await local_cluster.add_runner("a")
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await local_cluster.tasks.SubmitTask(tpb.SubmitTaskRequest(command="job"), timeout=4)
    finally:
        other.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_a_host_stopped_as_a_pass_places_a_submission_leaves_no_write_unawaited(
    local_cluster: LocalCluster,
) -> None:
    """A submission stored as the Host stops (its submitter gone) is placed by a pass that
    runs just before the stop cancels the Host's work: the task storing that placement was
    cancelled before it started, and its write coroutines were never closed ("coroutine
    'TaskBook._record' was never awaited", seen at the end of test_arrays)."""
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    assert local_cluster.server is not None
    host = weakref.ref(local_cluster.server.cluster)  # held, its tasks' frames would stay
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    request = tpb.SubmitTaskRequest(command="job", array=tpb.TaskArray(indices=[0, 1]))
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        try:
            other.execute("BEGIN IMMEDIATE")  # the submission's write waits for it
            with pytest.raises(grpc.aio.AioRpcError) as gone:
                await local_cluster.tasks.SubmitTask(request, timeout=1)
            assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
            stopping = asyncio.ensure_future(local_cluster.stop_host())
            # Stopped: the stop now waits for the submission under way.
            await eventually(lambda: getattr(host(), "_stopped", False), what="the stop")
        finally:
            other.close()
        await stopping
        gc.collect()  # a coroutine never awaited is said so once it goes
    assert [str(w.message) for w in said if issubclass(w.category, RuntimeWarning)] == []


def _hold_writes(
    cluster: LocalCluster, status: TaskStatus, monkeypatch: pytest.MonkeyPatch
) -> asyncio.Event:
    """Hold the Host's writes of tasks moving to ``status`` (the store then follows the Host
    by them) until the returned event is set."""
    assert cluster.server is not None
    store = cluster.server.cluster.store
    original, release = store.queue_write, asyncio.Event()

    def queue_write(key: Any, updates: list[dict[str, Any]], **rest: Any) -> Any:
        if not any(row.get("status") == status.value for row in updates):
            return original(key, updates, **rest)

        async def later() -> None:
            await release.wait()
            await original(key, updates, **rest)

        return asyncio.ensure_future(later())

    monkeypatch.setattr(store, "queue_write", queue_write)
    return release


async def test_a_list_by_status_shows_no_task_that_has_left_it_before_it_is_stored(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ListTasks matches statuses and nodes as stored and answers tasks as the Host holds
    them, and the store follows the Host by a write: a task whose 'running' was not stored
    yet was listed among the assigning ones, answered running (QA: seen while a sweep ran).
    The page still says where to read on."""
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    release = _hold_writes(local_cluster, TaskStatus.RUNNING, monkeypatch)
    older = await local_cluster.submit()
    task = await local_cluster.submit()
    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)
    try:
        assigning = tpb.ListTasksRequest(statuses=[task_pb2.TASK_STATUS_ASSIGNING], limit=1)
        page = await local_cluster.tasks.ListTasks(assigning, timeout=5)
        assert list(page.tasks) == [] and page.next_before_task_id == task.task_id
        running = tpb.ListTasksRequest(statuses=[task_pb2.TASK_STATUS_RUNNING], node="a")
        listed = await local_cluster.tasks.ListTasks(running, timeout=5)
        assert {t.task_id for t in listed.tasks} <= {older.task_id, task.task_id}
        assert all(t.status == task_pb2.TASK_STATUS_RUNNING for t in listed.tasks)
    finally:
        release.set()
    await eventually(
        lambda: _listed_running(local_cluster, {older.task_id, task.task_id}), what="stored"
    )


async def _listed_running(cluster: LocalCluster, task_ids: set[int]) -> bool:
    running = tpb.ListTasksRequest(statuses=[task_pb2.TASK_STATUS_RUNNING])
    listed = await cluster.tasks.ListTasks(running, timeout=5)
    return {t.task_id for t in listed.tasks} == task_ids


async def test_a_drain_that_cannot_be_written_is_taken_back(
    make_local_cluster: MakeCluster,
) -> None:
    """The drain was made in memory before its write: refused, it still held until the Host
    restarted (which then dropped it), and the node took no work meanwhile."""
    local_cluster = await make_local_cluster(database=BRIEF_LOCK_WAIT)
    await local_cluster.add_runner("a", answer=HOLD)
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(grpc.aio.AioRpcError) as refused:  # after the Host's 0.2 s wait
            await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=30)
    finally:
        other.close()
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    [node] = (await local_cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)).nodes
    assert not node.draining
    task = await local_cluster.submit("job")
    await local_cluster.wait_status(task.task_id, TaskStatus.RUNNING)


async def _drained_once_and_kept(local_cluster: LocalCluster) -> None:
    """Node a is drained, in memory and as stored (a restarted Host keeps it), and its drain
    audited once."""
    [node] = (await local_cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)).nodes
    assert node.draining
    audited = await local_cluster.audit.ListAuditEvents(
        aupb.ListAuditEventsRequest(action="node.drain"), timeout=5
    )
    assert [(e.actor, e.target) for e in audited.events] == [("admin", "a")]
    await local_cluster.restart_host()
    [node] = (await local_cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)).nodes
    assert node.draining


async def test_a_drain_asked_while_another_fails_is_kept_and_audited(
    make_local_cluster: MakeCluster,
) -> None:
    """Two DrainNode calls of a node taking work, the first refused by a database another
    program held locked, the second written once the lock went: the first, failing, took the
    drain back in memory after the second had made it, so the node took work while the
    database said it drained (a restarted Host drained it), and the drain went unaudited
    (the second took it as made already)."""
    # Writes wait 1 s for the lock: the second's outlasts the test's answer to the first.
    local_cluster = await make_local_cluster(database={"busy_timeout_seconds": 1})
    await local_cluster.add_runner("a", answer=HOLD)
    # The Runner's join audited and stored (a query waits for it): not held by the lock,
    # which the drain's event would queue behind, past the query after it.
    await local_cluster.audit.ListAuditEvents(aupb.ListAuditEventsRequest(), timeout=5)
    drain = npb.DrainNodeRequest(hostname="a")
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        calls = [
            asyncio.ensure_future(local_cluster.nodes.DrainNode(drain, timeout=30))
            for _ in range(2)
        ]
        await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)  # one refused
    finally:
        other.close()
    answers = await asyncio.gather(*calls, return_exceptions=True)
    refused = [a for a in answers if isinstance(a, grpc.aio.AioRpcError)]
    assert [a.code() for a in refused] == [grpc.StatusCode.UNAVAILABLE]  # after SQLite's wait
    await _drained_once_and_kept(local_cluster)


async def test_a_drain_whose_caller_goes_is_kept_as_it_is_written(
    local_cluster: LocalCluster,
) -> None:
    """A write asked for is done even if its caller goes; a drain whose caller gave up (its
    deadline, Ctrl-C) while another program held the database locked was written once the
    lock went, yet taken back in memory: the node took work while the database said it
    drained, and a restarted Host drained it again."""
    await local_cluster.add_runner("a", answer=HOLD)
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    try:
        other.execute("BEGIN IMMEDIATE")
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=1)
    finally:
        other.close()
    assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await local_cluster.add_user("alice")  # written after the drain, on the store's thread
    await _drained_once_and_kept(local_cluster)


async def test_a_submission_whose_submitter_left_while_the_database_is_locked_is_one_line(
    make_local_cluster: MakeCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A submission whose caller's deadline passed while its insert waited for a database
    locked by another program is carried on, then refused by the database: that was said
    at ERROR, as a bug is (QA). The database away for now is one WARNING line saying why,
    as the Host's other work says it (store.log_refusal)."""
    # Writes wait 1.5 s for the lock: the submitter's 0.5 s deadline passes first.
    local_cluster = await make_local_cluster(database={"busy_timeout_seconds": 1.5})
    await local_cluster.add_runner("a")
    other = sqlite3.connect(local_cluster.config.database.db_file, isolation_level=None)
    left = "storing a submission whose submitter left"
    try:
        other.execute("BEGIN IMMEDIATE")  # as a sqlite3 shell in a transaction
        request = tpb.SubmitTaskRequest(command="job")
        with pytest.raises(grpc.aio.AioRpcError) as gone:
            await local_cluster.tasks.SubmitTask(request, timeout=0.5)
        assert gone.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: left in caplog.text, within=30, what="the insert refused")
    finally:
        other.close()
    said = [(r.levelno, r.getMessage()) for r in caplog.records if left in r.getMessage()]
    assert said == [(logging.WARNING, f"{left} failed: {DATABASE_LOCKED}")]
