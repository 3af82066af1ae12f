"""An index of tasks by status and completion time, for counting the tasks that ended lately.

Revision ID: 0003
Revises: 0002
Created: 2026-12-05
"""

from __future__ import annotations

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_index("ix_tasks_status_completed_at", "tasks", ["status", "completed_at"])
