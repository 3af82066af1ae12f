"""The database adapter: an older database gains new columns on start, rows intact; new
tasks are committed ahead of changes queued before them; changes keep their order per key
and share transactions fairly between keys."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import threading
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from sqlalchemy import event
from sqlalchemy.exc import IntegrityError, OperationalError

from hakuriver_host.models import TASK_FIELDS, Task, TaskRecord, field_values
from hakuriver_host.store import (
    DATABASE_FULL,
    DATABASE_LOCKED,
    WRITE_BATCH,
    Store,
    TaskWrite,
    database_unavailable,
    log_refusal,
)


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


def _recording_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[Store, list[list[str]], threading.Event, threading.Event]:
    """A store whose transactions record the names of their rows; the first one is held
    until ``release`` is set (``first_started`` tells it began)."""
    applied: list[list[str]] = []
    first_started, release = threading.Event(), threading.Event()

    def record(store: Store, writes: list[TaskWrite]) -> None:
        if not applied:
            first_started.set()
            release.wait(10)
        applied.append([row["name"] for w in writes for row in (*w.inserts, *w.updates)])

    monkeypatch.setattr(Store, "_apply", record)
    return Store(f"sqlite:///{tmp_path / 'db.sqlite'}"), applied, first_started, release


async def test_new_tasks_are_committed_ahead_of_changes_queued_before(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """While one transaction is written, a submission waits for it alone, not for the
    changes queued behind it (a job array's thousands of placements)."""
    store, applied, first_started, release = _recording_store(tmp_path, monkeypatch)
    try:
        being_written = store.queue_write("n1", [{"name": "change 1"}], [])
        await asyncio.to_thread(first_started.wait, 10)
        queued = store.queue_write("n1", [{"name": "change 2"}], [])
        submitted = asyncio.create_task(
            store.insert_tasks(TaskWrite([{"name": "new task"}], [], []))
        )
        await asyncio.sleep(0.05)
        release.set()
        await asyncio.wait_for(asyncio.gather(being_written, queued, submitted), 10)
    finally:
        store.close()
    assert applied == [["change 1"], ["new task"], ["change 2"]]


async def test_a_lone_change_waits_for_one_transaction_not_another_nodes_thousands(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A job array's placements on one node are queued; a change on another node queued
    after them goes in the next transaction, and transactions stay bounded."""
    store, applied, first_started, release = _recording_store(tmp_path, monkeypatch)
    try:
        being_written = store.queue_write("busy", [{"name": "busy 0"}], [])
        await asyncio.to_thread(first_started.wait, 10)
        queued = [store.queue_write("busy", [{"name": f"busy {i}"}], []) for i in range(1, 3000)]
        lone = store.queue_write("lone", [{"name": "lone"}], [])
        release.set()
        await asyncio.wait_for(asyncio.gather(being_written, *queued, lone), 10)
    finally:
        store.close()
    assert applied[0] == ["busy 0"]
    assert "lone" in applied[1]
    assert max(len(names) for names in applied) <= WRITE_BATCH
    assert [n for names in applied for n in names if n != "lone"] == [
        f"busy {i}" for i in range(3000)
    ]


async def test_changes_keep_their_order_per_key(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever the mix of keys and when they come, each key's changes are committed in
    the order they were queued, every one exactly once."""
    store, applied, _, release = _recording_store(tmp_path, monkeypatch)
    release.set()
    rng = random.Random(14)
    keys = [f"node-{k}" for k in range(40)] + list(range(1, 20))
    sent: dict[object, list[str]] = {}
    futures = []
    try:
        for i in range(5000):
            key = rng.choice(keys[: rng.randint(1, len(keys))])
            name = f"{key}/{i}"
            sent.setdefault(key, []).append(name)
            futures.append(store.queue_write(key, [{"name": name}], []))
            if rng.random() < 0.01:
                await asyncio.sleep(0.001)
        await asyncio.wait_for(asyncio.gather(*futures), 30)
    finally:
        store.close()
    committed = [name for names in applied for name in names]
    assert sorted(committed) == sorted(n for names in sent.values() for n in names)
    for key, names in sent.items():
        assert [n for n in committed if n.split("/")[0] == str(key)] == names


async def test_a_steady_trickle_of_lone_changes_does_not_hold_back_the_rest(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Batches of keys with few changes and of the rest take turns: a node changing one task
    after another never starves a node with thousands queued."""
    store, applied, _, release = _recording_store(tmp_path, monkeypatch)
    release.set()
    busy_count = 3000
    try:
        busy = [store.queue_write("busy", [{"name": f"busy {i}"}], []) for i in range(busy_count)]
        lone = 0
        while not all(future.done() for future in busy) and lone < 10 * busy_count:
            await store.queue_write("lone", [{"name": f"lone {lone}"}], [])
            lone += 1
        await asyncio.wait_for(asyncio.gather(*busy), 10)
    finally:
        store.close()
    with_busy = [names for names in applied if any(n.startswith("busy") for n in names)]
    assert len(with_busy) == -(-busy_count // WRITE_BATCH)
    assert len(applied) <= 2 * len(with_busy) + 1


async def test_a_call_queued_for_the_store_is_carried_out_when_its_caller_is_cancelled(
    tmp_path: Path,
) -> None:
    """A stopping Host cancels its background work; what it had asked of the store (a
    forgotten node's delete) is still done, however long the store's queue."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    busy, done = threading.Event(), []
    try:
        store.migrate()
        blocker = asyncio.create_task(store.run(busy.wait, 10))
        asking = asyncio.create_task(store.run(done.append, "deleted"))
        await asyncio.sleep(0.05)  # both handed to the store's thread, the second queued
        asking.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asking
        busy.set()
        await blocker
    finally:
        store.close()  # waits for the thread's queue
    assert done == ["deleted"]


async def test_new_tasks_prepared_on_another_thread_are_stored_like_the_rest(
    tmp_path: Path,
) -> None:
    """A job array's rows are made driver parameters off the store's thread; committed in
    one transaction with a plain submission, both read back whole."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        await store.run(store.migrate)
        now = datetime(2026, 12, 4, 22, 0, tzinfo=UTC)

        def record(task_id: int) -> TaskRecord:
            return TaskRecord(
                task_id=task_id,
                command="echo",
                arguments=[str(task_id)],
                env={"I": str(task_id)},
                status="pending",
                container_name="base",
                submitted_at=now,
                array_index=task_id,
            )

        def event(task_id: int) -> dict[str, object]:
            return {"task_id": task_id, "status": "pending", "at": now, "detail": "new"}

        array = [record(i) for i in range(1, 301)]
        # Read off the records' own values by field, as a job array's are.
        prepared = await asyncio.to_thread(
            store.prepare_new_tasks,
            [field_values(r) for r in array],
            [event(r.task_id) for r in array],
            TASK_FIELDS,
        )
        assert not prepared.inserts and prepared.prepared
        await asyncio.gather(
            store.insert_tasks(prepared),
            store.insert_tasks(TaskWrite([record(999).model_dump()], [], [event(999)])),
        )
        for task_id in (1, 300, 999):
            task, events = await store.run(store.get_task, task_id)
            assert task is not None and task.model_dump() == record(task_id).model_dump()
            assert [(e.status, e.detail) for e in events] == [("pending", "new")]
    finally:
        store.close()


async def test_active_tasks_load_back_as_plain_tasks_with_every_field(tmp_path: Path) -> None:
    """What a restarted Host holds in memory: plain ``Task`` objects (not table rows, whose
    every attribute read goes through SQLAlchemy), each field as stored."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        await store.run(store.migrate)
        at = datetime(2026, 12, 5, 5, 0, tzinfo=UTC)
        running = TaskRecord(
            task_id=7,
            kind="vps",
            batch_id=3,
            command="sleep",
            arguments=["9"],
            env={"A": "1"},
            status="running",
            assigned_node="n1",
            required_cores=2,
            required_memory_bytes=2**33,
            required_gpus=[1],
            target_numa_node_id=0,
            container_name="base",
            mounts=[{"host_path": "/d", "container_path": "/d", "read_only": True}],
            submitted_at=at,
            started_at=at,
            assigned_cpus=[2, 3],
            owner="alice",
            array_index=4,
        )
        done = TaskRecord(task_id=8, command="true", status="completed", container_name="b")
        rows = [running.model_dump(), done.model_dump()]
        await store.insert_tasks(TaskWrite(rows, [], []))
        loaded = await store.run(store.load_tasks_in, ["running"])
        assert [type(task) for task in loaded] == [Task]
        assert loaded[0].model_dump() == running.model_dump()
        assert set(vars(loaded[0])) == set(TASK_FIELDS)
    finally:
        store.close()


async def test_a_read_sees_one_snapshot_though_a_write_commits_between_its_queries(
    tmp_path: Path,
) -> None:
    """Reads run on a thread of their own, beside the writes: CountTasks' stored counts and
    its check of which tasks in memory are stored ended are one read. A task's end committed
    between the two was counted neither as stored (the counts before it) nor as in memory
    (it was found ended)."""
    path = tmp_path / "db.sqlite"
    store = Store(f"sqlite:///{path}")
    other = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
    ended_between: list[bool] = []

    def end_task_after_first_query(_c: object, _cur: object, statement: str, *_: object) -> None:
        if statement.startswith("SELECT") and not ended_between:
            ended_between.append(True)
            other.execute("UPDATE tasks SET status = 'completed' WHERE task_id = 8")

    try:
        await store.run(store.migrate)
        running = TaskRecord(task_id=8, command="true", status="running", container_name="b")
        await store.insert_tasks(TaskWrite([running.model_dump()], [], []))
        event.listen(store.reader, "after_cursor_execute", end_task_after_first_query)
        counts, ended = await store.read(store.count_ended, ["completed"], None, "", None, [8])
    finally:
        other.close()
        store.close()
    assert ended_between
    assert (counts, ended) == ({}, set())


async def test_transactions_stay_bounded_with_thousands_of_nodes_each_with_a_change(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Nodes with a change or two go ahead of a busy one, in transactions of bounded size
    however many such nodes there are."""
    store, applied, first_started, release = _recording_store(tmp_path, monkeypatch)
    try:
        being_written = store.queue_write("busy", [{"name": "busy 0"}], [])
        await asyncio.to_thread(first_started.wait, 10)
        busy = [store.queue_write("busy", [{"name": f"busy {i}"}], []) for i in range(1, 1000)]
        lone = [store.queue_write(f"node-{i}", [{"name": f"node-{i}"}], []) for i in range(3000)]
        release.set()
        await asyncio.wait_for(asyncio.gather(being_written, *busy, *lone), 10)
    finally:
        store.close()
    assert max(len(names) for names in applied) <= WRITE_BATCH
    assert all(n.startswith("node-") for n in applied[1])
    assert sorted(n for names in applied for n in names) == sorted(
        [f"busy {i}" for i in range(1000)] + [f"node-{i}" for i in range(3000)]
    )


async def test_transactions_are_bounded_by_rows_not_by_writes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Runner's message of reports is one write of many rows: transactions count rows
    (one bigger than the bound goes alone), and a write of many rows is no lone change
    going ahead of the rest."""
    store, applied, first_started, release = _recording_store(tmp_path, monkeypatch)

    def rows(prefix: str, count: int) -> list[dict[str, str]]:
        return [{"name": f"{prefix} {i}"} for i in range(count)]

    try:
        being_written = store.queue_write("busy", rows("first", 1), [])
        await asyncio.to_thread(first_started.wait, 10)
        big = [store.queue_write("busy", rows(f"big{n}", 100), []) for n in range(6)]
        huge = store.queue_write("other", rows("huge", WRITE_BATCH + 50), [])
        lone = store.queue_write("lone", rows("lone", 1), [])
        release.set()
        await asyncio.wait_for(asyncio.gather(being_written, *big, huge, lone), 10)
    finally:
        store.close()
    assert applied[1] == ["lone 0"]
    assert all(len(names) <= WRITE_BATCH for names in applied if "huge 0" not in names)
    assert [names for names in applied if "huge 0" in names] == [
        [f"huge {i}" for i in range(WRITE_BATCH + 50)]
    ]
    assert [len(names) for names in applied if names[0].startswith("big")] == [200, 200, 200]


async def test_a_thousand_submissions_with_request_ids_are_stored_in_one_transaction(
    tmp_path: Path,
) -> None:
    """The request_id rows of a transaction's submissions replaced their earlier rows with
    one DELETE holding an OR term per row: at ~1,000 submissions in one transaction SQLite
    refused it ('Expression tree is too large'), failing every submission in it (review)."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        await store.run(store.migrate)
        at = datetime.now(UTC)
        rows = tuple(
            {
                "owner": "alice",
                "request_id": f"r{i}",
                "digest": "d",
                "batch_id": 0,
                "task_id": i,
                "created": 1,
                "created_at": at,
            }
            for i in range(1, 1201)
        )
        for _ in range(2):  # the second time, each replaces its own earlier row
            await store.insert_tasks(TaskWrite([], [], [], requests=rows))
        with sqlite3.connect(tmp_path / "db.sqlite") as db:
            assert db.execute("SELECT count(*) FROM submit_requests").fetchone() == (1200,)
    finally:
        store.close()


def test_a_postgresql_server_whose_disk_is_full_is_the_database_away_for_now() -> None:
    """SQLite's full disk held the Host's changes until there was room, but PostgreSQL's
    (SQLSTATE 53100) was taken for a bug: INTERNAL, and a task's end reported meanwhile
    dropped (review). Both are the database unavailable for now."""
    full = psycopg.errors.DiskFull("could not extend file: No space left on device")
    refused = OperationalError("INSERT INTO tasks ...", {}, full)
    assert database_unavailable(refused) == DATABASE_FULL
    other = psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")
    assert database_unavailable(IntegrityError("INSERT INTO tasks ...", {}, other)) is None


def test_a_refusal_is_one_line_when_the_database_is_away_else_a_traceback(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The Host's periodic work written to the store (the runner check, a node's row, the
    hourly forgetting, the audit log) said so in four ways of its own (review): one
    function says it, in the work's words: a WARNING line ending with why for the database
    away, the same words at ERROR with the traceback for anything else."""
    log = logging.getLogger("hakuriver_host.test_refusal")
    busy = sqlite3.OperationalError("database is locked")
    locked = OperationalError("UPDATE nodes ...", {}, busy)
    assert log_refusal(log, locked, "runner %s: its row is stored later", "a") == DATABASE_LOCKED
    bug = ValueError("no such column")
    assert log_refusal(log, bug, "runner %s: its row is stored later", "a") is None
    assert [(r.levelno, r.getMessage(), r.exc_info is not None) for r in caplog.records] == [
        (logging.WARNING, f"runner a: its row is stored later: {DATABASE_LOCKED}", False),
        (logging.ERROR, "runner a: its row is stored later", True),
    ]
