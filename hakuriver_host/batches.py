"""Batches: the tasks of one submission (a job array, or one task per target), counted and
controlled together.

A batch is as visible as its tasks (all have the submitter as owner): another user's batch
answers exactly as a missing one. Whole-batch control acts on each task through the same
paths as the single-task RPCs; pending tasks are killed first, so that none of them starts
on resources the others free while they are being stopped. Pausing a batch also holds it:
its pending tasks stay queued, placed on no node, until it is resumed (or killed).
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

from hakuriver_common.statuses import FINAL_STATUSES, TaskStatus
from hakuriver_host.cluster import Cluster
from hakuriver_host.errors import ApiError, Hidden, InvalidArgument
from hakuriver_host.identity import Principal
from hakuriver_host.models import Task
from hakuriver_host.task_machine import PLACED_STATUSES

_Action = Callable[[int, Principal], Awaitable[Task]]


@dataclass(frozen=True)
class BatchView:
    batch_id: int
    size: int
    owner: str
    max_running: int
    array: bool
    held: bool
    counts: dict[TaskStatus, int] = field(default_factory=dict)


class Batches:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster

    async def summary(self, batch_id: int, who: Principal) -> BatchView:
        """Counts by status: tasks stored as ended as stored, the others as the Host shows
        them (every task that has not ended is in memory: ``TaskBook.shown_status``, an end
        not stored yet not counted as one). Memory is read before the store, so a task
        whose end is stored in between is counted once, as stored."""
        if batch_id <= 0:
            raise InvalidArgument(f"batch_id: must be a positive id, got {batch_id}")
        await self.cluster.book.arrival(batch_id=batch_id)
        book = self.cluster.book
        in_memory = [(t.task_id, book.shown_status(t)) for t in book.of_batch(batch_id)]
        store = self.cluster.store
        final = [s.value for s in FINAL_STATUSES]
        ids = [task_id for task_id, _ in in_memory]
        first, size, stored, ended = await store.read(store.batch_summary, batch_id, final, ids)
        if first is None or not who.owns(first.owner):
            raise Hidden(f"batch_id: batch {batch_id} not found")
        counts: Counter[TaskStatus] = Counter({TaskStatus(s): n for s, n in stored.items()})
        counts.update(TaskStatus(s) for task_id, s in in_memory if task_id not in ended)
        return BatchView(
            batch_id=batch_id,
            size=size,
            owner=first.owner,
            max_running=first.array_max_running,
            array=first.array_index is not None,
            held=batch_id in self.cluster.scheduler.held and TaskStatus.PENDING in counts,
            counts={status: counts[status] for status in TaskStatus if counts[status]},
        )

    def _active(self, batch_id: int, statuses: frozenset[TaskStatus]) -> list[Task]:
        return [t for t in self.cluster.book.of_batch(batch_id) if TaskStatus(t.status) in statuses]

    async def kill(self, batch_id: int, who: Principal) -> tuple[BatchView, int]:
        await self.summary(batch_id, who)
        self.cluster.audit.record(who, "batch.kill", batch_id)
        book = self.cluster.book
        pending = self._active(batch_id, frozenset({TaskStatus.PENDING}))
        detail = f"killed by {who.name} with its batch"
        stores = [book.apply(t, TaskStatus.KILLED, detail, killed_by=who.name) for t in pending]
        # The placed ones' kills begin now too, not once those are stored: one whose
        # placement is being stored is then not dispatched (``Cluster._dispatch``), as a
        # task's own kill keeps its command from starting.
        killing = self._each(self.cluster.kill, self._active(batch_id, PLACED_STATUSES), who)
        try:
            await asyncio.gather(*stores)
            await self.cluster.set_held(batch_id, False)  # nothing is left for it to hold
        finally:
            killed = await killing
        return await self.summary(batch_id, who), len(pending) + killed

    async def pause(self, batch_id: int, who: Principal) -> tuple[BatchView, int]:
        """Hold the batch's pending tasks, then pause its running ones. Tasks being started
        (assigning) go on to run: a second PauseBatch pauses them."""
        await self.summary(batch_id, who)
        self.cluster.audit.record(who, "batch.pause", batch_id)
        if self._active(batch_id, frozenset({TaskStatus.PENDING})):
            await self.cluster.set_held(batch_id, True)
        running = self._active(batch_id, frozenset({TaskStatus.RUNNING}))
        paused = await self._each(self.cluster.pause, running, who)
        return await self.summary(batch_id, who), paused

    async def resume(self, batch_id: int, who: Principal) -> tuple[BatchView, int]:
        """Resume the paused tasks, then let the pending ones be placed again."""
        await self.summary(batch_id, who)
        self.cluster.audit.record(who, "batch.resume", batch_id)
        paused = self._active(batch_id, frozenset({TaskStatus.PAUSED}))
        resumed = await self._each(self.cluster.resume, paused, who)
        await self.cluster.set_held(batch_id, False)
        return await self.summary(batch_id, who), resumed

    @staticmethod
    def _each(action: _Action, tasks: list[Task], who: Principal) -> asyncio.Future[int]:
        """Act on every task at once, each begun now; how many it succeeded for (a task that
        changed in the meantime, or whose Runner did not confirm, is left as it is)."""
        begun = [asyncio.ensure_future(action(t.task_id, who)) for t in tasks]
        return asyncio.ensure_future(_succeeded(begun))


async def _succeeded(begun: Sequence[Awaitable[Task]]) -> int:
    results = await asyncio.gather(*begun, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException) and not isinstance(result, ApiError):
            raise result
    return sum(1 for r in results if not isinstance(r, BaseException))
