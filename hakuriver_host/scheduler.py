"""Placement of tasks on nodes: pure bookkeeping of CPU ids, memory and GPU ids, no I/O.

Policy (docs/scheduling.md):
- A request names cores, memory, and optionally a target host, a NUMA node on it, explicit
  GPU ids on it, or a number of GPUs anywhere.
- Cores are specific CPU ids, so two tasks never share pinned CPUs. A NUMA-targeted request
  takes CPUs of that NUMA node only; others prefer CPUs of a single NUMA node, lowest ids
  first.
- Without a target the node with the fewest free cores that fits is chosen (best fit), ties
  broken by free memory, free GPUs and name, to keep large holes for large requests.
- Pending requests are tried by priority (higher first), then submission order (ids are
  time-ordered). One that does not fit is passed over so smaller ones can start, unless it
  has waited ``starvation_seconds``: then it reserves the node it is closest to fitting on,
  and nothing ranked below it is placed there until it starts.
- Offline and draining nodes receive nothing new, nor does a GPU that dropped out of its
  node's readings (docs/gpus.md) until it is read again.
"""

from __future__ import annotations

import heapq
from bisect import bisect_left, insort
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from typing import TypeVar

from hakuriver_common.ids import id_timestamp_ms
from hakuriver_common.limits import name_list
from hakuriver_common.units import format_size


@dataclass(frozen=True)
class Allocation:
    """What one task holds on one node."""

    hostname: str
    cpus: tuple[int, ...]
    memory_bytes: int
    gpus: tuple[int, ...] = ()
    numa_node: int | None = None


@dataclass(frozen=True)
class Request:
    task_id: int
    cores: int
    memory_bytes: int
    target: str | None = None
    numa_node: int | None = None
    gpu_ids: tuple[int, ...] = ()
    gpu_count: int = 0
    priority: int = 0
    # Its batch (a job array, or a submission of several targets), and the array's cap on
    # how many of its tasks hold resources at once (0: none).
    group: int = 0
    group_cap: int = 0

    @property
    def gpus_wanted(self) -> int:
        return len(self.gpu_ids) or self.gpu_count


@dataclass
class NodeResources:
    hostname: str
    cpus: tuple[int, ...]
    memory_bytes: int
    numa: dict[int, tuple[int, ...]] = field(default_factory=dict)
    gpus: tuple[int, ...] = ()
    # Memory of each NUMA node, where its Runner reported it: a NUMA-bound task can use no
    # more (its memory is bound there), whatever its limit.
    numa_memory: dict[int, int] = field(default_factory=dict)
    online: bool = True
    draining: bool = False
    free_cpus: set[int] = field(default_factory=set)
    used_memory_bytes: int = 0
    # Memory held by the tasks bound to each NUMA node (their memory is allocated there
    # alone): what is left of a NUMA node's is what another bound task may ask for.
    numa_used: dict[int, int] = field(default_factory=dict)
    free_gpus: set[int] = field(default_factory=set)
    holders: dict[int, Allocation] = field(default_factory=dict)
    # GPUs of ``gpus`` that dropped out of the node's readings (NVML cannot read them: fallen
    # off the bus): never free, so no new task gets one; a task holding one keeps it.
    unread_gpus: frozenset[int] = frozenset()
    # Registered again at some time with less than it had (CPU or GPU ids gone, less
    # memory): only then may a placement name what the node lacks (``Scheduler.lacks``).
    shrunk: bool = False

    @property
    def total_cores(self) -> int:
        return len(self.cpus)

    @property
    def free_cores(self) -> int:
        return len(self.free_cpus)

    @property
    def held_gpus(self) -> set[int]:
        return {g for allocation in self.holders.values() for g in allocation.gpus}

    @property
    def free_memory_bytes(self) -> int:
        return self.memory_bytes - self.used_memory_bytes

    @property
    def accepts_work(self) -> bool:
        return self.online and not self.draining

    def _cpu_pool(self, numa_node: int | None) -> list[int]:
        if numa_node is None:
            return sorted(self.free_cpus)
        return sorted(self.free_cpus & set(self.numa.get(numa_node, ())))

    def pick_cpus(self, request: Request) -> tuple[int, ...] | None:
        """CPU ids for the request, or None if they are not free now."""
        if request.numa_node is not None:
            pool = self._cpu_pool(request.numa_node)
            return tuple(pool[: request.cores]) if len(pool) >= request.cores else None
        for numa_id in sorted(self.numa):
            local = self._cpu_pool(numa_id)
            if len(local) >= request.cores:
                return tuple(local[: request.cores])
        pool = self._cpu_pool(None)
        return tuple(pool[: request.cores]) if len(pool) >= request.cores else None

    def pick_gpus(self, request: Request) -> tuple[int, ...] | None:
        if request.gpu_ids:
            return request.gpu_ids if set(request.gpu_ids) <= self.free_gpus else None
        if request.gpu_count > len(self.free_gpus):
            return None
        return tuple(sorted(self.free_gpus)[: request.gpu_count])

    def has_room(self, request: Request) -> bool:
        """Cheap necessary condition for ``fit``: enough free cores, memory and GPUs, and
        for a NUMA-bound request enough of its NUMA node's memory."""
        return (
            self.free_cores >= request.cores
            and self.free_memory_bytes >= request.memory_bytes
            and len(self.free_gpus) >= request.gpus_wanted
            and (
                request.numa_node is None
                or self.numa_free_memory(request.numa_node) >= request.memory_bytes
            )
        )

    def numa_free_memory(self, numa_node: int) -> int:
        """What is left of a NUMA node's memory for another task bound to it."""
        return self.memory_for(numa_node) - self.numa_used.get(numa_node, 0)

    def fit(self, request: Request) -> Allocation | None:
        if not self.has_room(request):
            return None
        gpus = self.pick_gpus(request)
        if gpus is None:
            return None
        cpus = self.pick_cpus(request)
        if cpus is None:
            return None
        return Allocation(self.hostname, cpus, request.memory_bytes, gpus, request.numa_node)

    def hold(self, task_id: int, allocation: Allocation) -> None:
        self.holders[task_id] = allocation
        self.free_cpus -= set(allocation.cpus)
        self.free_gpus -= set(allocation.gpus)
        self.used_memory_bytes += allocation.memory_bytes
        self.count_numa(allocation, allocation.memory_bytes)

    def unhold(self, task_id: int) -> None:
        allocation = self.holders.pop(task_id)
        self.free_cpus |= set(allocation.cpus) & set(self.cpus)
        self.free_gpus |= (set(allocation.gpus) & set(self.gpus)) - self.unread_gpus
        self.used_memory_bytes -= allocation.memory_bytes
        self.count_numa(allocation, -allocation.memory_bytes)

    def count_numa(self, allocation: Allocation, memory_bytes: int) -> None:
        """Add ``memory_bytes`` (negative: take) to the use of the allocation's NUMA node,
        if it is bound to one."""
        if allocation.numa_node is not None:
            used = self.numa_used.get(allocation.numa_node, 0) + memory_bytes
            if used:
                self.numa_used[allocation.numa_node] = used
            else:
                self.numa_used.pop(allocation.numa_node, None)

    def memory_for(self, numa_node: int | None) -> int:
        """The most memory a task bound to ``numa_node`` (None: not bound) could use: never
        more than the node's (a container's /proc may show less than sysfs's NUMA nodes)."""
        if numa_node is None:
            return self.memory_bytes
        return min(self.numa_memory.get(numa_node) or self.memory_bytes, self.memory_bytes)

    def could_ever_fit(self, request: Request) -> bool:
        cores = (
            len(self.numa.get(request.numa_node, ()))
            if request.numa_node is not None
            else len(self.cpus)
        )
        return (
            request.cores <= cores
            and request.memory_bytes <= self.memory_for(request.numa_node)
            and request.gpus_wanted <= len(self.gpus)
            and set(request.gpu_ids) <= set(self.gpus)
        )

    def unread_reason(self, request: Request) -> str:
        """Why GPUs that dropped out of this node's readings keep the request off it until
        they are read again ("" if they do not)."""
        named = sorted(self.unread_gpus & set(request.gpu_ids))
        readable = len(self.gpus) - len(self.unread_gpus)
        if not named and request.gpus_wanted <= readable:
            return ""
        lost = named or sorted(self.unread_gpus)
        dropped = (
            f"{self.hostname}'s {_gpu_ids(lost)} dropped out of its readings "
            f"(NVML cannot read {'them' if len(lost) > 1 else 'it'})"
        )
        if named:
            return dropped
        verb = "is" if readable == 1 else "are"
        return f"{dropped}: {readable} of its {_gpus(len(self.gpus))} {verb} read"


def no_such_gpus(hostname: str, wanted: Iterable[int], present: Iterable[int]) -> str:
    """The GPU ids of ``wanted`` a node does not have, in words ("" if it has them all): what
    a submission naming them is refused with, and why a queued task naming them waits."""
    have = set(present)
    missing = sorted(set(wanted) - have)
    if not missing:
        return ""
    return f"{hostname} has no {_gpu_ids(missing)} (GPU ids: {sorted(have) or 'none'})"


def _gpu_ids(ids: list[int]) -> str:
    """GPUs by id, in words: "GPU 1", "GPUs 0, 2"."""
    return _ids("GPU", ids)


def _ids(kind: str, ids: list[int]) -> str:
    """CPUs or GPUs by id, in words: "CPU 1", "GPUs 0, 2" (a long list abbreviated)."""
    return f"{kind}{'s' if len(ids) > 1 else ''} {name_list([str(i) for i in ids])}"


def _lacking(kind: str, held: Iterable[int], present: Iterable[int]) -> str:
    """The ids of ``held`` a node no longer has, in words ("" if it has them all)."""
    have = sorted(set(present))
    missing = sorted(set(held) - set(have))
    if not missing:
        return ""
    now = _ids(kind, have) if have else f"no {kind}"
    return f"{_ids(kind, missing)} it was placed on (it has {now})"


def _are(names: list[str], what: str) -> str:
    """``names`` (a few, and how many more) with the verb agreeing: "a is draining"."""
    return f"{name_list(names)} {'is' if len(names) == 1 else 'are'} {what}"


def _states(nodes: Iterable[NodeResources]) -> str:
    """Why nodes that take no work take none, naming them: "a is draining; b is not
    connected" (offline first of all, draining or not)."""
    nodes = list(nodes)
    draining = sorted(node.hostname for node in nodes if node.online)
    offline = sorted(node.hostname for node in nodes if not node.online)
    states = [_are(draining, "draining")] if draining else []
    states += [_are(offline, "not connected")] if offline else []
    return "; ".join(states)


def _gpus(count: int) -> str:
    return f"{count} GPU{'s' if count != 1 else ''}"


def _none_able_takes(request: Request, able: list[NodeResources]) -> str:
    """Why none of the nodes that could ever hold an untargeted request takes it: none
    taking work, or none reading the GPUs it wants; "" if one could."""
    taking = [node for node in able if node.accepts_work]
    if not taking:
        wanted = request.gpus_wanted
        which = f"with {_gpus(wanted)}" if wanted else "big enough for it"
        return f"no node {which} is taking work: {_states(able)}"
    unread = [node.unread_reason(request) for node in taking]
    if all(unread):
        return f"no node taking work has {_gpus(request.gpus_wanted)} read: {'; '.join(unread)}"
    return ""


def _numa_too_small(
    request: Request, numa: int, candidates: list[NodeResources], where: str
) -> str | None:
    """Why NUMA node ``numa`` (the request's) of every candidate is too small for it, if it
    is."""
    most_cpus = max(len(n.numa.get(numa, ())) for n in candidates)
    if request.cores > most_cpus:
        return (
            f"cores: {request.cores} requested but NUMA node {numa} of {where} has {most_cpus} CPUs"
        )
    most = max(n.memory_for(numa) for n in candidates)
    if request.memory_bytes > most:
        return (
            f"memory: {request.memory_bytes} bytes ({format_size(request.memory_bytes)}) "
            f"requested but NUMA node {numa} of {where} has {most} ({format_size(most)})"
        )
    return None


def _wants(request: Request) -> str:
    """What a request asks for, in words: "4 cores, 17.2G of memory and 1 GPU"."""
    wants = [f"{request.cores} core{'s' if request.cores != 1 else ''}"]
    if request.memory_bytes:
        wants.append(f"{format_size(request.memory_bytes)} of memory")
    if request.gpus_wanted:
        wants.append(_gpus(request.gpus_wanted))
    return f"{', '.join(wants[:-1])} and {wants[-1]}" if len(wants) > 1 else wants[0]


FitKey = tuple[int, int, int, str]


def _fit_key(node: NodeResources) -> FitKey:
    """Best fit: the node with the least left free that has room goes first."""
    return (node.free_cores, node.free_memory_bytes, len(node.free_gpus), node.hostname)


# How many requests behind a line's head a pass looks at for one made ready where the head
# would go (Scheduler._made_ready_for).
MADE_READY_BEHIND = 8
# Request shapes whose never_fits (and waiting_reason) answer is kept (more distinct shapes
# start it afresh).
NEVER_FITS_SHAPES = 1024

_Answer = TypeVar("_Answer")


def _kept(
    answers: dict[tuple[object, ...], _Answer],
    request: Request,
    answer: Callable[[Request], _Answer],
) -> _Answer:
    """``answer(request)``, kept in ``answers`` by the request's shape (at most
    NEVER_FITS_SHAPES shapes: more start it afresh)."""
    shape = _shape(request)
    if shape not in answers:
        if len(answers) >= NEVER_FITS_SHAPES:
            answers.clear()
        answers[shape] = answer(request)
    return answers[shape]


class Scheduler:
    """Tracks what every node holds and decides where tasks go."""

    def __init__(self, starvation_seconds: float = 300.0) -> None:
        self.nodes: dict[str, NodeResources] = {}
        self.starvation_ms = starvation_seconds * 1000
        # Batches: the group of each task holding resources, and how many hold.
        self._group_of: dict[int, int] = {}
        self._holding: dict[int, int] = {}
        # Batches held as a whole (PauseBatch): none of their requests is placed.
        self.held: set[int] = set()
        # Changes to the nodes other than placements (releases, hardware, online, draining):
        # a placement pass read across one ranks the nodes again.
        self._changes = 0
        # Where queued requests were made ready ahead of their start (their Runner created
        # their containers: see prepared_ahead.py), set by the Cluster; and the requests a
        # pass placed another one ahead of, once, for that (see ``_made_ready_for``).
        self.made_ready: Mapping[int, Allocation] = {}
        self._passed_over: set[int] = set()
        # never_fits' answers by request shape, until a node's hardware changes (it scanned
        # every node for each submission: ~4% of the Host's CPU under single submits).
        self._never_fits: dict[tuple[object, ...], str | None] = {}
        # waiting_reason's answers about the nodes by request shape, until a node changes
        # (hardware, connected, draining): a list of pending tasks asks it of each.
        self._unplaceable: dict[tuple[object, ...], str] = {}
        # Every node's best-fit key, sorted, and each node's key in it: ``_choose`` starts
        # at the first node with enough free cores instead of ranking them all (it ran for
        # every single submission placed at once).
        self._ranked: list[FitKey] = []
        self._key_of: dict[str, FitKey] = {}

    def _rank_again(self, node: NodeResources) -> None:
        """Move ``node`` to its place in ``_ranked`` after its free resources changed."""
        old = self._key_of.get(node.hostname)
        if old is not None:
            del self._ranked[bisect_left(self._ranked, old)]
        key = self._key_of[node.hostname] = _fit_key(node)
        insort(self._ranked, key)

    def upsert_node(
        self,
        hostname: str,
        cpus: tuple[int, ...],
        memory_bytes: int,
        numa: dict[int, tuple[int, ...]] | None = None,
        gpus: tuple[int, ...] = (),
        numa_memory: dict[int, int] | None = None,
    ) -> NodeResources:
        """Add a node or update its hardware, keeping what tasks hold on it; its GPUs are
        all read (a Runner registers with the GPUs it reads)."""
        self._changes += 1
        self._never_fits.clear()
        self._unplaceable.clear()
        node = self.nodes.get(hostname)
        if node is None:
            node = NodeResources(hostname, cpus, memory_bytes)
            self.nodes[hostname] = node
        node.shrunk = node.shrunk or (
            not set(node.cpus) <= set(cpus)
            or not set(node.gpus) <= set(gpus)
            or memory_bytes < node.memory_bytes
        )
        node.cpus = tuple(cpus)
        node.memory_bytes = memory_bytes
        node.numa = dict(numa or {})
        node.numa_memory = dict(numa_memory or {})
        node.gpus = tuple(gpus)
        node.unread_gpus = frozenset()
        held = node.holders.values()
        node.free_cpus = set(cpus) - {c for a in held for c in a.cpus}
        node.free_gpus = set(gpus) - node.held_gpus
        node.used_memory_bytes = sum(a.memory_bytes for a in held)
        node.numa_used = {}
        for allocation in held:
            node.count_numa(allocation, allocation.memory_bytes)
        self._rank_again(node)
        return node

    def remove_node(self, hostname: str) -> None:
        """Forget a node that holds nothing."""
        self._changes += 1
        self._never_fits.clear()
        self._unplaceable.clear()
        node = self.nodes.get(hostname)
        if node is not None and not node.holders:
            del self.nodes[hostname]
            del self._ranked[bisect_left(self._ranked, self._key_of.pop(hostname))]

    def set_online(self, hostname: str, online: bool) -> None:
        self._changes += 1
        self._unplaceable.clear()
        if hostname in self.nodes:
            self.nodes[hostname].online = online

    def set_draining(self, hostname: str, draining: bool) -> None:
        self._changes += 1
        self._unplaceable.clear()
        if hostname in self.nodes:
            self.nodes[hostname].draining = draining

    def set_unread_gpus(self, hostname: str, gpus: Iterable[int]) -> bool:
        """The node's GPUs missing from its latest readings: free ones are given to no new
        task until they are read again; held ones stay with their tasks and come back free
        when released only if read. False if nothing changed."""
        node = self.nodes.get(hostname)
        if node is None:
            return False
        unread = frozenset(gpus) & set(node.gpus)
        if unread == node.unread_gpus:
            return False
        self._changes += 1
        self._unplaceable.clear()
        node.unread_gpus = unread
        node.free_gpus = set(node.gpus) - node.held_gpus - unread
        self._rank_again(node)
        return True

    def unread_gpus(self, hostname: str) -> list[int]:
        """The node's GPUs missing from its latest readings (``set_unread_gpus``)."""
        node = self.nodes.get(hostname)
        return sorted(node.unread_gpus) if node else []

    def never_fits(self, request: Request) -> str | None:
        """Why a request can never be placed, naming the limit; None if some node could."""
        return _kept(self._never_fits, request, self._never_fits_now)

    def waiting_reason(self, request: Request, capped: bool = False) -> str:
        """Why a queued request is not placed when that is not just its turn for resources
        (docs/scheduling.md, "The queue"): its batch held or its array at its cap (or,
        ``capped``, its cap filled by its tasks holding resources and those queued ahead of
        it: TaskBook.queue_position), no node that could ever hold it taking work, or the
        GPUs it asks of its node in use; "" otherwise."""
        if request.group in self.held:
            return f"held: batch {request.group} is paused (resume it to let it start)"
        cap = request.group_cap
        if cap and self.holding(request.group) >= cap:
            return f"its array's cap: {cap} of its tasks hold resources"
        if cap and capped:
            return f"its array's cap: {cap} of its tasks hold resources or are queued ahead of it"
        return _kept(self._unplaceable, request, self._unplaceable_now) or self._gpus_held(request)

    def _gpus_held(self, request: Request) -> str:
        """Why a request for GPUs of its target node waits while tasks hold them, naming
        the ones it names ("" if they are free): not kept with the answers about the
        nodes, as each placement and release changes it."""
        node = self.nodes.get(request.target) if request.target is not None else None
        if node is None or not request.gpus_wanted:
            return ""
        if request.gpu_ids:
            held = sorted(set(request.gpu_ids) - node.free_gpus)
            if not held:
                return ""
            return (
                f"node {node.hostname}'s {_gpu_ids(held)} {'are' if len(held) > 1 else 'is'} in use"
            )
        free = len(node.free_gpus)
        if free >= request.gpu_count:
            return ""
        return f"node {node.hostname} has {_gpus(free)} free; it asks for {request.gpu_count}"

    def _unplaceable_now(self, request: Request) -> str:
        """``waiting_reason``'s answer about the nodes: the request's node (or, without a
        target, every node that could hold it) unknown, without the GPUs or the room it
        asks for (its Runner registered again with less), not connected or draining."""
        if request.target is not None:
            node = self.nodes.get(request.target)
            if node is None:
                return f"node {request.target} is not registered"
            missing = no_such_gpus(node.hostname, request.gpu_ids, node.gpus)
            if missing:
                return f"node {missing}"
            if not node.could_ever_fit(request):
                return f"node {node.hostname} cannot hold it: {self.never_fits(request)}"
            if not node.online:
                return f"node {node.hostname} is not connected"
            if node.draining:
                return f"node {node.hostname} is draining"
            unread = node.unread_reason(request)
            return f"node {unread}" if unread else ""
        if not self.nodes:
            return "no node is registered"
        if not any(node.accepts_work for node in self.nodes.values()):
            return f"no node is taking work: {_states(self.nodes.values())}"
        able = [node for node in self.nodes.values() if node.could_ever_fit(request)]
        if not able:
            return f"no node can hold it: {self.never_fits(request)}"
        return _none_able_takes(request, able)

    def _never_fits_now(self, request: Request) -> str | None:
        if request.target is not None:
            node = self.nodes.get(request.target)
            if node is None:
                return f"target: unknown host {request.target!r}"
            candidates = [node]
            where = request.target
        else:
            candidates = list(self.nodes.values())
            where = "any node"
        if not candidates:
            return "no runner has registered yet"
        if request.numa_node is not None:
            too_small = _numa_too_small(request, request.numa_node, candidates, where)
            if too_small is not None:
                return too_small
        max_cores = max(n.total_cores for n in candidates)
        if request.cores > max_cores:
            return f"cores: {request.cores} requested but {where} has at most {max_cores}"
        max_memory = max(n.memory_bytes for n in candidates)
        if request.memory_bytes > max_memory:
            return (
                f"memory: {request.memory_bytes} bytes ({format_size(request.memory_bytes)}) "
                f"requested but {where} has at most {max_memory} ({format_size(max_memory)})"
            )
        max_gpus = max(len(n.gpus) for n in candidates)
        if request.gpus_wanted > max_gpus:
            return f"gpus: {request.gpus_wanted} requested but {where} has at most {max_gpus}"
        if not any(n.could_ever_fit(request) for n in candidates):
            return f"request fits no single node: {_wants(request)} together"
        return None

    def _candidates(self, request: Request) -> list[NodeResources]:
        if request.target is not None:
            node = self.nodes.get(request.target)
            return [node] if node is not None else []
        return list(self.nodes.values())

    def choose(self, request: Request, excluded: set[str] | None = None) -> Allocation | None:
        """Where the request goes now, or None if nothing fits right now.

        Nodes are ranked by the best-fit key using only counts; the exact CPU and GPU ids
        are worked out for the best-ranked node first, falling back in rank order when its
        free CPUs do not suit a NUMA constraint or its free GPUs miss named ids.
        """
        return self._choose(request, excluded)[0]

    def _choose(
        self, request: Request, excluded: set[str] | None
    ) -> tuple[Allocation | None, NodeResources | None]:
        """``choose``, and the node when it was the best-ranked one (else None)."""
        ranked: Iterable[NodeResources]
        if request.target is not None:
            ranked = self._candidates(request)
        else:  # in rank order from the first with enough free cores (the rest have fewer)
            start = bisect_left(self._ranked, (request.cores,))
            ranked = (self.nodes[key[3]] for key in self._ranked[start:])
        first = True
        for node in ranked:
            if (
                not node.accepts_work
                or (excluded and node.hostname in excluded)
                or not node.has_room(request)
            ):
                continue
            allocation = node.fit(request)
            if allocation is not None:
                return allocation, node if first else None
            first = False
        return None, None

    @staticmethod
    def _again(node: NodeResources, request: Request, excluded: set[str]) -> Allocation | None:
        """``choose`` for a request alike the one just placed as the best fit on ``node``,
        with nothing placed since: taking room only lowered that node's rank key, so it is
        still the best-ranked node if it still has room (None: ask ``choose``)."""
        if node.hostname in excluded or not node.accepts_work or not node.has_room(request):
            return None
        return node.fit(request)

    def shrunk(self, hostname: str) -> bool:
        """Whether the node registered again at some time with less than it had: only then
        may a placement on it lack something (``lacks``; asked at every dispatch)."""
        node = self.nodes.get(hostname)
        return node is not None and node.shrunk

    def lacks(self, allocation: Allocation) -> str:
        """What of ``allocation`` its node no longer has, in words ("" if it has it all, or
        the node is unknown): a placement made before its Runner registered again with
        less cannot start there."""
        node = self.nodes.get(allocation.hostname)
        if node is None:
            return ""
        lacking = [
            _lacking("CPU", allocation.cpus, node.cpus),
            _lacking("GPU", allocation.gpus, node.gpus),
        ]
        if allocation.memory_bytes > node.memory_bytes:
            lacking.append(
                f"the memory it was placed with ({format_size(allocation.memory_bytes)}; "
                f"it has {format_size(node.memory_bytes)})"
            )
        return "; ".join(part for part in lacking if part)

    def is_free(self, allocation: Allocation) -> bool:
        """Whether every part of ``allocation`` is free now on its node."""
        node = self.nodes.get(allocation.hostname)
        return (
            node is not None
            and set(allocation.cpus) <= node.free_cpus
            and set(allocation.gpus) <= node.free_gpus
            and node.free_memory_bytes >= allocation.memory_bytes
        )

    def allocate(self, task_id: int, allocation: Allocation, group: int = 0) -> None:
        """Record that a task holds ``allocation`` (also used to restore state on start)."""
        node = self.nodes[allocation.hostname]
        if task_id in node.holders:
            return
        if group:
            self._group_of[task_id] = group
            self._holding[group] = self._holding.get(group, 0) + 1
        self._passed_over.discard(task_id)
        node.hold(task_id, allocation)
        self._rank_again(node)

    def release(self, hostname: str, task_id: int) -> bool:
        """Free a task's holding; False when it held none (release is idempotent)."""
        self._changes += 1
        group = self._group_of.pop(task_id, 0)
        if group:
            self._holding[group] -= 1
            if not self._holding[group]:
                del self._holding[group]
        node = self.nodes.get(hostname)
        if node is None or task_id not in node.holders:
            return False
        node.unhold(task_id)
        self._rank_again(node)
        return True

    def _reserve_for(self, request: Request) -> str | None:
        """The node a starving request waits for: the one it is closest to fitting on."""
        usable = [
            n
            for n in self._candidates(request)
            if n.accepts_work and n.could_ever_fit(request) and not n.unread_reason(request)
        ]
        if not usable:
            return None
        return max(usable, key=lambda n: (n.free_cores, n.free_memory_bytes, n.hostname)).hostname

    def plan(self, queue: PendingQueue, now_ms: int) -> list[tuple[Request, Allocation]]:
        """``iter_plan`` at once."""
        return list(self.iter_plan(queue, now_ms))

    def iter_plan(self, queue: PendingQueue, now_ms: int) -> Iterator[tuple[Request, Allocation]]:
        """Place as many pending requests as fit now, in queue order, one at a time as the
        iterator is read (the caller may serve other work between two: a node released or
        going offline meanwhile is seen); the placed ones leave ``queue``.

        The queue keeps one line per shape (resources, constraints, batch), so a pass
        takes the best head among the lines: a line whose head finds no room, or whose
        array is at its cap, is left for this pass (its other requests are alike), and a
        pass costs what it places plus one try per line, however long the queue (a job
        array of 10,000 tasks is one line). Only a line's head may reserve a node when
        starving, the first of its shape to starve (a line's requests share their priority,
        so its head is its oldest: one behind newer ones of a higher priority heads a line of
        its own)."""
        reserved: set[str] = set()
        no_room: set[tuple[object, ...]] = set()
        reserving: set[tuple[object, ...]] = set()
        # The line placed last and its node, when that was the best fit, and the nodes'
        # state then: the line's next request goes there too while it has room and no node
        # changed otherwise (``_again``), without ranking every node.
        streak: tuple[tuple[object, ...], NodeResources | None, int] = ((), None, -1)
        heads = [(_rank(r), key) for key, r in queue.heads()]
        heapq.heapify(heads)
        while heads:
            _, key = heapq.heappop(heads)
            request = queue.head(key)
            if request is None:
                continue
            if self._waits(request):
                continue
            shape = _shape(request)
            if shape in no_room:
                self._reserve_if_starving(request, shape, now_ms, reserving, reserved)
                continue
            allocation, best = None, None
            if streak[0] == key and streak[1] is not None and streak[2] == self._changes:
                allocation = self._again(streak[1], request, reserved)
                best = streak[1] if allocation is not None else None
            if allocation is None:
                allocation, best = self._choose(request, reserved)
            if allocation is None:
                no_room.add(shape)
                self._reserve_if_starving(request, shape, now_ms, reserving, reserved)
                continue
            if self.made_ready:
                request = self._made_ready_for(queue, key, request, allocation)
            self.allocate(request.task_id, allocation, request.group)
            streak = (key, best, self._changes)
            queue.discard(request.task_id)
            following = queue.head(key)
            if following is not None:
                heapq.heappush(heads, (_rank(following), key))
            yield request, allocation

    def _reserve_if_starving(
        self,
        request: Request,
        shape: tuple[object, ...],
        now_ms: int,
        reserving: set[tuple[object, ...]],
        reserved: set[str],
    ) -> None:
        """A request that found no room reserves a node if it starves and is the first of
        its shape to in this pass."""
        if shape in reserving or now_ms - id_timestamp_ms(request.task_id) < self.starvation_ms:
            return
        reserving.add(shape)
        hostname = self._reserve_for(request)
        if hostname is not None:
            reserved.add(hostname)

    def _made_ready_for(
        self, queue: PendingQueue, key: tuple[object, ...], head: Request, allocation: Allocation
    ) -> Request:
        """The request of a line to place in ``allocation``: its head, unless the head was
        made ready for other CPUs of that node and one of the few alike requests right
        behind it (same priority) was made ready for exactly these. Then that one: a
        prepared container whose CPUs differ is made again (its CPUs are in its
        environment), which is most of what preparing saves when tasks end in another
        order than foreseen. The head keeps its place and is passed over at most once, so
        it waits at most for one more end."""
        ready = self.made_ready.get(head.task_id)
        if (
            ready is None
            or ready == allocation
            or ready.hostname != allocation.hostname
            or head.task_id in self._passed_over
        ):
            return head
        for twin in queue.first(key, MADE_READY_BEHIND + 1)[1:]:
            if twin.priority == head.priority and self.made_ready.get(twin.task_id) == allocation:
                if len(self._passed_over) > 4 * len(self.made_ready) + 64:
                    self._passed_over &= self.made_ready.keys()
                self._passed_over.add(head.task_id)
                return twin
        return head

    def holding(self, group: int) -> int:
        """How many of a batch's tasks hold resources."""
        return self._holding.get(group, 0)

    def _waits(self, request: Request) -> bool:
        """Is the request's batch held, or its array at its cap? (Its whole line then.)"""
        if not request.group:
            return False
        if request.group in self.held:
            return True
        return bool(request.group_cap) and self.holding(request.group) >= request.group_cap

    def place_now(self, queue: PendingQueue, request: Request) -> Allocation | None:
        """Place one queued request at once, outside a pass, if it fits now and no request
        ahead of it in the queue could ever use a node it could use: then no pass would
        have given those nodes to anyone ahead of it, so placing it first changes nothing
        for them (a lone task is not held behind a job array's pass on other nodes). None:
        it waits for a pass. It leaves ``queue`` once placed."""
        if self._waits(request):
            return None
        rank = _rank(request)
        # A held batch's or capped array's head could take nothing now either: a pass
        # would place this request before it too.
        ahead = [
            h
            for _, h in queue.heads()
            if h.task_id != request.task_id and _rank(h) < rank and not self._waits(h)
        ]
        if request.target is None and any(head.target is None for head in ahead):
            return None  # both could go anywhere: not worth ranking every node to be sure
        if ahead and self._contended(request, ahead):
            return None
        allocation, _ = self._choose(request, None)
        if allocation is None:
            return None
        self.allocate(request.task_id, allocation, request.group)
        queue.discard(request.task_id)
        return allocation

    def _contended(self, request: Request, ahead: list[Request]) -> bool:
        """Whether a request ahead could ever use a node ``request`` could use."""
        mine = [
            n for n in self._candidates(request) if n.accepts_work and n.could_ever_fit(request)
        ]
        return any(
            (head.target is None or head.target == node.hostname) and node.could_ever_fit(head)
            for head in ahead
            for node in mine
        )

    def lookahead(self, queue: PendingQueue, per_node: int) -> list[tuple[Request, Allocation]]:
        """The queued requests each node is expected to start next, and where on it: what a
        node can prepare ahead (docs/scheduling.md, "Prepared ahead").

        Only requests bound to one node are foreseen: those targeting it, or any when it
        is the only node taking work. For each node, its tasks are taken to end one at a
        time in the order they were placed, and after each end the placement a pass would
        make is played (queue order, backfill, CPU ids included), until ``per_node`` are
        foreseen. Of each line its first ``per_node`` are considered, and at most
        LOOKAHEAD_CANDIDATES times ``per_node`` in all; array caps are played as a pass
        keeps them (a capped array's next task is foreseen where one of its own frees, in
        index order), starvation reservations are not foreseen."""
        if per_node <= 0:
            return []
        taking = [n for n in self.nodes.values() if n.accepts_work]
        only = taking[0].hostname if len(taking) == 1 else None
        bound: dict[str, list[Request]] = {}
        for key, head in queue.heads():
            if head.group in self.held:
                continue
            hostname = head.target or only
            node = self.nodes.get(hostname) if hostname else None
            if node is not None and node.accepts_work:
                bound.setdefault(node.hostname, []).extend(queue.first(key, per_node))
        foreseen: list[tuple[Request, Allocation]] = []
        for hostname, requests in bound.items():
            candidates = sorted(requests, key=_rank)[: per_node * LOOKAHEAD_CANDIDATES]
            foreseen += _play_ahead(
                self.nodes[hostname], candidates, per_node, self._holding, self._group_of
            )
        return foreseen


# Of the requests bound to a node, how many per request foreseen are considered.
LOOKAHEAD_CANDIDATES = 4


def _play_ahead(
    node: NodeResources,
    candidates: list[Request],
    count: int,
    holding: Mapping[int, int],
    group_of: Mapping[int, int],
) -> list[tuple[Request, Allocation]]:
    """Up to ``count`` of ``candidates`` (in queue order) placed on a copy of ``node`` as its
    holders end one by one, oldest first, with a pass after each end; an array at its cap
    (``holding``: how many of each batch's tasks hold resources) waits for one of its own
    to end, as in a pass."""
    holding = dict(holding)
    future = replace(
        node,
        free_cpus=set(node.free_cpus),
        free_gpus=set(node.free_gpus),
        numa_used=dict(node.numa_used),
        holders=dict(node.holders),
    )
    ending = list(future.holders)
    waiting = list(candidates)
    placed: list[tuple[Request, Allocation]] = []
    while waiting:
        for request in list(waiting):
            if request.group_cap and holding.get(request.group, 0) >= request.group_cap:
                continue
            allocation = future.fit(request)
            if allocation is not None:
                future.hold(request.task_id, allocation)
                holding[request.group] = holding.get(request.group, 0) + 1
                waiting.remove(request)
                placed.append((request, allocation))
                if len(placed) == count:
                    return placed
        if not ending:
            break
        ended = ending.pop(0)
        future.unhold(ended)
        if ended in group_of:
            holding[group_of[ended]] -= 1
    return placed


def _rank(request: Request) -> tuple[int, int]:
    """Queue order: priority (higher first), then submission order (ids are time-ordered)."""
    return (-request.priority, request.task_id)


def _shape(request: Request) -> tuple[object, ...]:
    return (
        request.cores,
        request.memory_bytes,
        request.target,
        request.numa_node,
        request.gpu_ids,
        request.gpu_count,
    )


class PendingQueue:
    """Pending requests, in lines of alike ones (same shape, batch and priority), each a
    heap in queue order. Leaving is lazy: a request discarded from the middle of a line is
    dropped when it reaches the head."""

    def __init__(self, requests: Iterable[Request] = ()) -> None:
        self._lines: dict[tuple[object, ...], list[tuple[tuple[int, int], Request]]] = {}
        self._members: dict[int, Request] = {}
        for request in requests:
            self.add(request)

    def __len__(self) -> int:
        return len(self._members)

    def add(self, request: Request) -> None:
        key = (*_shape(request), request.group, request.group_cap, request.priority)
        heapq.heappush(self._lines.setdefault(key, []), (_rank(request), request))
        self._members[request.task_id] = request

    def discard(self, task_id: int) -> None:
        self._members.pop(task_id, None)

    def head(self, key: tuple[object, ...]) -> Request | None:
        """The first request of a line still in the queue."""
        line = self._lines.get(key)
        while line:
            request = line[0][1]
            if self._members.get(request.task_id) is request:
                return request
            heapq.heappop(line)
        self._lines.pop(key, None)
        return None

    def first(self, key: tuple[object, ...], count: int) -> list[Request]:
        """The first ``count`` requests of a line still in the queue, in queue order."""
        line = self._lines.get(key, [])
        taken: list[tuple[tuple[int, int], Request]] = []
        while line and len(taken) < count:
            entry = heapq.heappop(line)
            if self._members.get(entry[1].task_id) is entry[1]:
                taken.append(entry)
        for entry in taken:
            heapq.heappush(line, entry)
        return [request for _, request in taken]

    def heads(self) -> list[tuple[tuple[object, ...], Request]]:
        found = []
        for key in list(self._lines):
            request = self.head(key)
            if request is not None:
                found.append((key, request))
        return found

    def ranked(self) -> list[Request]:
        """Every pending request in queue order."""
        return sorted(self._members.values(), key=_rank)
