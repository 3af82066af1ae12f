"""Streams per user (auth.streams_per_caller), and per address for callers without a token
(health watches): each open stream holds the Host's memory and a share of its loop for as
long as its caller likes, so one user (over gRPC and the dashboard's Connect port together)
or one address holds a bounded number; a stream that ends for any reason gives its place
back."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from hakuriver_cli import direct, task
from hakuriver_common.limits import MAX_ANONYMOUS_STREAMS
from hakuriver_common.proto.hakuriver.v1 import (
    node_service_pb2 as npb,
    task_service_pb2 as tpb,
)
from tests.fake_runner import eventually
from tests.unit.cli_threads import exit_code
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import Client, LocalCluster
from tests.unit.test_connect_api import endpoint

LIMIT = 3
REFUSAL = f"alice holds {LIMIT} streams open, the most auth.streams_per_caller allows"
WATCH_TASKS = tpb.WatchTasksRequest(send_watching=True)


async def _opened(client: Client) -> Any:
    """A WatchTasks stream of ``client``'s, once the Host serves it."""
    call = client.tasks.WatchTasks(WATCH_TASKS)
    first = await call.read()
    assert first.watching
    return call


async def test_a_user_holds_at_most_streams_per_caller_streams(
    make_local_cluster: MakeCluster,
) -> None:
    cluster = await make_local_cluster(auth={"streams_per_caller": LIMIT})
    alice = await cluster.add_user("alice")
    bob = await cluster.add_user("bob")

    # Streams that end (here refused NOT_FOUND) give their place back.
    for _ in range(LIMIT + 2):
        with pytest.raises(grpc.aio.AioRpcError) as missing:
            await anext(aiter(alice.tasks.WatchTask(tpb.WatchTaskRequest(task_id=999))))
        assert missing.value.code() == grpc.StatusCode.NOT_FOUND

    held = [await _opened(alice) for _ in range(LIMIT)]
    health = alice.nodes.WatchHealth(npb.WatchHealthRequest(send_watching=True))
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await health.read()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert REFUSAL in (refused.value.details() or "")

    # The dashboard's port counts the same streams.
    api = endpoint(cluster)
    _, end = await asyncio.to_thread(
        api.stream, "hakuriver.v1.TaskService/WatchTasks", {}, alice.token, 1
    )
    assert end["error"]["code"] == "resource_exhausted"
    assert REFUSAL in end["error"]["message"]

    # Another user is not held back by alice's streams.
    bobs = await _opened(bob)

    held.pop().cancel()
    again = await eventually(lambda: _opened(alice), what="alice's stream accepted again")
    for call in [*held, again, bobs]:
        call.cancel()


async def test_an_address_without_a_token_holds_a_bounded_number_of_health_watches(
    local_cluster: LocalCluster,
) -> None:
    """Anybody who reaches the port may watch the Host's health: without a bound, a
    stranger held any number of watches open for as long as they liked."""
    health = health_pb2_grpc.HealthStub(local_cluster.channel())
    request = health_pb2.HealthCheckRequest()

    async def opened() -> Any:
        call = health.Watch(request)
        assert (await call.read()).status == health_pb2.HealthCheckResponse.SERVING
        return call

    held = [await opened() for _ in range(MAX_ANONYMOUS_STREAMS)]
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await opened()
    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.details() == (
        f"ipv4:127.0.0.1 holds {MAX_ANONYMOUS_STREAMS} streams open without a token, "
        "the most allowed"
    )
    # A signed-in user's own streams are counted apart.
    assert await _opened(local_cluster.client(local_cluster.admin_token))

    held.pop().cancel()
    held.append(await eventually(opened, what="a health watch accepted again"))
    for call in held:
        call.cancel()


async def test_submit_wait_waits_for_a_stream_rather_than_failing_its_submitted_task(
    make_local_cluster: MakeCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`submit --wait` whose WatchTask was refused for the caller's streams ended exit 1
    with its task submitted: a workflow manager would run the task a second time. It asks
    again until a stream ends, and says why once."""
    cluster = await make_local_cluster(auth={"streams_per_caller": 2})
    await cluster.add_runner("a")
    admin = cluster.client(cluster.admin_token)
    held = [await _opened(admin) for _ in range(2)]
    config = str(cluster.cli_config(tmp_path / "client.toml"))
    argv = ["submit", "--config", config, "--wait", "--poll-interval", "0.1", "--", "job"]
    waiting = asyncio.create_task(
        asyncio.to_thread(exit_code, direct.run, task.app, "hakuriver.task", argv)
    )
    err: list[str] = []

    def refused() -> bool:
        err.append(capsys.readouterr().err)
        return "streams open, the most auth.streams_per_caller allows" in "".join(err)

    await eventually(refused, what="the refusal said on stderr")
    assert not waiting.done()
    held.pop().cancel()
    assert await asyncio.wait_for(waiting, 10) == 0
    assert "trying again every 0.1s" in "".join(err)
    held[0].cancel()
