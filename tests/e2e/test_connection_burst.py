"""A whole cluster reconnecting at once (as after a Host restart) is accepted in full.

gRPC's defaults cancel calls at random once more than 1,000 wait for the server to take
them; the Host raises that limit. The Runners here are protocol clients on loopback: this
checks the Host's capacity, not the Runner agent.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import grpc

from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    node_service_pb2 as npb,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
)
from tests.e2e.harness import running_cluster

BURST = 2000
STREAMS_PER_CONNECTION = 100


async def _connect_all(target: str) -> tuple[int, list[str]]:
    channels = [
        grpc.aio.insecure_channel(target, options=[("grpc.use_local_subchannel_pool", 1)])
        for _ in range(BURST // STREAMS_PER_CONNECTION)
    ]
    registered = 0
    errors: list[str] = []
    all_in = asyncio.Event()

    def settled() -> None:
        if registered + len(errors) == BURST:
            all_in.set()

    async def runner(index: int) -> None:
        nonlocal registered
        stub = runner_service_pb2_grpc.RunnerServiceStub(channels[index // STREAMS_PER_CONNECTION])
        call = stub.Connect()
        try:
            await call.write(
                rpb.ConnectRequest(
                    register=rpb.RegisterRunner(
                        hostname=f"burst-{index:04d}",
                        total_cores=4,
                        total_memory_bytes=8 * 10**9,
                        numa_nodes=[node_pb2.NumaNode(id=0, cpus=range(4), memory_bytes=8 * 10**9)],
                    )
                )
            )
            reply = await call.read()
            assert reply is not grpc.aio.EOF and reply.HasField("registered")
            registered += 1
            settled()
            await asyncio.sleep(120)
        except grpc.aio.AioRpcError as exc:
            errors.append(f"{exc.code().name}: {exc.details()}")
            settled()
        finally:
            call.cancel()

    tasks = [asyncio.create_task(runner(i)) for i in range(BURST)]
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_in.wait(), 90)
    count = registered
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    for channel in channels:
        await channel.close()
    return count, errors


def test_a_burst_of_runner_connections_is_accepted(docker_ready: None, tmp_path: Path) -> None:
    with running_cluster(tmp_path, runner_count=0, heartbeat_timeout_factor=1000) as cluster:
        count, errors = asyncio.run(_connect_all(f"127.0.0.1:{cluster.host_port}"))
        assert errors == [] and count == BURST, (count, sorted(set(errors)))
        nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=30).nodes
        assert len(nodes) == BURST
