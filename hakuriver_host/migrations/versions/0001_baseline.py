"""The schema when migrations began (version 0.1.0).

On an empty database it creates every table. A database from before migrations (whose
Host created missing tables and added missing columns at each start) is adopted: missing
tables are created, missing columns added with their defaults, missing indexes made, and
nothing present is changed.

Revision ID: 0001
Revises:
Created: 2026-12-04
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from hakuriver_host.migrations import NotHakuRivers

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_TABLES = sa.MetaData()
# Times are aware and stored in UTC (timestamptz on PostgreSQL).
_TIME = sa.DateTime(timezone=True)


def _text(name: str, default: str | None = None, **kw: object) -> sa.Column[str]:
    """A NOT NULL string column; ``default`` fills the rows of a table it is added to."""
    server_default = None if default is None else sa.text("'" + default.replace("'", "''") + "'")
    return sa.Column(name, sa.String(), nullable=False, server_default=server_default, **kw)  # type: ignore[arg-type]


def _number(name: str, default: int, kind: type[sa.Integer] = sa.Integer) -> sa.Column[int]:
    return sa.Column(name, kind(), nullable=False, server_default=sa.text(str(default)))


def _flag(name: str) -> sa.Column[bool]:
    return sa.Column(name, sa.Boolean(), nullable=False, server_default=sa.false())


def _created(name: str) -> sa.Column[object]:
    """A NOT NULL time, there since its table was made."""
    return sa.Column(name, _TIME, nullable=False)


sa.Table(
    "nodes",
    _TABLES,
    sa.Column("hostname", sa.String(), primary_key=True),
    sa.Column("total_cores", sa.Integer(), nullable=False),
    sa.Column("total_memory_bytes", sa.BigInteger(), nullable=False),
    sa.Column("numa_nodes", sa.JSON()),
    sa.Column("gpus", sa.JSON()),
    _created("registered_at"),
    sa.Column("last_heartbeat", _TIME),
    _flag("draining"),
    sa.Column("environments", sa.JSON()),
)
sa.Table(
    "tasks",
    _TABLES,
    sa.Column("task_id", sa.BigInteger(), primary_key=True, autoincrement=False),
    _text("kind", "command"),
    _number("batch_id", 0, sa.BigInteger),
    _text("command"),
    sa.Column("arguments", sa.JSON()),
    sa.Column("env", sa.JSON()),
    _text("status"),
    sa.Column("assigned_node", sa.String()),
    sa.Column("target_hostname", sa.String()),
    _number("required_cores", 1),
    _number("required_memory_bytes", 0, sa.BigInteger),
    sa.Column("required_gpus", sa.JSON()),
    sa.Column("target_numa_node_id", sa.Integer()),
    _text("container_name"),
    _flag("privileged"),
    sa.Column("mounts", sa.JSON()),
    _number("priority", 0),
    _created("submitted_at"),
    sa.Column("started_at", _TIME),
    sa.Column("completed_at", _TIME),
    sa.Column("exit_code", sa.Integer()),
    _text("error_message", ""),
    _number("ssh_port", 0),
    _text("stdout_path", ""),
    _text("stderr_path", ""),
    _flag("kill_requested"),
    sa.Column("assigned_cpus", sa.JSON()),
    _number("gpu_count", 0),
    _text("status_detail", ""),
    _text("ssh_public_key", ""),
    _text("owner", ""),
    _text("network", "host"),
    sa.Column("array_index", sa.Integer()),
    _number("array_max_running", 0),
    sa.Index("ix_tasks_status", "status"),
    sa.Index("ix_tasks_assigned_node", "assigned_node"),
    sa.Index("ix_tasks_batch_id", "batch_id"),
    sa.Index("ix_tasks_owner", "owner"),
)
sa.Table(
    "task_events",
    _TABLES,
    sa.Column("id", sa.Integer(), primary_key=True),
    sa.Column("task_id", sa.BigInteger(), nullable=False),
    _text("status"),
    _created("at"),
    _text("detail", ""),
    sa.Index("ix_task_events_task_id", "task_id"),
)
sa.Table(
    "users",
    _TABLES,
    sa.Column("name", sa.String(), primary_key=True),
    _text("role"),
    _created("created_at"),
)
sa.Table(
    "api_tokens",
    _TABLES,
    sa.Column("token_id", sa.String(), primary_key=True),
    _text("secret_hash", unique=True),
    _text("user"),
    _text("description", ""),
    _created("created_at"),
    sa.Column("expires_at", _TIME),
    sa.Column("revoked_at", _TIME),
    sa.Index("ix_api_tokens_user", "user"),
)
sa.Table(
    "runner_credentials",
    _TABLES,
    sa.Column("hostname", sa.String(), primary_key=True),
    _text("secret_hash", unique=True),
    _created("issued_at"),
    sa.Column("revoked_at", _TIME),
)
sa.Table(
    "audit_events",
    _TABLES,
    sa.Column("id", sa.Integer(), primary_key=True),
    _created("at"),
    _text("actor"),
    _text("role", ""),
    _text("action"),
    _text("target", ""),
    _text("outcome"),
    _text("detail", ""),
    _text("peer", ""),
    sa.Index("ix_audit_events_at", "at"),
    sa.Index("ix_audit_events_actor", "actor"),
    sa.Index("ix_audit_events_action", "action"),
)
sa.Table(
    "cluster",
    _TABLES,
    sa.Column("cluster_id", sa.String(), primary_key=True),
    _created("created_at"),
)


def upgrade() -> None:
    bind = op.get_bind()
    found = sa.inspect(bind)
    existing = set(found.get_table_names())
    for table in _TABLES.sorted_tables:
        if table.name not in existing:
            table.create(bind)
            continue
        present = {c["name"] for c in found.get_columns(table.name)}
        for column in (c for c in table.columns if c.name not in present):
            if not column.nullable and column.server_default is None:
                raise NotHakuRivers(
                    f"table {table.name} lacks column {column.name}, which has no default: "
                    "this database was not made by HakuRiver"
                )
            op.add_column(
                table.name,
                sa.Column(
                    column.name,
                    column.type,
                    nullable=column.nullable,
                    server_default=column.server_default,
                ),
            )
        indexes = {index["name"] for index in found.get_indexes(table.name)}
        for index in table.indexes:
            if index.name not in indexes:
                op.create_index(index.name, table.name, [c.name for c in index.columns])
