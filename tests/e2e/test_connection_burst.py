"""A whole cluster reconnecting at once (as after a Host restart) is accepted in full.

gRPC's defaults cancel calls at random once more than 1,000 wait for the server to take
them; the Host raises that limit. The Runners here are FakeRunners (protocol clients on
loopback): this checks the Host's capacity, not the Runner agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from hakuriver_common.config import Config
from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb
from tests.e2e.harness import running_cluster
from tests.fake_runner import FakeRunner, Fleet

BURST = 2000
STREAMS_PER_CONNECTION = 100


async def _connect_all(host_config: Config) -> tuple[int, list[str]]:
    fleet = Fleet(
        host_config,
        BURST,
        "burst-{:04d}",
        STREAMS_PER_CONNECTION,
        cores=4,
        memory_bytes=8 * 10**9,
        environments=[],
        reconnect=False,
        heartbeats=False,
    )
    registered = 0
    errors: list[str] = []
    all_in = asyncio.Event()

    async def register(runner: FakeRunner) -> None:
        """Register and keep the stream open (until stopped below)."""
        nonlocal registered
        try:
            await runner.start()
            registered += 1
        except grpc.aio.AioRpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")
        except ConnectionError as exc:
            errors.append(str(exc))
        if registered + len(errors) == BURST:
            all_in.set()

    tasks = [asyncio.create_task(register(runner)) for runner in fleet.runners]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), 90)
    count = registered
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    await fleet.stop()
    return count, errors


def test_a_burst_of_runner_connections_is_accepted(docker_ready: None, tmp_path: Path) -> None:
    with running_cluster(tmp_path, runner_count=0, heartbeat_timeout_factor=1000) as cluster:
        count, errors = asyncio.run(_connect_all(cluster.client_config))
        assert errors == [] and count == BURST, (count, sorted(set(errors)))
        nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=30).nodes
        assert len(nodes) == BURST
