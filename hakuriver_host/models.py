"""Database tables of the Host (SQLModel). Times are timezone-aware UTC."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Column
from sqlmodel import Field, SQLModel

from hakuriver_common.statuses import TaskKind


def utcnow() -> datetime:
    return datetime.now(UTC)


class NodeRecord(SQLModel, table=True):
    __tablename__ = "nodes"

    hostname: str = Field(primary_key=True)
    total_cores: int
    total_memory_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    numa_nodes: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    gpus: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    registered_at: datetime = Field(default_factory=utcnow)
    last_heartbeat: datetime | None = None
    draining: bool = False
    # Container environments the Runner had loaded when last heard from.
    environments: list[str] = Field(default_factory=list, sa_column=Column(JSON))


class TaskRecord(SQLModel, table=True):
    __tablename__ = "tasks"

    task_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = TaskKind.COMMAND.value
    batch_id: int = Field(default=0, sa_column=Column(BigInteger, nullable=False, index=True))
    command: str
    arguments: list[str] = Field(default_factory=list, sa_column=Column(JSON))
    env: dict[str, str] = Field(default_factory=dict, sa_column=Column(JSON))
    status: str = Field(index=True)
    assigned_node: str | None = Field(default=None, index=True)
    target_hostname: str | None = None
    required_cores: int = 1
    required_memory_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    required_gpus: list[int] = Field(default_factory=list, sa_column=Column(JSON))
    target_numa_node_id: int | None = None
    container_name: str
    privileged: bool = False
    mounts: list[dict[str, Any]] = Field(default_factory=list, sa_column=Column(JSON))
    priority: int = 0
    submitted_at: datetime = Field(default_factory=utcnow)
    started_at: datetime | None = None
    completed_at: datetime | None = None
    exit_code: int | None = None
    error_message: str = ""
    ssh_port: int = 0
    stdout_path: str = ""
    stderr_path: str = ""
    kill_requested: bool = False
    assigned_cpus: list[int] = Field(default_factory=list, sa_column=Column(JSON))
    gpu_count: int = 0
    status_detail: str = ""
    ssh_public_key: str = ""


class TaskEventRecord(SQLModel, table=True):
    __tablename__ = "task_events"

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    status: str
    at: datetime = Field(default_factory=utcnow)
    detail: str = ""
