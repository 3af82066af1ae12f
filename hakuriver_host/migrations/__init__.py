"""The Host's schema migrations (Alembic): one revision per schema change, applied in order
when the Host starts."""

from __future__ import annotations

from alembic.config import Config
from alembic.script import ScriptDirectory


def settings() -> Config:
    """Alembic's settings for these migrations (this package is the script folder; there is
    no alembic.ini)."""
    found = Config()
    found.set_main_option("script_location", "hakuriver_host:migrations")
    return found


def newest_revision() -> str | None:
    return ScriptDirectory.from_config(settings()).get_current_head()
