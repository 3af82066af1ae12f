"""The Host's schema migrations (Alembic): one revision per schema change, applied in order
when the Host starts."""

from __future__ import annotations

import logging

from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection


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
    found = Config()
    found.set_main_option("script_location", "hakuriver_host:migrations")
    return found


def newest_revision() -> str | None:
    return ScriptDirectory.from_config(settings()).get_current_head()


def unknown_revisions(connection: Connection) -> list[str]:
    """The database's revisions that these migrations do not know: a newer HakuRiver's."""
    known = {script.revision for script in ScriptDirectory.from_config(settings()).walk_revisions()}
    found = MigrationContext.configure(connection).get_current_heads()
    return [revision for revision in found if revision not in known]
