"""Nodes keep which Runner process last registered (RegisterRunner.instance_id): a Host,
restarted too, keeps a node's GPUs across a reconnect of that process, those NVML cannot
read at the moment included, instead of taking the registration's readings as all it has.

Revision ID: 0007
Revises: 0006
Created: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(sa.Column("instance_id", sa.String(), nullable=False, server_default=""))
