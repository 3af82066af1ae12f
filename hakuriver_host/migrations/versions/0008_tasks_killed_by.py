"""Tasks keep who asked for their kill: the timeline's kill entry names them ("killed by
alice"), as Slurm's "CANCELLED by"; an operator or admin killing another user's task shows
who did.

Revision ID: 0008
Revises: 0007
Created: 2026-12-08
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("tasks") as batch:
        batch.add_column(sa.Column("killed_by", sa.String(), nullable=False, server_default=""))
