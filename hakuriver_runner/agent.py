"""The runner agent: one outbound Connect stream to the Host, re-established on loss.

The runner keeps no state of its own: on every (re)connection it lists its tasks (labelled
containers, spooled host processes), tells the Host, and the Host answers which to keep
(with the byte offsets of output it already has) and which to discard. Output followers
replay a task's output from the start and skip what the Host has, so nothing is lost or
written twice.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import socket
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from typing import Any, TypeVar

import grpc

from hakuriver_common import __version__
from hakuriver_common.config import Config
from hakuriver_common.environments import NULL_CONTAINER
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    task_pb2,
)
from hakuriver_common.timestamps import to_timestamp
from hakuriver_runner.backend import LogFollow, StartError, TaskBackend
from hakuriver_runner.backoff import backoff_delay
from hakuriver_runner.docker_backend import DockerBackend, ssh_port_of
from hakuriver_runner.process_backend import ProcessBackend
from hakuriver_runner.system_info import (
    GpuProbe,
    read_numa_topology,
    sample_health,
    total_memory_bytes,
    usable_cpus,
)

log = logging.getLogger(__name__)

T = TypeVar("T")
OUTBOX_SIZE = 1024
TUNNEL_CHUNK = 64 * 1024
SSHD_READY_SECONDS = 60.0
EMIT_POLL_SECONDS = 0.5
CHANNEL_OPTIONS = [
    ("grpc.keepalive_time_ms", 10_000),
    ("grpc.keepalive_timeout_ms", 5_000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.max_send_message_length", 16 * 1024 * 1024),
    ("grpc.max_receive_message_length", 16 * 1024 * 1024),
]


class _Cancelled(Exception):
    """Raised in a log thread when its follower was cancelled while waiting for room."""


def _report(
    task_id: int, state: rpb.RunnerTaskState.ValueType, **fields: Any
) -> rpb.ConnectRequest:
    return rpb.ConnectRequest(
        task_state=rpb.TaskStateReport(task_id=task_id, state=state, **fields)
    )


class Agent:
    def __init__(self, config: Config) -> None:
        self.config = config
        self.name = config.runner.name or socket.gethostname()
        self.docker = DockerBackend(config, self.name)
        self.processes = ProcessBackend(config, self.name)
        self.gpus = GpuProbe()
        self._pool = ThreadPoolExecutor(max_workers=128, thread_name_prefix="runner-docker")
        self._outbox: asyncio.Queue[rpb.ConnectRequest] | None = None
        # Every task this runner supervises: its backend and the backend's handle.
        self._handles: dict[int, tuple[TaskBackend, Any]] = {}
        self._supervisors: dict[int, asyncio.Task[None]] = {}
        self._task_locks: dict[int, asyncio.Lock] = {}
        self._handlers: set[asyncio.Task[None]] = set()
        # One docker load per environment at a time; concurrent tasks wait for the same one.
        self._loads: dict[str, asyncio.Future[None]] = {}
        # SSH tunnels to VPS containers: id -> (writer to sshd, task pumping sshd's output).
        self._tunnels: dict[int, tuple[asyncio.StreamWriter, asyncio.Task[None]]] = {}

    async def _blocking(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, fn, *args)

    async def _send(self, message: rpb.ConnectRequest) -> None:
        if self._outbox is not None:
            await self._outbox.put(message)

    # ----- connection -------------------------------------------------------------------

    async def run(self, stop: asyncio.Event) -> None:
        """Stay connected to the Host until ``stop`` is set."""
        attempt = 0
        while not stop.is_set():
            try:
                if await self._session(stop):
                    attempt = 0
            except grpc.aio.AioRpcError as exc:
                log.warning("connection to host %s: %s", self.config.host_target, exc.code().name)
            except Exception:
                log.exception("runner session failed")
            if stop.is_set():
                break
            delay = backoff_delay(attempt, cap=self.config.runner.reconnect_max_seconds)
            attempt += 1
            log.info("reconnecting in %.1fs", delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), delay)
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _register_message(self) -> rpb.ConnectRequest:
        self._handles = {
            task_id: (backend, handle)
            for backend in (self.docker, self.processes)
            for task_id, handle in (await self._blocking(backend.tasks)).items()
        }
        environments, _ = await self._blocking(self.docker.inventory)
        numa = await self._blocking(read_numa_topology)
        cpus = usable_cpus()
        gpus = await self._blocking(self.gpus.sample)
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
                known_task_ids=sorted(self._handles),
                version=__version__,
            )
        )

    async def _session(self, stop: asyncio.Event) -> bool:
        """One connection; returns True if it got as far as registering."""
        register = await self._register_message()
        async with grpc.aio.insecure_channel(
            self.config.host_target, options=CHANNEL_OPTIONS
        ) as channel:
            call = runner_service_pb2_grpc.RunnerServiceStub(channel).Connect()
            await call.write(register)
            first = await call.read()
            if not isinstance(first, rpb.ConnectResponse) or not first.HasField("registered"):
                raise ConnectionError("host closed the stream before acknowledging registration")
            ack = first.registered
            log.info(
                "registered with host %s as %s: adopting %d, discarding %d",
                self.config.host_target,
                self.name,
                len(ack.adopt),
                len(ack.discard_task_ids),
            )
            self._outbox = asyncio.Queue(OUTBOX_SIZE)
            for task_id in ack.discard_task_ids:
                await self._discard(task_id)
            for adopt in ack.adopt:
                if adopt.task_id in self._handles:
                    self._supervise(adopt.task_id, adopt.stdout_offset, adopt.stderr_offset)
            loops = [
                asyncio.create_task(self._write_loop(call)),
                asyncio.create_task(self._read_loop(call)),
                asyncio.create_task(self._heartbeat_loop(ack.heartbeat_interval_seconds or 5.0)),
                asyncio.create_task(stop.wait()),
            ]
            try:
                done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
                for finished in done:
                    if not finished.cancelled() and finished.exception() is not None:
                        log.warning("stream loop ended: %r", finished.exception())
            finally:
                for loop_task in loops:
                    loop_task.cancel()
                await self._stop_supervisors()
                self._outbox = None
                call.cancel()
        return True

    async def _write_loop(self, call: Any) -> None:
        assert self._outbox is not None
        outbox = self._outbox
        while True:
            await call.write(await outbox.get())

    async def _read_loop(self, call: Any) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                log.warning("host closed the stream")
                return
            if message.WhichOneof("payload") in ("tunnel_open", "tunnel_data", "tunnel_close"):
                self._on_tunnel(message)
                continue
            handler = asyncio.create_task(self._handle(message))
            self._handlers.add(handler)
            handler.add_done_callback(self._handlers.discard)

    async def _heartbeat_loop(self, interval: float) -> None:
        while True:
            health = await self._blocking(sample_health, self.gpus)
            environments, loaded = await self._blocking(self.docker.inventory)
            await self._send(
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

    # ----- SSH tunnels ------------------------------------------------------------------

    def _on_tunnel(self, message: rpb.ConnectResponse) -> None:
        """Tunnel messages are handled in arrival order, on the read loop itself."""
        kind = message.WhichOneof("payload")
        if kind == "tunnel_open":
            opening = asyncio.create_task(self._open_tunnel(message.tunnel_open))
            self._handlers.add(opening)
            opening.add_done_callback(self._handlers.discard)
        elif kind == "tunnel_data":
            entry = self._tunnels.get(message.tunnel_data.tunnel_id)
            if entry is not None:
                entry[0].write(message.tunnel_data.data)
        elif kind == "tunnel_close":
            entry = self._tunnels.pop(message.tunnel_close.tunnel_id, None)
            if entry is not None:
                entry[1].cancel()
                entry[0].close()

    async def _open_tunnel(self, request: rpb.TunnelOpen) -> None:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", request.port), 5
            )
        except (OSError, TimeoutError) as exc:
            await self._send(
                rpb.ConnectRequest(
                    tunnel_close=rpb.TunnelClose(
                        tunnel_id=request.tunnel_id,
                        error=f"cannot reach the SSH server of task {request.task_id}: {exc}",
                    )
                )
            )
            return
        pump = asyncio.create_task(self._pump_tunnel(request.tunnel_id, reader, writer))
        self._tunnels[request.tunnel_id] = (writer, pump)
        await self._send(
            rpb.ConnectRequest(tunnel_opened=rpb.TunnelOpened(tunnel_id=request.tunnel_id))
        )

    async def _pump_tunnel(
        self, tunnel_id: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        try:
            while data := await reader.read(TUNNEL_CHUNK):
                await self._send(
                    rpb.ConnectRequest(tunnel_data=rpb.TunnelData(tunnel_id=tunnel_id, data=data))
                )
        except OSError:
            pass
        if self._tunnels.pop(tunnel_id, None) is not None:
            writer.close()
            await self._send(rpb.ConnectRequest(tunnel_close=rpb.TunnelClose(tunnel_id=tunnel_id)))

    async def _stop_supervisors(self) -> None:
        for writer, pump in self._tunnels.values():
            pump.cancel()
            writer.close()
        self._tunnels.clear()
        for handler in list(self._handlers):
            handler.cancel()
        supervisors = list(self._supervisors.values())
        for supervisor in supervisors:
            supervisor.cancel()
        await asyncio.gather(*supervisors, *self._handlers, return_exceptions=True)
        self._supervisors.clear()

    # ----- commands from the host -------------------------------------------------------

    async def _handle(self, message: rpb.ConnectResponse) -> None:
        kind = message.WhichOneof("payload")
        command = getattr(message, kind) if kind else None
        if command is None:
            return
        lock = self._task_locks.setdefault(command.task_id, asyncio.Lock())
        async with lock:
            try:
                if kind == "dispatch":
                    await self._on_dispatch(message.dispatch)
                elif kind == "kill":
                    await self._on_kill(message.kill)
                elif kind == "pause":
                    await self._on_pause(message.pause.task_id, pause=True)
                elif kind == "resume":
                    await self._on_pause(message.resume.task_id, pause=False)
                elif kind == "release":
                    await self._on_release(message.release.task_id)
                else:
                    log.warning("unexpected %s from host", kind)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("handling %s for task %s failed", kind, command.task_id)

    async def _on_dispatch(self, dispatch: rpb.DispatchCommand) -> None:
        task_id = dispatch.task_id
        if task_id in self._supervisors:
            return
        backend: TaskBackend = (
            self.processes if dispatch.container_name == NULL_CONTAINER else self.docker
        )
        try:
            if backend is self.docker:
                await self._ensure_environment(dispatch)
            handle = await self._blocking(backend.start, dispatch)
        except StartError as exc:
            log.warning("task %s could not start: %s", task_id, exc)
            await self._send(
                _report(task_id, rpb.RUNNER_TASK_STATE_START_FAILED, error_message=str(exc))
            )
            return
        self._handles[task_id] = (backend, handle)
        self._supervise(task_id, 0, 0, started=True)

    async def _ensure_environment(self, dispatch: rpb.DispatchCommand) -> None:
        """Load the environment's newest tarball first if it is newer than the image here."""
        name = dispatch.container_name
        tarball = await self._blocking(self.docker.tarball_to_load, name)
        if tarball is None:
            return
        await self._send(
            _report(
                dispatch.task_id,
                rpb.RUNNER_TASK_STATE_PREPARING,
                detail=f"loading environment {name} from {tarball.path.name}",
            )
        )
        load = self._loads.get(name)
        if load is None:
            load = asyncio.ensure_future(self._blocking(self.docker.load, tarball))
            self._loads[name] = load
            load.add_done_callback(lambda _: self._loads.pop(name, None))
        await asyncio.shield(load)

    async def _on_kill(self, kill: rpb.KillCommand) -> None:
        found = self._handles.get(kill.task_id)
        if found is None:
            await self._send(
                _report(
                    kill.task_id,
                    rpb.RUNNER_TASK_STATE_EXITED,
                    error_message="nothing of the task is left on the runner",
                )
            )
            return
        backend, handle = found
        await self._blocking(backend.stop, handle, kill.grace_seconds)

    async def _on_pause(self, task_id: int, pause: bool) -> None:
        found = self._handles.get(task_id)
        if found is None:
            return
        backend, handle = found
        if pause:
            await self._blocking(backend.pause, handle)
            await self._send(_report(task_id, rpb.RUNNER_TASK_STATE_PAUSED))
        else:
            await self._blocking(backend.resume, handle)
            await self._send(_report(task_id, rpb.RUNNER_TASK_STATE_RUNNING))

    async def _on_release(self, task_id: int) -> None:
        supervisor = self._supervisors.pop(task_id, None)
        if supervisor is not None and not supervisor.done():
            supervisor.cancel()
        self._task_locks.pop(task_id, None)
        await self._discard(task_id)

    async def _discard(self, task_id: int) -> None:
        """Stop and remove whatever is left of a task the Host is done with."""
        found = self._handles.pop(task_id, None)
        if found is None:
            for each in (self.docker, self.processes):
                await self._blocking(each.remove, task_id)
            return
        backend, handle = found
        if backend is self.processes:
            await self._blocking(backend.stop, handle, 0)
        await self._blocking(backend.remove, task_id)

    # ----- supervision ------------------------------------------------------------------

    def _supervise(
        self, task_id: int, stdout_offset: int, stderr_offset: int, started: bool = False
    ) -> None:
        """Follow a task's output and report its exit.

        ``started``: this runner just started it, so it ran even if it has already exited.
        """
        current = self._supervisors.get(task_id)
        if current is not None and not current.done():
            return
        self._supervisors[task_id] = asyncio.create_task(
            self._supervise_task(task_id, stdout_offset, stderr_offset, started),
            name=f"task-{task_id}",
        )

    def _emitter(
        self, task_id: int, stream: int, follow: LogFollow
    ) -> Callable[[int, bytes], None]:
        loop = asyncio.get_running_loop()
        outbox = self._outbox
        assert outbox is not None

        def emit(offset: int, data: bytes) -> None:
            message = rpb.ConnectRequest(
                log_chunk=rpb.LogChunk(task_id=task_id, stream=stream, offset=offset, data=data)  # type: ignore[arg-type]
            )
            future = asyncio.run_coroutine_threadsafe(outbox.put(message), loop)
            while True:
                try:
                    future.result(EMIT_POLL_SECONDS)
                    return
                except concurrent.futures.TimeoutError:
                    if follow.cancelled:
                        future.cancel()
                        raise _Cancelled from None

        return emit

    async def _sshd_ready(self, handle: Any, port: int) -> bool:
        """Wait until the VPS's sshd greets on its port; False if the container ends first."""
        deadline = time.monotonic() + SSHD_READY_SECONDS
        while time.monotonic() < deadline:
            try:
                reader, writer = await asyncio.wait_for(
                    asyncio.open_connection("127.0.0.1", port), 1
                )
                try:
                    greeting = await asyncio.wait_for(reader.read(4), 2)
                finally:
                    writer.close()
                if greeting == b"SSH-":
                    return True
            except (OSError, TimeoutError):
                pass
            status, _ = await self._blocking(self.docker.state, handle)
            if status == "exited":
                return False
            await asyncio.sleep(0.1)
        return False

    async def _supervise_vps(
        self, task_id: int, handle: Any, port: int, started_at: datetime | None
    ) -> None:
        """A VPS is running once its sshd accepts connections; it writes no log files."""
        ready = await self._sshd_ready(handle, port)
        if ready:
            await self._send(
                _report(
                    task_id,
                    rpb.RUNNER_TASK_STATE_RUNNING,
                    started_at=to_timestamp(started_at),
                    ssh_port=port,
                )
            )
        else:
            await self._blocking(self.docker.stop, handle, 0)
        info = await self._blocking(self.docker.wait, handle)
        error = info.error
        if not ready:
            tail = await self._blocking(self.docker.last_output, handle)
            error = f"the VPS never accepted SSH connections: {tail or 'no output'}"
        await self._send(
            _report(
                task_id,
                rpb.RUNNER_TASK_STATE_EXITED,
                exit_code=info.exit_code,
                oom_killed=info.oom_killed,
                error_message=error,
                started_at=to_timestamp(info.started_at),
                finished_at=to_timestamp(info.finished_at),
            )
        )

    async def _supervise_task(
        self, task_id: int, stdout_offset: int, stderr_offset: int, started: bool
    ) -> None:
        loop = asyncio.get_running_loop()
        backend, handle = self._handles[task_id]
        follows = (LogFollow(), LogFollow())
        try:
            status, started_at = await self._blocking(backend.state, handle)
            port = ssh_port_of(handle) if backend is self.docker else 0
            if port:
                await self._supervise_vps(task_id, handle, port, started_at)
                return
            if started or status in ("running", "paused"):
                state = (
                    rpb.RUNNER_TASK_STATE_PAUSED
                    if status == "paused"
                    else rpb.RUNNER_TASK_STATE_RUNNING
                )
                await self._send(_report(task_id, state, started_at=to_timestamp(started_at)))
            streams = (
                (follows[0], True, stdout_offset, task_pb2.LOG_STREAM_STDOUT),
                (follows[1], False, stderr_offset, task_pb2.LOG_STREAM_STDERR),
            )
            await asyncio.gather(
                *(
                    loop.run_in_executor(
                        self._pool,
                        backend.follow,
                        handle,
                        is_stdout,
                        offset,
                        self._emitter(task_id, stream, follow),
                        follow,
                    )
                    for follow, is_stdout, offset, stream in streams
                )
            )
            info = await self._blocking(backend.wait, handle)
            await self._send(
                _report(
                    task_id,
                    rpb.RUNNER_TASK_STATE_EXITED,
                    exit_code=info.exit_code,
                    oom_killed=info.oom_killed,
                    error_message=info.error,
                    started_at=to_timestamp(info.started_at),
                    finished_at=to_timestamp(info.finished_at),
                )
            )
        except asyncio.CancelledError:
            for follow in follows:
                follow.cancel()
            raise
        except _Cancelled:
            return
