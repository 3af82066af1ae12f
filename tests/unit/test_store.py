"""The database adapter: an older database gains new columns on start, rows intact; new
tasks are committed ahead of changes queued before them."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

import pytest

from hakuriver_host.store import Store, TaskWrite


def test_old_database_is_upgraded_additively(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as conn:
        # The tasks and nodes tables as the first release created them.
        conn.execute(
            "CREATE TABLE tasks (task_id BIGINT PRIMARY KEY, kind VARCHAR NOT NULL, "
            "batch_id BIGINT NOT NULL, command VARCHAR NOT NULL, arguments JSON, env JSON, "
            "status VARCHAR NOT NULL, assigned_node VARCHAR, target_hostname VARCHAR, "
            "required_cores INTEGER NOT NULL, required_memory_bytes BIGINT NOT NULL, "
            "required_gpus JSON, target_numa_node_id INTEGER, container_name VARCHAR NOT NULL, "
            "privileged BOOLEAN NOT NULL, mounts JSON, priority INTEGER NOT NULL, "
            "submitted_at DATETIME NOT NULL, started_at DATETIME, completed_at DATETIME, "
            "exit_code INTEGER, error_message VARCHAR NOT NULL, ssh_port INTEGER NOT NULL, "
            "stdout_path VARCHAR NOT NULL, stderr_path VARCHAR NOT NULL, "
            "kill_requested BOOLEAN NOT NULL)"
        )
        conn.execute(
            "INSERT INTO tasks VALUES (42, 'command', 0, 'true', '[]', '{}', 'completed', "
            "'n1', NULL, 1, 0, '[]', NULL, 'base', 0, '[]', 0, '2026-01-01 00:00:00', NULL, "
            "NULL, 0, '', 0, '', '', 0)"
        )
        conn.execute(
            "CREATE TABLE nodes (hostname VARCHAR PRIMARY KEY, total_cores INTEGER NOT NULL, "
            "total_memory_bytes BIGINT NOT NULL, numa_nodes JSON, gpus JSON, "
            "registered_at DATETIME NOT NULL, last_heartbeat DATETIME)"
        )
    store = Store(f"sqlite:///{path}")
    try:
        store.migrate()
        store.migrate()  # idempotent
        task, events = store.get_task(42)
        assert task is not None and task.status == "completed" and events == []
        assert task.gpu_count == 0
        assert not task.assigned_cpus
        asyncio.run(
            store.save_node(
                {"hostname": "n1", "total_cores": 2, "total_memory_bytes": 1, "draining": True}
            )
        )
        assert [n.draining for n in store.load_nodes()] == [True]
    finally:
        store.close()
    with sqlite3.connect(path) as conn:
        columns = {row[1] for row in conn.execute("PRAGMA table_info(tasks)")}
    assert {"gpu_count", "assigned_cpus"} <= columns


async def test_new_tasks_are_committed_ahead_of_changes_queued_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one transaction is written, a submission waits for it alone, not for the
    changes queued behind it (a job array's thousands of placements)."""
    applied: list[list[str]] = []
    first_started, release = threading.Event(), threading.Event()

    def record(store: Store, writes: list[TaskWrite]) -> None:
        names = [row["name"] for w in writes for row in (*w.inserts, *w.updates)]
        if not applied:
            first_started.set()
            release.wait(10)
        applied.append(names)

    monkeypatch.setattr(Store, "_apply", record)
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        being_written = store.queue_write([{"name": "change 1"}], [])
        await asyncio.to_thread(first_started.wait, 10)
        queued = store.queue_write([{"name": "change 2"}], [])
        submitted = asyncio.create_task(store.insert_tasks([{"name": "new task"}], []))
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(asyncio.gather(being_written, queued, submitted), 10)
    finally:
        store.close()
    assert applied == [["change 1"], ["new task"], ["change 2"]]
