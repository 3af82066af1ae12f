"""The audit log: who did what, and every refusal, as structured log lines and a table.

``record`` never blocks the caller: the line is logged at once and the row is written in
the background by one flusher, every row queued meanwhile in one transaction
(``wait_written`` waits for them, e.g. at shutdown). Rows the database refuses for now (it
is away: ``database_unavailable``) are held, up to HELD_ROWS, and written once it takes
writes again (as the Host's task changes, see group_commit); a stopping Host tries them once
more. Each row is also a log line, so one dropped is still in the Host's log.

Refusals of callers who hold nothing of this Host's (no token, an unknown one) are limited:
anybody who reaches a port could otherwise fill the disk with rows and lines in a loop. The
first of each source address, action and target in a minute is written; the others are
counted, and one row at the minute's end says how many ("... (and 1130 more like it in the
last 60 s)"). Refusals of known users and Runners are each written.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlmodel import Session, col, delete, select

from hakuriver_common.roles import AuditOutcome
from hakuriver_host.forgetting import forget_every_hour
from hakuriver_host.group_commit import HeldPause
from hakuriver_host.identity import ANONYMOUS, Kind, Principal, caller_peer
from hakuriver_host.log_limits import LimitedLog
from hakuriver_host.models import AuditRecord, utcnow
from hakuriver_host.store import Store, database_unavailable, log_refusal

log = logging.getLogger("hakuriver.audit")
MAX_LIST = 1000
# Every action the Host audits, and only these (``record`` takes no other): ListAuditEvents
# refuses a filter naming none of them, which answered an empty list as if nothing happened.
ACTIONS = frozenset(
    {
        *("batch.kill", "batch.pause", "batch.resume"),
        *(f"environment.{verb}" for verb in ("create", "start", "stop", "delete", "shell")),
        *("environment.create_tar", "environment.delete_tar", "environment.import_rootfs"),
        *("metrics.scrape", "node.drain", "node.undrain", "rpc"),
        *("runner.join", "runner.register", "runner.report", "runner.revoke"),
        *("ssh.ticket", "ssh.tunnel"),
        *("task.kill", "task.pause", "task.prune", "task.resume", "task.submit"),
        *("token.create", "token.revoke", "user.create", "user.delete", "user.role"),
    }
)
# A peer as gRPC names it ("ipv4:10.0.0.5:51234", "ipv6:[::1]:51234"; the dashboard and
# the SSH proxy name theirs alike): the address without the port, which each new connection
# changes.
_PEER_PORT = re.compile(r"^(ipv4:.*|ipv6:\[.*\]):\d+$")


def source_of(peer: str) -> str:
    """``peer`` without its port."""
    match = _PEER_PORT.match(peer)
    return peer if match is None else match.group(1)


# How many rows one transaction deletes when old events are forgotten (a long backlog,
# after an upgrade, never holds the database's write lock for long).
FORGET_BATCH = 5000
# Rows held while the database is away, at most (the oldest beyond are dropped, logged).
HELD_ROWS = 10_000


@dataclass(frozen=True)
class AuditQuery:
    limit: int = 100
    before_id: int = 0
    actor: str = ""
    action: str = ""
    outcome: AuditOutcome | None = None


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        # Rows not yet written; one flusher writes them, all that queued meanwhile at once.
        self._queued: list[dict[str, Any]] = []
        self._flusher: asyncio.Task[None] | None = None
        # Why rows are held now ("" when none are); False once the Host stops (``close``).
        self._held = ""
        self._holding = True
        self._wake = asyncio.Event()
        # Set while rows are held: a query stops waiting for them then.
        self._holding_rows = asyncio.Event()
        self._strangers = LimitedLog(log, emit=self._stranger_refused)
        store.when_writes_taken(self._retry_now)

    def record(
        self,
        who: Principal,
        action: str,
        target: object = "",
        outcome: AuditOutcome = AuditOutcome.ALLOWED,
        detail: str = "",
        peer: str = "",
    ) -> None:
        assert action in ACTIONS, f"audit action {action!r} is not in audit.ACTIONS"
        peer = peer or caller_peer()
        if outcome is AuditOutcome.REFUSED and who.kind is Kind.ANONYMOUS:
            cause = (action, str(target), source_of(peer))
            self._strangers.log(cause, logging.INFO, "%s", detail)
            return
        self._write(who, action, target, outcome, detail, peer)

    def _stranger_refused(
        self, cause: Any, level: int, message: str, args: tuple[Any, ...]
    ) -> None:
        action, target, source = cause if isinstance(cause, tuple) else ("rpc", "", "")
        self._write(ANONYMOUS, action, target, AuditOutcome.REFUSED, message % args, source)

    def _write(
        self,
        who: Principal,
        action: str,
        target: object,
        outcome: AuditOutcome,
        detail: str,
        peer: str,
    ) -> None:
        fields = {
            "action": action,
            "actor": who.actor,
            "detail": detail,
            "outcome": outcome.value,
            "peer": peer,
            "role": who.role.value if who.role is not None else who.kind.value,
            "target": str(target),
        }
        log.info("audit %s", json.dumps(fields))
        self._queued.append({**fields, "at": utcnow()})
        if self._flusher is None or self._flusher.done():
            self._flusher = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        pause = HeldPause()
        while self._queued:
            rows, self._queued = self._queued, []
            try:
                await self.store.run(self._insert, rows)
            except Exception as exc:
                why = database_unavailable(exc) if self._holding else None
                if why is None:  # their lines are in the Host's log
                    log_refusal(log, exc, "could not store %d audit events", len(rows))
                else:
                    self._hold(rows, why)
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), pause.next())
                continue
            if self._held:
                log.warning("the database takes writes again: the held audit events are stored")
                self._held = ""
                self._holding_rows.clear()
                self.store.writes_taken()
            pause.reset()

    def _retry_now(self) -> None:
        """The database took another write: held rows are tried again now, not after their
        pause."""
        if self._held:
            self._wake.set()

    def _hold(self, rows: list[dict[str, Any]], why: str) -> None:
        """Queue ``rows`` again ahead of those queued since, keeping the newest HELD_ROWS."""
        queued = rows + self._queued
        dropped = len(queued) - HELD_ROWS
        if dropped > 0:
            log.warning(
                "could not store %d audit events (more than %d held): %s", dropped, HELD_ROWS, why
            )
            queued = queued[dropped:]
        self._queued = queued
        if why != self._held:
            log.warning(
                "%d audit events held in memory, stored once the database takes writes again: %s",
                len(queued),
                why,
            )
            self._held = why
        self._holding_rows.set()

    def close(self) -> None:
        """Write the counts of refusals not yet summed up, and hold no rows any more: those
        held are tried once more (the Host stops)."""
        self._strangers.close()
        self._holding = False
        self._wake.set()

    async def wait_written(self) -> None:
        while self._flusher is not None and not self._flusher.done():
            await asyncio.wait([self._flusher])

    async def keep_for(self, days: float) -> None:
        """Forget events older than ``days`` now and then every hour, forever (0: never)."""
        await forget_every_hour(days, self.forget_older_than, "old audit events", log)

    async def forget_older_than(self, cutoff: datetime) -> int:
        """Delete the events before ``cutoff``, a batch per transaction; how many."""
        forgotten = 0
        while (deleted := await self.store.run(self._delete_before, cutoff)) > 0:
            forgotten += deleted
            if deleted < FORGET_BATCH:
                break
        if forgotten:
            log.info(
                "forgot %d audit events from before %s (timing.forget_audit_days)",
                forgotten,
                f"{cutoff:%Y-%m-%d %H:%M:%S} UTC",
            )
        return forgotten

    def _delete_before(self, cutoff: datetime) -> int:
        oldest = (
            select(AuditRecord.id)
            .where(col(AuditRecord.at) < cutoff)
            .order_by(col(AuditRecord.id))
            .limit(FORGET_BATCH)
        )
        with self.store.engine.begin() as connection:
            result = connection.execute(delete(AuditRecord).where(col(AuditRecord.id).in_(oldest)))
            return int(result.rowcount)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        with self.store.engine.begin() as connection:
            self.store.bulk(AuditRecord.__table__).insert(connection, rows)  # type: ignore[attr-defined]

    async def query(self, query: AuditQuery) -> list[AuditRecord]:
        """The rows queued before are written first, unless the database refuses them: those
        held wait for it, and the query reads what is stored (it may read still). It reads
        on the store's reads' thread: on the store's own it waited behind other writes, 5 s
        each while another program held SQLite locked."""
        flushing = self._flusher
        if flushing is not None and not flushing.done() and not self._holding_rows.is_set():
            held = asyncio.ensure_future(self._holding_rows.wait())
            try:
                await asyncio.wait([flushing, held], return_when=asyncio.FIRST_COMPLETED)
            finally:
                held.cancel()
        return await self.store.read(self._select, query)

    def _select(self, query: AuditQuery) -> list[AuditRecord]:
        with Session(self.store.reader, expire_on_commit=False) as session:
            statement = select(AuditRecord)
            if query.before_id:
                statement = statement.where(AuditRecord.id < query.before_id)  # type: ignore[operator]
            if query.actor:
                statement = statement.where(AuditRecord.actor == query.actor)
            if query.action:
                statement = statement.where(AuditRecord.action == query.action)
            if query.outcome is not None:
                statement = statement.where(AuditRecord.outcome == query.outcome.value)
            statement = statement.order_by(AuditRecord.id.desc()).limit(query.limit)  # type: ignore[union-attr]
            return list(session.exec(statement))
