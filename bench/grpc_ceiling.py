"""grpc.aio alone: a bare server of the same library, with the Host's TLS files and nothing
of HakuRiver (no interceptor): the standard health servicer, for ``bench_scheduler`` to call
as it calls the Host's floor, and a Runner service that acknowledges a Runner's registration
and drops every later message, for ``bench_heartbeats`` to heartbeat as it heartbeats the Host.

What the Host can do per unary call, or per message on a Runner's stream, is bounded by what
grpc.aio does per call or message on the same machine; printing both in one run shows how
much of the Host's cost is the library (on the 2-core development machine: all of a unary
call's, ~350 us of a core) and what a goal asks of the rest.

``python -m bench.grpc_ceiling PORT CERT KEY`` serves on 127.0.0.1:PORT until stopped.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hakuriver_common.channels import open_channel
from hakuriver_common.config import Config
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, runner_service_pb2_grpc
from hakuriver_host.server import MAX_PENDING_CALLS
from tests.e2e.harness import free_port

START_TIMEOUT = 30.0


class _Runners(runner_service_pb2_grpc.RunnerServiceServicer):
    """Connect with nothing of the Host's: the registration acknowledged, every later
    message read and dropped."""

    async def Connect(
        self,
        request_iterator: AsyncIterator[rpb.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpb.ConnectResponse]:
        requests = request_iterator.__aiter__()
        await anext(requests)
        yield rpb.ConnectResponse(registered=rpb.RegisterAck())
        async for _ in requests:
            pass


class BareServer(NamedTuple):
    """The bare server's process, and the Host's config aimed at it."""

    config: Config
    pid: int


async def _serve(port: int, credentials: grpc.ServerCredentials) -> None:
    # As many calls waiting to be taken as the Host allows: a Fleet registers in a burst.
    server = grpc.aio.server(
        options=[
            ("grpc.server.max_pending_requests", MAX_PENDING_CALLS),
            ("grpc.server.max_pending_requests_hard_limit", 2 * MAX_PENDING_CALLS),
        ]
    )
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    runner_service_pb2_grpc.add_RunnerServiceServicer_to_server(_Runners(), server)
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    await server.wait_for_termination()


@contextmanager
def bare_server(config: Config) -> Iterator[BareServer]:
    """A bare server in a process of its own, with the certificate and key ``config`` (the
    Host's) names."""
    port = free_port()
    command = [sys.executable, "-m", "bench.grpc_ceiling", str(port)]
    command += [str(config.tls.cert_file), str(config.tls.key_file)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    aimed = config.model_copy(deep=True)
    aimed.network.host_port = port
    try:
        _wait_serving(aimed, proc)
        yield BareServer(aimed, proc.pid)
    finally:
        proc.terminate()
        proc.wait(30)


def _wait_serving(config: Config, proc: subprocess.Popen[bytes]) -> None:
    with open_channel(config, "") as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=START_TIMEOUT)
            health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
        except (grpc.FutureTimeoutError, grpc.RpcError) as exc:
            raise RuntimeError(f"the bare grpc.aio server did not serve ({proc.poll()})") from exc


if __name__ == "__main__":
    cert, key = Path(sys.argv[2]).read_bytes(), Path(sys.argv[3]).read_bytes()
    asyncio.run(_serve(int(sys.argv[1]), grpc.ssl_server_credentials([(key, cert)])))
