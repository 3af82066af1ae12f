"""Human tables and JSON for the CLI's read commands.

Task statuses, kinds and networks, node statuses, roles and audit outcomes appear in the
user's words (``completed``, ``vps``, ``none``, ``online``, ``operator``, ``refused``) in
tables and in ``--json`` alike; only the wire carries the proto enums.
"""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime
from enum import StrEnum
from functools import cache
from typing import TYPE_CHECKING, Any, TypeVar, cast

from hakuriver_common.statuses import (
    FINAL_TASK_STATUSES,
    NodeStatus,
    TaskKind,
    TaskNetwork,
    TaskStatus,
)
from hakuriver_common.units import format_size
from hakuriver_common.wording import counted

if TYPE_CHECKING:
    from google.protobuf.message import Message
    from google.protobuf.timestamp_pb2 import Timestamp
    from rich.console import Console

    from hakuriver_common.proto.hakuriver.v1 import node_pb2, task_pb2, task_service_pb2 as tpb

# protobuf's JSON and descriptors, rich, and the roles' proto enums are imported by the
# functions that use them: a command that prints one line loads none of them.


@cache
def console() -> Console:
    """The console tables go to; piped output keeps whole rows instead of the 80-column
    fallback."""
    from rich.console import Console

    return Console() if sys.stdout.isatty() else Console(width=240)


@cache
def _vocabulary() -> dict[str, Callable[[int], StrEnum]]:
    """Proto enum type -> its words, for every enum field of every message printed as JSON."""
    from hakuriver_common.proto.hakuriver.v1 import (
        access_pb2,
        audit_service_pb2 as aupb,
        node_pb2,
        task_pb2,
    )
    from hakuriver_common.roles import AuditOutcome, Role

    return {
        task_pb2.TaskStatus.DESCRIPTOR.full_name: TaskStatus.from_pb,
        task_pb2.TaskKind.DESCRIPTOR.full_name: TaskKind.from_pb,
        task_pb2.TaskNetwork.DESCRIPTOR.full_name: TaskNetwork.from_pb,
        node_pb2.NodeStatus.DESCRIPTOR.full_name: NodeStatus.from_pb,
        access_pb2.Role.DESCRIPTOR.full_name: Role.from_pb,
        aupb.AuditOutcome.DESCRIPTOR.full_name: AuditOutcome.from_pb,
    }


def _word(of_pb: Callable[[int], StrEnum], value: int) -> str:
    try:
        return of_pb(value).value
    except ValueError:
        return "unspecified" if value == 0 else f"unknown({value})"


def status_name(status: int) -> str:
    return _word(TaskStatus.from_pb, status)


def kind_name(kind: int) -> str:
    return _word(TaskKind.from_pb, kind)


def node_status_name(status: int) -> str:
    return _word(NodeStatus.from_pb, status)


def network_name(network: int) -> str:
    return _word(TaskNetwork.from_pb, network)


def role_name(role: int) -> str:
    from hakuriver_common.roles import Role

    return _word(Role.from_pb, role)


def outcome_name(outcome: int) -> str:
    from hakuriver_common.roles import AuditOutcome

    return _word(AuditOutcome.from_pb, outcome)


# The field that names an element of a list, written even at 0 (MessageToDict leaves zeros
# out): GPU 0's readings had no index, NUMA node 0 no id.
_NAMED_BY = {"hakuriver.v1.Gpu": "index", "hakuriver.v1.NumaNode": "id"}


_GPU_UTILISATION = ("utilization_gpu_percent", "utilization_memory_percent")
_GPU_MEMORY = ("memory_used_bytes", "memory_total_bytes")


def _gpu_readings(health: node_pb2.Health, out: dict[str, Any]) -> None:
    """A sample's GPU utilisation and memory, written even at 0 (MessageToDict leaves zeros
    out: an idle GPU read as one NVML cannot read) and as null where NVML reads none: the
    utilisation of a GPU in MIG mode, the memory of a GPU it gives no size (int64 as
    strings, as MessageToDict writes them)."""
    for gpu, written in zip(health.gpus, out.get("gpus", ()), strict=True):
        for field in _GPU_UTILISATION:
            written[field] = None if gpu.utilization_unknown else getattr(gpu, field)
        for field in _GPU_MEMORY:
            written[field] = str(getattr(gpu, field)) if gpu.memory_total_bytes else None


def _in_words(message: Message, out: dict[str, Any]) -> None:
    """Replace the proto enum names MessageToDict wrote for vocabulary fields, write the
    field naming a GPU or NUMA node and a sample's GPU readings, recursively."""
    key = _NAMED_BY.get(message.DESCRIPTOR.full_name)
    if key is not None:
        out.setdefault(key, getattr(message, key))
    if message.DESCRIPTOR.full_name == "hakuriver.v1.Health":
        _gpu_readings(cast("node_pb2.Health", message), out)
    for field, value in message.ListFields():
        written: Any = out.get(field.name)
        many = isinstance(written, list)
        if field.enum_type is not None:
            of_pb = _vocabulary().get(field.enum_type.full_name)
            if of_pb is not None:
                out[field.name] = [_word(of_pb, v) for v in value] if many else _word(of_pb, value)
        elif field.message_type is not None and not field.message_type.GetOptions().map_entry:
            for sub, sub_out in zip(value, written, strict=True) if many else [(value, written)]:
                if isinstance(sub_out, dict):
                    _in_words(sub, sub_out)


def to_dict(message: Message) -> dict[str, Any]:
    from google.protobuf.json_format import MessageToDict

    out = MessageToDict(message, preserving_proto_field_name=True)
    _in_words(message, out)
    return out


def to_json_line(message: Message, **also: object) -> str:
    """One JSON line: the message's fields, and ``also`` beside them."""
    return json.dumps({**to_dict(message), **also}, sort_keys=True)


def print_json(value: object) -> None:
    print(json.dumps(value, indent=2, sort_keys=True))


def when(ts: Timestamp, present: bool) -> str:
    if not present:
        return "-"
    return ts.ToDatetime(tzinfo=UTC).astimezone().strftime("%Y-%m-%d %H:%M:%S")


def age(ts: Timestamp, present: bool) -> str:
    if not present:
        return "never"
    seconds = (datetime.now(UTC) - ts.ToDatetime(tzinfo=UTC)).total_seconds()
    return f"{max(0, seconds):.0f}s ago"


# C0 and C1 control characters (ESC, CSI, BEL, line breaks...), and how a few are written.
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f]")
_WRITTEN = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def shown(text: str) -> str:
    """``text`` as a table or a task's details print it: its control characters written out
    (``\\x1b``, ``\\n``). A task's command, a token's description or a name in a refusal is
    another user's text: an escape sequence in it drove the operator's or admin's terminal
    (cleared it, set its title, moved the cursor to forge lines) when they listed it."""
    return _CONTROL.sub(lambda m: _WRITTEN.get(m[0], f"\\x{ord(m[0]):02x}"), text)


def table(title: str, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> None:
    """Text is escaped: a command's ``d[key]`` (and the column ``array[index]``) is text, not
    a rich style to drop, and its ``[/x]`` no closing tag to fail the whole listing on; its
    control characters are written out (``shown``)."""
    from rich.markup import escape
    from rich.table import Table

    out = Table(title=title, title_justify="left")
    for column in columns:
        out.add_column(escape(column))
    for row in rows:
        out.add_row(*(escape(shown(cell)) for cell in row))
    console().print(out)


M = TypeVar("M", bound="Message")


def show_list(
    json: bool,
    items: Sequence[M],
    title: str,
    columns: Sequence[str],
    row: Callable[[M], Sequence[str]],
) -> None:
    """The messages as a JSON list, or as a table of one ``row`` each."""
    if json:
        print_json([to_dict(item) for item in items])
    else:
        table(title, columns, [row(item) for item in items])


def memory(num_bytes: int) -> str:
    return format_size(num_bytes) if num_bytes else "-"


def task_row(t: task_pb2.Task) -> list[str]:
    return [
        str(t.task_id),
        f"{t.batch_id}[{t.array_index}]" if t.HasField("array_index") else "-",
        t.owner or "-",
        status_name(t.status) + (f" #{t.queue_position}" if t.queue_position else ""),
        t.assigned_node or "-",
        str(t.required_cores),
        memory(t.required_memory_bytes),
        ",".join(map(str, t.required_gpus)) or (f"{t.gpu_count} any" if t.gpu_count else "-"),
        t.container_name,
        when(t.submitted_at, t.HasField("submitted_at")),
        " ".join([t.command, *t.arguments])[:60],
    ]


TASK_COLUMNS = (
    "task_id",
    "array[index]",
    "owner",
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
    from hakuriver_common.mounts import MountSpec, format_mount

    fields = [
        ("task_id", str(task.task_id)),
        ("task_type", kind_name(task.kind)),
        ("batch_id", str(task.batch_id) if task.batch_id else "-"),
        ("array_index", str(task.array_index) if task.HasField("array_index") else "-"),
        ("owner", task.owner or "-"),
        ("status", status_name(task.status)),
        ("command", task.command),
        ("arguments", " ".join(task.arguments) or "-"),
        ("env", ", ".join(f"{k}={v}" for k, v in sorted(task.env.items())) or "-"),
        ("assigned_node", task.assigned_node or "-"),
        ("required_cores", str(task.required_cores)),
        ("required_memory_bytes", str(task.required_memory_bytes)),
        ("required_gpus", ",".join(map(str, task.required_gpus)) or "-"),
        ("gpu_count", str(task.gpu_count) if task.gpu_count else "-"),
        ("assigned_cpus", ",".join(map(str, task.assigned_cpus)) or "-"),
        ("queue_position", str(task.queue_position) if task.queue_position else "-"),
        (
            "target_numa_node_id",
            str(task.target_numa_node_id) if task.HasField("target_numa_node_id") else "-",
        ),
        ("container_name", task.container_name),
        ("privileged", str(task.privileged).lower()),
        ("network", network_name(task.network) if task.network else "-"),
        (
            "mounts",
            ", ".join(format_mount(MountSpec.from_pb(m)) for m in task.mounts) or "-",
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
    out = console()
    for name, value in fields:
        out.print(f"{name:<{width}}  {shown(value)}", highlight=False, markup=False)
    if events:
        out.print("\ntimeline:", highlight=False)
        for event in events:
            detail = shown(event.detail)
            out.print(
                f"  {when(event.at, True)}  {status_name(event.status):<10}  {detail}",
                highlight=False,
                markup=False,
            )


def submitted_line(task: task_pb2.Task, what: str = "task") -> str:
    """A just-submitted task: where it was placed, or that and why it waits in the queue."""
    if task.queue_position:
        aimed = f" for {task.target_hostname}" if task.target_hostname else ""
        why = task.status_detail or "waiting for resources"
        state = f"queued at position {task.queue_position}{aimed}: {why}"
    elif task.assigned_node:
        state = f"{status_name(task.status)} on {task.assigned_node}"
    else:
        state = status_name(task.status)
    return f"submitted {what} {task.task_id} ({state})"


def tasks_count(count: int) -> str:
    """ "1 task", "2 tasks"."""
    return counted(count, "task")


def batch_ended(batch: tpb.BatchSummary) -> bool:
    return all(c.status in FINAL_TASK_STATUSES for c in batch.counts)


def capped(cap: int, size: int) -> str:
    """``, at most 10 at once``: an array's cap, when it holds back some of its tasks."""
    return f", at most {cap} at once" if 0 < cap < size else ""


def batch_line(batch: tpb.BatchSummary) -> str:
    """A batch at a glance: what it is, then how many tasks are in each status."""
    what = "array" if batch.array else "batch"
    cap = capped(batch.max_running, batch.size)
    counts = ", ".join(f"{c.count} {status_name(c.status)}" for c in batch.counts)
    held = " (held: its pending tasks wait until it is resumed)" if batch.held else ""
    return f"{what} {batch.batch_id}: {tasks_count(batch.size)}{cap}: {counts or 'none'}{held}"
