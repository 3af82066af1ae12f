"""grpc.aio alone: a bare server of the same library, with the Host's TLS files and nothing
of HakuRiver (the standard health servicer, no interceptor), for ``bench_scheduler`` to
call as it calls the Host's floor.

What the Host can do per unary call is bounded by what grpc.aio does per call on the same
machine; printing both in one run shows how much of the floor is the library (on the 2-core
development machine: all of it, ~350 us of a core per call) and what a goal in tasks/s asks
of the rest of a task's path.

``python -m bench.grpc_ceiling PORT CERT KEY`` serves on 127.0.0.1:PORT until stopped.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hakuriver_common.channels import open_channel
from hakuriver_common.config import Config
from tests.e2e.harness import free_port

START_TIMEOUT = 30.0


async def _serve(port: int, credentials: grpc.ServerCredentials) -> None:
    server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    await server.wait_for_termination()


@contextmanager
def bare_server(config: Config) -> Iterator[Config]:
    """A bare server in a process of its own, with the certificate and key ``config`` (the
    Host's) names; yields ``config`` aimed at it."""
    port = free_port()
    command = [sys.executable, "-m", "bench.grpc_ceiling", str(port)]
    command += [str(config.tls.cert_file), str(config.tls.key_file)]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    aimed = config.model_copy(deep=True)
    aimed.network.host_port = port
    try:
        _wait_serving(aimed, proc)
        yield aimed
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
