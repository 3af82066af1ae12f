"""Turns per caller (auth.calls_per_caller): one user's calls past the limit wait, in order,
while another user's are served; a waiting call that is cancelled gives up its place, and a
turn handed to a call just cancelled passes on."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.caller_turns import CallerTurns
from tests.fake_runner import HOLD, FakeRunner, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import Client, LocalCluster
from tests.unit.test_metrics_auth import metric_values

KILLED_EXIT_CODE = 137


@dataclass
class HeldTurn:
    """Alice's one turn, held by a kill that waits for the Runner to confirm it."""

    cluster: LocalCluster
    runner: FakeRunner
    alice: Client
    task_id: int
    kill: asyncio.Future[tpb.KillTaskResponse]

    async def end(self) -> task_pb2.Task:
        self.runner.finish(self.task_id, KILLED_EXIT_CODE)
        return (await self.kill).task


async def _held_turn(make_local_cluster: MakeCluster) -> HeldTurn:
    cluster = await make_local_cluster(
        auth={"calls_per_caller": 1},
        timing={"kill_grace_seconds": 0, "control_timeout_seconds": 60},
    )
    runner = await cluster.add_runner("a", answer=HOLD, answer_kills=False)
    alice = await cluster.add_user("alice")
    submitted = await alice.tasks.SubmitTask(
        tpb.SubmitTaskRequest(command="sleep", arguments=["60"]), timeout=5
    )
    task_id = submitted.tasks[0].task_id
    await cluster.wait_status(task_id, TaskStatus.RUNNING)
    kill = asyncio.ensure_future(
        alice.tasks.KillTask(tpb.KillTaskRequest(task_id=task_id), timeout=30)
    )
    await eventually(lambda: ("kill", task_id) in runner.commands, what="the kill sent")
    return HeldTurn(cluster, runner, alice, task_id, kill)


async def test_a_users_calls_past_the_limit_wait_while_another_users_are_served(
    make_local_cluster: MakeCluster,
) -> None:
    held = await _held_turn(make_local_cluster)
    bob = await held.cluster.add_user("bob")
    behind = asyncio.ensure_future(held.alice.tasks.ListTasks(tpb.ListTasksRequest(), timeout=30))
    listed = await bob.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert not listed.tasks  # bob's own: none; he was served while alice's call waited
    await asyncio.sleep(0.3)  # a listing takes milliseconds here
    assert not behind.done()
    assert (await metric_values(held.cluster))[("hakuriver_grpc_calls_waiting", ())] == 1

    assert (await held.end()).status == task_pb2.TASK_STATUS_KILLED
    assert [t.task_id for t in (await behind).tasks] == [held.task_id]


async def test_a_call_cancelled_while_waiting_gives_up_its_place(
    make_local_cluster: MakeCluster,
) -> None:
    held = await _held_turn(make_local_cluster)
    with pytest.raises(grpc.aio.AioRpcError) as waited:
        await held.alice.tasks.ListTasks(tpb.ListTasksRequest(), timeout=0.3)
    assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await held.end()
    # The turn comes back: her next call is served at once.
    assert (await held.alice.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)).tasks


async def test_turns_are_given_in_order_and_per_caller() -> None:
    turns = CallerTurns(2)
    served: list[str] = []

    async def call(caller: str, name: str, hold: asyncio.Event) -> None:
        await turns.take(caller)
        served.append(name)
        try:
            await hold.wait()
        finally:
            turns.give_back(caller)

    holds = {name: asyncio.Event() for name in ("a1", "a2", "a3", "a4", "b1")}
    calls = [asyncio.create_task(call(name[0], name, hold)) for name, hold in holds.items()]
    await eventually(lambda: len(served) == 3)
    assert served == ["a1", "a2", "b1"] and turns.waiting() == 2
    holds["a2"].set()
    await eventually(lambda: len(served) == 4)
    assert served[3] == "a3"
    for hold in holds.values():
        hold.set()
    await asyncio.gather(*calls)
    assert served == ["a1", "a2", "b1", "a3", "a4"]
    assert turns.waiting() == 0 and not turns._lines


async def test_a_turn_handed_to_a_call_just_cancelled_passes_on() -> None:
    turns = CallerTurns(1)
    await turns.take("a")
    second = asyncio.create_task(turns.take("a"))
    third = asyncio.create_task(turns.take("a"))
    await asyncio.sleep(0)
    assert turns.waiting() == 2
    turns.give_back("a")  # handed to the second ...
    second.cancel()  # ... which is cancelled before it runs: the third gets the turn
    await asyncio.wait_for(third, 1)
    assert second.cancelled()
    turns.give_back("a")
    assert not turns._lines
