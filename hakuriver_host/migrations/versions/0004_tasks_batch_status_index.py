"""Tasks are indexed by batch and status, and no longer by status alone nor by batch alone.

A batch's counts by status (GetBatch: ``batch_id = ? AND status IN (...)``) were read
through the index of status and completion time, which SQLite preferred to the index of
batch_id: every task that ever ended was read (48-77 ms with 120,000 ended, growing with the
history; 1.4 ms through the new index). The index of status and completion time (0003)
serves every query by status, and the new one every query by batch, so each new task and
each status change writes one index fewer (a job array's 10,000 rows inserted ~17% faster).

Revision ID: 0004
Revises: 0003
Created: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_batch_id_status", "tasks", ["batch_id", "status"])
    op.drop_index("ix_tasks_batch_id", table_name="tasks")
    op.drop_index("ix_tasks_status", table_name="tasks")
