"""Schema migrations: the newest revision is exactly the models' schema, a database made by
an earlier Host is upgraded with its rows intact and serves them, and a migration that fails
leaves the database as it was."""

from __future__ import annotations

import io
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from alembic import command as alembic_command
from alembic.autogenerate import compare_metadata
from alembic.operations import Operations
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.exc import NoInspectionAvailable
from sqlmodel import SQLModel

from hakuriver_common.credentials import write_secret
from hakuriver_common.proto.hakuriver.v1 import (
    node_service_pb2 as node_pb,
    task_pb2,
    task_service_pb2 as task_pb,
)
from hakuriver_host import migrations
from hakuriver_host.store import DatabaseError, Store
from tests.unit.conftest import MakeCluster

DATA = Path(__file__).parent / "data"


def _head() -> str:
    head = ScriptDirectory.from_config(migrations.settings()).get_current_head()
    assert head is not None
    return head


def _differences(store: Store) -> list[Any]:
    """What autogenerate would still write: empty when the database is the models' schema."""
    with store.engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        return list(compare_metadata(context, SQLModel.metadata))


def _revision(path: Path) -> list[str]:
    with sqlite3.connect(path) as conn:
        return [row[0] for row in conn.execute("SELECT version_num FROM alembic_version")]


def _tables(path: Path) -> set[str]:
    with sqlite3.connect(path) as conn:
        rows = conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        return {row[0] for row in rows}


def test_the_newest_revision_read_without_alembic_is_alembics_head() -> None:
    """The Host learns whether its database is current from the revision files' text, so
    that a start on a current database does not load Alembic: the two must agree."""
    assert migrations.newest_revision() == _head()


def test_fresh_database_is_the_models_schema(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'host.db'}")
    try:
        store.migrate()
        store.migrate()  # a second start changes nothing
        assert _differences(store) == []
    finally:
        store.close()
    assert _revision(tmp_path / "host.db") == [_head()]


def test_every_revision_upgrades_to_the_models_schema(tmp_path: Path) -> None:
    """A database left at any revision reaches the models' schema: a model changed without a
    revision of its own fails here."""
    revisions = [
        script.revision
        for script in ScriptDirectory.from_config(migrations.settings()).walk_revisions()
    ]
    for revision in revisions:
        path = tmp_path / f"at-{revision}.db"
        store = Store(f"sqlite:///{path}")
        try:
            with store.engine.begin() as connection:
                settings = migrations.settings()
                settings.attributes["connection"] = connection
                alembic_command.upgrade(settings, revision)
            store.migrate()
            assert _differences(store) == [], revision
        finally:
            store.close()


def test_task_indexes_changed_by_hand_do_not_stop_a_start(tmp_path: Path) -> None:
    """0004 replaces the task indexes: one an operator dropped, or made already, is no
    reason for a Host not to start."""
    path = tmp_path / "host.db"
    store = Store(f"sqlite:///{path}")
    try:
        with store.engine.begin() as connection:
            settings = migrations.settings()
            settings.attributes["connection"] = connection
            alembic_command.upgrade(settings, "0003")
        with sqlite3.connect(path) as conn:
            conn.execute("DROP INDEX ix_tasks_status")
            conn.execute("CREATE INDEX ix_tasks_owner_task_id ON tasks (owner, task_id)")
        store.migrate()
        assert _differences(store) == []
    finally:
        store.close()
    assert _revision(path) == [_head()]


@pytest.mark.parametrize("made_by", ["47b3a11", "bc64c5e"])
async def test_database_of_an_earlier_host_is_upgraded_and_served(
    made_by: str, tmp_path: Path, make_local_cluster: MakeCluster
) -> None:
    """47b3a11: before job arrays (two columns fewer, indexes in another order); bc64c5e: the
    last Host before migrations."""
    path = tmp_path / "cluster-0" / "host.db"
    path.parent.mkdir()
    with sqlite3.connect(path) as conn:
        conn.executescript((DATA / f"host-db-{made_by}.sql").read_text())
    write_secret(path.parent / "credentials", "hkr_migration-fixture-admin")

    cluster = await make_local_cluster()

    assert _revision(path) == [_head()]
    store = Store(f"sqlite:///{path}")
    try:
        assert _differences(store) == []
    finally:
        store.close()
    done = await cluster.tasks.GetTask(task_pb.GetTaskRequest(task_id=42))
    assert (done.task.status, done.task.exit_code, done.task.owner) == (
        task_pb2.TASK_STATUS_COMPLETED,
        0,
        "alice",
    )
    assert list(done.task.arguments) == ["hello"]
    waiting = await cluster.tasks.GetTask(task_pb.GetTaskRequest(task_id=43))
    assert (waiting.task.status, waiting.task.priority) == (task_pb2.TASK_STATUS_PENDING, 5)
    nodes = await cluster.nodes.ListNodes(node_pb.ListNodesRequest())
    assert [(n.hostname, n.draining) for n in nodes.nodes] == [("n1", True)]


def test_failed_migration_leaves_the_database_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE tasks (task_id BIGINT PRIMARY KEY, status VARCHAR NOT NULL)")
        conn.execute("INSERT INTO tasks VALUES (1, 'mine')")
    store = Store(f"sqlite:///{path}")
    try:
        with pytest.raises(
            DatabaseError, match=r"tasks lacks column command.*not made by HakuRiver"
        ):
            store.migrate()
    finally:
        store.close()
    assert _tables(path) == {"tasks"}
    with sqlite3.connect(path) as conn:
        assert [row[1] for row in conn.execute("PRAGMA table_info(tasks)")] == [
            "task_id",
            "status",
        ]
        assert conn.execute("SELECT * FROM tasks").fetchall() == [(1, "mine")]


def test_a_start_logs_each_migration_on_one_line_and_nothing_else_of_alembic(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A revision whose first paragraph spans lines was logged over five lines, and every
    start logged "Will assume non-transactional DDL.", though the Host runs the migrations
    in one transaction (operations.md)."""
    caplog.set_level(logging.INFO, logger="alembic")
    store = Store(f"sqlite:///{tmp_path / 'host.db'}")
    try:
        store.migrate()
        ran = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
        caplog.clear()
        store.migrate()  # nothing to do: nothing said
        again = [r.getMessage() for r in caplog.records if r.name.startswith("alembic")]
    finally:
        store.close()
    revisions = list(ScriptDirectory.from_config(migrations.settings()).walk_revisions())
    assert len(ran) == len(revisions)
    assert all(m.startswith("Running upgrade ") and "\n" not in m for m in ran)
    assert again == []


def test_every_time_a_revision_adds_is_a_timestamptz_on_postgresql() -> None:
    """Times are aware UTC, stored as timestamptz on PostgreSQL (0001's convention): 0006's
    submit_requests.created_at was a timestamp without time zone, which PostgreSQL fills
    with the session's local time. Each revision's DDL for PostgreSQL, as Alembic writes
    it offline (a revision that reads the database first is left out)."""
    checked = []
    for revision in reversed(
        list(ScriptDirectory.from_config(migrations.settings()).walk_revisions())
    ):
        written = io.StringIO()
        opts = {"as_sql": True, "output_buffer": written}
        context = MigrationContext.configure(dialect_name="postgresql", opts=opts)
        try:
            with Operations.context(context):
                revision.module.upgrade()
        except NoInspectionAvailable:
            continue
        times = [line.strip() for line in written.getvalue().splitlines() if "TIMESTAMP" in line]
        checked += [(revision.revision, line) for line in times]
    assert checked, "no revision adds a time column"
    assert [c for c in checked if "WITH TIME ZONE" not in c[1]] == []
