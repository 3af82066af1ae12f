"""Draft the next schema migration from the models: ``make migration MESSAGE="what changed"``.

A scratch SQLite database is brought to the newest revision, and Alembic's autogenerate
writes what the models add to it as ``hakuriver_host/migrations/versions/NNNN_<slug>.py``.
Read the draft before committing it: autogenerate misses renames and data changes.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

from alembic import command

from hakuriver_host import migrations
from hakuriver_host.store import Store


def main(message: str) -> None:
    settings = migrations.settings()
    number = f"{int(migrations.newest_revision() or 0) + 1:04d}"
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{Path(scratch) / 'head.db'}"
        store = Store(url)
        try:
            store.migrate()
        finally:
            store.close()
        settings.set_main_option("sqlalchemy.url", url)
        slug = re.sub(r"[^a-z0-9]+", "_", message.lower()).strip("_")[:40]
        settings.set_main_option("file_template", f"%%(rev)s_{slug}")
        command.revision(settings, message=message, autogenerate=True, rev_id=number)


if __name__ == "__main__":
    if len(sys.argv) != 2 or not sys.argv[1].strip():
        sys.exit('usage: make migration MESSAGE="what changed"')
    main(sys.argv[1])
