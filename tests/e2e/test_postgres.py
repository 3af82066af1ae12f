"""The Host on PostgreSQL through database.url: its migrations make the models' schema there,
and state survives a Host restart."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine, text
from sqlmodel import SQLModel

import hakuriver_host.models  # noqa: F401  (registers the tables on SQLModel.metadata)
from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.e2e.harness import required, running_cluster

pytestmark = pytest.mark.docker


@pytest.fixture
def postgres_url() -> Iterator[str]:
    url = os.environ.get("HAKURIVER_TEST_POSTGRES_URL")
    if not url:
        required(
            "PostgreSQL",
            "HAKURIVER_TEST_POSTGRES_URL unset (scripts/ensure-postgres.sh prints one)",
        )
    engine = create_engine(url)
    SQLModel.metadata.drop_all(engine)
    with engine.begin() as connection:
        connection.execute(text("DROP TABLE IF EXISTS alembic_version"))
    engine.dispose()
    yield url


def test_host_state_lives_in_postgresql(
    docker_ready: None, postgres_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HAKURIVER_DATABASE__URL", postgres_url)
    with running_cluster(tmp_path) as cluster:
        task = cluster.submit(["sh", "-c", "echo stored in postgres"])
        final = cluster.wait_final(task.task_id)
        assert final.status == task_pb2.TASK_STATUS_COMPLETED
        cluster.kill_host()
        cluster.start_host()
        assert cluster.get(task.task_id) == final
        assert cluster.read_log(task.task_id) == b"stored in postgres\n"
    assert not (tmp_path / "host.db").exists()
    dsn = postgres_url.replace("postgresql+psycopg://", "postgresql://")
    with psycopg.connect(dsn) as conn:
        row = conn.execute(
            "SELECT status FROM tasks WHERE task_id = %s", (task.task_id,)
        ).fetchone()
        events = conn.execute(
            "SELECT count(*) FROM task_events WHERE task_id = %s", (task.task_id,)
        ).fetchone()
    assert row == ("completed",)
    assert events == (4,)
    engine = create_engine(postgres_url)
    with engine.connect() as connection:
        context = MigrationContext.configure(connection, opts={"compare_type": True})
        assert compare_metadata(context, SQLModel.metadata) == []
    engine.dispose()
