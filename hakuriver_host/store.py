"""The database adapter: every call runs on one dedicated thread, off the event loop, but
the clients' reads, which run on a thread of their own (``read``).

One thread keeps SQLite happy. Writes are group-committed: while one transaction is being
written, the writes that arrive queue up and go together in the next one; every caller
still waits until its own write is committed. Changes to tasks are ordered per key, a
task's node (the order that matters is between a task's release of a node's cores and the
placement that reuses them), transactions are bounded, and a node with a change or two
queued goes ahead of nodes with hundreds: a lone task's change waits for the transaction
being written, not behind a job array's thousands on other nodes. SQLite runs in WAL mode with
synchronous=NORMAL: a committed write survives a crash of the Host process (power loss may
drop the last transactions). Clients' reads (a task and its events, a list, counts, the audit
log) do not wait behind the writes: while another program holds SQLite locked, each attempt
at a write holds the store's thread for SQLite's 5 s wait. A read runs in one transaction
(one snapshot, never half of a write: WAL lets it proceed while another connection writes), on
its thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import os
import secrets
from collections.abc import Callable, Hashable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, TypeVar

from sqlalchemy import (
    Table,
    and_,
    bindparam,
    delete,
    event,
    func,
    literal_column,
    or_,
    select as sql_select,
)
from sqlalchemy.dialects.postgresql import insert as postgresql_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, OperationalError
from sqlmodel import Session, col, create_engine, select

from hakuriver_common.config import DatabaseConfig
from hakuriver_common.folders import make_folder
from hakuriver_common.locks import LockHeld, hold_lock
from hakuriver_common.statuses import ACTIVE_STATUSES, FINAL_STATUSES, TaskStatus
from hakuriver_host import migrations
from hakuriver_host.bulk_sql import BulkStatements, Prepared
from hakuriver_host.group_commit import GroupCommit
from hakuriver_host.models import (
    BatchHoldRecord,
    ClusterRecord,
    EndedTask,
    NodeRecord,
    SubmitRequestRecord,
    Task,
    TaskEventRecord,
    TaskRecord,
    in_memory,
    request_ids_since,
    utcnow,
)

T = TypeVar("T")
# Task rows changed per transaction, at most (a write bigger than that goes alone): bounds
# how long a node's change waits behind another node's (see group_commit), at little cost
# to a job array's throughput.
WRITE_BATCH = 256
# How long a SQLite write waits for a lock another program holds: the setting's default.
BUSY_TIMEOUT_SECONDS: float = DatabaseConfig.model_fields["busy_timeout_seconds"].default


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def _snapshot_reads(engine: Engine) -> Engine:
    """The engine of the clients' reads (``Store.read``), on the same pool: each session one
    snapshot, its several queries reading the same commits (a read on its own thread may
    otherwise see a write committed between two of them). SQLite: a deferred BEGIN, which
    Python's sqlite3 does not send before a SELECT; PostgreSQL: REPEATABLE READ."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="REPEATABLE READ")
    reads = engine.execution_options()
    if engine.dialect.name == "sqlite":
        event.listen(reads, "begin", lambda connection: connection.exec_driver_sql("BEGIN"))
    return reads


def _json_text(value: Any) -> str:
    """JSON columns' text; most of a task row's lists are empty, and json.dumps costs
    ~2 us each (five per row, ten thousand rows in a job array)."""
    if value == [] and isinstance(value, list):
        return "[]"
    if value == {} and isinstance(value, dict):
        return "{}"
    return json.dumps(value)


DATABASE_LOCKED = "the Host's database is locked by another program: try again once it is not"
DATABASE_UNREACHABLE = "the Host's database server cannot be reached: try again once it is back"
DATABASE_FULL = "the Host's database disk is full: try again once it has room"
DATABASE_UNWRITABLE = (
    "the Host's database file cannot be written (read-only, or a disk I/O error): "
    "try again once it can"
)
# SQLite's words for a file it cannot write now: its file system read-only or failing, the
# file made immutable; the admin's fix (a remount, a new disk) lets the held changes in.
SQLITE_UNWRITABLE = ("disk I/O error", "attempt to write a readonly database")


# PostgreSQL's SQLSTATE for a server whose disk is full.
PG_DISK_FULL = "53100"


def database_unavailable(exc: BaseException) -> str | None:
    """Why the database refused ``exc``'s statement for now, not for a bug (None: it did
    not): SQLite locked by another program past the busy timeout, or its disk full (SQLite's
    or PostgreSQL's), or its file not writable (read-only, an I/O error); a PostgreSQL
    server down, restarting, or that dropped the connection (SQLSTATE class 08 or 57P, or
    none: the driver could not connect)."""
    if not isinstance(exc, DBAPIError):
        return None
    if str(exc.orig) == "database is locked":
        return DATABASE_LOCKED
    state = getattr(exc.orig, "sqlstate", "")  # only PostgreSQL's errors have one
    if str(exc.orig) == "database or disk is full" or state == PG_DISK_FULL:
        return DATABASE_FULL
    if str(exc.orig) in SQLITE_UNWRITABLE:
        return DATABASE_UNWRITABLE
    server_gone = state is None or state.startswith(("08", "57P"))
    if exc.connection_invalidated or (isinstance(exc, OperationalError) and server_gone):
        return DATABASE_UNREACHABLE
    return None


def log_refusal(log: logging.Logger, exc: BaseException, what: str, *args: object) -> str | None:
    """Log the store's refusal of some work, ``what`` (a %-format of ``args`` saying what
    becomes of it: "runner check put off"): the database away for now
    (``database_unavailable``) is no bug, one WARNING line, ``what: why``; anything else is,
    ``what`` at ERROR with its traceback. Returns why the database is away (None: a bug)."""
    why = database_unavailable(exc)
    if why is None:
        log.error(what, *args, exc_info=exc, stacklevel=2)
    else:
        log.warning(what + ": %s", *args, why, stacklevel=2)
    return why


def _stored_among(session: Session, among: Sequence[int], statuses: Sequence[str]) -> set[int]:
    """Which of the tasks ``among`` are stored in one of ``statuses``."""
    found: set[int] = set()
    wanted = TaskRecord.status.in_(statuses)  # type: ignore[attr-defined]
    for start in range(0, len(among), 900):  # under SQLite's bound on parameters
        part = TaskRecord.task_id.in_(among[start : start + 900])  # type: ignore[attr-defined]
        found.update(session.exec(select(TaskRecord.task_id).where(part, wanted)))
    return found


def _count_tasks(
    session: Session,
    statuses: Sequence[str],
    submitted_after: datetime | None,
    owner: str,
    completed_after: datetime | None,
) -> dict[tuple[str, str], int]:
    query = select(TaskRecord.status, TaskRecord.kind, func.count()).group_by(
        TaskRecord.status, TaskRecord.kind
    )
    if statuses:
        query = query.where(TaskRecord.status.in_(statuses))  # type: ignore[attr-defined]
    if submitted_after is not None:
        query = query.where(TaskRecord.submitted_at >= submitted_after)
    if owner:
        query = query.where(TaskRecord.owner == owner)
    if completed_after is not None:
        query = query.where(TaskRecord.completed_at >= completed_after)  # type: ignore[operator]
    return {(status, kind): count for status, kind, count in session.exec(query)}


def _of_submission(batch_id: int, task_id: int) -> Any:
    """A query of a submission's tasks: its batch's, or its one task."""
    if batch_id:
        return select(TaskRecord).where(TaskRecord.batch_id == batch_id)
    return select(TaskRecord).where(TaskRecord.task_id == task_id)


class DatabaseError(OSError):
    """The database cannot be opened: one line naming it and its config key (the Host
    prints it and stops), never its password."""


class DatabaseUrlError(DatabaseError):
    """database.url names no database this Host can use (not a URL, an unknown dialect, a
    driver not installed): only a change of the config fixes it, not a restart."""


# The PostgreSQL advisory lock a Host holds on its database ("hkrv" in ASCII).
HOST_LOCK_KEY = 0x686B7276


def _shown(url: str) -> str:
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return f"{parsed.database} (database.db_file)"
    return f"{parsed.render_as_string(hide_password=True)} (database.url)"


def _created_private(path: Path) -> Callable[..., None]:
    """Before each connection (the first creates the file): create a new SQLite database
    file readable and writable by the Host's user only, as SQLite would create it but 0600:
    it holds every task's command and environment variables, and whoever can write it can
    make themselves an admin. SQLite gives its -wal and -shm files the same mode. A file
    there already is left as it is; one that cannot be made is for SQLite to name."""

    def create(*_: Any) -> None:
        with contextlib.suppress(OSError):
            os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    return create


def make_engine(url: str, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> Engine:
    """The engine of ``url``; SQLite's waits ``busy_timeout`` seconds for a lock another
    program holds (database.busy_timeout_seconds)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        raise DatabaseUrlError(
            "database.url is not a SQLAlchemy URL, e.g. "
            "postgresql+psycopg://USER:PASSWORD@SERVER/DATABASE"
        ) from None
    if parsed.get_backend_name() == "sqlite":
        engine = create_engine(
            url,
            connect_args={"check_same_thread": False, "timeout": busy_timeout},
            json_serializer=_json_text,
        )
        if parsed.database and parsed.database != ":memory:":
            folder = Path(parsed.database).parent
            try:
                make_folder(folder)
            except OSError as exc:
                raise DatabaseError(
                    f"cannot open the database {_shown(url)}: cannot create {folder}: "
                    f"{exc.strerror or exc}"
                ) from None
            event.listen(engine, "do_connect", _created_private(Path(parsed.database)))
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    try:
        return create_engine(url, pool_pre_ping=True, json_serializer=_json_text)
    except (ArgumentError, ImportError) as exc:  # an unknown dialect, a driver not installed
        raise DatabaseUrlError(f"cannot use the database {_shown(url)}: {exc}") from None


def _in_use(shown: str, by: str = "") -> DatabaseError:
    return DatabaseError(
        f"another Host{by} is using the database {shown}: stop it first, or give this Host "
        "a database of its own"
    )


def _rows(writes: list[TaskWrite]) -> int:
    """A queued write's weight in a transaction: its rows changed."""
    return max(1, sum(len(w.inserts) + len(w.updates) for w in writes))


# A submission's request_id row (SubmitRequestRecord's fields), if it has one.
Requests = tuple[dict[str, Any], ...]


@dataclass(frozen=True)
class TaskWrite:
    inserts: list[dict[str, Any]]
    updates: list[dict[str, Any]]
    events: list[dict[str, Any]]
    # New tasks' rows and events already made driver parameters (``prepare_new_tasks``).
    prepared: tuple[Prepared, ...] = ()
    # The submission's request_id row (SubmitRequestRecord), stored with its tasks.
    requests: Requests = ()


class Store:
    def __init__(self, url: str, busy_timeout: float = BUSY_TIMEOUT_SECONDS) -> None:
        self.engine = make_engine(url, busy_timeout)
        self.executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="hakuriver-db")
        self.reader = _snapshot_reads(self.engine)
        # An in-memory SQLite database is one connection per thread: read on the store's.
        in_memory = (self.engine.url.database or ":memory:") == ":memory:"
        self._reads = (
            self.executor
            if in_memory and self.engine.dialect.name == "sqlite"
            else ThreadPoolExecutor(max_workers=1, thread_name_prefix="hakuriver-db-read")
        )
        # Changes to stored tasks, made in memory already: held while the database is away
        # (see GroupCommit), so that memory and database agree once it is back.
        self._writes = GroupCommit(
            self._apply,
            self.executor,
            WRITE_BATCH,
            _rows,
            holds=database_unavailable,
            taken=self.writes_taken,
        )
        # New tasks in a lane of their own, on the same thread: a submission waits for the
        # transaction being written, not for the changes queued behind it (thousands while
        # a job array runs). Safe to reorder: a task is changed only once its row is stored.
        self._submissions = GroupCommit(self._apply, self.executor, taken=self.writes_taken)
        self._node_writes = GroupCommit(self._save_nodes, self.executor, taken=self.writes_taken)
        # Told when a write went through (any of the three above, or the audit's rows):
        # what is held for the database (task changes, the audit's rows) is tried again
        # then, not after its pause.
        self._taken: list[Callable[[], None]] = [self._writes.retry_now]
        self._bulk: dict[str, BulkStatements] = {}
        self._tasks = self.bulk(TaskRecord.__table__)  # type: ignore[attr-defined]
        self._events = self.bulk(TaskEventRecord.__table__)  # type: ignore[attr-defined]
        # What holds the database for this Host (``claim``): a lock file's descriptor or
        # the PostgreSQL connection that holds the advisory lock.
        self._claim: int | Connection | None = None
        self._claim_lost = False  # the PostgreSQL session holding it ended (``keep_claim``)

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on the store's thread. Once asked, it is done even if the caller is
        cancelled meanwhile: a stopping Host cancels its background work, and a write still
        queued behind others was then dropped (a forgotten node's delete: back after a
        restart). A stopping Host waits for the thread's queue (``close``)."""
        loop = asyncio.get_running_loop()
        return await asyncio.shield(loop.run_in_executor(self.executor, fn, *args))

    async def read(self, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)``, a read through ``reader``, on the reads' thread: it never waits
        for the writes queued on the store's thread (nor they for it). What it reads is
        what is committed when it starts: a write whose caller was answered is in it."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._reads, fn, *args)

    async def insert_tasks(self, write: TaskWrite) -> None:
        """Insert new task rows with their first events; return once committed. Committed
        ahead of the changes queued before (see ``_submissions``)."""
        await self._submissions.submit([write])

    def prepare_new_tasks(
        self,
        inserts: Sequence[Mapping[str, Any]],
        events: list[dict[str, Any]],
        columns: Sequence[str] = (),
    ) -> TaskWrite:
        """New tasks' rows (``columns`` of each, when given) and first events as driver
        parameters, on the caller's thread: a job array's conversions then cost the
        store's one thread nothing, and a lone task's write waits only for the array's
        statements."""
        prepared = (
            *self._tasks.prepare("insert", inserts, columns),
            *self._events.prepare("insert", events),
        )
        return TaskWrite([], [], [], prepared)

    def queue_write(
        self,
        key: Hashable,
        updates: list[dict[str, Any]],
        events: list[dict[str, Any]],
        inserts: list[dict[str, Any]] | None = None,
        requests: Requests = (),
    ) -> asyncio.Future[None]:
        """Update existing task rows (by task_id; only the columns given), insert new ones
        and append timeline events, queued now: the writes of one ``key`` are committed in
        the order of these calls; the future is done once committed. A write without
        inserts is held while the database is unavailable (``database_unavailable``) and
        committed once it is back; one with inserts (a new task) fails then. ``requests``:
        the request_id row of the submission inserted, in the same transaction."""
        write = TaskWrite(inserts or [], updates, events, requests=requests)
        return self._writes.enqueue([write], key, keep=not inserts)

    def stop_holding(self) -> None:
        """The Host stops: writes held for the database are tried once more, then fail."""
        self._writes.stop_holding()

    def when_writes_taken(self, retry: Callable[[], None]) -> None:
        """Call ``retry`` whenever the database took a write (``writes_taken``)."""
        self._taken.append(retry)

    def writes_taken(self) -> None:
        """The database took a write: what is held for it is tried again now."""
        for retry in self._taken:
            retry()

    async def save_node(self, fields: dict[str, Any]) -> None:
        """Insert or replace a node row; return once committed (group-committed, so a
        whole cluster registering at once costs a few transactions)."""
        await self._node_writes.submit([fields])

    def _save_nodes(self, rows: list[dict[str, Any]]) -> None:
        """One upsert for the batch (an ORM merge read each row before writing it: 30% of
        the Host's CPU under 1,000 heartbeats/s). A node saved twice in the batch is saved
        as it was last; its registration time is the first one's."""
        latest = {row["hostname"]: row for row in rows}
        now = utcnow()
        with self.engine.begin() as connection:
            connection.execute(
                self._node_upsert, [{"registered_at": now, **r} for r in latest.values()]
            )

    @functools.cached_property
    def _node_upsert(self) -> Any:
        table: Table = NodeRecord.__table__  # type: ignore[attr-defined]
        insert = sqlite_insert if self.engine.dialect.name == "sqlite" else postgresql_insert
        statement = insert(table)
        kept = {"hostname", "registered_at"}
        return statement.on_conflict_do_update(
            index_elements=["hostname"],
            set_={c.name: statement.excluded[c.name] for c in table.columns if c.name not in kept},
        )

    def _apply(self, writes: list[TaskWrite]) -> None:
        """One transaction, one statement per kind. Inserts go first: a task is only ever
        updated after its insert was committed. Within a kind, order is arrival order."""
        inserts = [row for w in writes for row in w.inserts]
        # Several updates of one task in a batch merge into one row (later values win).
        merged: dict[int, dict[str, Any]] = {}
        for w in writes:
            for row in w.updates:
                merged.setdefault(row["task_id"], {}).update(row)
        events = [row for w in writes for row in w.events]
        with self.engine.begin() as connection:
            for w in writes:
                BulkStatements.execute(connection, w.prepared)
            if inserts:
                self._tasks.insert(connection, inserts)
            if merged:
                self._tasks.update(connection, list(merged.values()))
            if events:
                self._events.insert(connection, events)
            requests = [row for w in writes for row in w.requests]
            if requests:
                self._store_requests(connection, requests)

    @staticmethod
    def _store_requests(connection: Connection, rows: list[dict[str, Any]]) -> None:
        """Request_id rows of new submissions, once the expired rows are gone (a request_id
        used again after REQUEST_ID_HOURS takes its old row's place)."""
        table = SubmitRequestRecord.__table__  # type: ignore[attr-defined]
        connection.execute(delete(table).where(table.c.created_at < request_ids_since()))
        # One statement run once per row: an OR term per row made SQLite refuse a
        # transaction of ~1,000 submissions ("Expression tree is too large").
        reused = delete(table).where(
            and_(table.c.owner == bindparam("o"), table.c.request_id == bindparam("r"))
        )
        connection.execute(reused, [{"o": r["owner"], "r": r["request_id"]} for r in rows])
        connection.execute(table.insert(), rows)

    def bulk(self, table: Table) -> BulkStatements:
        """The bulk statements of one table (compiled once, kept)."""
        found = self._bulk.get(table.name)
        if found is None:
            found = self._bulk[table.name] = BulkStatements(table, self.engine.dialect)
        return found

    def close(self) -> None:
        self._reads.shutdown(wait=True)
        self.executor.shutdown(wait=True)
        claim, self._claim = self._claim, None
        if isinstance(claim, Connection):
            claim.close()
        self.engine.dispose()
        if isinstance(claim, int):
            os.close(claim)

    # Everything below runs on the store thread through ``run``.

    def _cannot_open(self, exc: DBAPIError) -> DatabaseError:
        """One line saying why the database cannot be opened."""
        reason = (str(exc.orig).strip().splitlines() or [type(exc.orig).__name__])[0]
        if reason == "database is locked":
            reason += (
                ": another program is writing to it (a sqlite3 shell with a transaction open?)"
            )
        return DatabaseError(f"cannot open the database {_shown(str(self.engine.url))}: {reason}")

    def _connect(self) -> Connection:
        """A connection, or one line saying why the database cannot be opened."""
        try:
            return self.engine.connect()
        except DBAPIError as exc:
            raise self._cannot_open(exc) from None

    def claim(self) -> None:
        """Hold the database for this Host until ``close``, or raise ``DatabaseError`` when
        another Host holds it. Two Hosts on one database (the same config, other ports)
        each load its tasks and nodes and overwrite the other's rows: the one without the
        Runners marked them offline and their tasks unknown. SQLite: an exclusive lock on
        ``DB_FILE.lock`` (the holder's pid in it); PostgreSQL: a session advisory lock."""
        url = self.engine.url
        shown = _shown(str(url))
        if self.engine.dialect.name == "sqlite":
            if url.database and url.database != ":memory:":
                path = Path(f"{url.database}.lock")
                try:
                    self._claim = hold_lock(path)
                except LockHeld as held:
                    raise _in_use(shown, held.by) from None
                except OSError as exc:
                    raise DatabaseError(
                        f"cannot open the database {shown}: cannot write {path}: {exc.strerror}"
                    ) from None
            return
        if self.engine.dialect.name != "postgresql":
            return
        connection = self._connect()
        locked = connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({HOST_LOCK_KEY})")
        if not locked.scalar():
            connection.close()
            raise _in_use(shown)
        connection.commit()
        self._claim = connection
        self._claim_lost = False

    def keep_claim(self) -> bool:
        """Does this Host still hold its database? A PostgreSQL server that restarted (or
        dropped the connection) ended the session, and its advisory lock with it: take it
        again. True when it was taken again; DatabaseError when another Host took it
        meanwhile; DBAPIError while the server is still away (ask again later)."""
        if not isinstance(self._claim, Connection):
            return False
        if not self._claim_lost:
            try:
                self._claim.exec_driver_sql("SELECT 1")
                self._claim.rollback()
                return False
            except DBAPIError:
                self._claim_lost = True
                self._claim.invalidate()
        connection = self.engine.connect()
        locked = connection.exec_driver_sql(f"SELECT pg_try_advisory_lock({HOST_LOCK_KEY})")
        if not locked.scalar():
            connection.close()
            raise _in_use(_shown(str(self.engine.url)))
        connection.commit()
        self._claim.close()
        self._claim = connection
        self._claim_lost = False
        return True

    def migrate(self) -> None:
        """Bring the schema to the newest revision (``hakuriver_host/migrations``), in one
        transaction: a failed migration leaves the database as it was."""
        database = _shown(str(self.engine.url))
        self._connect().close()  # apart from the migration, whose errors keep their traceback
        with self.engine.begin() as connection:
            if self.engine.dialect.name == "sqlite":
                # Python's sqlite3 opens a transaction only before a data change, so without
                # this each CREATE and ALTER would be committed on its own. IMMEDIATE takes
                # the write lock now: a database another program holds locked stops the Host
                # here, in one line; it started, and each write failed later as INTERNAL.
                try:
                    connection.exec_driver_sql("BEGIN IMMEDIATE")
                except DBAPIError as exc:
                    raise self._cannot_open(exc) from None
            if migrations.is_newest(connection):
                return
            newer = migrations.unknown_revisions(connection)
            if newer:
                raise DatabaseError(
                    f"cannot use the database {database}: its schema is "
                    f"revision {', '.join(newer)}, which a newer HakuRiver wrote (this one "
                    f"knows up to {migrations.newest_revision()}): run that version, or "
                    "restore the backup taken before the upgrade"
                )
            try:
                migrations.upgrade(connection)
            except migrations.NotHakuRivers as exc:
                raise DatabaseError(f"cannot use the database {database}: {exc}") from None

    def load_nodes(self) -> list[NodeRecord]:
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(select(NodeRecord)))

    def load_tasks_in(self, statuses: Sequence[str]) -> list[Task]:
        """The tasks in ``statuses``, as the plain ``Task`` the Host holds in memory."""
        with Session(self.engine, expire_on_commit=False) as session:
            query = select(TaskRecord).where(TaskRecord.status.in_(statuses))  # type: ignore[attr-defined]
            return [in_memory(record) for record in session.exec(query)]

    def count_tasks(
        self,
        statuses: Sequence[str] = (),
        submitted_after: datetime | None = None,
        owner: str = "",
        completed_after: datetime | None = None,
    ) -> dict[tuple[str, str], int]:
        """Number of tasks by (status, kind): only in ``statuses`` (all if empty),
        submitted since ``submitted_after``, of ``owner`` when given, completed since
        ``completed_after``."""
        with Session(self.reader) as session:
            return _count_tasks(session, statuses, submitted_after, owner, completed_after)

    def held_batches(self) -> set[int]:
        with Session(self.engine) as session:
            return set(session.exec(select(BatchHoldRecord.batch_id)))

    def set_held(self, batch_id: int, held: bool) -> None:
        """Hold a batch (PauseBatch) or end its hold; either is idempotent."""
        with Session(self.engine) as session:
            found = session.get(BatchHoldRecord, batch_id)
            if held and found is None:
                session.add(BatchHoldRecord(batch_id=batch_id))
            elif not held and found is not None:
                session.delete(found)
            session.commit()

    def set_draining(self, hostname: str, draining: bool) -> None:
        with Session(self.engine) as session:
            node = session.get(NodeRecord, hostname)
            if node is not None:
                node.draining = draining
                session.add(node)
                session.commit()

    def cluster_id(self) -> str:
        """The cluster's identity, made on first use (a random 16 hex digits)."""
        with Session(self.engine) as session:
            found = session.exec(select(ClusterRecord)).first()
            if found is not None:
                return found.cluster_id
            record = ClusterRecord(cluster_id=secrets.token_hex(8))
            session.add(record)
            session.commit()
            return record.cluster_id

    def node_ever_used(self, hostname: str) -> bool:
        """Is any task placed on this node kept (forgotten ones are not: ``retention``)?"""
        with Session(self.engine) as session:
            query = select(TaskRecord.task_id).where(TaskRecord.assigned_node == hostname)
            return session.exec(query.limit(1)).first() is not None

    def delete_node(self, hostname: str) -> None:
        with Session(self.engine) as session:
            node = session.get(NodeRecord, hostname)
            if node is not None:
                session.delete(node)
                session.commit()

    def unrecorded(self, task_ids: Sequence[int]) -> list[int]:
        """Those of ``task_ids`` with no row (in chunks: SQLite takes 32,766 parameters)."""
        found: set[int] = set()
        with Session(self.engine) as session:
            for at in range(0, len(task_ids), WRITE_BATCH):
                chunk = task_ids[at : at + WRITE_BATCH]
                query = select(TaskRecord.task_id).where(col(TaskRecord.task_id).in_(chunk))
                found.update(session.exec(query))
        return [task_id for task_id in task_ids if task_id not in found]

    def task_node(self, task_id: int) -> str | None:
        """The node a stored task was placed on (None: not placed, or no such task)."""
        with Session(self.reader) as session:
            query = select(TaskRecord.assigned_node).where(TaskRecord.task_id == task_id)
            return session.exec(query).first()

    def get_task(self, task_id: int) -> tuple[TaskRecord | None, list[TaskEventRecord]]:
        with Session(self.reader, expire_on_commit=False) as session:
            task = session.get(TaskRecord, task_id)
            events = list(
                session.exec(
                    select(TaskEventRecord)
                    .where(TaskEventRecord.task_id == task_id)
                    .order_by(TaskEventRecord.id)  # type: ignore[arg-type]
                )
            )
            return task, events

    def batch_summary(
        self, batch_id: int, final: Sequence[str], among: Sequence[int]
    ) -> tuple[TaskRecord | None, int, dict[str, int], set[int]]:
        """One task of a batch (None if there is none), how many it has, how many are
        stored in each of the ``final`` statuses, and which of the tasks ``among`` are."""
        with Session(self.reader, expire_on_commit=False) as session:
            of_batch = TaskRecord.batch_id == batch_id
            first = session.exec(select(TaskRecord).where(of_batch).limit(1)).first()
            if first is None:
                return None, 0, {}, set()
            size = session.exec(select(func.count()).select_from(TaskRecord).where(of_batch)).one()
            ended = TaskRecord.status.in_(final)  # type: ignore[attr-defined]
            by_status = select(TaskRecord.status, func.count()).where(of_batch, ended)
            counts = dict(session.exec(by_status.group_by(TaskRecord.status)).all())
            return first, size, counts, _stored_among(session, among, final)

    def count_ended(
        self,
        final: Sequence[str],
        submitted_after: datetime | None,
        owner: str,
        completed_after: datetime | None,
        among: Sequence[int],
    ) -> tuple[dict[tuple[str, str], int], set[int]]:
        """``count_tasks`` of the ``final`` statuses, and which of the tasks ``among`` are
        stored in one of them, read together (no write between the two)."""
        with Session(self.reader) as session:
            counts = _count_tasks(session, final, submitted_after, owner, completed_after)
            return counts, _stored_among(session, among, final)

    def ended_before(
        self, status: TaskStatus, cutoff: datetime, after: EndedTask | None, limit: int
    ) -> list[EndedTask]:
        """Up to ``limit`` tasks in the final ``status`` that ended before ``cutoff``, oldest
        first, from just after ``after`` (the last of the previous slice): a range of the
        status index, however long the history is. Tasks that ended at the same moment
        (thousands, when a job array was killed) are taken in the order of their ``key``:
        on SQLite the row id, which the index holds, so that a slice reads on from the last
        one's place in the index rather than sorting all of them again."""
        table = TaskRecord.__table__  # type: ignore[attr-defined]
        key = (
            literal_column("tasks.rowid")
            if self.engine.dialect.name == "sqlite"
            else table.c.task_id
        )
        ended = table.c.completed_at
        columns = [getattr(table.c, name) for name in EndedTask._fields[:-1]]
        query = sql_select(*columns, key).where(table.c.status == status.value, ended < cutoff)
        if after is not None:
            later = or_(ended > after.completed_at, key > after.key)
            query = query.where(ended >= after.completed_at, later)
        query = query.order_by(ended, key).limit(limit)
        with self.engine.connect() as connection:
            return [EndedTask._make(row) for row in connection.execute(query)]

    def batch_ended_before(self, batch_id: int, cutoff: datetime) -> bool:
        """Did every task of the batch end before ``cutoff``? A task not ended is looked
        for first, in the (batch_id, status) index alone: a job array that still runs is
        told at once, without reading the end time of each of its tasks."""
        record = TaskRecord
        of_batch = record.batch_id == batch_id
        active = col(record.status).in_([s.value for s in ACTIVE_STATUSES])
        ended = col(record.status).in_([s.value for s in FINAL_STATUSES])
        with Session(self.engine) as session:
            for young in (active, and_(ended, col(record.completed_at) >= cutoff)):
                query = select(record.task_id).where(of_batch, young).limit(1)
                if session.exec(query).first() is not None:
                    return False
        return True

    def count_events(self, task_ids: Sequence[int]) -> int:
        """How many events the timelines of ``task_ids`` hold (at most WRITE_BATCH ids)."""
        query = select(func.count()).where(col(TaskEventRecord.task_id).in_(task_ids))
        with Session(self.engine) as session:
            return int(session.exec(query).one())

    def delete_tasks(self, task_ids: Sequence[int], batch_ids: Sequence[int]) -> int:
        """Delete the rows of ``task_ids`` (at most WRITE_BATCH) and their events, and the
        holds of ``batch_ids``, in one transaction; how many events went."""
        with self.engine.begin() as connection:
            events = connection.execute(
                delete(TaskEventRecord).where(col(TaskEventRecord.task_id).in_(task_ids))
            )
            connection.execute(delete(TaskRecord).where(col(TaskRecord.task_id).in_(task_ids)))
            if batch_ids:
                gone = col(BatchHoldRecord.batch_id).in_(batch_ids)
                connection.execute(delete(BatchHoldRecord).where(gone))
            return int(events.rowcount)

    def find_request(self, owner: str, request_id: str) -> SubmitRequestRecord | None:
        """``owner``'s submission made with ``request_id`` in the last REQUEST_ID_HOURS
        (read without the ORM's session: every submission from the tools asks)."""
        table = SubmitRequestRecord.__table__  # type: ignore[attr-defined]
        query = table.select().where(
            table.c.owner == owner,
            table.c.request_id == request_id,
            table.c.created_at >= request_ids_since(),
        )
        with self.engine.connect() as connection:
            row = connection.execute(query).first()
        return None if row is None else SubmitRequestRecord.model_construct(**row._mapping)

    def submitted_tasks(self, batch_id: int, task_id: int, limit: int) -> list[TaskRecord]:
        """A submission's tasks, by id (at most ``limit``): its batch's, or its one task."""
        query = _of_submission(batch_id, task_id).order_by(col(TaskRecord.task_id)).limit(limit)
        with Session(self.engine, expire_on_commit=False) as session:
            return list(session.exec(query))

    def submitted_tasks_in(
        self, batch_id: int, task_id: int, statuses: Sequence[str]
    ) -> list[Task]:
        """A submission's tasks in ``statuses``, as the plain ``Task`` the Host holds."""
        wanted = TaskRecord.status.in_(statuses)  # type: ignore[attr-defined]
        query = _of_submission(batch_id, task_id).where(wanted)
        with Session(self.engine, expire_on_commit=False) as session:
            return [in_memory(record) for record in session.exec(query)]

    def owns_tasks(self, owner: str) -> bool:
        """Whether any task, finished or not, is ``owner``'s."""
        with Session(self.engine) as session:
            query = select(TaskRecord.task_id).where(TaskRecord.owner == owner).limit(1)
            return session.exec(query).first() is not None

    def list_tasks(
        self,
        statuses: Sequence[str],
        node: str,
        batch_id: int,
        limit: int,
        before_task_id: int,
        kind: str = "",
        submitted_after: datetime | None = None,
        owner: str = "",
        array_index: int | None = None,
    ) -> list[TaskRecord]:
        with Session(self.reader, expire_on_commit=False) as session:
            query = select(TaskRecord)
            if array_index is not None:
                query = query.where(TaskRecord.array_index == array_index)
            if statuses:
                status: Any = TaskRecord.status
                if not batch_id and not FINAL_STATUSES.isdisjoint(statuses):
                    # Ended tasks are most of the history: newest first, walking the tasks
                    # by id (an expression keeps the status index out) stops after
                    # ``limit`` of them, where the status index read and sorted them all
                    # (200 ms for 120,000 completed). Active ones are few: their index.
                    status = func.coalesce(TaskRecord.status, "")
                query = query.where(status.in_(statuses))
            if node:
                query = query.where(TaskRecord.assigned_node == node)
            if batch_id:
                query = query.where(TaskRecord.batch_id == batch_id)
            if before_task_id:
                query = query.where(TaskRecord.task_id < before_task_id)
            if kind:
                query = query.where(TaskRecord.kind == kind)
            if submitted_after is not None:
                query = query.where(TaskRecord.submitted_at >= submitted_after)
            # A batch is one user's: its tasks are read through the batch's index and kept
            # if theirs (with the owner in the query, SQLite walked the user's history).
            owner_after = owner if batch_id else ""
            if owner and not owner_after:
                query = query.where(TaskRecord.owner == owner)
            query = query.order_by(TaskRecord.task_id.desc()).limit(limit)  # type: ignore[attr-defined]
            found = list(session.exec(query))
            return [task for task in found if task.owner == owner_after] if owner_after else found
