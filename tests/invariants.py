"""Invariants of a cluster's state, checked through the public API only.

For the fuzz tier, the chaos suite and any test that wants to know the Host's books still
add up after whatever it did:

    problems = await cluster_violations(tasks_stub, nodes_stub)
    assert not problems, "\\n".join(problems)

or ``await assert_consistent(tasks_stub, nodes_stub)``. The stubs must call as a user who
sees every task (an operator or admin).

Checked:
- every task's status is a known one (not UNSPECIFIED, not a value the enum lacks);
- a pending task is not placed (no node, no CPU ids); a final one holds nothing;
- a task holding resources (assigning, running, paused, unknown, with a node) names a node
  the Host knows, its CPU ids are as many as its cores, distinct, and among the node's;
  no two of them on one node share a CPU id or a GPU;
- per node: capacities are not negative; the cores, memory and GPUs held by its tasks
  never exceed its capacity and, while it is online, match what it reports as available
  (``total - available``) and allocated (``allocated_gpus``); its active task count is the
  number of its active tasks.
"""

from __future__ import annotations

import asyncio
from collections import Counter, defaultdict
from typing import Any

from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import FINAL_STATUSES, NodeStatus, TaskStatus

PAGE = 1000
CALL_SECONDS = 10.0
# Statuses in which a placed task holds its node's resources.
HOLDING = frozenset(
    {TaskStatus.ASSIGNING, TaskStatus.RUNNING, TaskStatus.PAUSED, TaskStatus.UNKNOWN}
)


async def all_tasks(tasks: Any) -> list[task_pb2.Task]:
    """Every task the caller sees, newest first (ListTasks page by page)."""
    found: list[task_pb2.Task] = []
    before = 0
    while True:
        reply = await tasks.ListTasks(
            tpb.ListTasksRequest(limit=PAGE, before_task_id=before), timeout=CALL_SECONDS
        )
        found.extend(reply.tasks)
        if reply.next_before_task_id:
            before = reply.next_before_task_id
        elif len(reply.tasks) >= PAGE:
            before = min(t.task_id for t in reply.tasks)
        else:
            return found
        if not reply.tasks:
            return found


async def all_nodes(nodes: Any) -> list[node_pb2.Node]:
    return list((await nodes.ListNodes(npb.ListNodesRequest(), timeout=CALL_SECONDS)).nodes)


def _status(task: task_pb2.Task) -> TaskStatus | None:
    try:
        return TaskStatus.from_pb(task.status)
    except ValueError:
        return None


def violations(tasks: list[task_pb2.Task], nodes: list[node_pb2.Node]) -> list[str]:
    """What is wrong with this state (empty when nothing is); see the module docstring."""
    problems: list[str] = []
    by_name = {n.hostname: n for n in nodes}
    holding: dict[str, list[task_pb2.Task]] = defaultdict(list)
    active: Counter[str] = Counter()
    for task in tasks:
        tid = task.task_id
        status = _status(task)
        if status is None:
            problems.append(f"task {tid}: unknown status value {task.status}")
            continue
        if status is TaskStatus.PENDING and (task.assigned_node or task.assigned_cpus):
            problems.append(
                f"task {tid}: pending but placed on {task.assigned_node!r} "
                f"cpus {list(task.assigned_cpus)}"
            )
        if status not in FINAL_STATUSES and task.assigned_node:
            active[task.assigned_node] += 1
        if status in HOLDING and task.assigned_node:
            holding[task.assigned_node].append(task)
            if task.assigned_node not in by_name:
                problems.append(f"task {tid}: {status} on unknown node {task.assigned_node!r}")
        if status in HOLDING and not task.assigned_node:
            problems.append(f"task {tid}: {status} but on no node")
    for hostname, node in by_name.items():
        problems.extend(_node_violations(node, holding.get(hostname, []), active[hostname]))
    return problems


def _node_violations(node: node_pb2.Node, held: list[task_pb2.Task], active: int) -> list[str]:
    name = f"node {node.hostname!r}"
    problems = [
        f"{name}: {field} is negative ({getattr(node, field)})"
        for field in (
            "total_cores",
            "available_cores",
            "total_memory_bytes",
            "available_memory_bytes",
        )
        if getattr(node, field) < 0
    ]
    cores = sum(t.required_cores for t in held)
    memory = sum(t.required_memory_bytes for t in held)
    gpus = Counter(g for t in held for g in t.required_gpus)
    if cores > node.total_cores:
        problems.append(f"{name}: its tasks hold {cores} cores of {node.total_cores}")
    if memory > node.total_memory_bytes:
        problems.append(
            f"{name}: its tasks hold {memory} bytes of memory of {node.total_memory_bytes}"
        )
    twice = sorted(g for g, n in gpus.items() if n > 1)
    if twice:
        problems.append(f"{name}: GPUs held by more than one task: {twice}")
    lacking = sorted(set(gpus) - {g.index for g in node.gpus})
    if lacking:
        problems.append(f"{name}: tasks hold GPUs it lacks: {lacking}")
    problems.extend(_cpu_violations(node, held))
    if node.active_tasks != active:
        problems.append(f"{name}: reports {node.active_tasks} active tasks, has {active}")
    if node.status != NodeStatus.ONLINE.pb:
        return problems  # an offline node's capacity is not in the scheduler's books
    reported = {
        "cores": (node.total_cores - node.available_cores, cores),
        "bytes of memory": (node.total_memory_bytes - node.available_memory_bytes, memory),
        "GPUs": (sorted(node.allocated_gpus), sorted(gpus.elements())),
    }
    for what, (used, held_now) in reported.items():
        if used != held_now:
            problems.append(f"{name}: reports {used} {what} in use, its tasks hold {held_now}")
    return problems


def _cpu_violations(node: node_pb2.Node, held: list[task_pb2.Task]) -> list[str]:
    """CPU ids: as many as the cores, distinct, on the node, no two tasks sharing one."""
    problems = []
    node_cpus = {c for numa in node.numa_nodes for c in numa.cpus}
    cpus = Counter(c for t in held for c in t.assigned_cpus)
    shared = sorted(c for c, n in cpus.items() if n > 1)
    if shared:
        problems.append(f"node {node.hostname!r}: CPU ids held by two tasks: {shared[:20]}")
    for task in held:
        placed = list(task.assigned_cpus)
        if placed and len(set(placed)) != len(placed):
            problems.append(f"task {task.task_id}: a CPU id twice in {placed[:50]}")
        if placed and len(placed) != task.required_cores:
            problems.append(
                f"task {task.task_id}: {len(placed)} CPU ids for {task.required_cores} cores"
            )
        foreign = sorted(set(placed) - node_cpus) if node_cpus else []
        if foreign:
            problems.append(
                f"task {task.task_id}: CPU ids {foreign[:20]} not on node {node.hostname!r}"
            )
    return problems


async def cluster_violations(tasks: Any, nodes: Any) -> list[str]:
    """``violations`` of the state the stubs see now. Tasks are read before nodes and a
    task that changes in between could show as a difference: callers check a quiet
    cluster, or retry."""
    return violations(await all_tasks(tasks), await all_nodes(nodes))


async def assert_consistent(tasks: Any, nodes: Any, attempts: int = 3) -> None:
    """Fail with every violation unless the state is consistent (re-read up to
    ``attempts`` times, so a change between the two reads is not taken for one)."""
    problems: list[str] = []
    for attempt in range(attempts):
        problems = await cluster_violations(tasks, nodes)
        if not problems:
            return
        if attempt + 1 < attempts:
            await asyncio.sleep(0.2)
    raise AssertionError("cluster state inconsistent:\n  " + "\n  ".join(problems))
