"""The Runner's one outbound Connect stream to the Host, re-established on loss.

It owns the connection: registering, reconnecting with backoff, the loops that write the
outbox, read the Host's messages and send heartbeats, and handing each message to the
supervisor or the tunnels.

The runner keeps no state of its own: on every (re)connection it lists its tasks (labelled
containers, spooled host processes), tells the Host, and the Host answers which to keep
(with the byte offsets of output it already has) and which to discard. Output followers
replay a task's output from the start and skip what the Host has, so nothing is lost or
written twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import docker.errors
import grpc
import requests

from hakuriver_common.channels import bearer, open_aio_channel
from hakuriver_common.client_config import TlsSetupError
from hakuriver_common.config import Config
from hakuriver_common.credentials import CredentialsError
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
)
from hakuriver_runner.backoff import backoff_delay
from hakuriver_runner.credential import RunnerIdentity
from hakuriver_runner.docker_backend import DockerBackend
from hakuriver_runner.gpu_readings import GpuReadings
from hakuriver_runner.outbox import Lanes, Outbox
from hakuriver_runner.pool import BlockingPool
from hakuriver_runner.supervisor import Supervisor
from hakuriver_runner.system_info import (
    CpuMeter,
    GpuProbe,
    read_numa_topology,
    sample_health,
    total_memory_bytes,
    usable_cpus,
)
from hakuriver_runner.tunnels import HostDial, Tunnels

log = logging.getLogger(__name__)

DEFAULT_HEARTBEAT_SECONDS = 5.0
# What docker-py raises while the daemon is down or restarting.
DOCKER_UNREACHABLE = (docker.errors.DockerException, requests.exceptions.RequestException)
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class RegistrationRefused(Exception):
    """The Host refused this Runner's registration as invalid (INVALID_ARGUMENT)."""


class Session:
    def __init__(
        self,
        config: Config,
        name: str,
        docker: DockerBackend,
        supervisor: Supervisor,
        outbox: Outbox,
        pool: BlockingPool,
    ) -> None:
        self.config = config
        self.name = name
        self.docker = docker
        self.supervisor = supervisor
        self.tunnels = Tunnels(
            outbox, supervisor.ssh_port, HostDial(config.network.host_reachable_address)
        )
        self.gpus = GpuReadings(GpuProbe(), pool)
        self._cpu = CpuMeter()
        self.identity = RunnerIdentity(config)
        # This process, as its registrations name it: the Host keeps what it knows of the
        # node's GPUs across a reconnect, and takes them anew from a restarted Runner.
        self.instance_id = uuid.uuid4().hex
        supervisor.set_cluster(self.identity.cluster_id())
        self._outbox = outbox
        self._pool = pool
        # Tasks handling the Host's commands and tunnel openings of the current stream.
        self._handlers: set[asyncio.Task[None]] = set()
        self._commands: dict[str, Callable[[Any], Awaitable[None]]] = {
            "dispatch": supervisor.dispatch,
            "kill": supervisor.kill,
            "pause": supervisor.pause,
            "resume": supervisor.resume,
            "release": supervisor.release,
            "prepare": supervisor.prepare,
        }

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected to the Host until ``stop`` is set.

        CredentialsError (nothing to present, or a credential file others can read),
        TlsSetupError (a CA or certificate file missing or unreadable) and
        RegistrationRefused (the Host found its registration invalid) end the Runner:
        retrying cannot help. A refusal by the Host is retried, since an admin
        can resolve it (revoking the name's credential lets the join token in again)."""
        attempt = 0
        try:
            while not stop.is_set():
                try:
                    if await self._connect(stop):
                        attempt = 0
                except grpc.aio.AioRpcError as exc:
                    self._log_refusal(exc)
                except CredentialsError as exc:
                    log.error("cannot join the cluster: %s", exc)
                    raise
                except TlsSetupError as exc:
                    log.error("cannot connect to the Host: %s", exc)
                    raise
                except DOCKER_UNREACHABLE as exc:
                    # Registering names every task container: without Docker it would
                    # claim none, and the Host would take its running tasks for lost.
                    log.warning("waiting for Docker before registering: %s", exc)
                except Exception:
                    log.exception("runner session failed")
                if stop.is_set():
                    break
                delay = backoff_delay(attempt, cap=self.config.runner.reconnect_max_seconds)
                attempt += 1
                log.info("reconnecting in %.1fs", delay)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), delay)
        finally:
            self._pool.shutdown()

    def _log_refusal(self, exc: grpc.aio.AioRpcError) -> None:
        code = exc.code()
        if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
            log.error("the host refused this runner: %s (%s)", exc.details(), code.name)
        elif code == grpc.StatusCode.INVALID_ARGUMENT:
            # Its own registration (its name, say): the same again would be refused again.
            log.error("the host refused this runner: %s (%s)", exc.details(), code.name)
            raise RegistrationRefused(exc.details() or code.name) from None
        else:
            log.warning("connection to host %s: %s", self.config.host_target, code.name)

    async def _register_message(self) -> rpb.ConnectRequest:
        known_task_ids = await self.supervisor.scan()
        environments, _ = await self._pool.run(self.docker.inventory)
        numa = await self._pool.run(read_numa_topology)
        cpus = usable_cpus()
        gpus = await self.gpus.take(DEFAULT_HEARTBEAT_SECONDS)
        return rpb.ConnectRequest(
            register=rpb.RegisterRunner(
                hostname=self.name,
                total_cores=len(cpus),
                total_memory_bytes=total_memory_bytes(),
                numa_nodes=[
                    node_pb2.NumaNode(
                        id=n.id, cpus=[c for c in n.cpus if c in cpus], memory_bytes=n.memory_bytes
                    )
                    for n in numa
                ],
                gpus=gpus,
                environments=environments,
                known_task_ids=known_task_ids,
                takes_batches=True,
                prepares_ahead=True,
                takes_release_batches=True,
                instance_id=self.instance_id,
            )
        )

    async def _connect(self, stop: asyncio.Event) -> bool:
        """One connection; returns True if it got as far as registering."""
        secret = self.identity.secret()
        register = await self._register_message()
        async with open_aio_channel(self.config, options=CHANNEL_OPTIONS) as channel:
            call = runner_service_pb2_grpc.RunnerServiceStub(channel).Connect(
                metadata=bearer(secret)
            )
            await call.write(register)
            first = await call.read()
            if not isinstance(first, rpb.ConnectResponse) or not first.HasField("registered"):
                raise ConnectionError("host closed the stream before acknowledging registration")
            ack = first.registered
            if ack.runner_credential:
                self.identity.keep(ack.runner_credential)
            if ack.cluster_id and ack.cluster_id != self.identity.cluster_id():
                self.identity.keep_cluster_id(ack.cluster_id)
                self.supervisor.set_cluster(ack.cluster_id)
            log.info(
                "registered with host %s as %s: adopting %d, discarding %d",
                self.config.host_target,
                self.name,
                len(ack.adopt),
                len(ack.discard_task_ids),
            )
            lanes = self._outbox.open()
            await self.supervisor.reconcile(ack)
            loops = [
                asyncio.create_task(self._write_loop(call, lanes)),
                asyncio.create_task(self._read_loop(call)),
                asyncio.create_task(
                    self._heartbeat_loop(
                        ack.heartbeat_interval_seconds or DEFAULT_HEARTBEAT_SECONDS
                    )
                ),
                asyncio.create_task(stop.wait()),
            ]
            try:
                done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    if not finished.cancelled() and finished.exception() is not None:
                        self._log_stream_end(finished.exception())
            finally:
                for loop_task in loops:
                    loop_task.cancel()
                await self._end_stream()
                call.cancel()
        return True

    def _log_stream_end(self, exc: BaseException | None) -> None:
        """One line: a call's error printed whole (``%r``) took five lines, with gRPC's
        debug string, each time the Host went away without closing the stream."""
        if isinstance(exc, grpc.aio.AioRpcError):
            log.warning(
                "stream to host %s cut: %s (%s)",
                self.config.host_target,
                exc.details(),
                exc.code().name,
            )
        else:
            log.warning("stream loop ended: %r", exc)

    async def _end_stream(self) -> None:
        """Stop everything tied to the stream; tasks keep running, to be re-adopted."""
        self.tunnels.close_all()
        for handler in list(self._handlers):
            handler.cancel()
        watchers = self.supervisor.stop_watching()
        await asyncio.gather(*watchers, *self._handlers, return_exceptions=True)
        self._outbox.close()

    async def _write_loop(self, call: Any, lanes: Lanes) -> None:
        while True:
            await call.write(await lanes.take())

    async def _read_loop(self, call: Any) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                log.warning("host closed the stream")
                return
            self._route(message)

    def _route(self, message: rpb.ConnectResponse) -> None:
        """Tunnel messages are handled here, in arrival order; commands each in a task."""
        kind = message.WhichOneof("payload")
        if kind == "tunnel_open":
            self._spawn(self.tunnels.open(message.tunnel_open))
        elif kind == "tunnel_data":
            closing = self.tunnels.write(message.tunnel_data)
            if closing is not None:
                self._spawn(closing)
        elif kind == "tunnel_close":
            self.tunnels.close(message.tunnel_close.tunnel_id)
        elif kind == "dispatches":
            for dispatch in message.dispatches.dispatches:
                self._spawn(self._handle(rpb.ConnectResponse(dispatch=dispatch)))
        elif kind == "releases":
            for release in message.releases.releases:
                self._spawn(self._handle(rpb.ConnectResponse(release=release)))
        else:
            self._spawn(self._handle(message))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        handler = asyncio.create_task(work)
        self._handlers.add(handler)
        handler.add_done_callback(self._handlers.discard)

    async def _handle(self, message: rpb.ConnectResponse) -> None:
        kind = message.WhichOneof("payload")
        if kind is None:
            return
        handler = self._commands.get(kind)
        if handler is None:
            log.warning("unexpected %s from host", kind)
            return
        command = getattr(message, kind)
        async with self.supervisor.serial(command.task_id):
            try:
                await handler(command)
            except Exception:
                log.exception("handling %s for task %s failed", kind, command.task_id)

    async def _heartbeat_loop(self, interval: float) -> None:
        """A health sample every interval. A Docker daemon that does not answer (a restart)
        does not end the stream: the last environments seen are sent meanwhile."""
        environments: list[str] = []
        loaded: dict[str, int] = {}
        while True:
            await self.supervisor.check_tasks()
            gpus = await self.gpus.take(interval)
            health = await self._pool.run(sample_health, self._cpu, gpus)
            try:
                environments, loaded = await self._pool.run(self.docker.inventory)
            except DOCKER_UNREACHABLE as exc:
                log.warning("cannot list environments: Docker does not answer (%s)", exc)
            await self._outbox.send(
                rpb.ConnectRequest(
                    heartbeat=rpb.Heartbeat(
                        health=health,
                        environments=environments,
                        loaded=[
                            rpb.LoadedEnvironment(name=n, tarball_timestamp=t)
                            for n, t in sorted(loaded.items())
                        ],
                    )
                )
            )
            await asyncio.sleep(interval)
