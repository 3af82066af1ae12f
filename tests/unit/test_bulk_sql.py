"""Rows written through the driver's executemany (bulk_sql) read back as SQLAlchemy wrote
them: JSON, timezone-aware times, None, booleans; updates change only the columns given."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import event
from sqlmodel import Session, select

from hakuriver_host.bulk_sql import BulkStatements
from hakuriver_host.models import TaskEventRecord, TaskRecord, assign
from hakuriver_host.store import Store

NOW = datetime(2026, 12, 4, 21, 0, 0, 123456, tzinfo=UTC)


def _task(task_id: int, **fields: object) -> TaskRecord:
    return TaskRecord(
        task_id=task_id,
        command="echo",
        arguments=["a b", "ü"],
        env={"K": "v"},
        status="pending",
        container_name="base",
        submitted_at=NOW,
        mounts=[{"source": "/s", "target": "/t", "read_only": True}],
        **fields,  # type: ignore[arg-type]
    )


def test_bulk_rows_read_back_as_the_orm_writes_them(tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        store.migrate()
        by_orm = _task(1, array_index=3, target_numa_node_id=None)
        bulk = _task(2, array_index=3, target_numa_node_id=None)
        with Session(store.engine) as session:
            session.add(by_orm)
            session.commit()
        tasks = BulkStatements(TaskRecord.__table__, store.engine.dialect)  # type: ignore[attr-defined]
        events = BulkStatements(TaskEventRecord.__table__, store.engine.dialect)  # type: ignore[attr-defined]
        with store.engine.begin() as connection:
            tasks.insert(connection, [bulk.model_dump()])
            events.insert(
                connection, [{"task_id": 2, "status": "pending", "at": NOW, "detail": "x"}]
            )
        later = NOW + timedelta(seconds=5)
        with store.engine.begin() as connection:
            tasks.update(
                connection,
                [{"task_id": 2, "status": "running", "started_at": later, "assigned_cpus": [0, 1]}],
            )
        with Session(store.engine) as session:
            one = session.get(TaskRecord, 1)
            two = session.get(TaskRecord, 2)
            (event,) = session.exec(select(TaskEventRecord)).all()
        assert one is not None and two is not None
        expected = one.model_dump() | {
            "task_id": 2,
            "status": "running",
            "started_at": later,
            "assigned_cpus": [0, 1],
        }
        assert two.model_dump() == expected
        assert two.started_at is not None and two.started_at.tzinfo is not None
        assert (event.task_id, event.status, event.at, event.detail) == (2, "pending", NOW, "x")
    finally:
        store.close()


def test_assign_sets_fields_of_a_task_in_memory_and_refuses_unknown_ones() -> None:
    task = TaskRecord(task_id=1, command="true", status="pending", submitted_at=NOW)
    assign(task, {"status": "running", "exit_code": 3})
    assert (task.status, task.exit_code) == ("running", 3)
    assert task.model_copy().status == "running"
    assert task.model_dump()["exit_code"] == 3
    with pytest.raises(AttributeError, match=r"\['statu'\]"):
        assign(task, {"statu": "killed", "exit_code": 4})
    assert (task.status, task.exit_code) == ("running", 3)


def test_many_rows_go_to_sqlite_in_a_few_multi_row_statements(tmp_path: Path) -> None:
    """Python's sqlite3 lets go of the GIL for each row of an executemany, which a busy
    event loop turns into a convoy: SQLite gets hundreds of rows per statement instead,
    inserts and updates alike, and every row lands as it would one at a time."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        store.migrate()
        n = 1201
        tasks = BulkStatements(TaskRecord.__table__, store.engine.dialect)  # type: ignore[attr-defined]
        rows = [_task(i, array_index=i).model_dump() for i in range(1, n + 1)]
        # Rows share most values (bound once a statement), but not all rows: one of them
        # differs in a column the others share.
        rows[7]["command"] = "other"
        # Two sets of columns: each row gets its own values back, not its neighbours'.
        updates = [
            {"task_id": i, "status": "running", "assigned_cpus": [i % 7]}
            if i % 2
            else {"task_id": i, "exit_code": i, "status_detail": f"d{i}"}
            for i in range(1, n + 1)
        ]
        with _statements(store) as seen:
            with store.engine.begin() as connection:
                tasks.insert(connection, rows)
            with store.engine.begin() as connection:
                tasks.update(connection, updates)
        with Session(store.engine) as session:
            stored = {t.task_id: t for t in session.exec(select(TaskRecord)).all()}
        assert sorted(stored) == list(range(1, n + 1))
        for i, task in stored.items():
            assert task.array_index == i and task.env == {"K": "v"}
            assert task.command == ("other" if i == 8 else "echo")
            if i % 2:
                assert (task.status, task.assigned_cpus, task.exit_code) == (
                    "running",
                    [i % 7],
                    None,
                )
            else:
                assert (task.status, task.exit_code, task.status_detail) == ("pending", i, f"d{i}")
        inserts = [many for kind, many, _ in seen if kind == "INSERT"]
        assert inserts and len(inserts) <= 3 and not any(inserts)
        bound = sum(values for kind, _, values in seen if kind == "INSERT")
        assert bound < n * len(rows[0]) // 4  # shared values bound once, not row by row
        updated = [many for kind, many, _ in seen if kind == "UPDATE"]
        assert updated and len(updated) <= 4 and not any(updated)
    finally:
        store.close()


def test_values_that_are_equal_but_not_alike_are_each_written_as_they_are(
    tmp_path: Path,
) -> None:
    """Values shared by every row are converted and bound once, but 1, 1.0 and True are
    equal in Python and are not written alike: each row keeps its own."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    try:
        store.migrate()
        tasks = BulkStatements(TaskRecord.__table__, store.engine.dialect)  # type: ignore[attr-defined]
        kinds: list[object] = [1, True, 1.0] * 30
        rows = []
        for i, value in enumerate(kinds, start=1):
            row = _task(i).model_dump()
            row["mounts"] = [{"source": "/s", "target": "/t", "read_only": value}]
            rows.append(row)
        with store.engine.begin() as connection:
            tasks.insert(connection, rows)
        with Session(store.engine) as session:
            stored = {t.task_id: t for t in session.exec(select(TaskRecord)).all()}
        for i, value in enumerate(kinds, start=1):
            written = stored[i].mounts[0]["read_only"]
            assert (type(written), written) == (type(value), value)
    finally:
        store.close()


@contextmanager
def _statements(store: Store) -> Iterator[list[tuple[str, bool, int]]]:
    """The statements run on the tasks table meanwhile: kind, executemany, values bound."""
    seen: list[tuple[str, bool, int]] = []

    def listen(
        _conn: object, _cursor: object, sql: str, params: Any, _c: object, many: bool
    ) -> None:
        if sql.startswith(("INSERT INTO tasks", "UPDATE tasks")):
            seen.append((sql.split(" ", 1)[0], many, len(params)))

    event.listen(store.engine, "before_cursor_execute", listen)
    try:
        yield seen
    finally:
        event.remove(store.engine, "before_cursor_execute", listen)


@pytest.mark.skipif(sqlite3.sqlite_version_info < (3, 32), reason="SQLite's bound is 999 there")
def test_rows_that_share_values_go_in_as_few_statements_as_sqlite_allows(
    tmp_path: Path,
) -> None:
    """A job array's rows differ in a few columns: each statement is a wait for the GIL on
    the store's thread while the loop is busy, so they go in statements as large as
    SQLite's bound on parameters allows, not hundreds of rows each."""
    store = Store(f"sqlite:///{tmp_path / 'db.sqlite'}")
    # SQLite's own default bound (Debian builds it with a larger one).
    event.listen(
        store.engine,
        "connect",
        lambda dbapi, _record: dbapi.setlimit(sqlite3.SQLITE_LIMIT_VARIABLE_NUMBER, 32766),
    )
    try:
        store.migrate()
        n = 12_000
        tasks = BulkStatements(TaskRecord.__table__, store.engine.dialect)  # type: ignore[attr-defined]
        template = _task(0).model_dump()
        # Five columns differ from row to row: 6,547 rows and 32,764 values a statement.
        rows = [
            template
            | {"task_id": i, "array_index": i - 1, "exit_code": i, "status_detail": f"d{i}"}
            | {"command": f"c{i}"}
            for i in range(1, n + 1)
        ]
        with _statements(store) as seen, store.engine.begin() as connection:
            tasks.insert(connection, rows)
        with Session(store.engine) as session:
            stored = {t.task_id: t for t in session.exec(select(TaskRecord)).all()}
        assert sorted(stored) == list(range(1, n + 1))
        for i, task in stored.items():
            assert (task.array_index, task.exit_code, task.status_detail, task.command) == (
                i - 1,
                i,
                f"d{i}",
                f"c{i}",
            )
            assert task.arguments == ["a b", "ü"]
        assert [(kind, many) for kind, many, _ in seen] == [("INSERT", False)] * 2
        assert 32_000 < max(bound for _, _, bound in seen) <= 32766
        # Rows that differ only from one statement's rows to the next's: each statement's
        # rows are then all alike, and listed within the bound.
        events = BulkStatements(TaskEventRecord.__table__, store.engine.dialect)  # type: ignore[attr-defined]
        alike = {"status": "pending", "at": NOW, "detail": "x"}
        with store.engine.begin() as connection:
            events.insert(connection, [alike | {"task_id": 1 + i // 11_000} for i in range(n)])
        with Session(store.engine) as session:
            written = session.exec(select(TaskEventRecord.task_id)).all()
        assert sorted(written) == [1] * 11_000 + [2] * (n - 11_000)
    finally:
        store.close()
