"""Forgetting ended tasks: their rows, their timelines and their output files.

Tasks that ended before a cutoff are forgotten now (``prune``: PruneTasks, an admin's
``hakuriver.admin task prune``) and every hour for ``timing.forget_tasks_days`` (0, the
default: never). A task that has not ended is never forgotten, and a batch only whole: while
one of its tasks is active or ended after the cutoff, all of them stay.

The work goes in slices of at most WRITE_BATCH tasks, each one call on the store's thread
(a read of the status index, then one transaction): the writes of live tasks queued
meanwhile go between two slices, never behind a backlog of months. Output files are
removed on a worker thread, before their rows: a Host that stops in between leaves rows
whose files are gone, which the next run forgets.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import os
from dataclasses import dataclass, field
from datetime import datetime

from hakuriver_common.statuses import FINAL_STATUSES, TaskKind, TaskStatus
from hakuriver_host.forgetting import forget_every_hour
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.models import EndedTask
from hakuriver_host.scheduler import Scheduler
from hakuriver_host.store import WRITE_BATCH, Store

log = logging.getLogger(__name__)

# The longest age PruneTasks takes (100 years): a longer one is a slip of the keyboard.
MAX_PRUNE_DAYS = 36_500


@dataclass
class Pruned:
    """What a prune forgot (or, dry, would forget)."""

    tasks: int = 0
    batches: int = 0
    events: int = 0
    output_files: int = 0
    output_bytes: int = 0
    # Each batch met, and whether it may be forgotten (every task ended before the cutoff).
    verdicts: dict[int, bool] = field(default_factory=dict)
    # Batches with a task forgotten.
    forgotten: set[int] = field(default_factory=set)

    def __str__(self) -> str:
        return (
            f"{self.tasks} tasks, {self.batches} batches, {self.events} events, "
            f"{self.output_files} output files ({self.output_bytes} bytes)"
        )


def _output_files(tasks: list[EndedTask]) -> list[str]:
    """The output files a task's row names, as the Host made them (``ID.out``, ``ID.err``):
    a path that does not end so is never removed."""
    paths: list[str] = []
    for task in tasks:
        for path, suffix in ((task.stdout_path, "out"), (task.stderr_path, "err")):
            if path and os.path.basename(path) == f"{task.task_id}.{suffix}":
                paths.append(path)
    return paths


def _remove(paths: list[str], dry_run: bool) -> tuple[int, int]:
    """Remove the files (dry: only measure them); how many there were, and their bytes."""
    files = size = 0
    for path in paths:
        try:
            size += os.stat(path).st_size
            if not dry_run:
                os.unlink(path)
        except FileNotFoundError:
            continue
        files += 1
    return files, size


class TaskRetention:
    def __init__(self, store: Store, metrics: HostMetrics, scheduler: Scheduler) -> None:
        self.store = store
        self.metrics = metrics
        self.scheduler = scheduler
        # One prune at a time: two would read the same slices.
        self._lock = asyncio.Lock()

    async def keep_for(self, days: float) -> None:
        """Forget tasks that ended more than ``days`` ago, now and then every hour, forever
        (0: never)."""
        pruned = Pruned()

        async def forget(cutoff: datetime) -> None:
            nonlocal pruned
            pruned = Pruned()
            await self.prune(cutoff, False, pruned)
            if pruned.tasks:
                log.info(
                    "forgot %s that ended more than %g days ago (timing.forget_tasks_days)",
                    pruned,
                    days,
                )

        await forget_every_hour(days, forget, "old tasks", log, lambda: str(pruned))

    async def prune(self, cutoff: datetime, dry_run: bool, pruned: Pruned) -> None:
        """Forget the tasks that ended before ``cutoff`` (dry: count them), a slice at a
        time, counting them in ``pruned``."""
        async with self._lock:
            for status in sorted(FINAL_STATUSES):
                after: EndedTask | None = None
                while True:
                    found = await self.store.run(
                        self.store.ended_before, status, cutoff, after, WRITE_BATCH
                    )
                    if not found:
                        break
                    after = found[-1]
                    await self._forget(found, cutoff, dry_run, pruned)

    async def _forget(
        self, found: list[EndedTask], cutoff: datetime, dry_run: bool, pruned: Pruned
    ) -> None:
        """Forget those of ``found`` whose batch may go (dry: count them)."""
        for batch_id in {t.batch_id for t in found if t.batch_id} - pruned.verdicts.keys():
            pruned.verdicts[batch_id] = await self.store.run(
                self.store.batch_ended_before, batch_id, cutoff
            )
        going = [t for t in found if not t.batch_id or pruned.verdicts[t.batch_id]]
        if not going:
            return
        task_ids = [t.task_id for t in going]
        batches = {t.batch_id for t in going if t.batch_id}
        files, size = await asyncio.to_thread(_remove, _output_files(going), dry_run)
        if dry_run:
            events = await self.store.run(self.store.count_events, task_ids)
        else:
            new = sorted(batches - pruned.forgotten)
            events = await self.store.run(self.store.delete_tasks, task_ids, new)
            self.scheduler.held.difference_update(new)
            self.metrics.tasks_forgotten(
                collections.Counter((TaskStatus.of(t.status), TaskKind(t.kind)) for t in going)
            )
        pruned.tasks += len(going)
        pruned.batches += len(batches - pruned.forgotten)
        pruned.forgotten |= batches
        pruned.events += events
        pruned.output_files += files
        pruned.output_bytes += size
