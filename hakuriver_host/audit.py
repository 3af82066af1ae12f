"""The audit log: who did what, and every refusal, as structured log lines and a table.

``record`` never blocks the caller: the line is logged at once and the row is written in
the background, many rows per transaction (``wait_written`` flushes, e.g. at shutdown).
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from enum import StrEnum

from sqlmodel import Session, select

from hakuriver_host.group_commit import GroupCommit
from hakuriver_host.identity import Principal, caller_peer
from hakuriver_host.models import AuditRecord, utcnow
from hakuriver_host.store import Store

log = logging.getLogger("hakuriver.audit")
MAX_LIST = 1000


class Outcome(StrEnum):
    ALLOWED = "allowed"
    REFUSED = "refused"


@dataclass(frozen=True)
class AuditQuery:
    limit: int = 100
    before_id: int = 0
    actor: str = ""
    action: str = ""
    outcome: Outcome | None = None


class AuditLog:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._writes = GroupCommit(self._insert, store.executor)
        self._pending: set[asyncio.Task[None]] = set()

    def record(
        self,
        who: Principal,
        action: str,
        target: object = "",
        outcome: Outcome = Outcome.ALLOWED,
        detail: str = "",
        peer: str = "",
    ) -> None:
        row = AuditRecord(
            at=utcnow(),
            actor=who.actor,
            role=who.role.value if who.role is not None else who.kind.value,
            action=action,
            target=str(target),
            outcome=outcome.value,
            detail=detail,
            peer=peer or caller_peer(),
        )
        fields = row.model_dump(exclude={"id", "at"})
        log.info("audit %s", json.dumps(fields, sort_keys=True))
        write = asyncio.create_task(self._write(row))
        self._pending.add(write)
        write.add_done_callback(self._pending.discard)

    async def _write(self, row: AuditRecord) -> None:
        try:
            await self._writes.submit([row])
        except Exception:
            log.exception("could not store audit event %s %s", row.action, row.target)

    async def wait_written(self) -> None:
        await asyncio.gather(*self._pending, return_exceptions=True)

    def _insert(self, rows: list[AuditRecord]) -> None:
        with Session(self.store.engine) as session:
            session.add_all(rows)
            session.commit()

    async def query(self, query: AuditQuery) -> list[AuditRecord]:
        await self.wait_written()
        return await self.store.run(self._select, query)

    def _select(self, query: AuditQuery) -> list[AuditRecord]:
        with Session(self.store.engine, expire_on_commit=False) as session:
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
