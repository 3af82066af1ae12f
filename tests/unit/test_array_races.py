"""Races of job arrays with caps and holds, each interleaving forced through the public API
of an in-process Host with FakeRunners: a whole array killed while its placements are being
stored."""

from __future__ import annotations

import asyncio
import threading

import pytest

from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.store import Store, TaskWrite
from tests.fake_runner import HOLD, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import status_of


def _array(indices: list[int], max_running: int = 0) -> tpb.SubmitTaskRequest:
    return tpb.SubmitTaskRequest(
        command="job", array=tpb.TaskArray(indices=indices, max_running=max_running)
    )


async def test_an_array_killed_while_its_placements_are_stored_starts_none(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """KillBatch arrives while the array's first placements are being written: those were
    dispatched once stored (the batch's kill marked them only after its pending tasks' kills
    were stored), so their commands started after the kill was asked, to be killed at once.
    A kill asked while a placement is stored keeps its command from starting, as a task's
    own kill does."""
    go = threading.Event()
    apply = Store._apply

    def slow_placements(store: Store, writes: list[TaskWrite]) -> None:
        placing = TaskStatus.ASSIGNING.value
        if any(u.get("status") == placing for w in writes for u in w.updates):
            go.wait(10)
        apply(store, writes)

    monkeypatch.setattr(Store, "_apply", slow_placements)
    cluster = await make_local_cluster()
    runner = await cluster.add_runner("a", cores=4, answer=HOLD)
    reply = await cluster.tasks.SubmitTask(_array(list(range(6)), max_running=2), timeout=5)
    assert cluster.server is not None
    book = cluster.server.cluster.book
    first = [t.task_id for t in reply.tasks[:2]]
    assert [book.active[t].status for t in first] == [TaskStatus.ASSIGNING] * 2
    killing = asyncio.ensure_future(
        cluster.tasks.KillBatch(tpb.KillBatchRequest(batch_id=reply.batch_id), timeout=30)
    )
    await eventually(
        lambda: all(t.status == TaskStatus.KILLED for t in book.of_batch(reply.batch_id)[2:]),
        what="the pending ones killed in memory",
    )
    go.set()
    killed = await killing
    assert killed.affected == 6
    assert [status_of(await cluster.get(t.task_id)) for t in reply.tasks] == [TaskStatus.KILLED] * 6
    assert runner.dispatched == []
