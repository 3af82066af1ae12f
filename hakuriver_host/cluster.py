"""The Host's coordinator: nodes, tasks, placement and the runners' streams.

All state changes happen on the event loop; the database and files are reached through
their adapters (store, log_store), which run off the loop. Every task status change goes
through ``_move``, which asks the state machine first and persists before anyone is told.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from hakuriver_common.config import Config
from hakuriver_common.environments import NULL_CONTAINER, image_for
from hakuriver_common.ids import IdGenerator
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    runner_service_pb2 as rpb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.units import parse_size
from hakuriver_host.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from hakuriver_host.log_store import STDERR, STDOUT, LogStore
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.models import NodeRecord, TaskRecord, utcnow
from hakuriver_host.runner_session import RunnerSession
from hakuriver_host.scheduler import Allocation, Request, Scheduler
from hakuriver_host.store import Store
from hakuriver_host.task_machine import (
    FINAL_STATUSES,
    KILLABLE,
    PLACED_STATUSES,
    TaskStatus,
    exit_status,
    transition,
)
from hakuriver_host.tunnels import TunnelHub
from hakuriver_host.webhooks import Notifier

log = logging.getLogger(__name__)

ACTIVE_STATUSES = [s.value for s in TaskStatus if not s.is_final]
ENV_KEY_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
CONTROL_TIMEOUT = 10.0
HISTORY_SECONDS = 600.0
HISTORY_MIN_POINTS = 120
HEALTH_WATCH_QUEUE = 1024


@dataclass
class NodeView:
    hostname: str
    total_cores: int
    total_memory_bytes: int
    numa_nodes: list[dict[str, Any]] = field(default_factory=list)
    gpus: list[dict[str, Any]] = field(default_factory=list)
    online: bool = False
    last_seen: float = field(default_factory=time.monotonic)
    last_heartbeat: datetime | None = None
    session: RunnerSession | None = None
    health: node_pb2.Health | None = None
    environments: set[str] = field(default_factory=set)
    draining: bool = False
    # Tarball timestamp of each environment the Runner loaded from a tarball.
    loaded: dict[str, int] = field(default_factory=dict)
    # Recent health samples, oldest first (bounded; see Cluster.history_length).
    history: deque[node_pb2.Health] = field(default_factory=deque)


def _request_of(task: TaskRecord) -> Request:
    return Request(
        task_id=task.task_id,
        cores=task.required_cores,
        memory_bytes=task.required_memory_bytes,
        target=task.target_hostname,
        numa_node=task.target_numa_node_id,
        gpu_ids=() if task.gpu_count else tuple(task.required_gpus or ()),
        gpu_count=task.gpu_count,
        priority=task.priority,
    )


def _allocation_of(task: TaskRecord) -> Allocation:
    """What a placed task holds, as stored in its row."""
    return Allocation(
        hostname=task.assigned_node or "",
        cpus=tuple(task.assigned_cpus or ()),
        memory_bytes=task.required_memory_bytes,
        gpus=tuple(task.required_gpus or ()),
        numa_node=task.target_numa_node_id,
    )


class Cluster:
    def __init__(self, config: Config, store: Store, logs: LogStore, metrics: HostMetrics) -> None:
        self.config = config
        self.store = store
        self.logs = logs
        self.metrics = metrics
        self.scheduler = Scheduler(config.scheduling.starvation_seconds)
        self.ids = IdGenerator()
        self.nodes: dict[str, NodeView] = {}
        self.tasks: dict[int, TaskRecord] = {}
        # The pending subset of ``tasks`` (nothing moves back to pending).
        self._pending: dict[int, TaskRecord] = {}
        self._watchers: dict[int, set[asyncio.Queue[TaskRecord]]] = {}
        self._kick = asyncio.Event()
        self._positions: dict[int, int] | None = None
        self.tunnels = TunnelHub()
        self.notifier = Notifier(config.webhooks)
        # At least HISTORY_SECONDS of samples at heartbeat resolution.
        self.history_length = max(
            HISTORY_MIN_POINTS,
            math.ceil(HISTORY_SECONDS / config.timing.heartbeat_interval) + 1,
        )
        self._placed_at: dict[int, datetime] = {}
        self._health_watchers: set[asyncio.Queue[tuple[str, node_pb2.Health]]] = set()
        self._tarballs: tuple[int, set[str]] | None = None
        self._background: list[asyncio.Task[None]] = []

    # ----- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.run(self.store.create_schema)
        for record in await self.store.run(self.store.load_nodes):
            self.nodes[record.hostname] = NodeView(
                hostname=record.hostname,
                total_cores=record.total_cores,
                total_memory_bytes=record.total_memory_bytes,
                numa_nodes=record.numa_nodes,
                gpus=record.gpus,
                last_heartbeat=record.last_heartbeat,
                draining=record.draining,
            )
            self._sync_capacity(self.nodes[record.hostname])
            self.scheduler.set_online(record.hostname, False)
        for task in await self.store.run(self.store.load_tasks_in, ACTIVE_STATUSES):
            self.tasks[task.task_id] = task
            if task.status == TaskStatus.PENDING:
                self._pending[task.task_id] = task
            if TaskStatus(task.status) in PLACED_STATUSES and task.assigned_node in self.nodes:
                self.scheduler.allocate(task.task_id, _allocation_of(task))
        for (status, kind), count in (await self.store.run(self.store.count_tasks)).items():
            self.metrics.tasks.labels(status=status, kind=kind).set(count)
            if status == TaskStatus.PENDING:
                self.metrics.queue_depth.inc(count)
        self._update_node_metrics()
        log.info("loaded %d nodes and %d active tasks", len(self.nodes), len(self.tasks))
        self.notifier.start()
        self._background = [
            asyncio.create_task(self._placement_loop(), name="placement"),
            asyncio.create_task(self._monitor_loop(), name="runner-monitor"),
        ]
        self.kick()

    async def stop(self) -> None:
        await self.notifier.stop()
        for task in self._background:
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for node in self.nodes.values():
            if node.session is not None:
                node.session.close()

    def _sync_capacity(self, node: NodeView) -> None:
        """Tell the scheduler a node's hardware: CPU ids per NUMA node, memory, GPU ids."""
        numa = {int(n["id"]): tuple(int(c) for c in n["cpus"]) for n in node.numa_nodes}
        cpus = tuple(sorted({c for group in numa.values() for c in group}))
        if not cpus:
            cpus = tuple(range(node.total_cores))
        gpus = tuple(sorted(int(g["index"]) for g in node.gpus))
        self.scheduler.upsert_node(node.hostname, cpus, node.total_memory_bytes, numa, gpus)
        self.scheduler.set_draining(node.hostname, node.draining)

    def queue_position(self, task: TaskRecord) -> int:
        """1-based queue position of one task (0 unless pending), without ranking the queue."""
        if task.status != TaskStatus.PENDING:
            return 0
        if self._positions is not None:
            return self._positions.get(task.task_id, 0)
        mine = (-task.priority, task.task_id)
        ahead = sum(1 for t in self._pending.values() if (-t.priority, t.task_id) < mine)
        return ahead + 1

    def queue_positions(self) -> dict[int, int]:
        """1-based queue position of every pending task (recomputed only after changes)."""
        if self._positions is None:
            pending = [_request_of(t) for t in self._pending.values()]
            ranked = self.scheduler.ranked(pending)
            self._positions = {r.task_id: i for i, r in enumerate(ranked, start=1)}
        return self._positions

    async def set_draining(self, hostname: str, draining: bool) -> NodeView:
        node = self.nodes.get(hostname)
        if node is None:
            raise NotFound(f"hostname: unknown node {hostname!r}")
        node.draining = draining
        await self.store.run(self.store.set_draining, hostname, draining)
        self.scheduler.set_draining(hostname, draining)
        log.info("node %s %s", hostname, "draining" if draining else "accepting tasks again")
        if not draining:
            self.kick()
        return node

    # ----- persistence and the state machine --------------------------------------------

    async def _persist(
        self, task: TaskRecord, events: list[dict[str, Any]], **changes: Any
    ) -> None:
        """Set ``changes`` on the task and write just those columns (and the events)."""
        for name, value in changes.items():
            setattr(task, name, value)
        await self.store.write(updates=[{"task_id": task.task_id, **changes}], events=events)

    async def _move(
        self, task: TaskRecord, new: TaskStatus, detail: str = "", **fields: Any
    ) -> None:
        old = TaskStatus(task.status)
        transition(old, new)
        if old is TaskStatus.PENDING:
            self._positions = None
            self._pending.pop(task.task_id, None)
        now = utcnow()
        changes: dict[str, Any] = {"status": new.value, "status_detail": "", **fields}
        if new is TaskStatus.RUNNING and task.started_at is None:
            changes.setdefault("started_at", now)
        if new.is_final and task.completed_at is None:
            changes["completed_at"] = now
        for name, value in changes.items():
            setattr(task, name, value)
        if new.is_final:
            self.tasks.pop(task.task_id, None)
            self._placed_at.pop(task.task_id, None)
            if task.assigned_node:
                self.scheduler.release(task.assigned_node, task.task_id)
        event = {"task_id": task.task_id, "status": new.value, "at": now, "detail": detail}
        await self._persist(task, [event], **changes)
        self.metrics.task_moved(old, new, task.kind)
        if new.is_final:
            self.logs.close(task.task_id)
            self.kick()
            self.notifier.notify(
                f"task.{new.value}",
                task={
                    "task_id": str(task.task_id),
                    "kind": task.kind,
                    "status": new.value,
                    "assigned_node": task.assigned_node,
                    "exit_code": task.exit_code,
                    "error_message": task.error_message,
                    "command": task.command,
                },
            )
        for queue in self._watchers.get(task.task_id, ()):
            queue.put_nowait(task)

    # ----- queries ----------------------------------------------------------------------

    async def get_task(self, task_id: int) -> TaskRecord:
        task = self.tasks.get(task_id)
        if task is not None:
            return task
        record, _ = await self.store.run(self.store.get_task, task_id)
        if record is None:
            raise NotFound(f"task_id: task {task_id} not found")
        return record

    async def get_task_with_events(self, task_id: int) -> tuple[TaskRecord, list[Any]]:
        record, events = await self.store.run(self.store.get_task, task_id)
        if record is None:
            raise NotFound(f"task_id: task {task_id} not found")
        return self.tasks.get(task_id, record), events

    async def watch(self, task_id: int) -> AsyncIterator[TaskRecord]:
        """Yield the task now and after every status change, until it is final."""
        queue: asyncio.Queue[TaskRecord] = asyncio.Queue()
        self._watchers.setdefault(task_id, set()).add(queue)
        try:
            task = await self.get_task(task_id)
            yield task
            last = task.status
            while TaskStatus(task.status) not in FINAL_STATUSES:
                task = await queue.get()
                if task.status != last:
                    last = task.status
                    yield task
        finally:
            watchers = self._watchers.get(task_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[task_id]

    async def _wait_until(
        self, task_id: int, done: Callable[[TaskRecord], bool], seconds: float
    ) -> TaskRecord | None:
        async def waiter() -> TaskRecord | None:
            async for task in self.watch(task_id):
                if done(task):
                    return task
            return None

        try:
            return await asyncio.wait_for(waiter(), seconds)
        except TimeoutError:
            return None

    # ----- submission -------------------------------------------------------------------

    def _tarball_environments(self) -> set[str]:
        """Environments with a tarball in container_dir, re-read when the folder changes."""
        tar_dir = self.config.paths.shared_dir / self.config.docker.container_dir
        try:
            mtime = tar_dir.stat().st_mtime_ns
        except OSError:
            return set()
        if self._tarballs is None or self._tarballs[0] != mtime:
            names = {t.stem.rsplit("-", 1)[0] for t in tar_dir.glob("*-*.tar")}
            self._tarballs = (mtime, names)
        return self._tarballs[1]

    def known_environments(self) -> set[str]:
        names = set(self._tarball_environments())
        for node in self.nodes.values():
            names |= node.environments
        return names

    def _validate_target(self, target: task_pb2.Target) -> None:
        node = self.nodes.get(target.hostname)
        if node is None:
            known = ", ".join(sorted(self.nodes)) or "none registered"
            raise NotFound(f"target: unknown host {target.hostname!r} (known: {known})")
        if target.HasField("numa_node_id"):
            numa_ids = sorted(int(n["id"]) for n in node.numa_nodes)
            if target.numa_node_id not in numa_ids:
                raise NotFound(
                    f"target: {target.hostname} has no NUMA node {target.numa_node_id} "
                    f"(NUMA ids: {numa_ids or 'none'})"
                )
        gpu_ids = sorted(int(g["index"]) for g in node.gpus)
        for gpu in target.gpu_ids:
            if gpu not in gpu_ids:
                raise NotFound(
                    f"target: {target.hostname} has no GPU {gpu} (GPU ids: {gpu_ids or 'none'})"
                )

    def _validate_submit(self, req: tpb.SubmitTaskRequest) -> tuple[int, int, str]:
        if req.kind not in (
            task_pb2.TASK_KIND_UNSPECIFIED,
            task_pb2.TASK_KIND_COMMAND,
            task_pb2.TASK_KIND_VPS,
        ):
            raise InvalidArgument(f"kind: unknown task kind {req.kind}")
        vps = req.kind == task_pb2.TASK_KIND_VPS
        if vps:
            key = req.ssh_public_key.strip()
            if not key:
                raise InvalidArgument("ssh_public_key: a VPS needs a public key to log in with")
            if "\n" in key or not key.split()[0].startswith(("ssh-", "ecdsa-", "sk-")):
                raise InvalidArgument(
                    "ssh_public_key: expected one OpenSSH public key line, "
                    "e.g. 'ssh-ed25519 AAAA...'"
                )
            if len(req.targets) > 1:
                raise InvalidArgument("targets: a VPS takes at most one target")
        if req.gpus < 0:
            raise InvalidArgument(f"gpus: must not be negative, got {req.gpus}")
        if req.gpus and any(t.gpu_ids for t in req.targets):
            raise InvalidArgument("gpus: give a GPU count or GPU ids in targets, not both")
        if not vps and not req.command.strip():
            raise InvalidArgument("command: must not be empty")
        cores = req.cores if req.HasField("cores") else (0 if vps else 1)
        if cores < (0 if vps else 1):
            low = "0 for a VPS" if vps else "1"
            raise InvalidArgument(f"cores: must be at least {low}, got {cores}")
        memory = 0
        if req.memory:
            try:
                memory = parse_size(req.memory)
            except ValueError as exc:
                raise InvalidArgument(f"memory: {exc}") from None
            if memory <= 0:
                raise InvalidArgument(f"memory: must be positive, got {req.memory!r}")
        for key in req.env:
            if not ENV_KEY_RE.match(key):
                raise InvalidArgument(f"env: invalid variable name {key!r}")
        for mount in req.mounts:
            if not mount.host_path.startswith("/") or not mount.container_path.startswith("/"):
                raise InvalidArgument(
                    f"mounts: paths must be absolute, got {mount.host_path}:{mount.container_path}"
                )
        container = req.container_name or self.config.docker.default_container_name
        if container == NULL_CONTAINER and vps:
            raise InvalidArgument("container_name: a VPS needs a container environment with sshd")
        if container == NULL_CONTAINER and (req.mounts or req.privileged):
            raise InvalidArgument(
                "container_name: NULL tasks run on the runner host: --mount and --privileged "
                "do not apply"
            )
        for target in req.targets:
            self._validate_target(target)
        environments = self.known_environments()
        if container != NULL_CONTAINER and container not in environments:
            available = ", ".join(sorted(environments)) or "none"
            raise NotFound(
                f"container_name: environment {container!r} not found: no runner has image "
                f"{image_for(container)} and no tarball exists (available: {available})"
            )
        optional_targets: list[task_pb2.Target | None] = list(req.targets) or [None]
        for maybe in optional_targets:
            request = Request(
                0,
                cores,
                memory,
                target=maybe.hostname if maybe else None,
                numa_node=(
                    maybe.numa_node_id if maybe and maybe.HasField("numa_node_id") else None
                ),
                gpu_ids=tuple(maybe.gpu_ids) if maybe else (),
                gpu_count=req.gpus,
            )
            problem = self.scheduler.never_fits(request)
            if problem:
                raise InvalidArgument(problem)
        return cores, memory, container

    async def submit(self, req: tpb.SubmitTaskRequest) -> tuple[list[TaskRecord], int]:
        cores, memory, container = self._validate_submit(req)
        vps = req.kind == task_pb2.TASK_KIND_VPS
        targets: list[task_pb2.Target | None] = list(req.targets) or [None]
        batch_id = self.ids.next_id() if len(targets) > 1 else 0
        records: list[TaskRecord] = []
        now = utcnow()
        for target in targets:
            task_id = self.ids.next_id()
            records.append(
                TaskRecord(
                    task_id=task_id,
                    kind="vps" if vps else "command",
                    batch_id=batch_id,
                    command="" if vps else req.command,
                    ssh_public_key=req.ssh_public_key.strip() if vps else "",
                    arguments=list(req.arguments),
                    env=dict(req.env),
                    status=TaskStatus.PENDING.value,
                    target_hostname=target.hostname if target else None,
                    required_cores=cores,
                    required_memory_bytes=memory,
                    required_gpus=list(target.gpu_ids) if target else [],
                    gpu_count=req.gpus,
                    target_numa_node_id=(
                        target.numa_node_id
                        if target is not None and target.HasField("numa_node_id")
                        else None
                    ),
                    container_name=container,
                    privileged=container != NULL_CONTAINER
                    and (req.privileged or self.config.docker.tasks_privileged),
                    mounts=[
                        {
                            "host_path": m.host_path,
                            "container_path": m.container_path,
                            "read_only": m.read_only,
                        }
                        for m in req.mounts
                    ],
                    priority=req.priority,
                    submitted_at=now,
                    stdout_path="" if vps else str(self.logs.path(task_id, STDOUT)),
                    stderr_path="" if vps else str(self.logs.path(task_id, STDERR)),
                    # Given explicitly: resolving a default_factory per instance is slow.
                    assigned_cpus=[],
                )
            )
        if not vps:
            await self.logs.create([r.task_id for r in records])
        events = [
            {"task_id": r.task_id, "status": r.status, "at": now, "detail": "submitted"}
            for r in records
        ]
        await self.store.write(inserts=[r.model_dump() for r in records], events=events)
        self._positions = None
        for record in records:
            self.tasks[record.task_id] = record
            self._pending[record.task_id] = record
            self.metrics.task_moved(None, TaskStatus.PENDING, record.kind)
            self.metrics.tasks_submitted.labels(kind=record.kind).inc()
        self.kick()
        return records, batch_id

    # ----- placement --------------------------------------------------------------------

    def kick(self) -> None:
        self._kick.set()

    async def _placement_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            try:
                await self._place_pending()
            except Exception:
                log.exception("placement failed")

    async def _place_pending(self) -> None:
        pending = [_request_of(t) for t in self._pending.values()]
        if not pending:
            return
        now_ms = time.time_ns() // 1_000_000
        placements = []
        for request, allocation in self.scheduler.plan(pending, now_ms):
            task = self.tasks.get(request.task_id)
            if task is None or task.status != TaskStatus.PENDING:
                self.scheduler.release(allocation.hostname, request.task_id)
                continue
            placements.append(self._assign(task, allocation))
        await asyncio.gather(*placements)

    async def _assign(self, task: TaskRecord, allocation: Allocation) -> None:
        await self._move(
            task,
            TaskStatus.ASSIGNING,
            detail=f"placed on {allocation.hostname}",
            assigned_node=allocation.hostname,
            assigned_cpus=list(allocation.cpus),
            required_gpus=list(allocation.gpus),
        )
        self._placed_at[task.task_id] = utcnow()
        self._dispatch(task)

    def _dispatch(self, task: TaskRecord) -> None:
        node = self.nodes.get(task.assigned_node or "")
        if node is None or node.session is None:
            return
        node.session.send(
            rpb.ConnectResponse(
                dispatch=rpb.DispatchCommand(
                    task_id=task.task_id,
                    kind=task_pb2.TASK_KIND_VPS
                    if task.kind == "vps"
                    else task_pb2.TASK_KIND_COMMAND,
                    ssh_public_key=task.ssh_public_key,
                    image=(
                        ""
                        if task.container_name == NULL_CONTAINER
                        else image_for(task.container_name)
                    ),
                    command=task.command,
                    arguments=task.arguments,
                    env=task.env,
                    cores=task.required_cores,
                    memory_bytes=task.required_memory_bytes,
                    mounts=[task_pb2.Mount(**m) for m in task.mounts],
                    privileged=task.privileged,
                    container_name=task.container_name,
                    gpu_ids=task.required_gpus,
                    cpus=task.assigned_cpus,
                    numa_node_id=task.target_numa_node_id,
                )
            )
        )

    # ----- control ----------------------------------------------------------------------

    async def _active_task(
        self, task_id: int, action: str, allowed: frozenset[TaskStatus]
    ) -> TaskRecord:
        task = await self.get_task(task_id)
        if TaskStatus(task.status) not in allowed:
            names = ", ".join(s.value for s in TaskStatus if s in allowed)
            raise FailedPrecondition(
                f"task {task_id} is {task.status}: only {names} tasks can be {action}"
            )
        return task

    def _session_of(self, task: TaskRecord) -> RunnerSession | None:
        node = self.nodes.get(task.assigned_node or "")
        return node.session if node is not None else None

    async def kill(self, task_id: int) -> TaskRecord:
        task = await self._active_task(task_id, "killed", KILLABLE)
        if task.status == TaskStatus.PENDING:
            await self._move(task, TaskStatus.KILLED, detail="killed while pending")
            return task
        await self._persist(task, [], kill_requested=True)
        session = self._session_of(task)
        grace = self.config.timing.kill_grace_seconds
        if session is not None:
            session.send(
                rpb.ConnectResponse(kill=rpb.KillCommand(task_id=task_id, grace_seconds=grace))
            )
            await self._wait_until(
                task_id, lambda t: TaskStatus(t.status).is_final, grace + CONTROL_TIMEOUT
            )
        if not TaskStatus(task.status).is_final:
            why = "runner did not confirm" if session is not None else "runner not connected"
            await self._move(task, TaskStatus.KILLED, detail=f"killed ({why})")
        return task

    async def _control(
        self,
        task_id: int,
        action: str,
        allowed: TaskStatus,
        goal: TaskStatus,
        message: rpb.ConnectResponse,
    ) -> TaskRecord:
        task = await self._active_task(task_id, action, frozenset({allowed}))
        session = self._session_of(task)
        if session is None:
            raise Unavailable(f"runner {task.assigned_node} is not connected; try again later")
        session.send(message)
        await self._wait_until(task_id, lambda t: t.status != allowed, CONTROL_TIMEOUT)
        if task.status != goal:
            raise Unavailable(f"runner {task.assigned_node} did not confirm; task is {task.status}")
        return task

    async def pause(self, task_id: int) -> TaskRecord:
        message = rpb.ConnectResponse(pause=rpb.PauseCommand(task_id=task_id))
        return await self._control(
            task_id, "paused", TaskStatus.RUNNING, TaskStatus.PAUSED, message
        )

    async def resume(self, task_id: int) -> TaskRecord:
        message = rpb.ConnectResponse(resume=rpb.ResumeCommand(task_id=task_id))
        return await self._control(
            task_id, "resumed", TaskStatus.PAUSED, TaskStatus.RUNNING, message
        )

    # ----- runners ----------------------------------------------------------------------

    async def register(self, reg: rpb.RegisterRunner) -> tuple[RunnerSession, rpb.RegisterAck]:
        hostname = reg.hostname
        if not hostname:
            raise InvalidArgument("register: hostname must not be empty")
        node = self.nodes.get(hostname)
        if node is not None and node.session is not None:
            log.info("runner %s reconnected; closing its previous stream", hostname)
            node.session.close()
            self.metrics.runners_connected.dec()
        numa = [
            {"id": n.id, "cpus": list(n.cpus), "memory_bytes": n.memory_bytes}
            for n in reg.numa_nodes
        ]
        gpus = [{"index": g.index, "uuid": g.uuid, "name": g.name} for g in reg.gpus]
        if node is None:
            node = NodeView(hostname, reg.total_cores, reg.total_memory_bytes)
            self.nodes[hostname] = node
        node.total_cores = reg.total_cores
        node.total_memory_bytes = reg.total_memory_bytes
        node.numa_nodes = numa
        node.gpus = gpus
        node.environments = set(reg.environments)
        self._sync_capacity(node)
        node.last_heartbeat = utcnow()
        await self.store.save_node(
            NodeRecord(
                hostname=hostname,
                total_cores=reg.total_cores,
                total_memory_bytes=reg.total_memory_bytes,
                numa_nodes=numa,
                gpus=gpus,
                last_heartbeat=node.last_heartbeat,
                draining=node.draining,
            ).model_dump(),
        )
        session = RunnerSession(hostname)
        node.session = session
        if not node.online:
            self.notifier.notify("node.online", node=hostname)
        node.online = True
        node.last_seen = time.monotonic()
        self.scheduler.set_online(hostname, True)
        self.metrics.runners_connected.inc()
        self._update_node_metrics(node)

        known = set(reg.known_task_ids)
        ack = rpb.RegisterAck(heartbeat_interval_seconds=self.config.timing.heartbeat_interval)
        for task_id in sorted(known):
            task = self.tasks.get(task_id)
            if (
                task is not None
                and task.assigned_node == hostname
                and TaskStatus(task.status) in PLACED_STATUSES
            ):
                ack.adopt.append(
                    rpb.AdoptTask(
                        task_id=task_id,
                        stdout_offset=await self.logs.size(task_id, STDOUT),
                        stderr_offset=await self.logs.size(task_id, STDERR),
                    )
                )
            else:
                ack.discard_task_ids.append(task_id)
        for task in list(self.tasks.values()):
            if task.assigned_node != hostname or task.task_id in known:
                continue
            if task.status == TaskStatus.ASSIGNING:
                self._dispatch(task)
            elif TaskStatus(task.status) in PLACED_STATUSES:
                await self._move(
                    task,
                    TaskStatus.LOST,
                    detail="gone after runner reconnect",
                    error_message=(
                        f"runner {hostname} came back without the task: its container or "
                        "process could not be re-adopted"
                    ),
                )
        log.info(
            "runner %s registered: %d cores, %d adopted, %d discarded",
            hostname,
            reg.total_cores,
            len(ack.adopt),
            len(ack.discard_task_ids),
        )
        self.kick()
        return session, ack

    def runner_gone(self, session: RunnerSession) -> None:
        node = self.nodes.get(session.hostname)
        if node is None or node.session is not session:
            return
        node.session = None
        self.tunnels.session_gone(session)
        self.scheduler.set_online(session.hostname, False)
        self.metrics.runners_connected.dec()
        log.info("runner %s disconnected", session.hostname)

    async def handle_runner_message(self, session: RunnerSession, msg: rpb.ConnectRequest) -> None:
        node = self.nodes[session.hostname]
        node.last_seen = time.monotonic()
        kind = msg.WhichOneof("payload")
        if kind == "log_chunk":
            chunk = msg.log_chunk
            stream = STDOUT if chunk.stream == task_pb2.LOG_STREAM_STDOUT else STDERR
            await self.logs.append(chunk.task_id, stream, chunk.offset, chunk.data)
            self.metrics.log_bytes.inc(len(chunk.data))
        elif kind == "heartbeat":
            node.health = msg.heartbeat.health
            node.history.append(node.health)
            while len(node.history) > self.history_length:
                node.history.popleft()
            self.metrics.node_health(node.hostname, node.health)
            for queue in self._health_watchers:
                if queue.full():
                    queue.get_nowait()
                queue.put_nowait((node.hostname, node.health))
            node.last_heartbeat = utcnow()
            node.environments = set(msg.heartbeat.environments)
            node.loaded = {e.name: e.tarball_timestamp for e in msg.heartbeat.loaded}
            if not node.online:
                node.online = True
                self._update_node_metrics(node)
                self.notifier.notify("node.online", node=node.hostname)
        elif kind == "task_state":
            await self._on_task_state(session, msg.task_state)
        elif kind in ("tunnel_opened", "tunnel_data", "tunnel_close"):
            self.tunnels.on_message(msg)
        else:
            log.warning("runner %s sent unexpected %s", session.hostname, kind)

    async def _on_task_state(self, session: RunnerSession, report: rpb.TaskStateReport) -> None:
        finished = report.state in (
            rpb.RUNNER_TASK_STATE_EXITED,
            rpb.RUNNER_TASK_STATE_START_FAILED,
        )
        task = self.tasks.get(report.task_id)
        if task is None or task.assigned_node != session.hostname:
            if finished:
                session.send(
                    rpb.ConnectResponse(release=rpb.ReleaseCommand(task_id=report.task_id))
                )
            return
        status = TaskStatus(task.status)
        if report.state == rpb.RUNNER_TASK_STATE_RUNNING:
            if status is TaskStatus.ASSIGNING:
                placed_at = self._placed_at.pop(task.task_id, None)
                started = (
                    report.started_at.ToDatetime(tzinfo=UTC)
                    if report.HasField("started_at")
                    else utcnow()
                )
                ready = (
                    f"sshd on port {report.ssh_port}" if report.ssh_port else "container started"
                )
                await self._move(
                    task,
                    TaskStatus.RUNNING,
                    detail=ready,
                    started_at=started,
                    ssh_port=report.ssh_port or task.ssh_port,
                )
                now = utcnow()
                self.metrics.submit_to_running.observe(
                    max(0.0, (now - task.submitted_at).total_seconds())
                )
                if placed_at is not None:
                    self.metrics.dispatch_latency.observe(
                        max(0.0, (now - placed_at).total_seconds())
                    )
            elif status is TaskStatus.PAUSED:
                await self._move(task, TaskStatus.RUNNING, detail="resumed")
        elif report.state == rpb.RUNNER_TASK_STATE_PREPARING:
            if status is TaskStatus.ASSIGNING:
                event = {
                    "task_id": task.task_id,
                    "status": task.status,
                    "at": utcnow(),
                    "detail": report.detail,
                }
                await self._persist(task, [event], status_detail=report.detail)
        elif report.state == rpb.RUNNER_TASK_STATE_PAUSED:
            if status is TaskStatus.RUNNING:
                await self._move(task, TaskStatus.PAUSED, detail="paused")
        elif report.state == rpb.RUNNER_TASK_STATE_EXITED:
            exit_code = report.exit_code if report.HasField("exit_code") else None
            final = exit_status(exit_code, report.oom_killed, task.kill_requested)
            error = report.error_message
            if final is TaskStatus.KILLED_OOM and not error:
                limit = task.required_memory_bytes
                error = f"killed by the kernel: memory limit of {limit} bytes exceeded"
            finished_at = (
                report.finished_at.ToDatetime(tzinfo=UTC)
                if report.HasField("finished_at")
                else None
            )
            await self._move(
                task,
                final,
                detail=f"exited with code {exit_code}",
                exit_code=exit_code,
                error_message=error,
                completed_at=finished_at,
            )
        elif report.state == rpb.RUNNER_TASK_STATE_START_FAILED:
            await self._move(
                task,
                TaskStatus.FAILED,
                detail="could not start",
                error_message=report.error_message,
            )
        if finished:
            session.send(rpb.ConnectResponse(release=rpb.ReleaseCommand(task_id=report.task_id)))

    async def watch_health(self) -> AsyncIterator[tuple[str, node_pb2.Health]]:
        """Every new health sample; a watcher that falls behind loses its oldest ones."""
        queue: asyncio.Queue[tuple[str, node_pb2.Health]] = asyncio.Queue(HEALTH_WATCH_QUEUE)
        self._health_watchers.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._health_watchers.discard(queue)

    # ----- silent runners ---------------------------------------------------------------

    def _update_node_metrics(self, changed: NodeView | None = None) -> None:
        """Refresh node_up for ``changed`` (every node when None) and the online counts."""
        for node in self.nodes.values() if changed is None else (changed,):
            self.metrics.node_up.labels(node=node.hostname).set(1 if node.online else 0)
        online = sum(1 for n in self.nodes.values() if n.online)
        self.metrics.nodes.labels(status="online").set(online)
        self.metrics.nodes.labels(status="offline").set(len(self.nodes) - online)

    async def _monitor_loop(self) -> None:
        timing = self.config.timing
        interval = min(timing.cleanup_check_interval, timing.heartbeat_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_silent_runners()
            except Exception:
                log.exception("runner check failed")

    async def check_silent_runners(self) -> None:
        timeout = self.config.timing.runner_timeout
        now = time.monotonic()
        for node in list(self.nodes.values()):
            if now - node.last_seen <= timeout:
                continue
            if node.online:
                log.warning(
                    "runner %s silent for %.0fs: offline", node.hostname, now - node.last_seen
                )
                node.online = False
                self._update_node_metrics(node)
                self.metrics.node_offline(node.hostname)
                self.notifier.notify("node.offline", node=node.hostname)
            if node.session is not None:
                node.session.close()
            for task in list(self.tasks.values()):
                if (
                    task.assigned_node == node.hostname
                    and TaskStatus(task.status) in PLACED_STATUSES
                ):
                    await self._move(
                        task,
                        TaskStatus.LOST,
                        detail="runner silent",
                        error_message=(
                            f"runner {node.hostname} was silent for more than {timeout:g}s"
                        ),
                    )
