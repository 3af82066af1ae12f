"""Task statuses as the public API spells them."""

from __future__ import annotations

from hakuriver_common.proto.hakuriver.v1 import task_pb2

FINAL_TASK_STATUSES = frozenset(
    {
        task_pb2.TASK_STATUS_COMPLETED,
        task_pb2.TASK_STATUS_FAILED,
        task_pb2.TASK_STATUS_KILLED,
        task_pb2.TASK_STATUS_KILLED_OOM,
        task_pb2.TASK_STATUS_LOST,
    }
)
