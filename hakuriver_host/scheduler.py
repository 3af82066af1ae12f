"""Placement of tasks on nodes: pure bookkeeping of cores and memory, no I/O.

Policy: an explicit target must fit on that node; otherwise the online node with the fewest
free cores that still fits (best fit) is chosen, ties broken by least free memory, then name,
to keep large holes free for large tasks. Pending tasks are tried in (priority desc, id asc)
order; a task that does not fit is skipped so smaller tasks behind it can start.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class NodeCapacity:
    hostname: str
    total_cores: int
    total_memory_bytes: int
    online: bool = True
    used_cores: int = 0
    used_memory_bytes: int = 0
    holders: dict[int, tuple[int, int]] = field(default_factory=dict)

    @property
    def free_cores(self) -> int:
        return self.total_cores - self.used_cores

    @property
    def free_memory_bytes(self) -> int:
        return self.total_memory_bytes - self.used_memory_bytes

    def fits(self, cores: int, memory_bytes: int) -> bool:
        return self.free_cores >= cores and self.free_memory_bytes >= memory_bytes


@dataclass(frozen=True)
class Request:
    task_id: int
    cores: int
    memory_bytes: int
    target: str | None = None
    priority: int = 0


class Scheduler:
    """Tracks what every node has reserved and decides where tasks go."""

    def __init__(self) -> None:
        self.nodes: dict[str, NodeCapacity] = {}

    def upsert_node(self, hostname: str, total_cores: int, total_memory_bytes: int) -> None:
        node = self.nodes.get(hostname)
        if node is None:
            self.nodes[hostname] = NodeCapacity(hostname, total_cores, total_memory_bytes)
        else:
            node.total_cores = total_cores
            node.total_memory_bytes = total_memory_bytes

    def set_online(self, hostname: str, online: bool) -> None:
        if hostname in self.nodes:
            self.nodes[hostname].online = online

    def never_fits(self, request: Request) -> str | None:
        """Why a request can never be placed, or None when some node could hold it."""
        candidates = (
            [self.nodes[request.target]]
            if request.target is not None and request.target in self.nodes
            else list(self.nodes.values())
        )
        if request.target is not None and request.target not in self.nodes:
            return f"target: unknown host {request.target!r}"
        if not candidates:
            return "no runner has registered yet"
        max_cores = max(n.total_cores for n in candidates)
        if request.cores > max_cores:
            where = request.target or "any node"
            return f"cores: {request.cores} requested but {where} has at most {max_cores}"
        max_mem = max(n.total_memory_bytes for n in candidates)
        if request.memory_bytes > max_mem:
            where = request.target or "any node"
            return (
                f"memory: {request.memory_bytes} bytes requested but {where} has at most {max_mem}"
            )
        return None

    def choose(self, request: Request) -> str | None:
        """Node to place the request on now, or None if nothing fits right now."""
        if request.target is not None:
            node = self.nodes.get(request.target)
            if node and node.online and node.fits(request.cores, request.memory_bytes):
                return node.hostname
            return None
        fitting = [
            n
            for n in self.nodes.values()
            if n.online and n.fits(request.cores, request.memory_bytes)
        ]
        if not fitting:
            return None
        best = min(fitting, key=lambda n: (n.free_cores, n.free_memory_bytes, n.hostname))
        return best.hostname

    def allocate(self, hostname: str, request: Request) -> None:
        node = self.nodes[hostname]
        if request.task_id in node.holders:
            return
        node.holders[request.task_id] = (request.cores, request.memory_bytes)
        node.used_cores += request.cores
        node.used_memory_bytes += request.memory_bytes

    def release(self, hostname: str, task_id: int) -> bool:
        """Free a task's reservation; False when it held none (release is idempotent)."""
        node = self.nodes.get(hostname)
        if node is None or task_id not in node.holders:
            return False
        cores, memory = node.holders.pop(task_id)
        node.used_cores -= cores
        node.used_memory_bytes -= memory
        return True

    def plan(self, pending: list[Request]) -> list[tuple[Request, str]]:
        """Place as many pending requests as fit, in priority then submission order."""
        placed: list[tuple[Request, str]] = []
        for request in sorted(pending, key=lambda r: (-r.priority, r.task_id)):
            hostname = self.choose(request)
            if hostname is not None:
                self.allocate(hostname, request)
                placed.append((request, hostname))
        return placed
