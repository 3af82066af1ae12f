"""The Host's schema migrations (Alembic): one revision per schema change, applied in order
when the Host starts.

Alembic (with mako and pygments, ~11 MB and ~0.1 s of imports) is loaded only when the
database is not at the newest revision: whether it is, is read with plain SQLAlchemy, and
the newest revision from the revision files' text.
"""

from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import TYPE_CHECKING

from sqlalchemy import inspect
from sqlalchemy.engine import Connection

if TYPE_CHECKING:
    from alembic.config import Config

VERSIONS = Path(__file__).parent / "versions"
VERSION_TABLE = "alembic_version"  # Alembic's default, which env.py keeps
# A revision file's own lines (script.py.mako): its revision, and the one it revises.
_ASSIGNED = re.compile(r"^(revision|down_revision) = (?:None|['\"]([^'\"]+)['\"])$", re.MULTILINE)


class NotHakuRivers(RuntimeError):
    """The database holds tables of the Host's names that no Host made."""


class _MigrationsRun(logging.Filter):
    """Alembic's lines at a start: each migration it runs, on one line (its description is
    the revision's first paragraph, which may span lines); not its notes on the dialect,
    one of which reads wrong ("Will assume non-transactional DDL": the Host runs them in
    one transaction)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        if not message.startswith("Running "):
            return record.levelno > logging.INFO
        record.msg, record.args = " ".join(message.split()), ()
        return True


logging.getLogger("alembic.runtime.migration").addFilter(_MigrationsRun())


def settings() -> Config:
    """Alembic's settings for these migrations (this package is the script folder; there is
    no alembic.ini)."""
    from alembic.config import Config

    found = Config()
    found.set_main_option("script_location", "hakuriver_host:migrations")
    return found


def newest_revision() -> str:
    """The revision no other revises, read from the files in ``versions/`` without Alembic
    (test_migrations checks it is Alembic's own head)."""
    revises: dict[str, str | None] = {}
    for path in VERSIONS.glob("*.py"):
        assigned = {match[1]: match[2] for match in _ASSIGNED.finditer(path.read_text())}
        if "revision" in assigned:
            revises[assigned["revision"]] = assigned.get("down_revision")
    [head] = set(revises) - set(revises.values())
    return head


def is_newest(connection: Connection) -> bool:
    """Is the database at the newest revision, with nothing to migrate? Read with plain
    SQLAlchemy, as Alembic reads it: one row in its version table (none on a new database)."""
    if not inspect(connection).has_table(VERSION_TABLE):
        return False
    found = connection.exec_driver_sql(f"SELECT version_num FROM {VERSION_TABLE}")
    return list(found.scalars()) == [newest_revision()]


def unknown_revisions(connection: Connection) -> list[str]:
    """The database's revisions that these migrations do not know: a newer HakuRiver's."""
    from alembic.runtime.migration import MigrationContext
    from alembic.script import ScriptDirectory

    known = {script.revision for script in ScriptDirectory.from_config(settings()).walk_revisions()}
    found = MigrationContext.configure(connection).get_current_heads()
    return [revision for revision in found if revision not in known]


def upgrade(connection: Connection) -> None:
    """Run the migrations the database lacks, on ``connection`` (in its transaction)."""
    from alembic import command

    found = settings()
    found.attributes["connection"] = connection
    command.upgrade(found, "head")
