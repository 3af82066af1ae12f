"""WatchTasks: live lists see each task as it is submitted and on every status change,
only the tasks the caller may see, and a reader that stops reading is dropped, not kept."""

from __future__ import annotations

import asyncio
from typing import Any

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.roles import Role
from hakuriver_common.statuses import TaskStatus
from hakuriver_host import task_book
from hakuriver_host.errors import WatcherBehind
from tests.fake_runner import HOLD, eventually
from tests.unit.local_cluster import Client, LocalCluster

S = task_pb2


class Seen:
    """(task id, status) of every message a WatchTasks stream sends, read in the background."""

    def __init__(self, client: Any, **request: Any) -> None:
        self.call = client.tasks.WatchTasks(tpb.WatchTasksRequest(**request))
        self.items: list[tuple[int, int]] = []
        self.error: grpc.aio.AioRpcError | None = None
        self.reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            async for reply in self.call:
                self.items.append((reply.task.task_id, reply.task.status))
        except grpc.aio.AioRpcError as exc:
            self.error = exc

    def ids(self) -> set[int]:
        return {task_id for task_id, _ in self.items}

    async def close(self) -> None:
        self.call.cancel()
        await asyncio.gather(self.reader, return_exceptions=True)


async def _submit(client: Client) -> int:
    reply = await client.tasks.SubmitTask(tpb.SubmitTaskRequest(command="true"), timeout=5)
    return reply.tasks[0].task_id


async def _seen_by(watcher: Seen, client: Client) -> set[int]:
    """Tasks ``client`` submitted, one a round, until ``watcher`` has seen one of them."""
    submitted: set[int] = set()

    async def seen() -> bool:
        submitted.add(await _submit(client))
        return bool(submitted & watcher.ids())

    await eventually(seen, what="the watcher's first task")
    return submitted


async def _started(cluster: LocalCluster, *watchers: Seen) -> set[int]:
    """Until each stream is registered with the Host: a probe task reaches them all (one
    submitted before a stream registered may have ended unseen by it, so another is sent
    each round). The probes' ids."""
    probes: set[int] = set()

    async def registered() -> bool:
        probes.add((await cluster.submit("probe")).task_id)
        return all(probes & w.ids() for w in watchers)

    await eventually(registered, what="watchers")
    return probes


async def test_each_caller_sees_only_what_they_may(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner()
    alice = await local_cluster.add_user("alice")
    bob = await local_cluster.add_user("bob")
    olivia = await local_cluster.add_user("olivia", Role.OPERATOR)
    everything = Seen(olivia)
    bobs_only = Seen(olivia, owner="bob")
    mine = Seen(alice)
    await _started(local_cluster, everything)
    try:
        # Each submits until their own watcher has seen one (it registers meanwhile).
        alice_tasks = await _seen_by(mine, alice)
        bob_tasks = await _seen_by(bobs_only, bob)
        alice_task, bob_task = max(alice_tasks), max(bob_tasks)
        await local_cluster.wait_status(alice_task)
        await local_cluster.wait_status(bob_task)
        await eventually(
            lambda: (
                (alice_task, S.TASK_STATUS_COMPLETED) in everything.items
                and (bob_task, S.TASK_STATUS_COMPLETED) in everything.items
            ),
            what="both tasks' changes",
        )
        statuses = [status for task_id, status in everything.items if task_id == alice_task]
        assert statuses[0] == S.TASK_STATUS_PENDING
        assert statuses[-1] == S.TASK_STATUS_COMPLETED
        assert S.TASK_STATUS_RUNNING in statuses
        await eventually(lambda: bob_task in bobs_only.ids(), what="bob's task for olivia")
        await eventually(lambda: alice_task in mine.ids(), what="alice's own task")
        assert bobs_only.ids() <= bob_tasks
        assert mine.ids() <= alice_tasks
    finally:
        for watcher in (everything, bobs_only, mine):
            await watcher.close()


async def test_users_may_not_name_another_owner(local_cluster: LocalCluster) -> None:
    """The same answer for a user who exists and one who does not: no list of users."""
    alice = await local_cluster.add_user("alice")
    await local_cluster.add_user("bob")
    for owner in ("bob", "nobody"):
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            async for _ in alice.tasks.WatchTasks(tpb.WatchTasksRequest(owner=owner), timeout=5):
                pass
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert refused.value.details() == "owner: users watch only their own tasks; leave it empty"


async def test_an_unknown_owner_is_named(local_cluster: LocalCluster) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        async for _ in local_cluster.tasks.WatchTasks(
            tpb.WatchTasksRequest(owner="nobody"), timeout=5
        ):
            pass
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    assert refused.value.details() == "owner: no user named 'nobody'"


async def test_a_deleted_users_tasks_are_watched_as_they_are_listed(
    local_cluster: LocalCluster,
) -> None:
    """DeleteUser leaves a user's tasks running and ListTasks lists them by the old name, so
    an operator watches them by it too; WatchTasks answered NOT_FOUND 'no user named'."""
    await local_cluster.add_runner(answer=HOLD)
    bob = await local_cluster.add_user("bob")
    reply = await bob.tasks.SubmitTask(tpb.SubmitTaskRequest(command="long"), timeout=5)
    task_id = reply.tasks[0].task_id
    await local_cluster.wait_status(task_id, TaskStatus.RUNNING)
    await local_cluster.access.DeleteUser(apb.DeleteUserRequest(name="bob"), timeout=5)
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(owner="bob"), timeout=5)
    assert [task.task_id for task in listed.tasks] == [task_id]
    watcher = Seen(local_cluster, owner="bob")

    async def seen() -> bool:
        """Pauses or resumes bob's task (a change) until the watcher has seen one."""
        assert watcher.error is None, watcher.error
        if (await local_cluster.get(task_id)).status == S.TASK_STATUS_PAUSED:
            await local_cluster.tasks.ResumeTask(tpb.ResumeTaskRequest(task_id=task_id))
            await local_cluster.wait_status(task_id, TaskStatus.RUNNING)
        else:
            await local_cluster.tasks.PauseTask(tpb.PauseTaskRequest(task_id=task_id))
            await local_cluster.wait_status(task_id, TaskStatus.PAUSED)
        return task_id in watcher.ids()

    try:
        await eventually(seen, what="bob's task in the watcher")
    finally:
        await watcher.close()


async def test_a_reader_that_falls_behind_is_ended(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """At the Host's task book: gRPC's own buffers would hide a stalled client for a while,
    but once changes pile up unread the watcher is dropped, and its reader told why."""
    monkeypatch.setattr(task_book, "LIST_WATCH_BACKLOG", 3)
    await local_cluster.add_runner(cores=1, answer=HOLD)  # one task runs, the rest queue
    assert local_cluster.server is not None
    book = local_cluster.server.cluster.book
    stalled = book.watch_all()
    first = asyncio.create_task(anext(stalled))
    keeping_up = Seen(local_cluster)
    probes = await _started(local_cluster, keeping_up)
    assert (await first).task_id in probes
    queued = {(await local_cluster.submit("queued")).task_id for _ in range(6)}
    await eventually(lambda: queued <= keeping_up.ids(), what="the reader to see every task")
    with pytest.raises(WatcherBehind, match="list the tasks again"):
        async for _ in stalled:
            pass
    assert keeping_up.error is None, "a reader that keeps up stays"
    await keeping_up.close()


async def test_a_watch_asked_to_says_when_it_is_in_place_and_misses_nothing_after(
    local_cluster: LocalCluster,
) -> None:
    """List then watch could miss a change made between the two, and nothing told the
    client when its watch was in place: the stream sent nothing until the first change.
    With send_watching its first message says so, and a task submitted (and listed) at once
    after it is sent, with none of the probing the other tests need."""
    await local_cluster.add_runner(answer=HOLD)
    call = local_cluster.tasks.WatchTasks(tpb.WatchTasksRequest(send_watching=True))
    try:
        first = await asyncio.wait_for(call.read(), 30)
        assert first.watching and not first.HasField("task")
        task_id = await _submit(local_cluster)
        listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
        assert [task.task_id for task in listed.tasks] == [task_id]
        reply = await asyncio.wait_for(call.read(), 30)
        assert (reply.watching, reply.task.task_id) == (False, task_id)
    finally:
        call.cancel()
