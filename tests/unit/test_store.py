"""The database adapter: an older database gains new columns on start, rows intact."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from hakuriver_host.store import Store


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
        store.create_schema()
        store.create_schema()  # idempotent
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
