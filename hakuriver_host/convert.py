"""Database records and in-memory views to their public proto messages."""

from __future__ import annotations

from hakuriver_common.proto.hakuriver.v1 import node_pb2, task_pb2
from hakuriver_common.timestamps import to_timestamp
from hakuriver_host.cluster import NodeView
from hakuriver_host.models import TaskEventRecord, TaskRecord
from hakuriver_host.scheduler import NodeResources

TASK_STATUS_PB = {
    "pending": task_pb2.TASK_STATUS_PENDING,
    "assigning": task_pb2.TASK_STATUS_ASSIGNING,
    "running": task_pb2.TASK_STATUS_RUNNING,
    "paused": task_pb2.TASK_STATUS_PAUSED,
    "completed": task_pb2.TASK_STATUS_COMPLETED,
    "failed": task_pb2.TASK_STATUS_FAILED,
    "killed": task_pb2.TASK_STATUS_KILLED,
    "killed_oom": task_pb2.TASK_STATUS_KILLED_OOM,
    "lost": task_pb2.TASK_STATUS_LOST,
}
TASK_STATUS_NAME = {value: name for name, value in TASK_STATUS_PB.items()}
TASK_KIND_PB = {"command": task_pb2.TASK_KIND_COMMAND, "vps": task_pb2.TASK_KIND_VPS}


def task_to_pb(task: TaskRecord, queue_position: int = 0) -> task_pb2.Task:
    return task_pb2.Task(
        task_id=task.task_id,
        kind=TASK_KIND_PB[task.kind],
        batch_id=task.batch_id,
        command=task.command,
        arguments=task.arguments,
        env=task.env,
        status=TASK_STATUS_PB[task.status],
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
        status_detail=task.status_detail or "",
    )


def event_to_pb(event: TaskEventRecord) -> task_pb2.TaskEvent:
    return task_pb2.TaskEvent(
        status=TASK_STATUS_PB[event.status], at=to_timestamp(event.at), detail=event.detail
    )


def node_to_pb(node: NodeView, capacity: NodeResources | None, active_tasks: int) -> node_pb2.Node:
    free_cores = capacity.free_cores if capacity else node.total_cores
    free_memory = capacity.free_memory_bytes if capacity else node.total_memory_bytes
    return node_pb2.Node(
        hostname=node.hostname,
        status=node_pb2.NODE_STATUS_ONLINE if node.online else node_pb2.NODE_STATUS_OFFLINE,
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
        allocated_gpus=sorted(set(capacity.gpus) - capacity.free_gpus) if capacity else [],
    )
