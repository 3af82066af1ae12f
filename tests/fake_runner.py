"""A Runner that speaks the real runner protocol (``RunnerService.Connect``) with no Docker.

Tests and benchmarks use it to drive a real Host: it registers with the hardware it is given,
heartbeats, answers dispatches as the test chooses (run and exit at once, hold the task
running until the test finishes it, fail to start, or say nothing), obeys kill, pause,
resume and release, and can drop its stream and come back (with or without the tasks it
holds) or go silent without closing the stream.

    runner = FakeRunner(host_config, "node-a", cores=4, answer=HOLD)
    await runner.start()
    ...                                # a task is dispatched and reported running
    runner.finish(task_id, exit_code=3)  # it exits; the Host marks it failed
    await runner.stop()

Commands are answered the moment they are read, in order, on the stream's reader.

It dials the Host as the real Runner does (``host_config``: address, TLS, join token):
with the join token on its first registration, then with the credential it received
(``credential`` gives one, e.g. to impersonate a node).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import grpc

from hakuriver_common.channels import bearer, open_aio_channel
from hakuriver_common.config import Config
from hakuriver_common.limits import MAX_BATCH_MESSAGES
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    task_pb2,
)

T = TypeVar("T")
STDOUT = task_pb2.LOG_STREAM_STDOUT
STDERR = task_pb2.LOG_STREAM_STDERR
# What a task killed with SIGTERM exits with inside a container with an init process.
KILLED_EXIT_CODE = 143
GIB = 2**30
# How a stream the Host ended (or never answered on) shows: an error status, a write after
# the call finished (the reader has not seen the end yet), or an EOF before the RegisterAck.
STREAM_GONE = (
    grpc.aio.AioRpcError,
    grpc.aio.UsageError,
    asyncio.InvalidStateError,
    ConnectionError,
)


async def eventually(
    check: Callable[[], T | Awaitable[T]], within: float = 5.0, what: str = "condition"
) -> T:
    """Poll ``check`` (sync or async) until it returns something truthy; fail after
    ``within`` seconds."""
    deadline = time.monotonic() + within
    last: Any = None
    while True:
        try:
            last = check()
            if asyncio.iscoroutine(last):
                last = await last
        except grpc.aio.AioRpcError as exc:
            last = exc
        if last and not isinstance(last, grpc.aio.AioRpcError):
            return last  # type: ignore[no-any-return]
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {within}s waiting for {what} (last: {last!r})")
        await asyncio.sleep(0.01)


@dataclass(frozen=True)
class Answer:
    """What a FakeRunner does with a dispatched task.

    By default it reports the task running, sends ``stdout``/``stderr`` and reports it
    exited with ``exit_code``; ``exit_code=None`` holds it running until ``finish``.
    ``start_error`` reports that it could not start; ``ignore`` answers nothing at all.
    """

    exit_code: int | None = 0
    stdout: bytes = b""
    stderr: bytes = b""
    start_error: str = ""
    ignore: bool = False


RUN_AND_EXIT = Answer()
HOLD = Answer(exit_code=None)
NO_ANSWER = Answer(ignore=True)


def exit_with(code: int, stdout: bytes = b"", stderr: bytes = b"") -> Answer:
    return Answer(exit_code=code, stdout=stdout, stderr=stderr)


def start_failure(message: str) -> Answer:
    return Answer(start_error=message)


@dataclass
class FakeTask:
    """A task the fake holds: its container 'exists' until the Host releases it."""

    task_id: int
    dispatch: rpb.DispatchCommand | None = None
    state: rpb.RunnerTaskState.ValueType = rpb.RUNNER_TASK_STATE_RUNNING
    exit_code: int | None = None
    output: dict[int, bytearray] = field(
        default_factory=lambda: {STDOUT: bytearray(), STDERR: bytearray()}
    )


def _report(task_id: int, state: rpb.RunnerTaskState.ValueType, **fields: Any) -> Any:
    return rpb.ConnectRequest(
        task_state=rpb.TaskStateReport(task_id=task_id, state=state, **fields)
    )


class FakeRunner:
    """One simulated Runner; see the module docstring.

    ``channel``: share a caller's channel (many runners on few connections) instead of
    opening one per connection. ``reconnect``: when the Host ends the stream (not the test),
    register again every ``reconnect_delay`` seconds until it answers, naming the tasks held.
    ``heartbeat_interval``: None uses what the Host asks in its RegisterAck.
    ``on_dispatch``/``on_adopt``/``on_release``: called with the task id after the fake
    handled the command (after an adoption it has resent output and the task's state).
    ``on_command``: called with the kind ("kill", "pause", "resume") and the task id when
    such a command arrives, before the fake acts on it (a test makes the task end then).
    """

    def __init__(
        self,
        host_config: Config,
        hostname: str,
        *,
        credential: str = "",
        cores: int = 4,
        memory_bytes: int = 8 * GIB,
        numa_nodes: Sequence[node_pb2.NumaNode] | None = None,
        gpus: Sequence[node_pb2.Gpu] = (),
        environments: Iterable[str] = ("hakuriver-base",),
        known_task_ids: Iterable[int] = (),
        answer: Answer | Callable[[rpb.DispatchCommand], Answer] = RUN_AND_EXIT,
        answer_kills: bool = True,
        channel: grpc.aio.Channel | None = None,
        reconnect: bool = True,
        reconnect_delay: float = 0.05,
        heartbeats: bool = True,
        heartbeat_interval: float | None = None,
        first_heartbeat_delay: float = 0.0,
        health: Callable[[], node_pb2.Health] | None = None,
        on_dispatch: Callable[[int], None] | None = None,
        on_adopt: Callable[[int], None] | None = None,
        on_release: Callable[[int], None] | None = None,
        on_command: Callable[[str, int], None] | None = None,
        takes_batches: bool = True,
        prepares_ahead: bool = False,
        instance_id: str | None = None,
    ) -> None:
        self.host_config = host_config
        # What it presents: its credential once it has one, else the join token.
        self.credential = credential
        self.hostname = hostname
        self.cores = cores
        self.memory_bytes = memory_bytes
        self.numa_nodes = list(
            numa_nodes
            if numa_nodes is not None
            else [node_pb2.NumaNode(id=0, cpus=range(cores), memory_bytes=memory_bytes)]
        )
        self.gpus = list(gpus)
        self.environments = list(environments)
        self.answer = answer
        self.answer_kills = answer_kills
        self.reconnect = reconnect
        self.reconnect_delay = reconnect_delay
        self.heartbeats = heartbeats
        self.heartbeat_interval = heartbeat_interval
        self.first_heartbeat_delay = first_heartbeat_delay
        self.health = health or self._idle_health
        self.on_dispatch = on_dispatch
        self.on_adopt = on_adopt
        self.on_release = on_release
        self.on_command = on_command
        self._shared_channel = channel
        self.takes_batches = takes_batches
        self.prepares_ahead = prepares_ahead
        # Which process it plays (RegisterRunner.instance_id); a test sets a new one to play
        # a restarted Runner, "" a Runner of before the field.
        self.instance_id = uuid.uuid4().hex if instance_id is None else instance_id

        # Tasks held (dispatched or known, not yet released), by id.
        self.tasks: dict[int, FakeTask] = {tid: FakeTask(tid) for tid in known_task_ids}
        # Every dispatch received, in order (repeats included), and when.
        self.dispatched: list[int] = []
        self.dispatched_at: dict[int, float] = {}
        # Dispatches answered nothing (``NO_ANSWER``), until ``start_late``.
        self.unanswered: dict[int, rpb.DispatchCommand] = {}
        # How many dispatches each dispatching message carried (1: a DispatchCommand alone).
        self.dispatch_messages: list[int] = []
        # How many releases each releasing message carried (1: a ReleaseCommand alone).
        self.release_messages: list[int] = []
        # kill / pause / resume / release commands received, in order: (kind, task_id).
        self.commands: list[tuple[str, int]] = []
        # Prepare hints received, in order (a fake prepares nothing: it only records them).
        self.prepares: list[rpb.DispatchCommand] = []
        self.released: list[int] = []
        # Tunnels the Host asked it to open, in order (a test answers them with ``send``),
        # and the bytes the Host relayed into them, in order.
        self.tunnel_opens: list[rpb.TunnelOpen] = []
        self.tunnel_bytes: list[bytes] = []
        self.discarded: list[int] = []
        self.ack: rpb.RegisterAck | None = None
        self.registrations = 0
        self.heartbeats_sent = 0
        self.silent = False
        self.connected = asyncio.Event()
        self._outbox: asyncio.Queue[Any] | None = None
        # The open stream and the channel this runner opened for it (None when shared).
        self._session: tuple[Any, grpc.aio.Channel | None] | None = None
        self._life: asyncio.Task[None] | None = None

    # ----- life cycle -------------------------------------------------------------------

    async def start(self) -> FakeRunner:
        """Register (raising the Host's error if it refuses) and start serving."""
        await self.connect()
        return self

    async def connect(self, known_task_ids: Iterable[int] | None = None) -> rpb.RegisterAck:
        """(Re)connect, after dropping any open stream. ``known_task_ids`` None names the
        tasks held; a list claims exactly those, forgetting any other (as a Runner whose
        containers vanished would)."""
        await self.drop()
        self.silent = False
        if known_task_ids is not None:
            known = list(known_task_ids)
            self.tasks = {tid: self.tasks.get(tid) or FakeTask(tid) for tid in known}
        await self._register()
        self._life = asyncio.create_task(self._live(), name=f"fake-{self.hostname}")
        assert self.ack is not None
        return self.ack

    async def drop(self) -> None:
        """Close the stream (as a crash or network cut would) without reconnecting."""
        life, self._life = self._life, None
        if life is not None:
            life.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await life
        await self._close_session()  # in case the loop was cancelled before it began

    async def stop(self) -> None:
        await self.drop()

    async def end_requests(self) -> None:
        """End its side of the open stream (half-close), the call kept: what the Host sees
        first when a Runner goes away and grpc tells it the requests ended before it tells
        it the call was cancelled."""
        assert self._session is not None, "not connected"
        call, _ = self._session
        await call.done_writing()

    def go_silent(self) -> None:
        """Stop heartbeating and answering, but keep the stream open (a hung machine)."""
        self.silent = True

    # ----- what the test makes the tasks do --------------------------------------------

    def write(self, task_id: int, data: bytes, stream: int = STDOUT) -> None:
        """The task prints ``data``: sent as a log chunk at the stream's next offset."""
        buffer = self.tasks[task_id].output[stream]
        offset = len(buffer)
        buffer.extend(data)
        self._send(
            rpb.ConnectRequest(
                log_chunk=rpb.LogChunk(task_id=task_id, stream=stream, offset=offset, data=data)  # type: ignore[arg-type]
            )
        )

    def finish(
        self,
        task_id: int,
        exit_code: int = 0,
        *,
        stdout: bytes = b"",
        stderr: bytes = b"",
        oom_killed: bool = False,
        error: str = "",
    ) -> None:
        """The task exits. Disconnected, the exit is reported when the Host adopts it."""
        if stdout:
            self.write(task_id, stdout, STDOUT)
        if stderr:
            self.write(task_id, stderr, STDERR)
        task = self.tasks[task_id]
        task.state = rpb.RUNNER_TASK_STATE_EXITED
        task.exit_code = exit_code
        self._send(
            _report(
                task_id,
                task.state,
                exit_code=exit_code,
                oom_killed=oom_killed,
                error_message=error,
            )
        )

    def start_late(self, task_id: int) -> None:
        """A task dispatched while answering nothing (``NO_ANSWER``) starts now: reported
        running, then held."""
        self.tasks[task_id] = FakeTask(task_id, self.unanswered.pop(task_id))
        self._send(_report(task_id, rpb.RUNNER_TASK_STATE_RUNNING))

    def send(self, message: rpb.ConnectRequest) -> None:
        """Send any message on the open stream, e.g. a report on a task that is not its own
        (what a compromised Runner could send)."""
        self._send(message)

    @property
    def running(self) -> list[int]:
        """Ids of held tasks that are running (not paused, not exited)."""
        return [t.task_id for t in self.tasks.values() if t.state == rpb.RUNNER_TASK_STATE_RUNNING]

    # ----- the stream -------------------------------------------------------------------

    def _send(self, message: Any) -> None:
        """Queue a message for the stream; dropped while disconnected or silent."""
        if self._outbox is not None and not self.silent:
            self._outbox.put_nowait(message)

    def _register_message(self) -> rpb.ConnectRequest:
        return rpb.ConnectRequest(
            register=rpb.RegisterRunner(
                hostname=self.hostname,
                total_cores=self.cores,
                total_memory_bytes=self.memory_bytes,
                numa_nodes=self.numa_nodes,
                gpus=self.gpus,
                environments=self.environments,
                known_task_ids=sorted(self.tasks),
                takes_batches=self.takes_batches,
                takes_release_batches=self.takes_batches,
                prepares_ahead=self.prepares_ahead,
                instance_id=self.instance_id,
            )
        )

    async def _register(self) -> None:
        """Open a stream and register on it; it becomes the open session."""
        owned = None if self._shared_channel else open_aio_channel(self.host_config)
        channel = self._shared_channel or owned
        assert channel is not None
        secret = self.credential or self.host_config.auth.join_token
        call = runner_service_pb2_grpc.RunnerServiceStub(channel).Connect(metadata=bearer(secret))
        try:
            await call.write(self._register_message())
            first = await call.read()
            if first is grpc.aio.EOF or not first.HasField("registered"):
                raise ConnectionError("the Host closed the stream before acknowledging")
        except BaseException:
            call.cancel()
            if owned is not None:
                await owned.close()
            raise
        self.ack = first.registered
        if self.ack.runner_credential:
            self.credential = self.ack.runner_credential
        self.registrations += 1
        self._outbox = asyncio.Queue()
        for task_id in self.ack.discard_task_ids:
            if self.tasks.pop(task_id, None) is not None:
                self.discarded.append(task_id)
        for adopt in self.ack.adopt:
            self._adopt(adopt)
        self._session = (call, owned)
        self.connected.set()

    def _adopt(self, adopt: rpb.AdoptTask) -> None:
        """Resend the output the Host lacks and the task's state, as the real Runner does."""
        task = self.tasks.get(adopt.task_id)
        if task is None:
            return
        for stream, offset in ((STDOUT, adopt.stdout_offset), (STDERR, adopt.stderr_offset)):
            missing = bytes(task.output[stream][offset:])
            if missing:
                chunk = rpb.LogChunk(
                    task_id=task.task_id,
                    stream=stream,  # type: ignore[arg-type]
                    offset=offset,
                    data=missing,
                )
                self._send(rpb.ConnectRequest(log_chunk=chunk))
        if task.state == rpb.RUNNER_TASK_STATE_EXITED:
            self._send(_report(task.task_id, task.state, exit_code=task.exit_code))
        else:
            self._send(_report(task.task_id, task.state))
        if self.on_adopt is not None:
            self.on_adopt(task.task_id)

    async def _close_session(self) -> None:
        session, self._session = self._session, None
        self._outbox = None
        self.connected.clear()
        if session is not None:
            call, owned = session
            call.cancel()
            if owned is not None:
                await owned.close()

    async def _live(self) -> None:
        """Serve the open stream; when the Host ends it, register again (unless told not to)."""
        while True:
            assert self._session is not None
            try:
                await self._serve(self._session[0])
            except STREAM_GONE:
                pass
            finally:
                await self._close_session()
            if self.silent or not self.reconnect:
                return
            while True:
                await asyncio.sleep(self.reconnect_delay)
                try:
                    await self._register()
                    break
                except STREAM_GONE:
                    continue

    async def _serve(self, call: Any) -> None:
        assert self._outbox is not None and self.ack is not None
        loops = [
            asyncio.create_task(self._read_loop(call)),
            asyncio.create_task(self._write_loop(call, self._outbox)),
        ]
        if self.heartbeats:
            interval = self.heartbeat_interval or self.ack.heartbeat_interval_seconds or 5.0
            loops.append(asyncio.create_task(self._heartbeat_loop(interval)))
        try:
            done, _ = await asyncio.wait(loops, return_when=asyncio.FIRST_COMPLETED)
            for finished in done:
                finished.result()
        finally:
            for loop in loops:
                loop.cancel()
            await asyncio.gather(*loops, return_exceptions=True)

    async def _write_loop(self, call: Any, outbox: asyncio.Queue[Any]) -> None:
        """Reports queued one after another go as one TaskStateBatch, as the real Runner's."""
        while True:
            message = await outbox.get()
            following = None
            if message.WhichOneof("payload") == "task_state":
                reports = [message.task_state]
                while not outbox.empty() and len(reports) < MAX_BATCH_MESSAGES:
                    following = outbox.get_nowait()
                    if following.WhichOneof("payload") != "task_state":
                        break
                    reports.append(following.task_state)
                    following = None
                if len(reports) > 1:
                    message = rpb.ConnectRequest(task_states=rpb.TaskStateBatch(reports=reports))
            await call.write(message)
            if following is not None:
                await call.write(following)

    async def _read_loop(self, call: Any) -> None:
        while True:
            message = await call.read()
            if message is grpc.aio.EOF:
                return
            if not self.silent:
                self._handle(message)

    async def _heartbeat_loop(self, interval: float) -> None:
        await asyncio.sleep(self.first_heartbeat_delay)
        while True:
            if not self.silent:
                beat = rpb.Heartbeat(health=self.health(), environments=self.environments)
                self._send(rpb.ConnectRequest(heartbeat=beat))
                self.heartbeats_sent += 1
            await asyncio.sleep(interval)

    def _idle_health(self) -> node_pb2.Health:
        health = node_pb2.Health(
            cpu_percent=1.0,
            memory_percent=10.0,
            memory_used_bytes=self.memory_bytes // 10,
            memory_total_bytes=self.memory_bytes,
        )
        health.sampled_at.GetCurrentTime()
        return health

    # ----- commands from the Host -------------------------------------------------------

    def _handle(self, message: rpb.ConnectResponse) -> None:
        kind = message.WhichOneof("payload")
        if kind == "dispatch":
            self.dispatch_messages.append(1)
            self._on_dispatch(message.dispatch)
            return
        if kind == "dispatches":
            self.dispatch_messages.append(len(message.dispatches.dispatches))
            for dispatch in message.dispatches.dispatches:
                self._on_dispatch(dispatch)
            return
        if kind == "releases":
            self.release_messages.append(len(message.releases.releases))
            for release in message.releases.releases:
                self.commands.append(("release", release.task_id))
                self._on_release(release.task_id)
            return
        if kind in ("tunnel_open", "tunnel_data", "prepare"):
            self._record(message)
            return
        if kind not in ("kill", "pause", "resume", "release"):
            return  # tunnel_close: a fake has no SSH server to reach
        task_id = getattr(message, kind).task_id
        self.commands.append((kind, task_id))
        if self.on_command is not None and kind != "release":
            self.on_command(kind, task_id)
        task = self.tasks.get(task_id)
        if kind == "kill":
            self._on_kill(task_id, task)
        elif kind == "release":
            self.release_messages.append(1)
            self._on_release(task_id)
        elif task is not None:
            self._on_pause(task, pause=kind == "pause")

    def _record(self, message: rpb.ConnectResponse) -> None:
        """What a fake only records: tunnels to open and the bytes relayed into them (a test
        answers for the SSH server), prepare hints."""
        if message.HasField("tunnel_open"):
            self.tunnel_opens.append(message.tunnel_open)
        elif message.HasField("tunnel_data"):
            self.tunnel_bytes.append(message.tunnel_data.data)
        else:
            self.prepares.append(message.prepare)

    def _on_release(self, task_id: int) -> None:
        self.tasks.pop(task_id, None)
        self.released.append(task_id)
        if self.on_release is not None:
            self.on_release(task_id)

    def _on_dispatch(self, dispatch: rpb.DispatchCommand) -> None:
        task_id = dispatch.task_id
        self.dispatched.append(task_id)
        if task_id in self.tasks:
            return  # idempotent, like the real Runner
        self.dispatched_at[task_id] = time.perf_counter()
        answer = self.answer(dispatch) if callable(self.answer) else self.answer
        if answer.ignore:
            self.unanswered[task_id] = dispatch
            return
        if answer.start_error:
            self._send(
                _report(
                    task_id, rpb.RUNNER_TASK_STATE_START_FAILED, error_message=answer.start_error
                )
            )
            return
        self.tasks[task_id] = FakeTask(task_id, dispatch)
        self._send(_report(task_id, rpb.RUNNER_TASK_STATE_RUNNING))
        if answer.stdout:
            self.write(task_id, answer.stdout, STDOUT)
        if answer.stderr:
            self.write(task_id, answer.stderr, STDERR)
        if answer.exit_code is not None:
            self.finish(task_id, answer.exit_code)
        if self.on_dispatch is not None:
            self.on_dispatch(task_id)

    def _on_kill(self, task_id: int, task: FakeTask | None) -> None:
        if not self.answer_kills:
            return
        if task is None:
            self._send(
                _report(
                    task_id,
                    rpb.RUNNER_TASK_STATE_EXITED,
                    error_message="nothing of the task is left on the runner",
                )
            )
        elif task.state != rpb.RUNNER_TASK_STATE_EXITED:
            self.finish(task_id, KILLED_EXIT_CODE)

    def _on_pause(self, task: FakeTask, pause: bool) -> None:
        before, after = (
            (rpb.RUNNER_TASK_STATE_RUNNING, rpb.RUNNER_TASK_STATE_PAUSED)
            if pause
            else (rpb.RUNNER_TASK_STATE_PAUSED, rpb.RUNNER_TASK_STATE_RUNNING)
        )
        if task.state == before:
            task.state = after
            self._send(_report(task.task_id, after))


class Fleet:
    """``count`` FakeRunners named ``name.format(index)`` whose streams share connections,
    ``per_channel`` streams each (as HTTP/2 allows). Each channel is a connection of its own,
    as separate Runner machines would have (equal channels would otherwise share one).
    ``options`` go to every FakeRunner."""

    def __init__(
        self, host_config: Config, count: int, name: str, per_channel: int = 100, **options: Any
    ) -> None:
        self.channels = [
            open_aio_channel(host_config, options=[("grpc.use_local_subchannel_pool", 1)])
            for _ in range((count + per_channel - 1) // per_channel)
        ]
        self.runners = [
            FakeRunner(
                host_config,
                name.format(index),
                channel=self.channels[index // per_channel],
                **options,
            )
            for index in range(count)
        ]

    async def stop(self) -> None:
        await asyncio.gather(*(runner.stop() for runner in self.runners))
        for channel in self.channels:
            await channel.close()
