"""The vocabulary's proto numbers, written out in hakuriver_common/statuses.py and roles.py,
against the generated code: every word maps to the proto value of its name, and every proto
value but UNSPECIFIED has a word."""

from __future__ import annotations

from enum import StrEnum

import pytest
from google.protobuf.descriptor import EnumDescriptor

from hakuriver_common.proto.hakuriver.v1 import access_pb2, audit_service_pb2, node_pb2, task_pb2
from hakuriver_common.roles import AuditOutcome, Role
from hakuriver_common.statuses import (
    FINAL_STATUSES,
    FINAL_TASK_STATUSES,
    NodeStatus,
    TaskKind,
    TaskNetwork,
    TaskStatus,
)

VOCABULARIES = [
    (TaskStatus, task_pb2.TaskStatus.DESCRIPTOR, "TASK_STATUS_"),
    (TaskKind, task_pb2.TaskKind.DESCRIPTOR, "TASK_KIND_"),
    (TaskNetwork, task_pb2.TaskNetwork.DESCRIPTOR, "TASK_NETWORK_"),
    (NodeStatus, node_pb2.NodeStatus.DESCRIPTOR, "NODE_STATUS_"),
    (Role, access_pb2.Role.DESCRIPTOR, "ROLE_"),
    (AuditOutcome, audit_service_pb2.AuditOutcome.DESCRIPTOR, "AUDIT_OUTCOME_"),
]


@pytest.mark.parametrize(("words", "enum", "prefix"), VOCABULARIES)
def test_words_match_the_proto_enums(
    words: type[StrEnum], enum: EnumDescriptor, prefix: str
) -> None:
    proto = {v.name.removeprefix(prefix): v.number for v in enum.values if v.number != 0}
    ours = {member.name: member.pb for member in words}  # type: ignore[attr-defined]
    assert ours == proto
    for member in words:
        assert words.from_pb(member.pb) is member  # type: ignore[attr-defined]


def test_final_task_statuses_are_the_proto_values() -> None:
    assert {getattr(task_pb2, f"TASK_STATUS_{s.name}") for s in FINAL_STATUSES} == (
        FINAL_TASK_STATUSES
    )


def test_a_task_status_of_its_text_is_the_enum_call() -> None:
    for status in TaskStatus:
        assert TaskStatus.of(status.value) is TaskStatus(status.value) is status
    with pytest.raises(ValueError, match="'done' is not a valid TaskStatus"):
        TaskStatus.of("done")
