"""The Runner nodes as the Host knows them: hardware, link, health history, online state.

NodeTable owns the node views and keeps the scheduler's picture of each node's capacity,
the node metrics, the health watchers and the node webhooks in step with them.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hakuriver_common.proto.hakuriver.v1 import node_pb2, runner_service_pb2 as rpb
from hakuriver_host.admission import NodeShape
from hakuriver_host.errors import NotFound
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.models import NodeRecord, utcnow
from hakuriver_host.runner_link import RunnerLink
from hakuriver_host.scheduler import Scheduler
from hakuriver_host.webhooks import Notifier

log = logging.getLogger(__name__)

HISTORY_SECONDS = 600.0
HISTORY_MIN_POINTS = 120
HEALTH_WATCH_QUEUE = 1024
# What a health watcher's queue holds: a node's name, its new sample (None: a change of its
# status) and whether the Host forgot it.
_HealthChange = tuple[str, node_pb2.Health | None, bool]


@dataclass(frozen=True)
class Forgotten:
    """A node the Host forgot, as a watch of every node hears of it."""

    hostname: str


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
    # ``last_heartbeat`` as its database row has it (``record``).
    stored_heartbeat: datetime | None = None
    link: RunnerLink | None = None
    health: node_pb2.Health | None = None
    environments: set[str] = field(default_factory=set)
    draining: bool = False
    # Tarball timestamp of each environment the Runner loaded from a tarball.
    loaded: dict[str, int] = field(default_factory=dict)
    # Recent health samples, oldest first (bounded; see NodeTable.history_length), encoded:
    # as parsed messages, 10 minutes of 5,000 nodes' samples took ~330 MB, and every full
    # collection of the garbage collector went through them; as bytes, ~70 MB, untracked.
    history: deque[bytes] = field(default_factory=deque)
    # Why the Host could not store this node's task output at its latest try ("" if it could).
    output_problem: str = ""
    # When a registration of this node replaced a stream still open (monotonic seconds),
    # within the last REPLACED_WINDOW: many mean two Runners answer to one name.
    replaced: deque[float] = field(default_factory=deque)
    # The Runner process that last registered ("" unknown: a Runner of before the field).
    instance_id: str = ""

    @property
    def disconnected(self) -> bool:
        """Online (its timeout not reached) but its Runner's stream is closed."""
        return self.online and self.link is None

    def record(self) -> dict[str, Any]:
        """The node's database row, to be stored."""
        self.stored_heartbeat = self.last_heartbeat
        return {
            "hostname": self.hostname,
            "total_cores": self.total_cores,
            "total_memory_bytes": self.total_memory_bytes,
            "numa_nodes": self.numa_nodes,
            "gpus": self.gpus,
            "last_heartbeat": self.last_heartbeat,
            "draining": self.draining,
            "online": self.online,
            "environments": sorted(self.environments),
            "instance_id": self.instance_id,
        }


def _gpu_row(gpu: node_pb2.Gpu) -> dict[str, Any]:
    """A GPU as a node keeps it (and its row stores it): what identifies it."""
    return {"index": gpu.index, "uuid": gpu.uuid, "name": gpu.name}


# A node's streams replaced this often within this many seconds: two Runners take turns.
REPLACED_TIMES = 5
REPLACED_WINDOW = 60.0


def _note_replaced(node: NodeView) -> None:
    """A Runner reconnecting replaces its stream now and then; two Runners sharing one name
    and credential (a copied state_dir) replace each other's several times a second, each
    reporting the other's tasks missing. Said once per window, as a warning."""
    now = time.monotonic()
    node.replaced.append(now)
    while node.replaced and node.replaced[0] < now - REPLACED_WINDOW:
        node.replaced.popleft()
    if len(node.replaced) == REPLACED_TIMES:
        log.warning(
            "runner %s: its stream was replaced by a new registration %d times within %gs; "
            "are two Runners using one name and credential (a copied runner.state_dir)?",
            node.hostname,
            REPLACED_TIMES,
            REPLACED_WINDOW,
        )


class NodeTable:
    def __init__(
        self,
        scheduler: Scheduler,
        metrics: HostMetrics,
        notifier: Notifier,
        heartbeat_interval: float,
    ) -> None:
        self.scheduler = scheduler
        self.metrics = metrics
        self.notifier = notifier
        self.nodes: dict[str, NodeView] = {}
        # At least HISTORY_SECONDS of samples at heartbeat resolution.
        self.history_length = max(
            HISTORY_MIN_POINTS, math.ceil(HISTORY_SECONDS / heartbeat_interval) + 1
        )
        # (hostname, a new sample, or None when the node went online or offline, its link
        # closed or opened, it was drained or undrained or its output problem changed)
        self._health_watchers: set[asyncio.Queue[_HealthChange]] = set()
        # The nodes whose output problem was set, a superset of those that show one now.
        self._output_problems: set[str] = set()

    def get(self, hostname: str) -> NodeView:
        node = self.nodes.get(hostname)
        if node is None:
            raise NotFound(f"hostname: unknown node {hostname!r}")
        return node

    def selected(self, hostname: str = "") -> list[NodeView]:
        """``hostname``'s node (NotFound if unknown), or every node; sorted by name."""
        nodes = [self.get(hostname)] if hostname else list(self.nodes.values())
        return sorted(nodes, key=lambda n: n.hostname)

    def link_of(self, hostname: str | None) -> RunnerLink | None:
        node = self.nodes.get(hostname or "")
        return node.link if node is not None else None

    def load(self, records: list[NodeRecord]) -> None:
        """Nodes from the database. One that was online is online with its stream closed
        (``disconnected``) until its Runner connects or its timeout passes, as though
        its stream had closed now: a reconnect within the timeout is no ``node.online``,
        none is a ``node.offline``. Either way it takes no task before it connects."""
        for record in records:
            node = NodeView(
                hostname=record.hostname,
                total_cores=record.total_cores,
                total_memory_bytes=record.total_memory_bytes,
                numa_nodes=record.numa_nodes,
                gpus=record.gpus,
                last_heartbeat=record.last_heartbeat,
                stored_heartbeat=record.last_heartbeat,
                draining=record.draining,
                online=record.online,
                # Known before the Runner reconnects, so a restarted Host accepts tasks for
                # environments that exist only as images on Runners.
                environments=set(record.environments or ()),
                instance_id=record.instance_id,
            )
            self.nodes[node.hostname] = node
            self._sync_capacity(node)
            self.scheduler.set_online(node.hostname, False)
        self.update_metrics()

    def _sync_capacity(self, node: NodeView) -> None:
        """Tell the scheduler a node's hardware: CPU ids and memory per NUMA node, memory, GPU
        ids."""
        numa = {int(n["id"]): tuple(int(c) for c in n["cpus"]) for n in node.numa_nodes}
        cpus = tuple(sorted({c for group in numa.values() for c in group}))
        if not cpus:
            cpus = tuple(range(node.total_cores))
        gpus = tuple(sorted(int(g["index"]) for g in node.gpus))
        memory = {int(n["id"]): int(n.get("memory_bytes", 0)) for n in node.numa_nodes}
        self.scheduler.upsert_node(
            node.hostname, cpus, node.total_memory_bytes, numa, gpus, numa_memory=memory
        )
        self.scheduler.set_draining(node.hostname, node.draining)

    # ----- links ------------------------------------------------------------------------

    def connect(self, reg: rpb.RegisterRunner) -> tuple[NodeView, RunnerLink]:
        """A Runner registered: its hardware as it reports it now, and a new link."""
        node = self.nodes.get(reg.hostname)
        back = node is not None and node.online  # within the timeout: no longer disconnected
        if node is None:
            node = NodeView(reg.hostname, reg.total_cores, reg.total_memory_bytes)
            self.nodes[reg.hostname] = node
        elif node.link is not None:
            log.info("runner %s reconnected; closing its previous stream", reg.hostname)
            self.disconnect(node.link)
            _note_replaced(node)
        node.total_cores = reg.total_cores
        node.total_memory_bytes = reg.total_memory_bytes
        node.numa_nodes = [
            {"id": n.id, "cpus": list(n.cpus), "memory_bytes": n.memory_bytes}
            for n in reg.numa_nodes
        ]
        unread = self._take_gpus(node, reg)
        node.environments = set(reg.environments)
        node.last_heartbeat = utcnow()
        self._sync_capacity(node)
        self._set_unread(node.hostname, unread)
        node.link = RunnerLink(
            reg.hostname,
            batches=reg.takes_batches,
            prepares=reg.prepares_ahead,
            release_batches=reg.takes_release_batches,
        )
        self._seen(node)
        if back:
            self._tell_watchers(node.hostname, None)
        self.scheduler.set_online(node.hostname, True)
        self.metrics.runners_connected.inc()
        return node, node.link

    def _take_gpus(self, node: NodeView, reg: rpb.RegisterRunner) -> list[int]:
        """The node's GPUs as of ``reg``, and those of them unread. A new Runner process (or
        one that does not say which it is) has the GPUs it reads now. The same process
        reconnecting keeps the GPUs it had, those it cannot read now unread (as a heartbeat
        would have them), and adds any it reads that were not: NVML failing or a GPU off the
        bus at a reconnect (the Host's restart) took them off the node until the Runner
        restarted. A registration reading none is no news, as a heartbeat's."""
        read = {g.index: _gpu_row(g) for g in reg.gpus}
        same = bool(reg.instance_id) and reg.instance_id == node.instance_id
        node.instance_id = reg.instance_id
        if not same:
            node.gpus = list(read.values())
            return []
        known = {int(g["index"]): g for g in node.gpus}
        if read:
            unread = sorted(set(known) - set(read))
        else:
            unread = self.scheduler.unread_gpus(node.hostname)
        node.gpus = [v for _, v in sorted({**known, **read}.items())]
        return unread

    def disconnect(self, link: RunnerLink) -> bool:
        """The link's stream ended; False if the node has a newer link already."""
        link.close()
        node = self.nodes.get(link.hostname)
        if node is None or node.link is not link:
            return False
        node.link = None
        self.scheduler.set_online(link.hostname, False)
        self.metrics.runners_connected.dec()
        if node.online:  # still online until its timeout, but disconnected
            self._tell_watchers(node.hostname, None)
        return True

    def _seen(self, node: NodeView) -> None:
        node.last_seen = time.monotonic()
        if not node.online:
            node.online = True
            self.update_metrics(node)
            self.notifier.notify("node.online", node=node.hostname, draining=node.draining)
            self._tell_watchers(node.hostname, None)

    def touch(self, hostname: str) -> None:
        self.nodes[hostname].last_seen = time.monotonic()

    def silent(self, timeout: float) -> tuple[list[NodeView], list[NodeView]]:
        """Nodes not heard from for ``timeout`` seconds, and those of them that were online
        until now: marked offline, links closed."""
        now = time.monotonic()
        found = []
        went = []
        for node in self.nodes.values():
            if now - node.last_seen <= timeout:
                continue
            found.append(node)
            if node.online:
                went.append(node)
                log.warning(
                    "runner %s silent for %.0fs: offline", node.hostname, now - node.last_seen
                )
                node.online = False
                self.update_metrics(node)
                self.metrics.node_offline(node.hostname)
                # A node drained first was taken down on purpose: receivers can tell.
                self.notifier.notify("node.offline", node=node.hostname, draining=node.draining)
                self._tell_watchers(node.hostname, None)
            if node.link is not None:
                node.link.close()
        return found, went

    def heartbeats_to_store(self, age: float) -> list[NodeView]:
        """Nodes whose last heartbeat is more than ``age`` seconds newer than their row's.
        Stored that often, a restarted Host shows when each Runner was last heard from; it
        showed when the Runner had registered (or its environments last changed), also
        for good for a node that never came back."""
        return [
            node
            for node in self.nodes.values()
            if node.last_heartbeat is not None
            and (
                node.stored_heartbeat is None
                or (node.last_heartbeat - node.stored_heartbeat).total_seconds() > age
            )
        ]

    def idle_offline(self, seconds: float, now: float) -> list[str]:
        """Offline nodes with no link, silent for more than ``seconds``, but for drained
        ones: forgotten, a node would come back undrained and take work at once."""
        return [
            n.hostname
            for n in self.nodes.values()
            if not n.online and n.link is None and not n.draining and now - n.last_seen > seconds
        ]

    def forget(self, hostname: str) -> None:
        """Drop a node entirely (it holds no task); its health watchers hear of it."""
        node = self.nodes.pop(hostname, None)
        if node is None:
            return
        self._tell_watchers(hostname, None, forgotten=True)
        self.scheduler.remove_node(hostname)
        self.metrics.node_offline(hostname)
        self.metrics.node_up.remove(hostname)
        self.metrics.node_draining.remove(hostname)
        self.metrics.output_failing.remove(hostname)
        self.update_metrics()

    def set_draining(self, hostname: str, draining: bool) -> NodeView:
        """Health watchers hear of a change, as of a status."""
        node = self.get(hostname)
        changed = node.draining != draining
        node.draining = draining
        self.scheduler.set_draining(hostname, draining)
        if changed:
            self.update_metrics(node)
            self._tell_watchers(hostname, None)
        return node

    # ----- health -----------------------------------------------------------------------

    def heartbeat(self, hostname: str, beat: rpb.Heartbeat) -> bool:
        """Record a heartbeat; True if the node's environments or GPUs changed (its row is
        stale, and a queued task may fit now)."""
        node = self.nodes[hostname]
        node.health = beat.health
        node.history.append(beat.health.SerializeToString())
        while len(node.history) > self.history_length:
            node.history.popleft()
        self.metrics.node_health(hostname, beat.health)
        self._tell_watchers(hostname, beat.health)
        node.last_heartbeat = utcnow()
        environments = set(beat.environments)
        changed = environments != node.environments
        node.environments = environments
        node.loaded = {e.name: e.tarball_timestamp for e in beat.loaded}
        self._seen(node)
        return self._add_gpus(node, beat.health.gpus) or changed

    def _add_gpus(self, node: NodeView, readings: Sequence[node_pb2.Gpu]) -> bool:
        """Add the GPUs a heartbeat reads that the node lacks: its Runner registered while
        NVML was failing or stuck (a Runner started before the driver was loaded, at boot),
        or it read them at none of its registrations. True if any was added."""
        if not readings:  # most heartbeats: a node without GPUs
            return False
        known = {int(g["index"]) for g in node.gpus}
        added = [g for g in readings if g.index not in known]
        if not added:
            return False
        node.gpus = sorted(
            [*node.gpus, *map(_gpu_row, added)],
            key=lambda g: int(g["index"]),
        )
        unread = self.scheduler.unread_gpus(node.hostname)
        self._sync_capacity(node)
        self.scheduler.set_unread_gpus(node.hostname, unread)
        log.info(
            "runner %s: GPU %s read, which its registration lacked: added to the node",
            node.hostname,
            ", ".join(str(g.index) for g in added),
        )
        return True

    def gpus_read(self, hostname: str, readings: Sequence[node_pb2.Gpu]) -> bool:
        """Tell the scheduler which of the node's GPUs its heartbeat's readings miss; True if
        that changed (a GPU back may let a queued task start). A heartbeat reading no GPU is
        no news: a failing or stuck NVML leaves none, and so does a lone GPU lost, which the
        heartbeat cannot tell apart."""
        if not readings:
            return False
        node = self.nodes[hostname]
        read = {gpu.index for gpu in readings}
        return self._set_unread(
            hostname, sorted(int(g["index"]) for g in node.gpus if int(g["index"]) not in read)
        )

    def _set_unread(self, hostname: str, unread: list[int]) -> bool:
        """Tell the scheduler the node's GPUs ``unread``, logging a change; True if changed."""
        if not self.scheduler.set_unread_gpus(hostname, unread):
            return False
        if unread:
            log.warning(
                "runner %s: GPU %s dropped out of its readings: no new task gets it until "
                "it is read again",
                hostname,
                ", ".join(map(str, unread)),
            )
        else:
            log.info("runner %s: every GPU is read again", hostname)
        return True

    def output_problem(self, hostname: str) -> str:
        node = self.nodes.get(hostname)
        return node.output_problem if node is not None else ""

    def output_problems(self) -> list[str]:
        """The nodes that show an output problem. Asked at every output chunk: it reads
        the nodes that had one (``_output_problems``), not every node."""
        found = []
        for hostname in list(self._output_problems):
            node = self.nodes.get(hostname)
            if node is not None and node.output_problem:
                found.append(hostname)
            else:  # forgotten, or a node of that name made anew since
                self._output_problems.discard(hostname)
        return found

    def output_stored(self, hostname: str, problem: str = "") -> None:
        """The Host tried to store output of a task on this node: ``problem`` says why it
        could not ("" when it could). Health watchers hear of a change, as of a status."""
        node = self.nodes.get(hostname)
        if node is None or node.output_problem == problem:
            return
        node.output_problem = problem
        if problem:
            self._output_problems.add(hostname)
        self.update_metrics(node)
        self._tell_watchers(hostname, None)

    def _tell_watchers(
        self, hostname: str, health: node_pb2.Health | None, forgotten: bool = False
    ) -> None:
        for queue in self._health_watchers:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait((hostname, health, forgotten))

    async def watch_health(
        self, hostname: str = "", announce: bool = False
    ) -> AsyncIterator[tuple[NodeView, node_pb2.Health | None] | Forgotten | None]:
        """Every new health sample, in order, with its node, and None when the node went
        online or offline, its link closed or opened, it was drained or undrained or its
        output problem changed; first None, with ``announce``, once the watcher is in place.
        A watcher that falls behind loses its oldest ones. A node forgotten (``forget``) is
        ``Forgotten`` to a watcher of every node, which would show it for ever otherwise; a
        watcher of ``hostname`` alone ends with NotFound then: it would hear nothing more."""
        if hostname:
            self.get(hostname)
        queue: asyncio.Queue[_HealthChange] = asyncio.Queue(HEALTH_WATCH_QUEUE)
        self._health_watchers.add(queue)
        try:
            if announce:
                yield None
            while True:
                name, health, forgotten = await queue.get()
                if hostname and name != hostname:
                    continue
                node = self.nodes.get(name)  # None: forgotten since
                if node is not None:
                    yield node, health
                elif hostname:
                    raise NotFound(
                        f"hostname: node {hostname!r} was forgotten (offline for "
                        "timing.forget_node_seconds, and no task of it kept)"
                    )
                elif forgotten:
                    yield Forgotten(name)
        finally:
            self._health_watchers.discard(queue)

    def update_metrics(self, changed: NodeView | None = None) -> None:
        """Refresh node_up, node_draining and output_storage_failing for ``changed`` (every
        node when None) and the online counts."""
        for node in self.nodes.values() if changed is None else (changed,):
            self.metrics.node_up.labels(node=node.hostname).set(1 if node.online else 0)
            self.metrics.node_draining.labels(node=node.hostname).set(1 if node.draining else 0)
            failing = 1 if node.output_problem else 0
            self.metrics.output_failing.labels(node=node.hostname).set(failing)
        online = sum(1 for n in self.nodes.values() if n.online)
        self.metrics.nodes.labels(status="online").set(online)
        self.metrics.nodes.labels(status="offline").set(len(self.nodes) - online)

    # ----- what admission and environments ask -------------------------------------------

    def shape(self, hostname: str) -> NodeShape | None:
        node = self.nodes.get(hostname)
        if node is None:
            return None
        return NodeShape(
            numa_ids=frozenset(int(n["id"]) for n in node.numa_nodes),
            gpu_ids=frozenset(int(g["index"]) for g in node.gpus),
        )

    def has_environment(self, name: str) -> bool:
        return any(name in node.environments for node in self.nodes.values())

    def environment_names(self) -> set[str]:
        return {name for node in self.nodes.values() for name in node.environments}

    def loaded_on(self, name: str, timestamp: int) -> list[str]:
        """Nodes whose Runner loaded this tarball of an environment."""
        return sorted(n.hostname for n in self.nodes.values() if n.loaded.get(name) == timestamp)
