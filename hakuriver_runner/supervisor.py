"""Task supervision: the commands the Host sends about tasks, and one watcher per task.

It starts tasks (loading an environment's newer tarball first), kills, pauses, resumes and
removes them, and watches each one: its state, its output from the offsets the Host already
has, a VPS's sshd coming up, and its exit. The Runner keeps no records of its own: the
backends list the tasks that exist, and the Host says which of them to keep.

A task's exit is reported from one place, ``_report_exit``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from datetime import datetime
from typing import Any

import requests

from hakuriver_common.docker_errors import unreachable
from hakuriver_common.environments import NULL_CONTAINER, TarballFile
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_pb2
from hakuriver_common.timestamps import to_timestamp
from hakuriver_runner.backend import Emit, ExitInfo, Gone, LogFollow, StartError, TaskBackend
from hakuriver_runner.docker_backend import GONE_MESSAGE, DockerBackend, TarballGone, ssh_port_of
from hakuriver_runner.outbox import Outbox, SendCancelled
from hakuriver_runner.pool import BlockingPool
from hakuriver_runner.process_backend import ProcessBackend, started_detail

log = logging.getLogger(__name__)

SSHD_READY_SECONDS = 60.0
# Tarballs of one environment found removed before their load opened them, before a task
# fails: each was replaced by a newer one, which is looked for again (a create-tar each).
TARBALL_LOOKS = 3
NOTHING_LEFT = ExitInfo(None, False, None, None, "nothing of the task is left on the runner")


def _state(task_id: int, state: rpb.RunnerTaskState.ValueType, **fields: Any) -> rpb.ConnectRequest:
    return rpb.ConnectRequest(
        task_state=rpb.TaskStateReport(task_id=task_id, state=state, **fields)
    )


def _ended(exc: Exception) -> bool:
    """Whether a pause or resume failed because the task is no longer there to freeze:
    its process gone, or Docker's 404 (removed) or 409 (not running, not paused)."""
    return isinstance(exc, ProcessLookupError) or getattr(exc, "status_code", None) in (404, 409)


class Supervisor:
    def __init__(
        self, docker: DockerBackend, processes: ProcessBackend, outbox: Outbox, pool: BlockingPool
    ) -> None:
        self.docker = docker
        self.processes = processes
        self._outbox = outbox
        self._pool = pool
        # Every task this runner supervises: its backend and the backend's handle.
        self._handles: dict[int, tuple[TaskBackend, Any]] = {}
        self._watchers: dict[int, asyncio.Task[None]] = {}
        # Per task with commands in flight: its lock and how many commands hold or want it.
        self._locks: dict[int, tuple[asyncio.Lock, list[int]]] = {}
        # One docker load per environment at a time, and its tarball; concurrent tasks wait
        # for the same one.
        self._loads: dict[str, tuple[TarballFile, asyncio.Future[None]]] = {}
        # Exit reports sent outside a watcher (a failed watcher, a vanished task).
        self._reports: set[asyncio.Task[None]] = set()
        # VPS tasks the Host asked to kill: one stopped before its sshd answered did not fail.
        self._killed_vps: set[int] = set()
        # What the Host was last told of each watched task that runs: "running" or "paused".
        # One paused or resumed behind the Runner's back (``docker pause``) is told anew.
        self._shown: dict[int, str] = {}
        # Tasks whose state is being read again after a check (``_show_changed``).
        self._rechecks: dict[int, asyncio.Task[None]] = {}
        # Starts under way, by task id: one whose stream ended goes on in its thread.
        self._starts: dict[int, asyncio.Future[Any]] = {}

    def set_cluster(self, cluster_id: str) -> None:
        """The cluster whose tasks this Runner runs: only those it lists and touches."""
        self.docker.cluster_id = cluster_id
        self.processes.cluster_id = cluster_id

    @contextlib.asynccontextmanager
    async def serial(self, task_id: int) -> AsyncIterator[None]:
        """Commands about one task run one at a time, in arrival order (a release can be
        followed by more: a prepared-ahead container is released, then the task is
        dispatched). The entry lives while a command holds or awaits it."""
        lock, users = self._locks.setdefault(task_id, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if not users[0]:
                del self._locks[task_id]

    async def scan(self) -> list[int]:
        """Find this runner's tasks again (containers, spooled processes); their ids. Starts
        still under way (their stream ended meanwhile) are waited for: a container listed
        created would be started by its adoption, and again by its start's thread, after
        it ran (Docker runs an ended container's command anew)."""
        if self._starts:
            log.info(
                "waiting for the starts of tasks %s, under way when the stream ended",
                ", ".join(map(str, sorted(self._starts))),
            )
            await asyncio.gather(*self._starts.values(), return_exceptions=True)
        self._handles = {
            task_id: (backend, handle)
            for backend in (self.docker, self.processes)
            for task_id, handle in (await self._pool.run(backend.tasks)).items()
        }
        return sorted(self._handles)

    async def reconcile(self, ack: rpb.RegisterAck) -> None:
        """Drop the tasks the Host is done with, and the host processes no spool folder
        records (the Host has them lost, or dispatches them again); watch the others from
        the Host's offsets."""
        for task_id in ack.discard_task_ids:
            await self._discard(task_id)
        for orphan in await self._pool.run(self.processes.orphans):
            log.warning(
                "task %s: its process %s runs without its spool folder under "
                "runner.state_dir (moved or removed?), so it cannot be re-adopted: stopping it",
                orphan.task_id,
                orphan.pid,
            )
            await self._pool.run(self.processes.stop, orphan, 0)
        for adopt in ack.adopt:
            if adopt.task_id in self._handles:
                self._watch(adopt.task_id, adopt.stdout_offset, adopt.stderr_offset)

    def stop_watching(self) -> list[asyncio.Task[None]]:
        """Cancel every watcher (the stream is gone); the tasks themselves keep running."""
        watchers = list(self._watchers.values())
        for watcher in watchers:
            watcher.cancel()
        self._watchers.clear()
        self._shown.clear()
        self.docker.detach_unread()
        return watchers

    # ----- commands from the Host -------------------------------------------------------

    async def dispatch(self, dispatch: rpb.DispatchCommand) -> None:
        task_id = dispatch.task_id
        if task_id in self._watchers:
            return
        backend: TaskBackend = (
            self.processes if dispatch.container_name == NULL_CONTAINER else self.docker
        )
        try:
            if backend is self.docker:
                await self._ensure_environment(dispatch)
            handle = await self._start(backend, dispatch)
        except StartError as exc:
            await self._start_failed(task_id, exc)
            return
        except Exception as exc:
            # Anything else (the Docker daemon unreachable, a file system error) fails the
            # start too, saying what it was: a task the Runner never reports on would stay
            # ``assigning`` on the Host.
            log.exception("task %s: starting it failed", task_id)
            reason = str(exc) or exc.__class__.__name__
            if isinstance(exc, requests.exceptions.ConnectionError):
                reason = f"the Docker daemon did not answer ({unreachable(exc)})"
            await self._start_failed(
                task_id, StartError(f"the runner could not start it: {reason}")
            )
            return
        self._handles[task_id] = (backend, handle)
        self._watch(task_id, 0, 0, started=True)

    async def _start(self, backend: TaskBackend, dispatch: rpb.DispatchCommand) -> Any:
        """``backend.start`` in a thread, which a cancel (the stream's end) does not stop:
        it is kept in ``_starts`` until it returns, for ``scan``."""
        task_id = dispatch.task_id
        start = self._pool.run(backend.start, dispatch)
        self._starts[task_id] = start

        def done(_: asyncio.Future[Any]) -> None:
            if self._starts.get(task_id) is start:
                del self._starts[task_id]

        start.add_done_callback(done)
        return await asyncio.shield(start)

    async def prepare(self, dispatch: rpb.DispatchCommand) -> None:
        """Create a queued task's container ahead of its dispatch. A hint: what fails is
        only logged (the dispatch does it again, and reports what fails then)."""
        if (
            dispatch.task_id in self._handles
            or dispatch.container_name == NULL_CONTAINER
            or dispatch.kind != task_pb2.TASK_KIND_COMMAND
        ):
            return
        try:
            await self._pool.run(self.docker.prepare, dispatch)
        except Exception as exc:
            log.info("task %s: could not prepare it ahead: %s", dispatch.task_id, exc)

    async def kill(self, kill: rpb.KillCommand) -> None:
        found = self._handles.get(kill.task_id)
        if found is None:
            await self._report_exit(kill.task_id, NOTHING_LEFT)
            return
        backend, handle = found
        if backend is self.docker and ssh_port_of(handle):
            self._killed_vps.add(kill.task_id)
        try:
            await self._pool.run(backend.stop, handle, kill.grace_seconds)
        except Gone as exc:
            await self._report_exit(kill.task_id, dataclasses.replace(NOTHING_LEFT, error=str(exc)))

    def ssh_port(self, task_id: int) -> int:
        """The sshd port of a VPS task running here; 0 for anything else."""
        found = self._handles.get(task_id)
        if found is None or found[0] is not self.docker:
            return 0
        return ssh_port_of(found[1])

    async def pause(self, pause: rpb.PauseCommand) -> None:
        await self._freeze(pause.task_id, frozen=True)

    async def resume(self, resume: rpb.ResumeCommand) -> None:
        await self._freeze(resume.task_id, frozen=False)

    async def release(self, release: rpb.ReleaseCommand) -> None:
        task_id = release.task_id
        watcher = self._watchers.pop(task_id, None)
        if watcher is not None and not watcher.done():
            watcher.cancel()
        self._shown.pop(task_id, None)
        await self._discard(task_id)

    async def _freeze(self, task_id: int, frozen: bool) -> None:
        found = self._handles.get(task_id)
        if found is None:
            return
        backend, handle = found
        goal = "paused" if frozen else "running"
        try:
            await self._pool.run(backend.pause if frozen else backend.resume, handle)
        except Exception as exc:
            # Paused (resumed) already, behind the Runner's back (``docker pause``; Docker
            # refuses to pause it again with 409, to resume a running one with 500): so it
            # is, which the Host hears. Else, if it ended meanwhile (an array's tasks ending
            # as it is paused), its watcher reports the exit: nothing to pause is no error.
            if await self._state_of(backend, task_id) != goal:
                if not _ended(exc):
                    raise
                action = "paused" if frozen else "resumed"
                log.info("task %s ended before it could be %s", task_id, action)
                return
        await self._show(task_id, goal)

    async def _state_of(self, backend: TaskBackend, task_id: int) -> str | None:
        """The task's state as its backend lists it now; None if it cannot list them."""
        try:
            return (await self._pool.run(backend.task_states)).get(task_id)
        except Exception as exc:
            log.info("cannot list tasks to check them: %s", exc)
            return None

    async def _show(self, task_id: int, state: str, detail: str = "") -> None:
        """Tell the Host the task runs (``state`` "running") or is paused ("paused")."""
        self._shown[task_id] = state
        report = (
            rpb.RUNNER_TASK_STATE_PAUSED if state == "paused" else rpb.RUNNER_TASK_STATE_RUNNING
        )
        await self._outbox.send(_state(task_id, report, detail=detail))

    async def _ensure_environment(self, dispatch: rpb.DispatchCommand) -> None:
        """Load the environment's newest tarball first if it is newer than the image here. A
        load of that tarball under way is waited for; one of an older tarball too (one load
        of an environment at a time), then the newest is loaded after it. A tarball removed
        before its load opened it (replaced by a newer one) makes it look again, up to
        TARBALL_LOOKS times."""
        name = dispatch.container_name
        gone = 0
        while (tarball := await self._pool.run(self.docker.tarball_to_load, name)) is not None:
            loading, _ = self._loads.get(name) or (tarball, None)
            detail = f"loading environment {name} from {tarball.path.name}"
            if loading != tarball:
                detail = (
                    f"waiting for the load of environment {name} from {loading.path.name}, "
                    f"then loading {tarball.path.name}"
                )
            await self._outbox.send(
                _state(dispatch.task_id, rpb.RUNNER_TASK_STATE_PREPARING, detail=detail)
            )
            # Read again after the send: a load begun meanwhile is joined, never doubled.
            loading, load = self._loads.get(name) or (tarball, None)
            if load is None:
                load = self._pool.run(self.docker.load, tarball)
                self._loads[name] = (tarball, load)
                load.add_done_callback(lambda _: self._loads.pop(name, None))
            if loading != tarball:  # another tarball's: its failure is its own tasks'
                await asyncio.wait([load])
                continue
            try:
                await asyncio.shield(load)
            except TarballGone:
                gone += 1
                if gone >= TARBALL_LOOKS:
                    raise

    async def _discard(self, task_id: int) -> None:
        """Stop and remove whatever is left of a task the Host is done with."""
        found = self._handles.pop(task_id, None)
        if found is None:
            for each in (self.docker, self.processes):
                await self._pool.run(each.remove, task_id)
            return
        backend, handle = found
        if backend is self.processes:
            await self._pool.run(backend.stop, handle, 0)
        await self._pool.run(backend.remove, task_id)

    # ----- watching a task --------------------------------------------------------------

    def _watch(
        self, task_id: int, stdout_offset: int, stderr_offset: int, started: bool = False
    ) -> None:
        """Follow a task's output and report its exit.

        ``started``: this runner just started it, so it ran even if it has already exited.
        """
        current = self._watchers.get(task_id)
        if current is not None and not current.done():
            return
        watcher = asyncio.create_task(
            self._watch_task(task_id, (stdout_offset, stderr_offset), started),
            name=f"task-{task_id}",
        )
        watcher.add_done_callback(lambda done: self._watcher_ended(task_id, done))
        self._watchers[task_id] = watcher

    def _watcher_ended(self, task_id: int, watcher: asyncio.Task[None]) -> None:
        """A watcher that failed must not leave its task running for ever in the Host's
        eyes: its failure is logged and reported as the task's end (the Host then releases
        it, and whatever is left of it is removed)."""
        if watcher.cancelled() or watcher.exception() is None:
            return
        exc = watcher.exception()
        log.error("task %s: supervising it failed: %r", task_id, exc)
        info = dataclasses.replace(NOTHING_LEFT, error=f"the runner lost track of it: {exc!r}")
        self._spawn_report(task_id, info)

    def _spawn_report(self, task_id: int, info: ExitInfo) -> None:
        report = asyncio.create_task(self._report_exit_quietly(task_id, info))
        self._reports.add(report)
        report.add_done_callback(self._reports.discard)

    async def _report_exit_quietly(self, task_id: int, info: ExitInfo) -> None:
        with contextlib.suppress(SendCancelled):
            await self._report_exit(task_id, info)

    async def check_tasks(self) -> None:
        """Called every heartbeat: report watched tasks whose container or process vanished
        behind the Runner's back (their watcher may be stuck on a daemon that lost them),
        and those paused or resumed behind its back (``docker pause``), which the Host
        showed as they were. Skipped for a backend that cannot list its tasks right now."""
        watched = {t for t, w in self._watchers.items() if not w.done()}
        if not watched:
            return
        for backend in (self.docker, self.processes):
            mine = {t for t in watched if self._handles.get(t, (None,))[0] is backend}
            if not mine:
                continue
            try:
                states = await self._pool.run(backend.task_states)
            except Exception as exc:
                log.info("cannot list tasks to check them: %s", exc)
                continue
            for task_id in sorted(mine - set(states)):
                self._vanished(task_id)
            for task_id in sorted(mine & set(states)):
                state = states[task_id]
                if state in ("running", "paused") and self._shown.get(task_id, state) != state:
                    self._recheck(backend, task_id)

    def _vanished(self, task_id: int) -> None:
        watcher = self._watchers.get(task_id)
        if watcher is None or watcher.done() or self._handles.get(task_id) is None:
            return  # it ended or was released while we listed
        log.warning("task %s: its container or process disappeared", task_id)
        watcher.cancel()
        self._spawn_report(task_id, dataclasses.replace(NOTHING_LEFT, error=GONE_MESSAGE))

    def _recheck(self, backend: TaskBackend, task_id: int) -> None:
        """``_show_changed`` beside the heartbeat, which must not wait for a command about
        the task (a kill's grace) to end."""
        if task_id in self._rechecks:
            return
        recheck = asyncio.create_task(self._show_changed(backend, task_id))
        self._rechecks[task_id] = recheck
        recheck.add_done_callback(lambda _: self._rechecks.pop(task_id, None))

    async def _show_changed(self, backend: TaskBackend, task_id: int) -> None:
        """A task listed paused while the Host was told it runs, or the reverse: read again
        between the Host's own pauses and resumes of it (a listing taken as one ran is
        stale), and told to the Host if so (unless its stream ended meanwhile)."""
        async with self.serial(task_id):
            shown = self._shown.get(task_id)
            state = await self._state_of(backend, task_id)
            if shown is None or state not in ("running", "paused") or state == shown:
                return  # it ended, was released or was paused or resumed as the Host asked
            action = "paused" if state == "paused" else "resumed"
            log.warning("task %s was %s behind the Runner's back", task_id, action)
            with contextlib.suppress(SendCancelled):
                await self._show(task_id, state, detail=f"{action} outside HakuRiver")

    async def _watch_task(self, task_id: int, offsets: tuple[int, int], started: bool) -> None:
        backend, handle = self._handles[task_id]
        try:
            try:
                status, started_at = await self._pool.run(backend.state, handle)
            except StartError as exc:
                await self._start_failed(task_id, exc)
                return
            port = ssh_port_of(handle) if backend is self.docker else 0
            if port:
                info = await self._watch_vps(task_id, handle, port, status, started_at)
            else:
                if started or status in ("running", "paused"):
                    state = (
                        rpb.RUNNER_TASK_STATE_PAUSED
                        if status == "paused"
                        else rpb.RUNNER_TASK_STATE_RUNNING
                    )
                    detail = started_detail() if backend is self.processes else ""
                    await self._outbox.send(
                        _state(task_id, state, started_at=to_timestamp(started_at), detail=detail)
                    )
                    self._shown[task_id] = "paused" if status == "paused" else "running"
                await self._follow_output(task_id, backend, handle, offsets)
                info = await self._pool.run(backend.wait, handle)
            await self._report_exit(task_id, info)
        except SendCancelled:
            return

    async def _start_failed(self, task_id: int, exc: StartError) -> None:
        log.warning("task %s could not start: %s", task_id, exc)
        await self._outbox.send(
            _state(task_id, rpb.RUNNER_TASK_STATE_START_FAILED, error_message=str(exc))
        )

    async def _report_exit(self, task_id: int, info: ExitInfo) -> None:
        self._shown.pop(task_id, None)
        await self._outbox.send(
            _state(
                task_id,
                rpb.RUNNER_TASK_STATE_EXITED,
                exit_code=info.exit_code,
                oom_killed=info.oom_killed,
                error_message=info.error,
                started_at=to_timestamp(info.started_at),
                finished_at=to_timestamp(info.finished_at),
            )
        )

    async def _follow_output(
        self, task_id: int, backend: TaskBackend, handle: Any, offsets: tuple[int, int]
    ) -> None:
        """Send stdout and stderr past the Host's offsets until the task ends."""
        follow = LogFollow()
        emits = (
            self._emitter(task_id, task_pb2.LOG_STREAM_STDOUT, follow),
            self._emitter(task_id, task_pb2.LOG_STREAM_STDERR, follow),
        )
        try:
            await self._pool.run(backend.follow, handle, offsets, emits, follow)
        except asyncio.CancelledError:
            follow.cancel()
            raise

    def _emitter(
        self, task_id: int, stream: task_pb2.LogStream.ValueType, follow: LogFollow
    ) -> Emit:
        send = self._outbox.thread_sender(lambda: follow.cancelled)

        def emit(offset: int, data: bytes) -> None:
            send(
                rpb.ConnectRequest(
                    log_chunk=rpb.LogChunk(task_id=task_id, stream=stream, offset=offset, data=data)
                )
            )

        return emit

    async def _watch_vps(
        self, task_id: int, handle: Any, port: int, status: str, started_at: datetime | None
    ) -> ExitInfo:
        """A VPS is running once its sshd accepts connections; it writes no log files. One
        found paused (adopted again) is paused: its frozen sshd answers no one, and it was
        stopped as one whose sshd never came up."""
        paused = status == "paused"
        ready = paused or await self._sshd_ready(handle, port)
        if ready:
            await self._outbox.send(
                _state(
                    task_id,
                    rpb.RUNNER_TASK_STATE_PAUSED if paused else rpb.RUNNER_TASK_STATE_RUNNING,
                    started_at=to_timestamp(started_at),
                    ssh_port=port,
                )
            )
            self._shown[task_id] = "paused" if paused else "running"
        else:
            with contextlib.suppress(Gone):
                await self._pool.run(self.docker.stop, handle, 0)
        info = await self._pool.run(self.docker.wait, handle)
        killed = task_id in self._killed_vps
        self._killed_vps.discard(task_id)
        if ready or killed:
            return info
        tail = await self._pool.run(self.docker.last_output, handle)
        error = f"the VPS never accepted SSH connections: {tail or 'no output'}"
        return dataclasses.replace(info, error=error)

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
            status, _ = await self._pool.run(self.docker.state, handle)
            if status == "exited":
                return False
            await asyncio.sleep(0.1)
        return False
