"""Human tables and JSON for the CLI's read commands."""

from __future__ import annotations

import json
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from google.protobuf.json_format import MessageToDict
from google.protobuf.message import Message
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console
from rich.table import Table

from hakuriver_common.proto.hakuriver.v1 import node_pb2, task_pb2
from hakuriver_common.units import format_size

# Piped output keeps whole rows instead of the 80-column fallback.
console = Console() if sys.stdout.isatty() else Console(width=240)


def to_dict(message: Message) -> dict[str, object]:
    return MessageToDict(message, preserving_proto_field_name=True)


def to_json_line(message: Message) -> str:
    return json.dumps(to_dict(message), sort_keys=True)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def status_name(status: int) -> str:
    return task_pb2.TaskStatus.Name(status).removeprefix("TASK_STATUS_").lower()  # type: ignore[arg-type]


def node_status_name(status: int) -> str:
    return node_pb2.NodeStatus.Name(status).removeprefix("NODE_STATUS_").lower()  # type: ignore[arg-type]


def when(ts: Timestamp, present: bool) -> str:
    if not present:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def age(ts: Timestamp, present: bool) -> str:
    if not present:
        return "never"
    seconds = (datetime.now(UTC) - ts.ToDatetime(tzinfo=UTC)).total_seconds()
    return f"{max(0, seconds):.0f}s ago"


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(column)
    for row in rows:
        out.add_row(*row)
    console.print(out)


def memory(num_bytes: int) -> str:
    return format_size(num_bytes) if num_bytes else "-"


def task_rows(tasks: Iterable[task_pb2.Task]) -> list[list[str]]:
    return [
        [
            str(t.task_id),
            status_name(t.status) + (f" #{t.queue_position}" if t.queue_position else ""),
            t.assigned_node or "-",
            str(t.required_cores),
            memory(t.required_memory_bytes),
            ",".join(map(str, t.required_gpus)) or (f"{t.gpu_count} any" if t.gpu_count else "-"),
            t.container_name,
            when(t.submitted_at, t.HasField("submitted_at")),
            " ".join([t.command, *t.arguments])[:60],
        ]
        for t in tasks
    ]


TASK_COLUMNS = (
    "task_id",
    "status (#queue)",
    "node",
    "cores",
    "memory",
    "gpus",
    "container",
    "submitted",
    "command",
)


def print_task_detail(task: task_pb2.Task, events: Sequence[task_pb2.TaskEvent]) -> None:
    fields = [
        ("task_id", str(task.task_id)),
        ("task_type", task_pb2.TaskKind.Name(task.kind).removeprefix("TASK_KIND_").lower()),
        ("batch_id", str(task.batch_id) if task.batch_id else "-"),
        ("status", status_name(task.status)),
        ("command", task.command),
        ("arguments", " ".join(task.arguments) or "-"),
        ("env", ", ".join(f"{k}={v}" for k, v in sorted(task.env.items())) or "-"),
        ("assigned_node", task.assigned_node or "-"),
        ("required_cores", str(task.required_cores)),
        ("required_memory_bytes", str(task.required_memory_bytes)),
        ("required_gpus", ",".join(map(str, task.required_gpus)) or "-"),
        ("assigned_cpus", ",".join(map(str, task.assigned_cpus)) or "-"),
        ("queue_position", str(task.queue_position) if task.queue_position else "-"),
        (
            "target_numa_node_id",
            str(task.target_numa_node_id) if task.HasField("target_numa_node_id") else "-",
        ),
        ("container_name", task.container_name),
        ("privileged", str(task.privileged).lower()),
        (
            "mounts",
            ", ".join(
                f"{m.host_path}:{m.container_path}{':ro' if m.read_only else ''}"
                for m in task.mounts
            )
            or "-",
        ),
        ("submitted_at", when(task.submitted_at, task.HasField("submitted_at"))),
        ("started_at", when(task.started_at, task.HasField("started_at"))),
        ("completed_at", when(task.completed_at, task.HasField("completed_at"))),
        ("exit_code", str(task.exit_code) if task.HasField("exit_code") else "-"),
        ("error_message", task.error_message or "-"),
        ("ssh_port", str(task.ssh_port) if task.ssh_port else "-"),
        ("status_detail", task.status_detail or "-"),
        ("priority", str(task.priority)),
        ("stdout_path", task.stdout_path or "-"),
        ("stderr_path", task.stderr_path or "-"),
    ]
    width = max(len(name) for name, _ in fields)
    for name, value in fields:
        console.print(f"{name:<{width}}  {value}", highlight=False, markup=False)
    if events:
        console.print("\ntimeline:", highlight=False)
        for event in events:
            console.print(
                f"  {when(event.at, True)}  {status_name(event.status):<10}  {event.detail}",
                highlight=False,
                markup=False,
            )
