"""Records to proto messages and back: tasks, events, nodes, dispatches, and the rows of a
plan admitted from a SubmitTaskRequest."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from hakuriver_common.arrays import ARRAY_ID_VAR, ARRAY_INDEX_VAR, substitute
from hakuriver_common.environments import NULL_CONTAINER, image_for
from hakuriver_common.proto.hakuriver.v1 import node_pb2, runner_service_pb2 as rpb, task_pb2
from hakuriver_common.statuses import NodeStatus, TaskKind, TaskNetwork, TaskStatus
from hakuriver_common.timestamps import to_timestamp
from hakuriver_host.admission import Plan
from hakuriver_host.models import Task, TaskEventRecord
from hakuriver_host.nodes import NodeView
from hakuriver_host.scheduler import Allocation, NodeResources


def task_env(task: Task) -> dict[str, str]:
    """A task's environment as it runs: an array task's has its array id and index added
    here, not stored with each task (one environment per array, written once)."""
    if task.array_index is None:
        return task.env
    return {
        **task.env,
        ARRAY_ID_VAR: str(task.batch_id),
        ARRAY_INDEX_VAR: str(task.array_index),
    }


def task_to_pb(task: Task, queue_position: int = 0, waiting: str = "") -> task_pb2.Task:
    """``waiting``: why a queued task waits, its ``status_detail`` unless it has one."""
    return task_pb2.Task(
        task_id=task.task_id,
        kind=TaskKind(task.kind).pb,
        batch_id=task.batch_id,
        command=task.command,
        arguments=task.arguments,
        env=task_env(task),
        status=TaskStatus.of(task.status).pb,
        assigned_node=task.assigned_node or "",
        required_cores=task.required_cores,
        required_memory_bytes=task.required_memory_bytes,
        required_gpus=task.required_gpus,
        target_numa_node_id=task.target_numa_node_id,
        container_name=task.container_name,
        privileged=task.privileged,
        mounts=[task_pb2.Mount(**m) for m in task.mounts],
        submitted_at=to_timestamp(task.submitted_at),
        started_at=to_timestamp(task.started_at),
        completed_at=to_timestamp(task.completed_at),
        exit_code=task.exit_code,
        error_message=task.error_message,
        ssh_port=task.ssh_port,
        stdout_path=task.stdout_path,
        stderr_path=task.stderr_path,
        target_hostname=task.target_hostname or "",
        priority=task.priority,
        assigned_cpus=task.assigned_cpus or [],
        queue_position=queue_position,
        gpu_count=task.gpu_count,
        status_detail=task.status_detail or waiting,
        owner=task.owner,
        network=TaskNetwork(task.network).pb,
        array_index=task.array_index,
        array_max_running=task.array_max_running,
    )


def event_to_pb(event: TaskEventRecord) -> task_pb2.TaskEvent:
    return task_pb2.TaskEvent(
        status=TaskStatus(event.status).pb, at=to_timestamp(event.at), detail=event.detail
    )


def node_to_pb(node: NodeView, capacity: NodeResources | None, active_tasks: int) -> node_pb2.Node:
    free_cores = capacity.free_cores if capacity else node.total_cores
    free_memory = capacity.free_memory_bytes if capacity else node.total_memory_bytes
    return node_pb2.Node(
        hostname=node.hostname,
        status=NodeStatus.of(node.online).pb,
        total_cores=node.total_cores,
        available_cores=free_cores,
        total_memory_bytes=node.total_memory_bytes,
        available_memory_bytes=free_memory,
        numa_nodes=[node_pb2.NumaNode(**n) for n in node.numa_nodes],
        gpus=[node_pb2.Gpu(**g) for g in node.gpus],
        last_heartbeat=to_timestamp(node.last_heartbeat),
        environments=sorted(node.environments),
        active_tasks=active_tasks,
        health=node.health,
        draining=node.draining,
        allocated_gpus=sorted(set(capacity.gpus) & capacity.held_gpus) if capacity else [],
        output_problem=node.output_problem,
        disconnected=node.disconnected,
        unread_gpus=sorted(capacity.unread_gpus) if capacity else [],
    )


def dispatch_of(task: Task, allocation: Allocation | None = None) -> rpb.DispatchCommand:
    """What a Runner needs to start a placed task (or a queued one, were it given
    ``allocation``)."""
    cpus, gpus = task.assigned_cpus, task.required_gpus
    if allocation is not None:
        cpus, gpus = list(allocation.cpus), list(allocation.gpus)
    return rpb.DispatchCommand(
        task_id=task.task_id,
        kind=TaskKind(task.kind).pb,
        ssh_public_key=task.ssh_public_key,
        image="" if task.container_name == NULL_CONTAINER else image_for(task.container_name),
        command=task.command,
        arguments=task.arguments,
        env=task_env(task),
        cores=task.required_cores,
        memory_bytes=task.required_memory_bytes,
        mounts=[task_pb2.Mount(**m) for m in task.mounts],
        privileged=task.privileged,
        container_name=task.container_name,
        gpu_ids=gpus,
        cpus=cpus,
        numa_node_id=task.target_numa_node_id,
        network=TaskNetwork(task.network).pb,
    )


def _array_fields(plan: Plan, array_id: int, index: int | None) -> dict[str, Any]:
    """An array task's own command, arguments and mounts: the plan's with its array id and
    index filled in (its environment gets them in ``task_env``)."""
    if index is None:
        return {
            "command": plan.command,
            "arguments": list(plan.arguments),
            "mounts": [dict(m) for m in plan.mounts],
        }
    return {
        "command": substitute(plan.command, array_id, index),
        "arguments": [substitute(a, array_id, index) for a in plan.arguments],
        "mounts": [
            {
                **m,
                "host_path": substitute(m["host_path"], array_id, index),
                "container_path": substitute(m["container_path"], array_id, index),
            }
            for m in plan.mounts
        ],
        "array_index": index,
        "array_max_running": plan.array_max_running,
    }


# Every field of a new row that records_of does not set keeps this row's value.
_PROTOTYPE = Task(task_id=0, command="", status=TaskStatus.PENDING.value, container_name="")


def records_of(
    plan: Plan,
    task_ids: list[int],
    batch_id: int,
    now: datetime,
    output_paths: Callable[[int], tuple[str, str]],
    owner: str,
) -> list[Task]:
    """One pending task row per task of an admitted plan, owned by ``owner``. Each is a
    copy of a row built once (a table model's constructor costs ~40 times a copy, which
    counts for a job array and for every single submission) with its own fields and its
    own lists (its environment is shared: see below)."""
    alike = _PROTOTYPE.model_copy(
        update={
            "kind": plan.kind.value,
            "batch_id": batch_id,
            "command": plan.command,
            "ssh_public_key": plan.ssh_public_key,
            "status": TaskStatus.PENDING.value,
            "required_cores": plan.cores,
            "required_memory_bytes": plan.memory_bytes,
            "gpu_count": plan.gpu_count,
            "container_name": plan.container,
            "privileged": plan.privileged,
            "priority": plan.priority,
            "submitted_at": now,
            "owner": owner,
            # One environment for the submission's tasks: never changed in place, and
            # written once per statement (bulk_sql binds a value all rows share once).
            "env": dict(plan.env),
            "network": plan.network.value,
        }
    )
    records = []
    for task_id, (placement, index) in zip(task_ids, plan.tasks(), strict=True):
        stdout_path, stderr_path = output_paths(task_id)
        fields = {
            "task_id": task_id,
            "target_hostname": placement.hostname,
            "target_numa_node_id": placement.numa_node,
            "required_gpus": list(placement.gpu_ids),
            "assigned_cpus": [],
            "stdout_path": stdout_path,
            "stderr_path": stderr_path,
            **_array_fields(plan, batch_id, index),
        }
        records.append(alike.model_copy(update=fields))
    return records
