"""The words of the task and node vocabulary, defined once, with their proto enums beside them.

Users (CLI tables, ``--json``, webhooks, metrics labels, the database) see the lowercase
names (``completed``, ``killed_oom``, ``online``); the wire carries the proto enums. Every
other module converts through here.
"""

from __future__ import annotations

from enum import StrEnum
from typing import TYPE_CHECKING, cast

if TYPE_CHECKING:
    from hakuriver_common.proto.hakuriver.v1 import node_pb2, task_pb2


class TaskStatus(StrEnum):
    PENDING = "pending"
    ASSIGNING = "assigning"
    RUNNING = "running"
    PAUSED = "paused"
    COMPLETED = "completed"
    FAILED = "failed"
    KILLED = "killed"
    KILLED_OOM = "killed_oom"
    LOST = "lost"
    # Its Runner is away; the task may still run there (see docs/reliability.md).
    UNKNOWN = "unknown"

    @property
    def is_final(self) -> bool:
        return self in FINAL_STATUSES

    @property
    def pb(self) -> task_pb2.TaskStatus.ValueType:
        return _TASK_STATUS_PB[self]

    @classmethod
    def of(cls, value: str) -> TaskStatus:
        """``TaskStatus(value)`` by one dict lookup (the Enum call costs ~1 us, several
        times per task change); ValueError for unknown values."""
        try:
            return _TASK_STATUS_OF_TEXT[value]
        except KeyError:
            raise ValueError(f"{value!r} is not a valid TaskStatus") from None

    @classmethod
    def from_pb(cls, value: int) -> TaskStatus:
        """The status of a proto enum value; ValueError for UNSPECIFIED or unknown values."""
        try:
            return _TASK_STATUS_OF_PB[value]
        except KeyError:
            raise ValueError(f"unknown task status value {value}") from None


class TaskKind(StrEnum):
    COMMAND = "command"
    VPS = "vps"

    @property
    def pb(self) -> task_pb2.TaskKind.ValueType:
        return _TASK_KIND_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> TaskKind:
        """The kind of a proto enum value; ValueError for UNSPECIFIED or unknown values."""
        try:
            return _TASK_KIND_OF_PB[value]
        except KeyError:
            raise ValueError(f"unknown task kind value {value}") from None


class NodeStatus(StrEnum):
    ONLINE = "online"
    OFFLINE = "offline"

    @property
    def pb(self) -> node_pb2.NodeStatus.ValueType:
        return _NODE_STATUS_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> NodeStatus:
        try:
            return _NODE_STATUS_OF_PB[value]
        except KeyError:
            raise ValueError(f"unknown node status value {value}") from None

    @classmethod
    def of(cls, online: bool) -> NodeStatus:
        return cls.ONLINE if online else cls.OFFLINE


class TaskNetwork(StrEnum):
    """The network of a task's container (config ``auth.default_task_network``)."""

    HOST = "host"
    NONE = "none"

    @property
    def pb(self) -> task_pb2.TaskNetwork.ValueType:
        return _TASK_NETWORK_PB[self]

    @classmethod
    def from_pb(cls, value: int) -> TaskNetwork:
        for network, pb in _TASK_NETWORK_PB.items():
            if pb == value:
                return network
        raise ValueError(f"unknown task network value {value}")


FINAL_STATUSES = frozenset(
    {
        TaskStatus.COMPLETED,
        TaskStatus.FAILED,
        TaskStatus.KILLED,
        TaskStatus.KILLED_OOM,
        TaskStatus.LOST,
    }
)
ACTIVE_STATUSES = frozenset(s for s in TaskStatus if s not in FINAL_STATUSES)
_TASK_STATUS_OF_TEXT: dict[str, TaskStatus] = {s.value: s for s in TaskStatus}

# The proto enums' numbers (protos/hakuriver/v1/task.proto and node.proto), written out: wire
# values never change, and this module (which every command line's --help needs, for its
# choices) then loads no protobuf. tests/unit/test_statuses.py checks them against the
# generated code.
_TASK_STATUS_PB = cast(
    "dict[TaskStatus, task_pb2.TaskStatus.ValueType]",
    {
        TaskStatus.PENDING: 1,
        TaskStatus.ASSIGNING: 2,
        TaskStatus.RUNNING: 3,
        TaskStatus.PAUSED: 4,
        TaskStatus.COMPLETED: 5,
        TaskStatus.FAILED: 6,
        TaskStatus.KILLED: 7,
        TaskStatus.KILLED_OOM: 8,
        TaskStatus.LOST: 9,
        TaskStatus.UNKNOWN: 10,
    },
)
_TASK_STATUS_OF_PB: dict[int, TaskStatus] = {pb: status for status, pb in _TASK_STATUS_PB.items()}
_TASK_KIND_PB = cast(
    "dict[TaskKind, task_pb2.TaskKind.ValueType]", {TaskKind.COMMAND: 1, TaskKind.VPS: 2}
)
_TASK_KIND_OF_PB: dict[int, TaskKind] = {pb: kind for kind, pb in _TASK_KIND_PB.items()}
_TASK_NETWORK_PB = cast(
    "dict[TaskNetwork, task_pb2.TaskNetwork.ValueType]", {TaskNetwork.HOST: 1, TaskNetwork.NONE: 2}
)
_NODE_STATUS_PB = cast(
    "dict[NodeStatus, node_pb2.NodeStatus.ValueType]", {NodeStatus.ONLINE: 1, NodeStatus.OFFLINE: 2}
)
_NODE_STATUS_OF_PB: dict[int, NodeStatus] = {pb: status for status, pb in _NODE_STATUS_PB.items()}

# Proto values of the final statuses, for clients that compare wire messages.
FINAL_TASK_STATUSES = frozenset(s.pb for s in FINAL_STATUSES)
