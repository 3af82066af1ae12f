"""Turns per caller (auth.calls_per_caller): one user's calls past the limit wait, in order,
while another user's are served; a waiting call that is cancelled gives up its place, and a
turn handed to a call just cancelled passes on."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator
from dataclasses import dataclass

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.authorization import RIGHTS
from hakuriver_host.caller_turns import UNTURNED, CallerTurns
from tests.fake_runner import HOLD, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import Client, LocalCluster
from tests.unit.test_metrics_auth import metric_values

KILLED_EXIT_CODE = 137
WHO = apb.WhoAmIRequest()


@dataclass
class HeldTurn:
    """Alice's one turn, held by a listing that waits for the database: its one thread is
    kept busy until ``release``."""

    cluster: LocalCluster
    alice: Client
    bob: Client
    task_id: int
    listing: asyncio.Future[tpb.ListTasksResponse]
    busy: threading.Event

    @property
    def turns(self) -> CallerTurns:
        assert self.cluster.server is not None and self.cluster.server.gate.turns is not None
        return self.cluster.server.gate.turns

    def release(self) -> None:
        self.busy.set()

    async def alice_waits(self) -> asyncio.Future[apb.WhoAmIResponse]:
        """Alice's second call (answered from memory), once it waits for her turn."""
        behind = asyncio.ensure_future(self.alice.access.WhoAmI(WHO, timeout=30))
        await eventually(lambda: self.turns.waiting() == 1, what="alice's second call waiting")
        return behind


@contextlib.asynccontextmanager
async def _held_turn(make_local_cluster: MakeCluster) -> AsyncIterator[HeldTurn]:
    cluster = await make_local_cluster(auth={"calls_per_caller": 1})
    await cluster.add_runner("a", answer=HOLD)
    alice = await cluster.add_user("alice")
    bob = await cluster.add_user("bob")
    submitted = await alice.tasks.SubmitTask(
        tpb.SubmitTaskRequest(command="sleep", arguments=["60"]), timeout=5
    )
    task_id = submitted.tasks[0].task_id
    await cluster.wait_status(task_id, TaskStatus.RUNNING)
    assert cluster.server is not None
    busy = threading.Event()
    blocker = asyncio.ensure_future(cluster.server.store.read(busy.wait, 30))  # reads held
    listing = asyncio.ensure_future(alice.tasks.ListTasks(tpb.ListTasksRequest(), timeout=30))
    held = HeldTurn(cluster, alice, bob, task_id, listing, busy)
    try:
        await eventually(lambda: "alice" in held.turns._lines, what="alice's listing served")
        yield held
    finally:
        busy.set()
        await asyncio.gather(blocker, listing, return_exceptions=True)


async def test_a_users_calls_past_the_limit_wait_while_another_users_are_served(
    make_local_cluster: MakeCluster,
) -> None:
    async with _held_turn(make_local_cluster) as held:
        behind = await held.alice_waits()
        assert (await metric_values(held.cluster))[("hakuriver_grpc_calls_waiting", ())] == 1
        # Bob is served meanwhile (WhoAmI is answered from memory, not the database).
        assert (await held.bob.access.WhoAmI(WHO, timeout=5)).user == "bob"
        await asyncio.sleep(0.3)  # a WhoAmI takes milliseconds here
        assert not behind.done()

        held.release()
        assert [t.task_id for t in (await held.listing).tasks] == [held.task_id]
        assert (await behind).user == "alice"


async def test_a_call_cancelled_while_waiting_gives_up_its_place(
    make_local_cluster: MakeCluster,
) -> None:
    async with _held_turn(make_local_cluster) as held:
        with pytest.raises(grpc.aio.AioRpcError) as waited:
            await held.alice.access.WhoAmI(WHO, timeout=0.3)
        assert waited.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        await eventually(lambda: held.turns.waiting() == 0, what="the cancelled call gone")
        held.release()
        await held.listing
        # The turn comes back: her next call is served at once.
        assert (await held.alice.access.WhoAmI(WHO, timeout=5)).user == "alice"
        assert not held.turns._lines


async def test_a_call_that_waited_for_its_turn_is_authorised_again(
    make_local_cluster: MakeCluster,
) -> None:
    async with _held_turn(make_local_cluster) as held:
        behind = await held.alice_waits()
        access = held.cluster.access
        tokens = await access.ListTokens(apb.ListTokensRequest(user="alice"), timeout=5)
        revoke = apb.RevokeTokenRequest(token_id=tokens.tokens[0].token_id)
        revoking = asyncio.ensure_future(access.RevokeToken(revoke, timeout=30))
        await asyncio.sleep(0.1)  # revoked in memory at once; written once the database is free
        held.release()
        await revoking
        await held.listing  # admitted before the revocation
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await behind
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_call_waiting_for_a_runner_takes_no_turn(
    make_local_cluster: MakeCluster,
) -> None:
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
    # The kill waits for the Runner's confirmation; alice's other calls go on meanwhile.
    listed = await alice.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert [t.task_id for t in listed.tasks] == [task_id]
    assert not kill.done()
    runner.finish(task_id, KILLED_EXIT_CODE)
    assert (await kill).task.status == task_pb2.TASK_STATUS_KILLED


def test_the_unturned_calls_are_methods_of_the_api() -> None:
    assert set(RIGHTS) >= UNTURNED


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
