"""Tasks indexed for what the store is asked, so that no list reads the whole history.

- A batch's counts by status (GetBatch: ``batch_id = ? AND status IN (...)``) were read
  through the index of status and completion time, which SQLite preferred to the index of
  batch_id: every task that ever ended was read (48-77 ms with 120,000 ended, on the
  store's one thread; 1.4 ms through an index of batch_id and status).
- A user's newest tasks (ListTasks of a plain user: ``owner = ? ORDER BY task_id DESC
  LIMIT n``) were every task of theirs, sorted (250 ms with 120,000; 0.8 ms through an
  index of owner and task_id, read backwards); a node's alike.
- The index of status alone goes: the index of status and completion time (0003) serves
  every query by status, and each new task and status change then writes one index fewer
  (a job array's 10,000 rows inserted ~17% faster).

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
    # An index dropped or made by hand does not stop a Host's start.
    op.create_index("ix_tasks_batch_id_status", "tasks", ["batch_id", "status"], if_not_exists=True)
    op.create_index("ix_tasks_owner_task_id", "tasks", ["owner", "task_id"], if_not_exists=True)
    op.create_index(
        "ix_tasks_assigned_node_task_id", "tasks", ["assigned_node", "task_id"], if_not_exists=True
    )
    for replaced in ("ix_tasks_batch_id", "ix_tasks_owner", "ix_tasks_assigned_node"):
        op.drop_index(replaced, table_name="tasks", if_exists=True)
    op.drop_index("ix_tasks_status", table_name="tasks", if_exists=True)
