"""The Host's active tasks and the one path by which a task's status changes.

TaskBook holds every task that is not final (final ones live only in the database), the
pending queue's order, and the watchers of each task. ``move`` asks the state machine,
persists the change before anyone hears of it, then updates metrics, output files,
webhooks and watchers.
"""

from __future__ import annotations

import asyncio
import shlex
from collections import Counter
from collections.abc import (
    AsyncIterator,
    Callable,
    Coroutine,
    Hashable,
    Iterator,
    Mapping,
    Sequence,
)
from dataclasses import replace
from datetime import datetime
from functools import partial
from typing import Any, NamedTuple

from hakuriver_common.limits import truncated
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.bulk_lane import SMALL, BulkLane
from hakuriver_host.errors import NotFound, WatcherBehind
from hakuriver_host.log_store import LogStore
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.models import (
    TASK_FIELDS,
    Task,
    TaskEventRecord,
    assign,
    field_values,
    utcnow,
)
from hakuriver_host.scheduler import Allocation, PendingQueue, Request, Scheduler
from hakuriver_host.store import Requests, Store, TaskWrite
from hakuriver_host.task_machine import transition
from hakuriver_host.webhooks import Notifier

# Changes a live list's watcher may leave unread before it is dropped (a page that stopped
# reading must not hold the Host's memory).
LIST_WATCH_BACKLOG = 10_000
# A submission of this many tasks or more has its rows built (Cluster.submit) and made
# ready for the store (``add``) on a worker thread, not the event loop: for a job array of
# 10,000 that is ~200 ms the loop would otherwise hold for everyone. Its tasks are queued
# QUEUE_SLICE at a time (~1 ms each), one slice per turn in the bulk lane (bulk_lane).
OFF_LOOP_TASKS = 256
QUEUE_SLICE = 256


def request_of(task: Task) -> Request:
    """What the scheduler needs to place a task."""
    return Request(
        task_id=task.task_id,
        cores=task.required_cores,
        memory_bytes=task.required_memory_bytes,
        target=task.target_hostname,
        numa_node=task.target_numa_node_id,
        gpu_ids=() if task.gpu_count else tuple(task.required_gpus or ()),
        gpu_count=task.gpu_count,
        priority=task.priority,
        group=task.batch_id,
        group_cap=task.array_max_running,
    )


def allocation_of(task: Task) -> Allocation:
    """What a placed task holds, as stored in its row."""
    return Allocation(
        hostname=task.assigned_node or "",
        cpus=tuple(task.assigned_cpus or ()),
        memory_bytes=task.required_memory_bytes,
        gpus=tuple(task.required_gpus or ()),
        numa_node=task.target_numa_node_id,
    )


def _write_key(task: Task) -> Hashable:
    """The store orders a task's changes with its node's: a release of cores is stored
    before the placement that reuses them (a crash between the two must not leave both
    holding them). A task that was never placed has no node; it orders with itself (the
    only change of an unplaced task is its end)."""
    return task.assigned_node or task.task_id


def _events(records: list[Task], at: datetime, detail: str) -> list[dict[str, Any]]:
    """New tasks' first events, as the store takes them."""
    return [_event(r.task_id, r.status, at, detail) for r in records]


def _event(task_id: int, status: str, at: datetime, detail: str) -> dict[str, Any]:
    return {"task_id": task_id, "status": status, "at": at, "detail": detail}


# What a Runner reports, shown (GetTask, ListTasks, watchers) as soon as it is made in
# memory (TaskBook.change).
TOLD_AT_ONCE = frozenset({TaskStatus.RUNNING, TaskStatus.PAUSED})


class Change(NamedTuple):
    """A status change made in memory, to be stored: what it was, its number, the copy its
    watchers get once it is stored (None: nobody watched when it was made, or they were
    told then: TOLD_AT_ONCE), the values it changed as they were before it (what is shown
    until it is stored: TaskBook.shown), its row's new values and its event. (A tuple:
    made for every change, and a frozen dataclass costs several times as much to make.)"""

    task: Task
    old: TaskStatus
    new: TaskStatus
    number: int
    watched: tuple[int, Task] | None
    before: dict[str, Any]
    row: dict[str, Any]
    event: dict[str, Any]


class _Unstored:
    """A write of a task queued and not stored yet: its status change's number (0: no
    status change) and the values it changed as they were before it. Told apart by
    identity: two writes may change the same values alike."""

    __slots__ = ("before", "number")

    def __init__(self, number: int, before: dict[str, Any]) -> None:
        self.number = number
        self.before = before


def _unstored(change: Change) -> _Unstored:
    """A change's write until it is stored (one shown at once, TOLD_AT_ONCE, is no status
    change still to be shown: number 0)."""
    return _Unstored(0 if change.new in TOLD_AT_ONCE else change.number, change.before)


class TaskBook:
    def __init__(
        self,
        store: Store,
        logs: LogStore,
        metrics: HostMetrics,
        notifier: Notifier,
        scheduler: Scheduler,
        on_final: Callable[[Task], None],
        on_released: Callable[[], None],
        lane: BulkLane,
    ) -> None:
        self.store = store
        self.lane = lane
        self.logs = logs
        self.metrics = metrics
        self.notifier = notifier
        self.scheduler = scheduler
        self._on_final = on_final
        self._on_released = on_released
        self.active: dict[int, Task] = {}
        # The pending subset of ``active`` (nothing moves back to pending), and their
        # requests in the scheduler's queue.
        self.pending: dict[int, Task] = {}
        self.queue = PendingQueue()
        self._positions: dict[int, int] | None = None
        # Watchers of one task get a numbered copy of it per change, in order (a copy: the
        # live record may have moved on by the time the watcher reads it).
        self._watchers: dict[int, set[asyncio.Queue[tuple[int, Task]]]] = {}
        self._change = 0
        # The number of each active task's latest change.
        self._last_change: dict[int, int] = {}
        # Tasks made final in memory whose change is not stored yet (no longer active, and
        # not yet final in the database).
        self._finishing: dict[int, Task] = {}
        # Each task's writes queued and not stored yet, in the order they were queued: what
        # a client is shown is the task as stored (``shown``), never a change the Host
        # would lose by crashing (while the database is away, the last stored status).
        self._unstored: dict[int, list[_Unstored]] = {}
        # Watchers of every task (live lists); a full queue ends that watcher (see ``watch_all``).
        self._list_watchers: set[asyncio.Queue[Task | None]] = set()
        # New tasks whose rows are being stored, not yet in ``active``, by task id and by
        # batch: done once they are there. Their rows may already be listed (a job array's
        # insert takes a while); whoever asks for one of them waits, rather than reading the
        # row and acting on a copy the Host does not hold.
        self._arriving: dict[int, asyncio.Future[None]] = {}
        self._arriving_batches: dict[int, asyncio.Future[None]] = {}
        # And their tasks, by submission.
        self._arriving_tasks: dict[asyncio.Future[None], list[Task]] = {}

    def load(self, tasks: list[Task]) -> None:
        for task in tasks:
            self.active[task.task_id] = task
            if task.status == TaskStatus.PENDING:
                self.pending[task.task_id] = task
                self.queue.add(request_of(task))

    async def add(self, records: list[Task], detail: str, requests: Requests = ()) -> None:
        """New pending tasks: stored with their first event (and the submission's request_id
        row, ``requests``), then queued. A job array's rows are turned into parameters on a
        worker thread and its tasks queued in slices, so the event loop serves others
        meanwhile."""
        now = records[0].submitted_at if records else utcnow()
        arrived = self._arrive(records)
        try:
            if len(records) >= OFF_LOOP_TASKS:
                write = await asyncio.to_thread(self._prepared, records, now, detail)
            else:
                rows = [r.model_dump() for r in records]
                write = TaskWrite(rows, [], _events(records, now, detail))
            await self.store.insert_tasks(replace(write, requests=requests))
            self.active.update((record.task_id, record) for record in records)
        finally:
            self._arrived(records, arrived)
        for start in range(0, len(records), QUEUE_SLICE):
            if len(records) >= SMALL:
                await self.lane.turn()
            self._positions = None
            for record in records[start : start + QUEUE_SLICE]:
                # Killed meanwhile (it was active already): it never joins the queue.
                if record.status == TaskStatus.PENDING:
                    self.pending[record.task_id] = record
                    self.queue.add(request_of(record))
                if self._list_watchers:  # a copy: it may be placed before they read it
                    self._tell_lists(record.model_copy())
        for kind, count in Counter(record.kind for record in records).items():
            self.metrics.tasks_added(kind, count)

    async def add_placed(
        self, task: Task, detail: str, fields: dict[str, Any], placed: str, requests: Requests = ()
    ) -> None:
        """A new task placed before it was stored (``Cluster.submit``: one task that fits
        at once): inserted already assigning, with its "submitted" and its "placed" event,
        in its node's order, so after the node's earlier changes (a release of the cores
        it takes is stored first). One write where a submission and its placement were
        two, each waiting its turn at the store. Live lists are told of both statuses."""
        submitted = task.model_copy() if self._list_watchers else None
        assign(task, {"status": TaskStatus.ASSIGNING.value, **fields})
        events = [
            _event(task.task_id, TaskStatus.PENDING.value, task.submitted_at, detail),
            _event(task.task_id, TaskStatus.ASSIGNING.value, utcnow(), placed),
        ]
        arrived = self._arrive([task])
        try:
            await self.store.queue_write(
                _write_key(task),
                updates=[],
                events=events,
                inserts=[task.model_dump()],
                requests=requests,
            )
            self.active[task.task_id] = task
        finally:
            self._arrived([task], arrived)
        if self._list_watchers:
            if submitted is not None:
                self._tell_lists(submitted)
            self._tell_lists(task.model_copy())
        self.metrics.tasks_added(task.kind, 1)
        self.metrics.tasks_moved([(TaskStatus.PENDING, TaskStatus.ASSIGNING, task.kind)])

    def _arrive(self, records: list[Task]) -> asyncio.Future[None]:
        arrived = asyncio.get_running_loop().create_future()
        self._arriving.update(dict.fromkeys((r.task_id for r in records), arrived))
        if records and records[0].batch_id:  # a submission's tasks share their batch
            self._arriving_batches[records[0].batch_id] = arrived
        self._arriving_tasks[arrived] = records
        return arrived

    def _arrived(self, records: list[Task], arrived: asyncio.Future[None]) -> None:
        """They are in ``active`` now, or not stored at all."""
        for record in records:
            self._arriving.pop(record.task_id, None)
        if records and records[0].batch_id:
            self._arriving_batches.pop(records[0].batch_id, None)
        self._arriving_tasks.pop(arrived, None)
        arrived.set_result(None)

    def arriving(self) -> Iterator[Task]:
        """The new tasks whose rows are being stored (not yet in ``active``)."""
        for records in self._arriving_tasks.values():
            yield from records

    async def arrival(self, task_id: int = 0, batch_id: int = 0) -> None:
        """Return once the task (or the batch) is not being added any more."""
        arriving = self._arriving.get(task_id) or self._arriving_batches.get(batch_id)
        if arriving is not None:
            await asyncio.shield(arriving)

    def _prepared(self, records: list[Task], at: datetime, detail: str) -> TaskWrite:
        """Converted at once, before the tasks are known to anyone: their rows can share
        the tasks' own values."""
        rows = [field_values(r) for r in records]
        return self.store.prepare_new_tasks(rows, _events(records, at, detail), TASK_FIELDS)

    async def persist(self, task: Task, detail: str | None = None, **changes: Any) -> None:
        """Store ``changes`` (just those columns), with an event of the current status when
        ``detail`` is given."""
        await self.note(task, detail, **changes)

    def note(self, task: Task, detail: str | None = None, **changes: Any) -> asyncio.Future[None]:
        """``persist`` in two halves like ``apply``: made in memory now and its write queued;
        the future is done once it is stored (and shown from then on)."""
        before = {name: task.__dict__[name] for name in changes}
        assign(task, changes)
        events = [] if detail is None else [_event(task.task_id, task.status, utcnow(), detail)]
        stored = self.store.queue_write(
            _write_key(task), updates=[{"task_id": task.task_id, **changes}], events=events
        )
        self._unstored_until([(task.task_id, _Unstored(0, before))], stored)
        return stored

    async def move(self, task: Task, new: TaskStatus, detail: str = "", **fields: Any) -> None:
        """Change a task's status through the state machine; IllegalTransition if refused.
        Returns once the change is stored and everyone was told."""
        await self.apply(task, new, detail, **fields)

    def apply(
        self, task: Task, new: TaskStatus, detail: str = "", **fields: Any
    ) -> Coroutine[Any, Any, None]:
        """The first half of ``move``: the change is made in memory now (so placement can
        decide many tasks in one pass); the returned coroutine stores it and only then
        tells metrics, webhooks and watchers (but for TOLD_AT_ONCE). Await it."""
        return self.store_changes([self.change(task, new, detail, fields)])

    def change(
        self,
        task: Task,
        new: TaskStatus,
        detail: str = "",
        fields: Mapping[str, Any] | None = None,
        now: datetime | None = None,
    ) -> Change:
        """``apply``'s change made in memory, to be stored by ``store_changes`` with others
        of the same node (a Runner's message of reports, a pass's placements on a node:
        one write, not one each). IllegalTransition if the state machine refuses it.
        Changes made together may share ``now``: the store converts a shared time once."""
        old = TaskStatus.of(task.status)
        transition(old, new)
        now = now or utcnow()
        if old is TaskStatus.PENDING:
            self._positions = None
            self.pending.pop(task.task_id, None)
            self.queue.discard(task.task_id)
        changes: dict[str, Any] = {"status": new.value, "status_detail": "", **(fields or {})}
        if new is TaskStatus.RUNNING and task.started_at is None:
            changes.setdefault("started_at", now)
        if new.is_final and task.completed_at is None:
            changes.setdefault("completed_at", now)
        at_once = new in TOLD_AT_ONCE
        before = {} if at_once else {name: task.__dict__[name] for name in changes}
        assign(task, changes)
        self._change += 1
        # Watchers get the task as this change left it: at once if its Runner said so
        # (running, paused: as GetTask, which reads memory, already shows it; a Host that
        # crashed before storing it hears it again when the Runner reconnects), else once
        # it is stored: the Host's own decisions (a placement: after the end that freed
        # its room, in its node's order) and the end (its output closed, so a watcher
        # seeing it may read all of it).
        watched = task.task_id in self._watchers or self._list_watchers
        copy = (self._change, task.model_copy()) if watched else None
        if copy is not None and at_once:
            self._tell_watchers(copy)
            copy = None
        if new.is_final:
            self.active.pop(task.task_id, None)
            self._finishing[task.task_id] = task
            self._last_change.pop(task.task_id, None)
            if task.assigned_node:
                # Free for placement now: what is placed next is stored after this change
                # (the store orders a node's changes), so its dispatch never overtakes
                # this end.
                self.scheduler.release(task.assigned_node, task.task_id)
                if task.array_max_running:  # its array's next task may start: it has a place
                    self._positions = None
                self._on_released()
        else:
            self._last_change[task.task_id] = self._change
        row = {"task_id": task.task_id, **changes}
        event = _event(task.task_id, new.value, now, detail)
        return Change(task, old, new, self._change, copy, before, row, event)

    def stored(self, task: Task) -> asyncio.Future[None]:
        """Done once every change of ``task`` made so far is stored (its node's writes are
        stored in order): for an answer that must not come before the write."""
        return self.store.queue_write(_write_key(task), updates=[], events=[])

    def store_changes(self, changes: Sequence[Change]) -> Coroutine[Any, Any, None]:
        """Queue the changes' write now, as one, so that a node's changes are stored in the
        order they were made (they must share a write key, their node's); the coroutine
        awaits it, then tells metrics, webhooks and watchers (but for TOLD_AT_ONCE) of
        each. Await it."""
        keys = {_write_key(change.task) for change in changes}
        if len(keys) != 1:
            raise ValueError(f"store_changes: {len(keys)} write keys, not one")
        stored = self.store.queue_write(
            keys.pop(),
            updates=[change.row for change in changes],
            events=[change.event for change in changes],
        )
        self._unstored_until([(c.task.task_id, _unstored(c)) for c in changes], stored)
        return self._record(changes, stored)

    def _unstored_until(
        self, writes: list[tuple[int, _Unstored]], stored: asyncio.Future[None]
    ) -> None:
        """Show each task without its write's change until ``stored`` is done (also if it
        failed: what memory holds is then all the Host has). Called back before anyone
        awaiting ``stored`` resumes: they see it shown."""
        for task_id, write in writes:
            self._unstored.setdefault(task_id, []).append(write)
        stored.add_done_callback(partial(self._stored, writes))

    def _stored(self, writes: list[tuple[int, _Unstored]], _: asyncio.Future[None]) -> None:
        for task_id, write in writes:
            queued = self._unstored[task_id]
            for index, each in enumerate(queued):
                if each is write:
                    del queued[index]
                    break
            if not queued:
                del self._unstored[task_id]

    async def _record(self, changes: Sequence[Change], stored: asyncio.Future[None]) -> None:
        try:
            await stored
        finally:
            for change in changes:
                if change.new.is_final:
                    self._finishing.pop(change.task.task_id, None)
        # No turn in the bulk lane here: a node's writes complete in order, and so must
        # their changes be told (a task's "running" before its "completed").
        failed: Exception | None = None
        try:
            self.metrics.tasks_moved((c.old, c.new, c.task.kind) for c in changes)
        except Exception as exc:  # the watchers are still told; then it is raised
            failed = exc
        for change in changes:
            try:
                self._told(change)
            except Exception as exc:  # the others are still told; the first is raised
                failed = failed or exc
        if failed is not None:
            raise failed

    def _told(self, change: Change) -> None:
        """Tell webhooks and watchers (unless told already) of a stored change (the
        metrics are told of a write's changes together). Watchers that came since it was
        made get the task as stored now."""
        task, new = change.task, change.new
        if new.is_final:
            self.logs.close(task.task_id)
            self._notify_final(task)
            self._on_final(task)
        if change.watched is not None:
            self._tell_watchers(change.watched)
        elif new not in TOLD_AT_ONCE and (task.task_id in self._watchers or self._list_watchers):
            self._tell_watchers((change.number, self._stored_copy(task)))

    def _tell_watchers(self, watched: tuple[int, Task]) -> None:
        for queue in self._watchers.get(watched[1].task_id, ()):
            queue.put_nowait(watched)
        self._tell_lists(watched[1])

    def _tell_lists(self, task: Task) -> None:
        for queue in list(self._list_watchers):
            if queue.qsize() >= LIST_WATCH_BACKLOG:
                # Too far behind: drop it (its stream ends; the page lists again).
                self._list_watchers.discard(queue)
                queue.put_nowait(None)
            else:
                queue.put_nowait(task)

    def _notify_final(self, task: Task) -> None:
        self.notifier.notify(
            f"task.{task.status}",
            task={
                "task_id": str(task.task_id),
                "kind": task.kind,
                "status": task.status,
                "assigned_node": task.assigned_node,
                "exit_code": task.exit_code,
                "error_message": task.error_message,
                # The command line, so that an alert tells tasks apart (not just "sh");
                # empty for a VPS, which runs none.
                "command": truncated(shlex.join([task.command, *task.arguments]))
                if task.command
                else "",
                "owner": task.owner,
            },
        )

    # ----- queries ----------------------------------------------------------------------

    def held(self) -> Iterator[Task]:
        """Every task in memory: active, or final but not yet stored."""
        yield from self.active.values()
        yield from self._finishing.values()

    def of_batch(self, batch_id: int) -> list[Task]:
        """A batch's tasks that are in memory: active, or final but not yet stored."""
        return [t for t in self.held() if t.batch_id == batch_id]

    def finishing(self, task_id: int) -> Task | None:
        """The task if it is final in memory and its change not stored yet (held while the
        database is away)."""
        return self._finishing.get(task_id)

    def live(self, task_id: int) -> Task | None:
        """The task as it is in memory (newer than the store), if it is active or finishing."""
        return self.active.get(task_id) or self._finishing.get(task_id)

    def shown(self, task: Task) -> Task:
        """What a client is shown of a task the Host holds: as stored, without its changes
        not stored yet (a copy then; else ``task`` itself). Never waits for the store."""
        writes = self._unstored.get(task.task_id)
        if not writes:
            return task
        copy = task.model_copy()
        for write in reversed(writes):
            copy.__dict__.update(write.before)
        return copy

    def _stored_copy(self, task: Task) -> Task:
        shown = self.shown(task)
        return task.model_copy() if shown is task else shown

    def shown_status(self, task: Task) -> str:
        """``shown(task).status``, without a copy."""
        for write in self._unstored.get(task.task_id, ()):
            if "status" in write.before:
                return str(write.before["status"])
        return task.status

    def shown_as_held(self, record: Task) -> Task:
        """A task read from the store, as the Host shows it now: what it holds of it,
        as stored (``shown``), if it holds it (a change stored since the read is shown)."""
        live = self.live(record.task_id)
        return record if live is None else self.shown(live)

    async def get(self, task_id: int) -> Task:
        """The task itself (as held in memory, its changes not stored yet too), for the
        Host's own use; what a client is shown of it is ``shown``."""
        await self.arrival(task_id)
        task = self.live(task_id)
        if task is not None:
            return task
        record, _ = await self.store.read(self.store.get_task, task_id)
        if record is None:
            raise NotFound(f"task_id: task {task_id} not found")
        return record

    async def get_with_events(self, task_id: int) -> tuple[Task, list[TaskEventRecord]]:
        """The task as shown to a client (``shown``), and its stored events."""
        await self.arrival(task_id)
        record, events = await self.store.read(self.store.get_task, task_id)
        if record is None:
            raise NotFound(f"task_id: task {task_id} not found")
        return self.shown_as_held(record), events

    def on_node(self, hostname: str) -> list[Task]:
        return [t for t in self.active.values() if t.assigned_node == hostname]

    def queue_position(self, task: Task) -> int:
        """1-based queue position of one task, without ranking the queue. 0 unless pending,
        and 0 for a task held back: its batch held, or its array's cap filled by its tasks
        holding resources and those queued ahead of it. Such a task starts only once its
        batch is let go or one of its array's own ends, so it is not counted ahead of
        others either (docs/scheduling.md, "The queue")."""
        held = self.scheduler.held
        if task.task_id not in self.pending or task.batch_id in held:
            return 0
        if self._positions is not None:
            return self._positions.get(task.task_id, 0)
        room = self._room(task.batch_id, task.array_max_running)
        if room == 0:
            return 0
        mine = (-task.priority, task.task_id)
        ahead = 0
        capped_ahead: Counter[int] = Counter()  # of each capped array, its tasks ahead
        caps: dict[int, int] = {}
        for t in self.pending.values():
            if (-t.priority, t.task_id) < mine and t.batch_id not in held:
                if t.array_max_running:
                    capped_ahead[t.batch_id] += 1
                    caps[t.batch_id] = t.array_max_running
                else:
                    ahead += 1
        if room > 0 and capped_ahead[task.batch_id] >= room:
            return 0
        # Of an array's tasks ahead, only those its cap lets start before one of its own ends.
        rooms = (min(n, self._room(batch, caps[batch])) for batch, n in capped_ahead.items())
        return ahead + sum(rooms) + 1

    def queue_positions(self) -> dict[int, int]:
        """1-based queue position of every pending task not held back (as
        ``queue_position``; recomputed only after changes)."""
        if self._positions is None:
            held = self.scheduler.held
            taken: Counter[int] = Counter()
            positions: dict[int, int] = {}
            for r in self.queue.ranked():
                if r.group in held:
                    continue
                if r.group_cap:
                    if taken[r.group] >= self._room(r.group, r.group_cap):
                        continue
                    taken[r.group] += 1
                positions[r.task_id] = len(positions) + 1
            self._positions = positions
        return self._positions

    def _room(self, batch_id: int, cap: int) -> int:
        """How many more of an array's tasks its cap lets hold resources now (-1: no cap)."""
        if not cap:
            return -1
        return max(0, cap - self.scheduler.holding(batch_id))

    def positions_changed(self, batch_id: int) -> None:
        """The queue's positions are to be ranked again: a batch was held or let go. Live
        lists hear of one of its pending tasks (no status change: its place changed), on
        which they rank their pending tasks again."""
        self._positions = None
        if self._list_watchers:
            for task in self.pending.values():
                if task.batch_id == batch_id:
                    self._tell_lists(task.model_copy())
                    return

    async def watch(self, task_id: int) -> AsyncIterator[Task]:
        """Yield the task now, then a copy of it after every status change, in order,
        until it is final: every transition is sent, whenever the consumer reads."""
        await self.arrival(task_id)
        queue: asyncio.Queue[tuple[int, Task]] = asyncio.Queue()
        self._watchers.setdefault(task_id, set()).add(queue)
        try:
            live = self.live(task_id)
            if live is None:  # final (or unknown: NotFound): nothing more will change
                yield await self.get(task_id)
                return
            # Stored changes are in this copy (as stored, ``shown``); later ones, and those
            # not stored yet, arrive numbered once stored.
            seen, task = self._seen(live), self._stored_copy(live)
            while True:
                yield task
                if TaskStatus(task.status).is_final:
                    return
                number, task = await queue.get()
                while number <= seen:
                    number, task = await queue.get()
                seen = number
        finally:
            watchers = self._watchers.get(task_id)
            if watchers is not None:
                watchers.discard(queue)
                if not watchers:
                    del self._watchers[task_id]

    def _seen(self, task: Task) -> int:
        """The number of the last change of ``task`` that is stored."""
        for write in self._unstored.get(task.task_id, ()):
            if write.number:
                return write.number - 1
        return self._last_change.get(task.task_id, 0)

    async def watch_all(self, announce: bool = False) -> AsyncIterator[Task | None]:
        """Every task as it is submitted and after each status change, from now on; first
        None, with ``announce``, once the watcher is in place. Ends with ``WatcherBehind``
        when more than LIST_WATCH_BACKLOG changes wait unread."""
        queue: asyncio.Queue[Task | None] = asyncio.Queue()
        self._list_watchers.add(queue)
        try:
            if announce:
                yield None
            while (task := await queue.get()) is not None:
                yield task
            raise WatcherBehind(
                f"more than {LIST_WATCH_BACKLOG} task changes waited for this watcher: "
                "list the tasks again and watch anew"
            )
        finally:
            self._list_watchers.discard(queue)

    async def wait_until(
        self, task_id: int, done: Callable[[Task], bool], seconds: float
    ) -> Task | None:
        async def waiter() -> Task | None:
            async for task in self.watch(task_id):
                if done(task):
                    return task
            return None

        try:
            return await asyncio.wait_for(waiter(), seconds)
        except TimeoutError:
            return None
