"""The Host on PostgreSQL through database.url: its migrations make the models' schema there,
and state survives a Host restart."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
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
from tests.e2e.harness import free_port, required, running_cluster, wait_for

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


class OwnPostgres:
    """A PostgreSQL server of the test's own (Debian's initdb and pg_ctl, as the postgres
    user when the test runs as root), on a loopback port: one it may stop and start."""

    def __init__(self, root: Path) -> None:
        found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
        if not found:
            required("PostgreSQL's server programs", "no /usr/lib/postgresql/*/bin/pg_ctl")
        self.bin = found[-1].parent
        self.root = root
        self.data = root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:  # initdb refuses root
            self.as_user = ["runuser", "-u", "postgres", "--"]
            shutil.chown(root, "postgres")
        self._run("initdb", "-D", str(self.data), "-A", "trust", "-U", "hakuriver")
        self.start()
        self._run("createdb", "-h", "127.0.0.1", "-p", str(self.port), "-U", "hakuriver", "hr")
        self.url = f"postgresql+psycopg://hakuriver@127.0.0.1:{self.port}/hr"
        self.shown = self.url  # no password in it to hide

    def _run(self, program: str, *args: str) -> None:
        subprocess.run(
            [*self.as_user, str(self.bin / program), *args],
            check=True,
            capture_output=True,
            timeout=120,
        )

    def start(self) -> None:
        options = f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1"
        log = str(self.root / "server.log")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", log, "-w", "start")

    def stop(self) -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "stop")

    def status_of(self, task_id: int) -> str:
        """The task's status as stored."""
        with psycopg.connect(self._dsn()) as conn:
            row = conn.execute("SELECT status FROM tasks WHERE task_id = %s", (task_id,))
            found = row.fetchone()
        return str(found[0]) if found else ""

    def events_of(self, task_id: int) -> list[str]:
        """The statuses of the task's stored events, in order."""
        with psycopg.connect(self._dsn()) as conn:
            rows = conn.execute(
                "SELECT status FROM task_events WHERE task_id = %s ORDER BY id", (task_id,)
            ).fetchall()
        return [str(row[0]) for row in rows]

    def _dsn(self) -> str:
        return self.url.replace("postgresql+psycopg://", "postgresql://")

    def locked_by_a_host(self) -> bool:
        """Does a session hold the Host's advisory lock?"""
        dsn = self.url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn) as conn:
            row = conn.execute(
                "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND granted"
            ).fetchone()
        return row is not None and row[0] > 0


@pytest.fixture
def own_postgres() -> Iterator[OwnPostgres]:
    # Not under tmp_path: pytest's folders are root's only, and the server runs as postgres.
    with tempfile.TemporaryDirectory(prefix="hakuriver-postgres-") as root:
        server = OwnPostgres(Path(root))
        try:
            yield server
        finally:
            with contextlib.suppress(subprocess.CalledProcessError):
                server.stop()


def test_a_postgresql_server_that_goes_away_is_unavailable_until_it_is_back(
    docker_ready: None, own_postgres: OwnPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A call while the server was down (stopped, restarting) answered 'internal error
    # (logged on the Host) (INTERNAL)', with a traceback in the Host's log, as for a bug (QA).
    monkeypatch.setenv("HAKURIVER_DATABASE__URL", own_postgres.url)
    with running_cluster(tmp_path) as cluster:
        before = cluster.submit(["sh", "-c", "echo before"])
        assert cluster.wait_final(before.task_id).status == task_pb2.TASK_STATUS_COMPLETED
        own_postgres.stop()
        away = cluster.cli("task", "list")
        assert (away.returncode, away.stdout, away.stderr) == (
            1,
            "",
            "error: the Host's database server cannot be reached: try again once it is "
            "back (UNAVAILABLE)\n",
        )
        # A submission is sent again a few times (the server may come back), then the CLI
        # says how to send it once more without making it twice; it made no task.
        away = cluster.cli("task", "submit", "--", "echo", "while away")
        last = away.stderr.splitlines()[-1]
        assert (away.returncode, away.stdout) == (1, ""), away.stderr
        assert last.startswith(
            "error: the Host's database server cannot be reached: try again once it is "
            "back (UNAVAILABLE), 4 times: "
        ), away.stderr
        assert last.endswith("creates none twice"), away.stderr
        # The Host's check for silent Runners, which reads the database, runs meanwhile.
        wait_for(
            lambda: "runner check put off" in (tmp_path / "host.log").read_text(),
            timeout=60,
            what="a check for silent Runners while the server is away",
        )
        own_postgres.start()
        after = cluster.submit(["sh", "-c", "echo after"])
        assert cluster.wait_final(after.task_id).status == task_pb2.TASK_STATUS_COMPLETED
        listed = cluster.cli("task", "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert {t["task_id"] for t in json.loads(listed.stdout)} == {
        str(before.task_id),
        str(after.task_id),
    }
    host_log = (tmp_path / "host.log").read_text()
    assert "Traceback" not in host_log
    assert "refused: the Host's database server cannot be reached" in host_log


def test_a_task_that_ends_while_the_server_is_away_is_stored_once_it_is_back(
    docker_ready: None, own_postgres: OwnPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Its Runner's report could not be written: the task stayed running in the database
    # after the server was back, and was lost after a Host restart (QA).
    monkeypatch.setenv("HAKURIVER_DATABASE__URL", own_postgres.url)
    with running_cluster(tmp_path) as cluster:
        task, gate = cluster.gated_task("go")
        own_postgres.stop()
        gate.touch()
        wait_for(
            lambda: "changes held in memory" in (tmp_path / "host.log").read_text(),
            timeout=60,
            what="the task's end held while the server is away",
        )
        own_postgres.start()
        wait_for(
            lambda: own_postgres.status_of(task.task_id) == "completed",
            timeout=60,
            what="the task's end stored",
        )
        cluster.kill_host()
        cluster.start_host()
        final = cluster.wait_final(task.task_id)
        assert (final.status, final.exit_code) == (task_pb2.TASK_STATUS_COMPLETED, 0)
        assert cluster.read_log(task.task_id) == b"before\nafter\n"
    assert own_postgres.events_of(task.task_id) == ["pending", "assigning", "running", "completed"]
    assert "Traceback" not in (tmp_path / "host.log").read_text()


def test_a_host_takes_its_database_again_after_the_server_restarts(
    docker_ready: None, own_postgres: OwnPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A PostgreSQL restart ended the session holding the Host's advisory lock, and a second
    # Host started on the same database afterwards was not refused (QA).
    monkeypatch.setenv("HAKURIVER_DATABASE__URL", own_postgres.url)
    with running_cluster(tmp_path) as cluster:
        own_postgres.stop()
        own_postgres.start()
        wait_for(
            lambda: "the lock is taken again" in (tmp_path / "host.log").read_text(),
            what="the Host to take its lock again",
        )
        second = subprocess.run(
            _second_host(cluster.config_path), capture_output=True, text=True, timeout=60
        )
        task = cluster.submit(["sh", "-c", "echo first host"])
        assert cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    assert second.returncode == 1
    assert second.stderr.endswith(
        f"error: another Host is using the database {own_postgres.shown} (database.url): stop "
        "it first, or give this Host a database of its own\n"
    )


def test_a_host_whose_database_another_host_took_meanwhile_stops(
    docker_ready: None, own_postgres: OwnPostgres, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The first Host is frozen while the server restarts and a second Host takes the
    # database; when it wakes, the two must not both write it: the first stops, saying why.
    monkeypatch.setenv("HAKURIVER_DATABASE__URL", own_postgres.url)
    with running_cluster(tmp_path) as cluster:
        assert cluster.host is not None
        cluster.host.send_signal(signal.SIGSTOP)
        own_postgres.stop()
        own_postgres.start()
        with subprocess.Popen(
            _second_host(cluster.config_path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        ) as second:
            try:
                wait_for(lambda: own_postgres.locked_by_a_host(), what="the second Host to start")
                cluster.host.send_signal(signal.SIGCONT)
                first_exit = cluster.host.wait(timeout=60)
            finally:
                second.terminate()
                second.wait(timeout=30)
    assert first_exit == 1
    host_log = (tmp_path / "host.log").read_text()
    assert (
        f"error: another Host is using the database {own_postgres.shown} (database.url): stop "
        "it first, or give this Host a database of its own\n"
    ) in host_log
    assert "Traceback" not in host_log


def _second_host(config_path: Path) -> list[str]:
    """The command of a second Host on the same config, with ports of its own."""
    ports = [
        f"HAKURIVER_NETWORK__{key}={free_port()}"
        for key in ("HOST_PORT", "METRICS_PORT", "HOST_SSH_PROXY_PORT")
    ]
    return [
        "env",
        *ports,
        f"HAKURIVER_DASHBOARD__PORT={free_port()}",
        sys.executable,
        "-m",
        "hakuriver_host",
        "--config",
        str(config_path),
    ]
