"""Batches held by PauseBatch: their pending tasks wait until ResumeBatch.

Revision ID: 0002
Revises: 0001
Created: 2026-12-05
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "batch_holds",
        sa.Column("batch_id", sa.BigInteger(), autoincrement=False, primary_key=True),
        sa.Column("held_at", sa.DateTime(timezone=True), nullable=False),
    )
