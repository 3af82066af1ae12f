"""grpc.aio alone: a bare server of the same library, with the Host's TLS files and nothing
of HakuRiver (no interceptor, nothing checked, stored or scheduled):

- the standard health servicer, for ``bench_scheduler`` to call as it calls the Host's floor;
- a task's messages and nothing else (``_Relay``): ``SubmitTask`` answered with a new id and
  the task dispatched to the next Runner in turn, and a release sent to the Runner once it
  reports the task exited, for ``bench_scheduler``'s single submits;
- a Runner's other messages read and dropped, for ``bench_heartbeats``.

What the Host can do per unary call, per message on a Runner's stream, or per task, is
bounded by what grpc.aio does for the same calls and messages on the same machine; printing
both in one run shows how much of the Host's cost is the library (on the 2-core development
machine: all of a unary call's, ~350 us of a core) and what a goal asks of the rest.

``python -m bench.grpc_ceiling PORT CERT KEY`` serves on 127.0.0.1:PORT until stopped.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
from collections.abc import AsyncIterator, Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NamedTuple

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from hakuriver_common.channels import open_channel
from hakuriver_common.config import Config
from hakuriver_common.proto.hakuriver.v1 import (
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_host.server import PENDING_CALLS_OPTIONS
from tests.e2e.harness import free_port

START_TIMEOUT = 30.0


class _Relay(
    runner_service_pb2_grpc.RunnerServiceServicer, task_service_pb2_grpc.TaskServiceServicer
):
    """A task's messages through a server, with nothing of the Host's between them."""

    def __init__(self) -> None:
        self.outboxes: list[asyncio.Queue[rpb.ConnectResponse]] = []
        self.ids = itertools.count(1)
        self.turns = itertools.count()

    async def SubmitTask(
        self, request: tpb.SubmitTaskRequest, context: grpc.aio.ServicerContext
    ) -> tpb.SubmitTaskResponse:
        task_id = next(self.ids)
        outbox = self.outboxes[next(self.turns) % len(self.outboxes)]
        dispatch = rpb.DispatchCommand(task_id=task_id, command=request.command)
        outbox.put_nowait(rpb.ConnectResponse(dispatch=dispatch))
        return tpb.SubmitTaskResponse(tasks=[task_pb2.Task(task_id=task_id)], created=1)

    async def Connect(
        self,
        request_iterator: AsyncIterator[rpb.ConnectRequest],
        context: grpc.aio.ServicerContext,
    ) -> AsyncIterator[rpb.ConnectResponse]:
        requests = request_iterator.__aiter__()
        await anext(requests)
        yield rpb.ConnectResponse(registered=rpb.RegisterAck())
        outbox: asyncio.Queue[rpb.ConnectResponse] = asyncio.Queue()
        self.outboxes.append(outbox)
        reader = asyncio.create_task(self._read(requests, outbox))
        try:
            while True:
                yield await outbox.get()
        finally:
            reader.cancel()
            self.outboxes.remove(outbox)

    async def _read(
        self,
        requests: AsyncIterator[rpb.ConnectRequest],
        outbox: asyncio.Queue[rpb.ConnectResponse],
    ) -> None:
        async for message in requests:
            kind = message.WhichOneof("payload")
            if kind == "task_state":
                reports: Iterable[rpb.TaskStateReport] = (message.task_state,)
            elif kind == "task_states":
                reports = message.task_states.reports
            else:
                continue
            for report in reports:
                if report.state == rpb.RUNNER_TASK_STATE_EXITED:
                    release = rpb.ReleaseCommand(task_id=report.task_id)
                    outbox.put_nowait(rpb.ConnectResponse(release=release))


class BareServer(NamedTuple):
    """The bare server's process, and the Host's config aimed at it."""

    config: Config
    pid: int


async def _serve(port: int, credentials: grpc.ServerCredentials) -> None:
    # As many calls waiting to be taken as the Host allows: a Fleet registers in a burst.
    server = grpc.aio.server(options=PENDING_CALLS_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(health.aio.HealthServicer(), server)
    relay = _Relay()  # type: ignore[abstract]  # (the stubs' other methods: UNIMPLEMENTED)
    runner_service_pb2_grpc.add_RunnerServiceServicer_to_server(relay, server)
    task_service_pb2_grpc.add_TaskServiceServicer_to_server(relay, server)
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
