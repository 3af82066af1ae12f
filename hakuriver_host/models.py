"""Database tables of the Host (SQLModel). Times are timezone-aware UTC."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any, NamedTuple

from sqlalchemy import JSON, BigInteger, Column, Index
from sqlmodel import Field, SQLModel

from hakuriver_common.statuses import TaskKind


def utcnow() -> datetime:
    return datetime.now(UTC)


def cutoff_before(days: float) -> datetime:
    """The moment ``days`` ago; the earliest date there is when that is further back (a
    forget_*_days of a million years means: keep)."""
    try:
        return utcnow() - timedelta(days=days)
    except OverflowError:
        return datetime.min.replace(tzinfo=UTC)


# Default factories are Python functions, not ``list`` and ``dict``: pydantic reads a
# factory's signature each time it is used, and a builtin's is parsed from text (~60 us;
# five per task row were a quarter of the Host's CPU on single submits).
def _new_list() -> list[Any]:
    return []


def _new_dict() -> dict[str, Any]:
    return {}


class NodeRecord(SQLModel, table=True):
    __tablename__ = "nodes"

    hostname: str = Field(primary_key=True)
    total_cores: int
    total_memory_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    numa_nodes: list[dict[str, Any]] = Field(default_factory=_new_list, sa_column=Column(JSON))
    gpus: list[dict[str, Any]] = Field(default_factory=_new_list, sa_column=Column(JSON))
    registered_at: datetime = Field(default_factory=utcnow)
    last_heartbeat: datetime | None = None
    draining: bool = False
    # Online when last stored (its Runner heard from within the timeout): a restarted Host
    # loads it so (NodeTable.load).
    online: bool = False
    # Container environments the Runner had loaded when last heard from.
    environments: list[str] = Field(default_factory=_new_list, sa_column=Column(JSON))
    # The Runner process that last registered (RegisterRunner.instance_id; "" unknown): a
    # restarted Host keeps the node's GPUs across that process's reconnect (NodeTable.connect).
    instance_id: str = ""


class Task(SQLModel):
    """A task's fields. The Host holds its active tasks as plain ``Task`` objects: a table
    model's attributes are read through SQLAlchemy's descriptors (~0.2 us each, ~9% of the
    Host's CPU while job arrays run), and what it holds in memory is written by column
    (``bulk_sql``), never through a session."""

    task_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    kind: str = TaskKind.COMMAND.value
    batch_id: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    command: str
    arguments: list[str] = Field(default_factory=_new_list, sa_column=Column(JSON))
    env: dict[str, str] = Field(default_factory=_new_dict, sa_column=Column(JSON))
    status: str
    assigned_node: str | None = None
    target_hostname: str | None = None
    required_cores: int = 1
    required_memory_bytes: int = Field(default=0, sa_column=Column(BigInteger, nullable=False))
    required_gpus: list[int] = Field(default_factory=_new_list, sa_column=Column(JSON))
    target_numa_node_id: int | None = None
    container_name: str
    privileged: bool = False
    mounts: list[dict[str, Any]] = Field(default_factory=_new_list, sa_column=Column(JSON))
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
    # Who asked for the kill (the timeline's kill entry names them); "" before anyone did.
    killed_by: str = ""
    assigned_cpus: list[int] = Field(default_factory=_new_list, sa_column=Column(JSON))
    gpu_count: int = 0
    status_detail: str = ""
    ssh_public_key: str = ""
    # The user who submitted it ("" for tasks from before identities existed).
    owner: str = ""
    network: str = "host"
    # Its index in its job array (batch_id is the array's id); None outside arrays.
    array_index: int | None = None
    array_max_running: int = 0


class TaskRecord(Task, table=True):
    """A task's row; what queries of the store return (a ``Task`` too)."""

    __tablename__ = "tasks"
    # What the store is asked for, each read through an index rather than by reading
    # every task in the history (see migration 0004). CountTasks of the tasks that ended
    # lately: a range of the first, which serves every query by status. A batch's tasks by
    # status (GetBatch): the second (SQLite chose the first for "batch_id = ? AND status IN
    # (...)" while batch_id had an index of its own). A user's or a node's newest tasks
    # (ListTasks, newest first): the last two, read backwards, no sort of all of them.
    # Every index is written on each insert and status change: no more than these.
    __table_args__ = (
        Index("ix_tasks_status_completed_at", "status", "completed_at"),
        Index("ix_tasks_batch_id_status", "batch_id", "status"),
        Index("ix_tasks_owner_task_id", "owner", "task_id"),
        Index("ix_tasks_assigned_node_task_id", "assigned_node", "task_id"),
    )


def in_memory(record: Task) -> Task:
    """A stored task as the plain ``Task`` the Host holds in memory."""
    return Task.model_construct(**{name: getattr(record, name) for name in TASK_FIELDS})


def assign(task: Task, changes: dict[str, Any]) -> None:
    """Set fields of a task held in memory. Those are detached from any session (the store
    writes their changes itself, by column), so SQLAlchemy's change history and pydantic's
    assignment hook do nothing useful for them, at ~1.6 us a field through ``setattr``:
    three changes a task, several fields each."""
    if not changes.keys() <= _TASK_FIELD_SET:
        unknown = sorted(changes.keys() - _TASK_FIELD_SET)
        raise AttributeError(f"Task has no fields {unknown}")
    task.__dict__.update(changes)


def field_values(task: Task) -> Mapping[str, Any]:
    """A task's values by field name, its own objects (``model_dump`` copies them, ~8 us a
    row); a stored row's hold more than its fields: read them by TASK_FIELDS. For rows
    converted before anything can change the task (a job array's, prepared as it is
    submitted)."""
    return task.__dict__


TASK_FIELDS = tuple(Task.model_fields)
_TASK_FIELD_SET = frozenset(TASK_FIELDS)


class EndedTask(NamedTuple):
    """What forgetting an ended task needs of its row (``Store.ended_before``)."""

    task_id: int
    batch_id: int
    status: str
    kind: str
    completed_at: datetime
    stdout_path: str
    stderr_path: str
    # Its place among the tasks that ended at the same moment (``Store.ended_before``).
    key: int


class TaskEventRecord(SQLModel, table=True):
    __tablename__ = "task_events"

    id: int | None = Field(default=None, primary_key=True)
    task_id: int = Field(sa_column=Column(BigInteger, nullable=False, index=True))
    status: str
    at: datetime = Field(default_factory=utcnow)
    detail: str = ""


class UserRecord(SQLModel, table=True):
    __tablename__ = "users"

    name: str = Field(primary_key=True)
    role: str
    created_at: datetime = Field(default_factory=utcnow)


class ApiTokenRecord(SQLModel, table=True):
    """An API token; only the SHA-256 of its secret is kept."""

    __tablename__ = "api_tokens"

    token_id: str = Field(primary_key=True)
    secret_hash: str = Field(unique=True)
    user: str = Field(index=True)
    description: str = ""
    created_at: datetime = Field(default_factory=utcnow)
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


class RunnerCredentialRecord(SQLModel, table=True):
    """The credential a Runner received on its first join; only its SHA-256 is kept."""

    __tablename__ = "runner_credentials"

    hostname: str = Field(primary_key=True)
    secret_hash: str = Field(unique=True)
    issued_at: datetime = Field(default_factory=utcnow)
    revoked_at: datetime | None = None


class AuditRecord(SQLModel, table=True):
    __tablename__ = "audit_events"

    id: int | None = Field(default=None, primary_key=True)
    at: datetime = Field(default_factory=utcnow, index=True)
    actor: str = Field(index=True)
    role: str = ""
    action: str = Field(index=True)
    target: str = ""
    outcome: str
    detail: str = ""
    peer: str = ""


class ClusterRecord(SQLModel, table=True):
    """The cluster's identity, made on the Host's first start and never changed: Runners
    label their containers with it (one Docker daemon may serve several clusters)."""

    __tablename__ = "cluster"

    cluster_id: str = Field(primary_key=True)
    created_at: datetime = Field(default_factory=utcnow)


class BatchHoldRecord(SQLModel, table=True):
    """A batch paused as a whole (PauseBatch): its pending tasks are not placed until it is
    resumed. A row, not a flag on each task: a 10,000-task array is held in one write."""

    __tablename__ = "batch_holds"

    batch_id: int = Field(sa_column=Column(BigInteger, primary_key=True, autoincrement=False))
    held_at: datetime = Field(default_factory=utcnow)


# How long a SubmitTask's request_id is kept: a retry within it gets the tasks created.
REQUEST_ID_HOURS = 24


def request_ids_since() -> datetime:
    """The oldest moment a kept request_id was used at."""
    return utcnow() - timedelta(hours=REQUEST_ID_HOURS)


class SubmitRequestRecord(SQLModel, table=True):
    """A submission made with a request_id (SubmitTask's idempotency key), written in the
    transaction that inserts its tasks: a retry of it, also after a Host restart, is
    answered with these tasks, never given new ones. ``digest`` is the request's own (less
    its id): the same id with another request is refused. Kept REQUEST_ID_HOURS."""

    __tablename__ = "submit_requests"

    owner: str = Field(primary_key=True)
    request_id: str = Field(primary_key=True)
    digest: str
    # The batch created (0 for one task) and the first task's id, and how many.
    batch_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    task_id: int = Field(sa_column=Column(BigInteger, nullable=False))
    created: int
    created_at: datetime = Field(default_factory=utcnow, index=True)
