"""Nodes keep whether they were online: a restarted Host loads a node that was online as
online with its Runner's stream closed, so its webhooks stay true across the restart (no
``node.online`` for a Runner that merely reconnects, a ``node.offline`` for one that never
does; each node was loaded offline before, and went online again, or silently stayed
offline).

Revision ID: 0005
Revises: 0004
Created: 2026-12-06
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("nodes") as batch:
        batch.add_column(
            sa.Column("online", sa.Boolean(), nullable=False, server_default=sa.false())
        )
