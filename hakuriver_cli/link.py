"""What the tools call the Host through: a link hands out one stub per service.

Two transports stand behind it (connection.host_link picks): the Connect protocol on the
dashboard's port (connect_link.py, the standard library and protobuf only) and gRPC
(grpc_link.py). Either stub has the generated gRPC stub's methods, ``Method(request,
timeout=None)``, returns the response or an iterator of them, and raises CallError.
The accessors below give a stub the generated stub's type, so the calls stay type-checked.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Protocol, cast

if TYPE_CHECKING:
    from hakuriver_common.proto.hakuriver.v1 import (
        access_service_pb2_grpc,
        audit_service_pb2_grpc,
        environment_service_pb2_grpc,
        log_service_pb2_grpc,
        node_service_pb2_grpc,
        shell_service_pb2_grpc,
        ssh_service_pb2_grpc,
        task_service_pb2_grpc,
    )

PROTO_PACKAGE = "hakuriver_common.proto.hakuriver.v1"


def proto_module(service: str, suffix: str) -> str:
    """The generated module of ``service``: (TaskService, _pb2) -> ...task_service_pb2."""
    return f"{PROTO_PACKAGE}.{re.sub(r'(?<!^)(?=[A-Z])', '_', service).lower()}{suffix}"


class Link(Protocol):
    def stub(self, service: str) -> Any: ...

    def close(self) -> None: ...


def task_stub(link: Link) -> task_service_pb2_grpc.TaskServiceStub:
    return cast("task_service_pb2_grpc.TaskServiceStub", link.stub("TaskService"))


def log_stub(link: Link) -> log_service_pb2_grpc.LogServiceStub:
    return cast("log_service_pb2_grpc.LogServiceStub", link.stub("LogService"))


def node_stub(link: Link) -> node_service_pb2_grpc.NodeServiceStub:
    return cast("node_service_pb2_grpc.NodeServiceStub", link.stub("NodeService"))


def access_stub(link: Link) -> access_service_pb2_grpc.AccessServiceStub:
    return cast("access_service_pb2_grpc.AccessServiceStub", link.stub("AccessService"))


def audit_stub(link: Link) -> audit_service_pb2_grpc.AuditServiceStub:
    return cast("audit_service_pb2_grpc.AuditServiceStub", link.stub("AuditService"))


def environment_stub(link: Link) -> environment_service_pb2_grpc.EnvironmentServiceStub:
    return cast(
        "environment_service_pb2_grpc.EnvironmentServiceStub", link.stub("EnvironmentService")
    )


def ssh_stub(link: Link) -> ssh_service_pb2_grpc.SshServiceStub:
    return cast("ssh_service_pb2_grpc.SshServiceStub", link.stub("SshService"))


def shell_stub(link: Link) -> shell_service_pb2_grpc.ShellServiceStub:
    return cast("shell_service_pb2_grpc.ShellServiceStub", link.stub("ShellService"))
