"""Alembic's entry point: the Host passes its open connection (``attributes["connection"]``);
``scripts/new_migration.py`` passes a scratch database's URL to draft a revision."""

from __future__ import annotations

from typing import Any, Literal

from alembic import context
from sqlalchemy import create_engine
from sqlmodel import SQLModel
from sqlmodel.sql.sqltypes import AutoString

import hakuriver_host.models  # noqa: F401  (the tables, into SQLModel.metadata)


def _render(kind: str, value: Any, _context: Any) -> str | Literal[False]:
    """Drafts spell SQLModel's string type as SQLAlchemy's, so they import only ``sa``."""
    if kind == "type" and isinstance(value, AutoString):
        return "sa.String()"
    return False


def _migrate(connection: object) -> None:
    context.configure(
        connection=connection,  # type: ignore[arg-type]
        target_metadata=SQLModel.metadata,
        render_as_batch=True,  # SQLite alters a table by copying it
        compare_type=True,
        render_item=_render,
    )
    with context.begin_transaction():
        context.run_migrations()


given = context.config.attributes.get("connection")
if given is not None:
    _migrate(given)
else:
    engine = create_engine(context.config.get_main_option("sqlalchemy.url") or "")
    with engine.connect() as connection:
        _migrate(connection)
    engine.dispose()
