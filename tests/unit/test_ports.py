"""Every port the Host listens on is a row of the authorisation table (authorization.PORTS),
and each refuses a caller who does not present what its row asks for."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import grpc
import psutil
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb, task_service_pb2_grpc
from hakuriver_host.authorization import PORTS
from hakuriver_host.server import HostServer, SecurityConfigError
from tests.connect_http import Endpoint
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster, local_config
from tests.unit.test_metrics_auth import scrape

METRICS_TOKEN = "metrics-" + "y" * 40


def _listening() -> set[int]:
    """The TCP ports this process listens on (the in-process Host's among them)."""
    return {
        conn.laddr.port
        for conn in psutil.Process(os.getpid()).net_connections(kind="tcp")
        if conn.status == psutil.CONN_LISTEN
    }


async def test_the_host_listens_on_the_ports_of_the_table_and_no_other(
    make_local_cluster: MakeCluster,
) -> None:
    before = _listening()
    cluster = await make_local_cluster()
    assert cluster.server is not None
    ports = cluster.server.listening
    assert set(ports) == set(PORTS)
    assert _listening() - before == set(ports.values())


async def _grpc_refused(cluster: LocalCluster) -> str:
    stub = task_service_pb2_grpc.TaskServiceStub(cluster.channel())
    try:
        await stub.GetTask(tpb.GetTaskRequest(task_id=1), timeout=5)
    except grpc.aio.AioRpcError as refused:
        return refused.code().name
    return "OK"


async def _connect_refused(cluster: LocalCluster) -> str:
    assert cluster.server is not None
    api = Endpoint(
        f"https://127.0.0.1:{cluster.server.dashboard_port}", Path(cluster.config.tls.ca_file)
    )
    reply = await asyncio.to_thread(
        api.call, "hakuriver.v1.TaskService/GetTask", {"taskId": "1"}, None
    )
    return str(reply.json().get("code", reply.status))


async def _ssh_refused(cluster: LocalCluster) -> str:
    assert cluster.server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.server.ssh_proxy_port)
    try:
        writer.write(b"TICKET not-a-ticket-anybody-was-given\n")
        await writer.drain()
        return (await asyncio.wait_for(reader.readline(), 5)).decode().split(" ")[0].strip()
    finally:
        writer.close()


async def _metrics_refused(cluster: LocalCluster) -> str:
    status, _, _ = await scrape(cluster)
    return str(status)


REFUSED: dict[str, tuple[Callable[[LocalCluster], Awaitable[str]], str]] = {
    "network.host_port": (_grpc_refused, "UNAUTHENTICATED"),
    "dashboard.port": (_connect_refused, "unauthenticated"),
    "network.host_ssh_proxy_port": (_ssh_refused, "ERROR"),
    "network.metrics_port": (_metrics_refused, "401"),
}


async def test_each_port_refuses_a_caller_without_its_right(
    make_local_cluster: MakeCluster,
) -> None:
    assert set(REFUSED) == set(PORTS), "a port of the table has no refusal test here"
    cluster = await make_local_cluster(auth={"metrics_token": METRICS_TOKEN})
    answers = {key: await probe(cluster) for key, (probe, _) in REFUSED.items()}
    assert answers == {key: refused for key, (_, refused) in REFUSED.items()}


async def test_two_of_the_hosts_ports_set_to_one_number_are_named_before_it_listens(
    tmp_path: Path,
) -> None:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    config = local_config(tmp_path, network={"metrics_port": port, "host_ssh_proxy_port": port})
    before = _listening()
    with pytest.raises(SecurityConfigError) as refused:
        await HostServer(config, prepare_default_environment=False).start()
    assert str(refused.value) == (
        f"network.host_ssh_proxy_port and network.metrics_port are both {port}: each of the "
        "Host's ports needs its own number"
    )
    assert _listening() == before
