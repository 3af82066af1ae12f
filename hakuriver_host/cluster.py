"""The Host's coordinator: it wires admission, placement, the task book and the Runner links.

Every public method here is what a servicer may call. State changes happen on the event
loop; the database and files are reached through their adapters (store, log_store), which
run off the loop. A task's status changes only through ``TaskBook.move``; what a Runner's
report means is decided by the pure ``task_machine.on_report``.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Coroutine
from datetime import datetime
from functools import partial
from typing import Any

from hakuriver_common.config import Config
from hakuriver_common.environments import NULL_CONTAINER
from hakuriver_common.ids import IdGenerator
from hakuriver_common.limits import MAX_SUBMIT_REPLY_TASKS
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import ACTIVE_STATUSES, TaskKind, TaskNetwork, TaskStatus
from hakuriver_common.timestamps import from_timestamp
from hakuriver_common.wording import counted
from hakuriver_host.access import Access
from hakuriver_host.admission import NodeShape, Rights, admit
from hakuriver_host.audit import AuditLog
from hakuriver_host.bulk_lane import SMALL, BulkLane
from hakuriver_host.convert import records_of
from hakuriver_host.errors import (
    FailedPrecondition,
    Hidden,
    InvalidArgument,
    NotFound,
    Unavailable,
)
from hakuriver_host.group_commit import HeldPause
from hakuriver_host.identity import Principal, outliving
from hakuriver_host.log_store import LogStore
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.models import Task, TaskEventRecord, cutoff_before, utcnow
from hakuriver_host.nodes import Forgotten, NodeTable, NodeView
from hakuriver_host.prepared_ahead import PreparedAhead
from hakuriver_host.retention import MAX_PRUNE_DAYS, Pruned, TaskRetention
from hakuriver_host.runner_link import RunnerLink
from hakuriver_host.runners import LOG_STREAMS, RunnerGateway
from hakuriver_host.scheduler import Allocation, NodeResources, Request, Scheduler
from hakuriver_host.ssh_tickets import SshTickets, Ticket
from hakuriver_host.store import (
    DATABASE_UNREACHABLE,
    Requests,
    Store,
    database_unavailable,
    log_refusal,
)
from hakuriver_host.submit_requests import (
    RequestIds,
    Submitted,
    Turn,
    replayed,
    request_digest,
    request_key,
    same_request,
    still_kept,
)
from hakuriver_host.tarball_index import TarballIndex
from hakuriver_host.task_book import (
    OFF_LOOP_TASKS,
    Change,
    TaskBook,
    allocation_of,
    request_of,
)
from hakuriver_host.task_machine import (
    KILLABLE,
    PLACED_STATUSES,
)
from hakuriver_host.tunnels import Tunnel, TunnelHub
from hakuriver_host.webhooks import Notifier

log = logging.getLogger(__name__)
# How long a stopping Host lets submissions being stored and queued finish.
ADDING_GRACE_SECONDS = 10.0
STOPPING = "the Host is stopping: submit again once it is back"
PRUNE_STOPPING = "the Host is stopping: prune again once it is back"
# Placements made in one slice of the bulk lane (bulk_lane): ~1.5 ms of the event loop.
PLACEMENT_SLICE = 64
# Tasks placed on one node, with the coroutine that stores their placements (one write).
Placed = tuple[list[Task], Coroutine[Any, Any, None]]
# A submission of at most this many tasks that arrives during a placement pass, or finds
# tasks queued, is placed at once when nothing queued ahead of it could use its nodes
# (Scheduler.place_now), instead of waiting for that pass (a job array's takes hundreds of
# milliseconds) and the next, which would place the array's tasks first. Into an empty
# queue, the next pass places it, together with whatever else came.
PLACE_AT_ONCE = 16


def _placement(allocation: Allocation) -> tuple[dict[str, Any], str]:
    """A placed task's fields and its event's detail."""
    fields = {
        "assigned_node": allocation.hostname,
        "assigned_cpus": list(allocation.cpus),
        "required_gpus": list(allocation.gpus),
    }
    return fields, f"placed on {allocation.hostname}"


MAX_LIST_LIMIT = 1000
DEFAULT_LIST_LIMIT = 100
# Task ids a refused deletion of an environment in use names (and how many more).
IN_USE_IDS_SHOWN = 3


def _close_unstarted(placed: list[Placed], _storing: asyncio.Task[None]) -> None:
    """Close the placements' writes that never started: the Host stopped, cancelling the
    task that stores them, perhaps before it started (a pass just before the stop). Stored
    or not, their tasks are placed again when the Host starts."""
    for _, stored in placed:
        if inspect.getcoroutinestate(stored) == inspect.CORO_CREATED:
            stored.close()


def _failure_logged(what: str) -> Callable[[asyncio.Task[None]], None]:
    """A done callback for work nobody awaits any more: its failure is logged, as nobody
    else will hear of it (``log_refusal``: one line for the database away, else a bug's
    traceback)."""

    def done(work: asyncio.Task[None]) -> None:
        failure = None if work.cancelled() else work.exception()
        if failure is not None:
            log_refusal(log, failure, "%s failed", what)

    return done


def require_task_id(task_id: int) -> int:
    if task_id <= 0:
        raise InvalidArgument(f"task_id: must be a positive integer, got {task_id}")
    return task_id


def _whose_tasks(owner: str, who: Principal, verb: str) -> str:
    """The owner a request's ``owner`` field leaves ``who`` to ``verb`` the tasks of ("":
    everybody's): any for operators; for a user, their own, and naming another is refused
    (the same answer whoever is named: no user list), not answered with their own tasks as
    if they were that user's."""
    if who.sees_all_tasks:
        return owner
    if owner and owner != who.name:
        raise InvalidArgument(f"owner: users {verb} only their own tasks; leave it empty")
    return who.name


def _ids_not_negative(request: tpb.ListTasksRequest, *fields: str) -> None:
    """Refuse a negative id or index: none matches, and an empty answer would read as "no
    more tasks" (a paging cursor with the wrong sign)."""
    for field in fields:
        value = getattr(request, field)
        if value < 0:
            raise InvalidArgument(f"{field}: must not be negative, got {value}")


class _AdmissionView:
    """The cluster as admission sees it (admission.ClusterView)."""

    def __init__(self, cluster: Cluster) -> None:
        docker = cluster.config.docker
        self.default_container = docker.default_container_name
        self.tasks_privileged = docker.tasks_privileged
        self.default_network = TaskNetwork(cluster.config.auth.default_task_network)
        self._nodes = cluster.nodes
        self._tarballs = cluster.tarballs
        self.never_fits: Callable[[Request], str | None] = cluster.scheduler.never_fits

    def node(self, hostname: str) -> NodeShape | None:
        return self._nodes.shape(hostname)

    def node_names(self) -> list[str]:
        return list(self._nodes.nodes)

    def has_environment(self, name: str) -> bool:
        return name in self._tarballs.names() or self._nodes.has_environment(name)

    def environment_names(self) -> list[str]:
        return sorted(self._tarballs.names() | self._nodes.environment_names())


class Cluster:
    def __init__(self, config: Config, store: Store, logs: LogStore, metrics: HostMetrics) -> None:
        self.config = config
        self.store = store
        self.logs = logs
        self.metrics = metrics
        self.scheduler = Scheduler(config.scheduling.starvation_seconds)
        metrics.allocations_of(self.scheduler)
        self.notifier = Notifier(config.webhooks)
        self.ids = IdGenerator()
        self.access = Access(config, store)
        self.audit = AuditLog(store)
        self.retention = TaskRetention(store, metrics, self.scheduler)
        self.ssh_tickets = SshTickets(config.timing.ssh_ticket_seconds)
        self.nodes = NodeTable(
            self.scheduler, metrics, self.notifier, config.timing.heartbeat_interval
        )
        self.lane = BulkLane()
        self.book = TaskBook(
            store,
            logs,
            metrics,
            self.notifier,
            self.scheduler,
            self._finished,
            self.kick,
            self.lane,
        )
        self.tarballs = TarballIndex(config.paths.path("shared_dir") / config.docker.container_dir)
        self.tunnels = TunnelHub()
        self.runners = RunnerGateway(
            config,
            store,
            logs,
            metrics,
            self.nodes,
            self.book,
            self.tunnels,
            self.kick,
            self.access,
            self.audit,
        )
        self._admission = _AdmissionView(self)
        self._kick = asyncio.Event()
        self.ahead = PreparedAhead()
        self.scheduler.made_ready = self.ahead.allocations
        # Submitters waiting for the next placement pass to finish.
        self._pass_waiters: list[asyncio.Future[None]] = []
        self._stopped = False
        self._adding_deadline: float | None = None
        self._background: list[asyncio.Task[None]] = []
        # Passes whose placements are being stored and dispatched.
        self._storing: set[asyncio.Task[None]] = set()
        # Batch holds are set one at a time (each stored before it is made so).
        self._holds = asyncio.Lock()
        # Drains and undrains are made one at a time: one that fails takes back only its
        # own change, never one made meanwhile.
        self._drains = asyncio.Lock()
        # Submissions being stored (and queued): finished, not cancelled, when the Host stops;
        # closed once those finished.
        self._adding: set[asyncio.Task[None]] = set()
        # Submissions under way, from their call to their answer.
        self._submits: set[asyncio.Future[None]] = set()
        self._request_ids = RequestIds()
        self._closed = False
        # A placement pass is deciding (it yields to the loop every PLACEMENT_SLICE).
        self._passing = False

    # ----- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        await self.store.run(self.store.migrate)
        self.runners.cluster_id = await self.store.run(self.store.cluster_id)
        await self.access.load()
        self.nodes.load(await self.store.run(self.store.load_nodes))
        active = [s.value for s in ACTIVE_STATUSES]
        self.book.load(await self.store.run(self.store.load_tasks_in, active))
        self.scheduler.held = await self.store.run(self.store.held_batches)
        for task in self.book.active.values():
            if (
                TaskStatus(task.status) in PLACED_STATUSES
                and task.assigned_node in self.nodes.nodes
            ):
                request = request_of(task)
                self.scheduler.allocate(task.task_id, allocation_of(task), request.group)
        for (status, kind), count in (await self.store.run(self.store.count_tasks)).items():
            self.metrics.tasks.labels(status=status, kind=kind).set(count)
            if status == TaskStatus.PENDING:
                self.metrics.queue_depth.inc(count)
        log.info(
            "loaded %s and %s",
            counted(len(self.nodes.nodes), "node"),
            counted(len(self.book.active), "active task"),
        )
        self.notifier.start()
        self._background = [
            asyncio.create_task(self._placement_loop(), name="placement"),
            asyncio.create_task(self.runners.run_monitor(), name="runner-monitor"),
            asyncio.create_task(self.tarballs.keep_fresh(), name="tarball-index"),
            asyncio.create_task(
                self.audit.keep_for(self.config.timing.forget_audit_days), name="audit-forget"
            ),
            asyncio.create_task(
                self.retention.keep_for(self.config.timing.forget_tasks_days),
                name="tasks-forget",
            ),
        ]
        await self.tarballs.first_read()
        self.kick()

    async def finish_submissions(self) -> None:
        """Refuse new submissions and let those under way finish (up to ADDING_GRACE_SECONDS
        from the first call), so their submitters get their answer (their tasks stay
        pending), also those not yet at their write (one after the grace is refused,
        ``_submission``). The Host calls it before closing the dashboard's port, which
        carries the CLI's submissions."""
        self._stopped = True
        if self._adding_deadline is None:
            self._adding_deadline = time.monotonic() + ADDING_GRACE_SECONDS
        while (self._adding or self._submits) and (
            left := self._adding_deadline - time.monotonic()
        ) > 0:
            await asyncio.wait({*self._adding, *self._submits}, timeout=left)

    async def stop(self) -> None:
        await self.finish_submissions()
        await self.notifier.stop()
        self._closed = True
        for task in [*self._background, *self._storing, *self._adding]:
            task.cancel()
        await asyncio.gather(
            *self._background, *self._storing, *self._adding, return_exceptions=True
        )
        # Submitters still waiting for a pass answer now: their tasks are stored, pending.
        for waiter in self._pass_waiters:
            if not waiter.done():
                waiter.set_result(None)
        for node in self.nodes.nodes.values():
            if node.link is not None:
                node.link.close()
        # Changes held for a database that is away are tried once more, not waited for: a
        # Runner's report not stored is reported again when it reconnects (it keeps the
        # task until the Host releases it).
        self.store.stop_holding()
        await self.runners.settle()
        self.audit.close()
        await self.audit.wait_written()

    # ----- tasks ------------------------------------------------------------------------

    def _rights(self, who: Principal) -> Rights:
        return Rights(who.sees_all_tasks, tuple(self.config.auth.user_mount_roots))

    async def submit(self, req: tpb.SubmitTaskRequest, who: Principal) -> Submitted:
        """Admit, store and queue the tasks of a submission, owned by ``who``; answer once
        each is either placed or known to wait: after the placement pass that considered
        them, or at once when nothing queued ahead could use their nodes (PLACE_AT_ONCE;
        a single task so placed is stored placed, ``_add_placed``). One with a request_id
        that ``who`` used already is answered with the tasks it created then."""
        if self._stopped:
            raise Unavailable(STOPPING)
        # A stopping Host waits for it (finish_submissions), also before its write starts.
        answered = asyncio.get_running_loop().create_future()
        self._submits.add(answered)
        try:
            return await self._submit(req, who)
        finally:
            self._submits.discard(answered)
            answered.set_result(None)

    async def _submit(self, req: tpb.SubmitTaskRequest, who: Principal) -> Submitted:
        if not req.request_id:
            return await self._create(req, who, None)
        key = request_key(req, who.name)
        turn = await self._request_ids.turn(key, request_digest(req))
        try:
            stored = await self.store.run(self.store.find_request, *key)
            if stored is None:
                return await self._create(req, who, turn)
            same_request(stored, turn.digest)
            found = await self.store.run(
                self.store.submitted_tasks, stored.batch_id, stored.task_id, MAX_SUBMIT_REPLY_TASKS
            )
            still_kept(stored, found)
            target, detail = replayed(stored, who.actor)
            self.audit.record(who, "task.submit", target, detail=detail)
            if any(self._unheld(task) for task in found):
                await self._take_in(stored.batch_id, stored.task_id)
            tasks = [self.book.shown_as_held(task) for task in found]
            return Submitted(tasks, stored.batch_id, stored.created)
        finally:
            if not turn.handed:
                turn.release()

    def _unheld(self, task: Task) -> bool:
        """A task read from the store that has not ended, which the Host does not hold."""
        return TaskStatus(task.status) in ACTIVE_STATUSES and self.book.live(task.task_id) is None

    async def _take_in(self, batch_id: int, task_id: int) -> None:
        """A submission stored by a commit the Host took for failed (a PostgreSQL connection
        cut before COMMIT's answer: its caller was answered UNAVAILABLE): its tasks are in
        the database, not held, so never placed until the Host restarts. Once the database
        answers (``_in_doubt``), or when it is sent again (with its request_id), it is
        taken in as a restart would: its pending tasks queued; one placed at once holds its
        place again if that is free, else fails saying so."""
        active = [s.value for s in ACTIVE_STATUSES]
        found = await self.store.run(self.store.submitted_tasks_in, batch_id, task_id, active)
        unheld = [task for task in found if self.book.live(task.task_id) is None]
        if not unheld:
            return
        log.warning(
            "%s stored by a commit this Host took for failed (its database connection was "
            "cut): taken in",
            counted(len(unheld), "task"),
        )
        self.book.load(unheld)
        for kind, count in Counter(task.kind for task in unheld).items():
            self.metrics.tasks_added(kind, count)
        for task in unheld:
            if task.status == TaskStatus.ASSIGNING:
                await self._placed_again(task)
        self.kick()

    def _in_doubt(self, batch_id: int, task_id: int, adding: asyncio.Task[None]) -> None:
        """A submission's write failed with its PostgreSQL connection cut: it may have been
        committed all the same. Its tasks found stored once the database answers again are
        taken in (``_take_in``), whether or not the submission is sent again."""
        failure = None if adding.cancelled() else adding.exception()
        if failure is None or database_unavailable(failure) != DATABASE_UNREACHABLE:
            return
        if not self._closed:
            settling = self._storing_task(self._take_in_once_answered(batch_id, task_id))
            settling.add_done_callback(_failure_logged("taking in a submission cut short"))

    async def _take_in_once_answered(self, batch_id: int, task_id: int) -> None:
        pause = HeldPause()
        while True:
            try:
                await self._take_in(batch_id, task_id)
                return
            except Exception as exc:
                if database_unavailable(exc) is None:
                    raise
            await asyncio.sleep(pause.next())

    async def _placed_again(self, task: Task) -> None:
        """A task taken in (``_take_in``) that was stored placed: it holds its place again
        and is dispatched, or fails if that place was given to another task meanwhile."""
        self.metrics.tasks_moved([(TaskStatus.PENDING, TaskStatus.ASSIGNING, task.kind)])
        allocation = allocation_of(task)
        if self.scheduler.is_free(allocation):
            self.scheduler.allocate(task.task_id, allocation, task.batch_id)
            self._dispatch(task)
            return
        why = (
            f"its place on {allocation.hostname} went to another task while this Host took "
            "its submission for not stored (its database connection was cut as it was "
            "committed): submit it again"
        )
        await self.book.move(task, TaskStatus.FAILED, "its place was taken", error_message=why)

    async def _create(
        self, req: tpb.SubmitTaskRequest, who: Principal, turn: Turn | None
    ) -> Submitted:
        wanted = req.container_name or self.config.docker.default_container_name
        if wanted != NULL_CONTAINER and not self._admission.has_environment(wanted):
            await self.tarballs.read_again()  # a tarball copied in since the last reading?
        plan = admit(req, self._admission, self._rights(who))
        count = len(plan.tasks())
        # One range: an array's (or a batch's) tasks follow its id, whatever the clock does
        # between two calls.
        batched = count > 1 or plan.array
        ids = self.ids.next_ids(count + 1 if batched else count)
        batch_id, task_ids = (ids[0], ids[1:]) if batched else (0, ids)
        vps = plan.kind is TaskKind.VPS

        def output_paths(task_id: int) -> tuple[str, str]:
            if vps:
                return "", ""
            return self.logs.paths(task_id)

        args = (plan, task_ids, batch_id, utcnow(), output_paths, who.name)
        if count >= OFF_LOOP_TASKS:
            records = await asyncio.to_thread(records_of, *args)
        else:
            records = records_of(*args)
        if not vps:
            self.logs.expect(task_ids)
        answer = Submitted(records, batch_id, count)
        requests = () if turn is None else turn.rows(batch_id, task_ids)
        if (
            count == 1
            and not plan.array
            and await self._add_placed(records[0], who, requests, turn)
        ):
            return answer
        what = f"array {batch_id} ({count} tasks)" if plan.array else ",".join(map(str, task_ids))
        # Shielded: once its write is queued its tasks are stored, and they must then be
        # queued whole, audited and considered by a pass, submitter gone or not (a call
        # cancelled at its deadline while the queueing took turns in the bulk lane).
        stored = self._add(records, who, what, requests)
        await self._submission(stored, turn, (batch_id, task_ids[0]))
        waiting = self._passing or len(self.book.pending) > count
        if not (count <= PLACE_AT_ONCE and waiting and self._place_at_once(records)):
            await self._placement_pass()
        return answer

    def queue_position(self, task: Task) -> int:
        return self.book.queue_position(task)

    def waiting_reason(self, task: Task, position: int | None = None) -> str:
        """Why a queued task is not placed, when it is not just its turn for resources
        (what Slurm's reason column says): something its owner can act on or wait for.
        ``position``: its queue position, when the caller has it (a capped array's task
        without one waits for its cap). One shown pending (``TaskBook.shown``) but placed
        already, its placement not stored yet, waits for nothing of this."""
        if task.task_id not in self.book.pending:
            return ""
        capped = False
        if task.array_max_running:
            capped = (self.book.queue_position(task) if position is None else position) == 0
        return self.scheduler.waiting_reason(request_of(task), capped)

    @staticmethod
    def _visible(task: Task, who: Principal) -> Task:
        """The task, if ``who`` may see it; otherwise exactly the answer for a missing one."""
        if not who.owns(task.owner):
            raise Hidden(f"task_id: task {task.task_id} not found")
        return task

    async def get_task(self, task_id: int, who: Principal) -> Task:
        return self._visible(await self.book.get(require_task_id(task_id)), who)

    async def get_task_with_events(
        self, task_id: int, who: Principal
    ) -> tuple[Task, int, list[TaskEventRecord]]:
        task, events = await self.book.get_with_events(require_task_id(task_id))
        self._visible(task, who)
        return task, self.book.queue_position(task), events

    async def count_tasks(
        self, req: tpb.CountTasksRequest, who: Principal
    ) -> dict[TaskStatus, int]:
        """How many tasks ``who`` may see are in each status (non-zero counts, in status
        order). Unfinished ones are counted in memory, as the Host shows them (no read of
        the store, whose thread its writes share; an end not stored yet is not counted as
        an end); finished ones as stored, through an index of status and completion time.
        Memory is read before the store, so a task whose end is stored in between is
        counted once, as stored (the store says which of those ended in memory it has)."""
        try:
            wanted = {TaskStatus.from_pb(s) for s in req.statuses} or set(TaskStatus)
        except ValueError as exc:
            raise InvalidArgument(f"statuses: {exc}") from None
        submitted = from_timestamp(req, "submitted_after", InvalidArgument)
        completed = from_timestamp(req, "completed_after", InvalidArgument)
        owner = _whose_tasks(req.owner, who, "count")
        in_memory: list[tuple[int, TaskStatus]] = []
        if completed is None:  # an unfinished task has not completed
            for task in self.book.held():
                status = TaskStatus(self.book.shown_status(task))
                if (
                    status in wanted
                    and (not owner or task.owner == owner)
                    and (submitted is None or task.submitted_at >= submitted)
                ):
                    in_memory.append((task.task_id, status))
        found: Counter[TaskStatus] = Counter()
        final = [s.value for s in wanted if s.is_final]
        ended: set[int] = set()
        if final:
            ending = [t.task_id for t in self.book.held() if TaskStatus(t.status).is_final]
            stored, ended = await self.store.read(
                self.store.count_ended, final, submitted, owner, completed, ending
            )
            for (value, _), count in stored.items():
                found[TaskStatus(value)] += count
        found.update(status for task_id, status in in_memory if task_id not in ended)
        return {s: found[s] for s in TaskStatus if found[s]}

    async def list_tasks(
        self, req: tpb.ListTasksRequest, who: Principal
    ) -> tuple[list[tuple[Task, int]], int]:
        """Tasks matching the filters, newest first, each with its queue position; a user
        sees only their own. With the id to read on from when the page is full (else 0)."""
        limit = req.limit or DEFAULT_LIST_LIMIT
        if not 0 < limit <= MAX_LIST_LIMIT:
            raise InvalidArgument(f"limit: must be between 1 and {MAX_LIST_LIMIT}, got {limit}")
        _ids_not_negative(req, "batch_id", "before_task_id", "array_index")
        if req.HasField("array_index") and not req.batch_id:
            raise InvalidArgument(
                "array_index: give the array's id in batch_id too; an index alone is one "
                "task of every array"
            )
        try:
            statuses = [TaskStatus.from_pb(s).value for s in req.statuses]
        except ValueError as exc:
            raise InvalidArgument(f"statuses: {exc}") from None
        try:
            kind = "" if req.kind == task_pb2.TASK_KIND_UNSPECIFIED else TaskKind.from_pb(req.kind)
        except ValueError as exc:
            raise InvalidArgument(f"kind: {exc}") from None
        after = from_timestamp(req, "submitted_after", InvalidArgument)
        owner = _whose_tasks(req.owner, who, "list")
        records = await self.store.read(
            self.store.list_tasks,
            statuses,
            req.node,
            req.batch_id,
            limit,
            req.before_task_id,
            kind,
            after,
            owner,
            req.array_index if req.HasField("array_index") else None,
        )
        positions = self.book.queue_positions()
        # Matched as stored, answered as the Host shows them now (``TaskBook.shown``: a
        # change stored since the read is shown, one not stored yet is not). The page reads
        # on from the last one matched.
        tasks = [self.book.shown_as_held(r) for r in records]
        read_on = records[-1].task_id if len(records) == limit else 0
        return [
            (task, positions.get(task.task_id, 0))
            for task in tasks
            if (not statuses or task.status in statuses)
            and (not req.node or task.assigned_node == req.node)
        ], read_on

    async def watch(self, task_id: int, who: Principal) -> AsyncIterator[Task]:
        """The task now and after every status change, until it is final."""
        await self.get_task(task_id, who)
        async for task in self.book.watch(task_id):
            yield task

    async def watch_all(
        self, owner: str, who: Principal, announce: bool = False
    ) -> AsyncIterator[Task | None]:
        """Every task ``who`` may see (only ``owner``'s if given: a user's own anyway), as
        it changes; first None, with ``announce``, once the watch is in place. A deleted
        user's name is watched as ListTasks lists it: their tasks keep running."""
        only = _whose_tasks(owner, who, "watch")
        if only and only != who.name and not await self.access.known(only):
            raise NotFound(f"owner: no user named {owner!r}")
        async for task in self.book.watch_all(announce):
            if task is None or not only or task.owner == only:
                yield task

    async def read_log(
        self,
        task_id: int,
        stream: int,
        offset: int,
        follow: bool,
        who: Principal,
        max_lag: int = 0,
    ) -> AsyncIterator[tuple[int, bytes]]:
        """(offset, bytes) of a task's output from ``offset``; with ``follow``, until the
        task ends; with ``max_lag``, skipping ahead to stay within that many bytes of the
        end."""
        task = await self.get_task(task_id, who)
        if task.kind == TaskKind.VPS:  # a follower would otherwise wait for its whole life
            raise FailedPrecondition(
                f"task {task.task_id} is a VPS: it writes no output (reach it with "
                f"hakuriver.ssh {task.task_id})"
            )
        name = LOG_STREAMS.get(stream)
        if name is None:
            raise InvalidArgument("stream: must be STDOUT or STDERR")
        if offset < 0:
            raise InvalidArgument(f"offset: must not be negative, got {offset}")
        if max_lag < 0:
            raise InvalidArgument(f"max_lag_bytes: must not be negative, got {max_lag}")
        # Followed until the end is stored (its followers are closed then), as it is shown:
        # one not stored yet (held while the database is away) is not shown ended.
        is_final = TaskStatus(self.book.shown_status(task)).is_final
        async for piece in self.logs.read(task.task_id, name, offset, follow, is_final, max_lag):
            yield piece

    async def prune_tasks(self, days: float, dry_run: bool, who: Principal) -> Pruned:
        """Forget the tasks that ended more than ``days`` ago (dry: count them). Carried
        through if the caller goes first (a long history takes longer than a deadline):
        what went is audited when it ends."""
        if not 0 < days <= MAX_PRUNE_DAYS:
            raise InvalidArgument(
                f"older_than_days: must be more than 0 and at most {MAX_PRUNE_DAYS:,} "
                f"(100 years), got {days:g}"
            )
        if self._closed:
            raise Unavailable(PRUNE_STOPPING)
        pruned = Pruned()
        work = self._storing_task(self._prune(cutoff_before(days), dry_run, pruned, who))
        try:
            await asyncio.shield(work)
        except asyncio.CancelledError:
            if work.cancelled():
                raise Unavailable(PRUNE_STOPPING) from None
            work.add_done_callback(_failure_logged("a prune whose caller left"))
            raise
        return pruned

    async def _prune(self, cutoff: datetime, dry_run: bool, pruned: Pruned, who: Principal) -> None:
        try:
            await self.retention.prune(cutoff, dry_run, pruned)
        finally:
            if not dry_run:  # what went, also when the rest could not
                target = f"ended before {cutoff:%Y-%m-%d %H:%M:%S} UTC"
                self.audit.record(who, "task.prune", target, detail=str(pruned))

    # ----- control ----------------------------------------------------------------------

    async def _active_task(
        self, task_id: int, action: str, allowed: frozenset[TaskStatus], who: Principal
    ) -> Task:
        task = await self.get_task(task_id, who)
        if TaskStatus(task.status) not in allowed:
            await self._refuse(task, action, allowed)
        return task

    async def _refuse(self, task: Task, action: str, allowed: frozenset[TaskStatus]) -> None:
        """Refuse ``action`` on a task in none of the ``allowed`` statuses, naming its status
        once that is stored."""
        await self._refused_as_shown(task)
        names = ", ".join(s.value for s in TaskStatus if s in allowed)
        why = f"task {task.task_id} is {task.status}: only {names} tasks can be {action}"
        if task.status == TaskStatus.UNKNOWN:
            why += (
                f"; its Runner {task.assigned_node} is away (the node is offline): "
                "try again once it is back"
            )
        raise FailedPrecondition(why)

    async def _refused_as_shown(self, task: Task) -> None:
        """Return once the status a call about ``task`` is refused for is stored, so shown
        (an end held while the database is away: refused once it is back)."""
        if self.book.shown_status(task) != task.status:
            await self.book.stored(task)

    async def kill(self, task_id: int, who: Principal) -> Task:
        task = await self._active_task(task_id, "killed", KILLABLE, who)
        if self._closed:
            raise Unavailable("the Host is stopping: kill again once it is back")
        self.audit.record(who, "task.kill", task_id)
        # A pending task is killed in memory now (a second kill is refused), stored below.
        if task.status == TaskStatus.PENDING:
            detail = f"killed by {who.name} while pending"
            work = self.book.apply(task, TaskStatus.KILLED, detail, killed_by=who.name)
        else:
            work = self._kill_placed(task, who.name)
        # Carried through by the Host, its caller gone or not (a deadline shorter than the
        # kill's grace): the task ends killed, or as its Runner reports it, unless the
        # Host stops first (then it is killed when its Runner reconnects, see
        # ``RunnerGateway._reconcile``).
        carrying = self._storing_task(work)
        try:
            await asyncio.shield(carrying)
        except asyncio.CancelledError:
            if carrying.cancelled():
                raise Unavailable(
                    "the Host stopped before the kill ended: kill again once it is back"
                ) from None
            carrying.add_done_callback(_failure_logged("a kill whose caller left"))
            raise
        return task

    async def _kill_placed(self, task: Task, by: str) -> None:
        if TaskStatus(task.status).is_final:  # it ended meanwhile
            return
        await self.book.persist(task, kill_requested=True, killed_by=by)
        # An unknown task's Runner is away: killed now; the Runner discards it on return.
        away = task.status == TaskStatus.UNKNOWN
        link = None if away else self.nodes.link_of(task.assigned_node)
        grace = self.config.timing.kill_grace_seconds
        if link is not None:
            link.kill(task.task_id, grace)
            await self.book.wait_until(
                task.task_id,
                lambda t: TaskStatus(t.status).is_final,
                grace + self.config.timing.control_timeout_seconds,
            )
        if not TaskStatus(task.status).is_final:
            why = "runner did not confirm" if link is not None else "runner not connected"
            await self.book.move(task, TaskStatus.KILLED, detail=f"killed by {by} ({why})")

    async def _control(
        self,
        task_id: int,
        action: str,
        allowed: TaskStatus,
        goal: TaskStatus,
        send: Callable[[RunnerLink, int], None],
        who: Principal,
    ) -> Task:
        task = await self._active_task(task_id, action, frozenset({allowed}), who)
        self.audit.record(who, f"task.{send.__name__}", task_id)
        link = self.nodes.link_of(task.assigned_node)
        if link is None:
            raise Unavailable(f"runner {task.assigned_node} is not connected; try again later")
        send(link, task_id)
        await self.book.wait_until(
            task_id, lambda t: t.status != allowed, self.config.timing.control_timeout_seconds
        )
        if TaskStatus(task.status).is_final:  # it ended meanwhile: as if the call came later
            await self._refuse(task, action, frozenset({allowed}))
        if task.status != goal:
            raise Unavailable(f"runner {task.assigned_node} did not confirm; task is {task.status}")
        await self.book.stored(task)  # watchers hear of it at once; the caller once stored
        return task

    async def pause(self, task_id: int, who: Principal) -> Task:
        return await self._control(
            task_id, "paused", TaskStatus.RUNNING, TaskStatus.PAUSED, RunnerLink.pause, who
        )

    async def resume(self, task_id: int, who: Principal) -> Task:
        return await self._control(
            task_id, "resumed", TaskStatus.PAUSED, TaskStatus.RUNNING, RunnerLink.resume, who
        )

    # ----- placement --------------------------------------------------------------------

    async def set_held(self, batch_id: int, held: bool) -> None:
        """Hold a batch's pending tasks back from placement, or let them go: stored, then
        made so, one call at a time, carried through if the caller leaves (a Host restart
        keeps what was answered). A pass follows either way (a held task's prepared
        container is let go; a released one is placed)."""
        await asyncio.shield(self._storing_task(self._set_held(batch_id, held)))

    async def _set_held(self, batch_id: int, held: bool) -> None:
        try:
            async with self._holds:
                if (batch_id in self.scheduler.held) == held:
                    return
                await self.store.run(self.store.set_held, batch_id, held)
                if held:
                    self.scheduler.held.add(batch_id)
                else:
                    self.scheduler.held.discard(batch_id)
                self.book.positions_changed(batch_id)
        finally:
            self.kick()

    def kick(self) -> None:
        self._kick.set()

    def _finished(self, task: Task) -> None:
        """A task's final status is stored: its Runner may drop it, and the queue may move."""
        self.runners.output_errors.pop(task.task_id, None)
        link = self.nodes.link_of(task.assigned_node)
        if link is not None:
            link.forget(task.task_id)
        self.ahead.drop(task.task_id)
        self.kick()

    async def _placement_pass(self) -> None:
        """Wait until a placement pass that starts from now has finished (at once when the
        Host is stopping: the tasks are stored and stay pending)."""
        if self._stopped:
            return
        done = asyncio.get_running_loop().create_future()
        self._pass_waiters.append(done)
        self.kick()
        await done

    async def _placement_loop(self) -> None:
        while True:
            await self._kick.wait()
            self._kick.clear()
            waiters, self._pass_waiters = self._pass_waiters, []
            placed: list[Placed] = []
            try:
                self._passing = True
                placed = await self._place_pending()
                self._foresee()
            except Exception:
                log.exception("placement failed")
            finally:
                self._passing = False
                # Decided: each submitter's tasks are assigning or known to wait. Their
                # submission is stored already; the placement is stored next (a Host that
                # crashes first places them again after its restart).
                for waiter in waiters:
                    if not waiter.done():
                        waiter.set_result(None)
            if placed:
                # In the background: the next pass decides meanwhile (a task submitted
                # while thousands of placements are being stored is placed at once; its
                # write waits only for earlier writes of its node).
                self._store_in_background(placed)

    def _store_in_background(self, placed: list[Placed]) -> None:
        storing = self._storing_task(self._store_and_dispatch(placed))
        storing.add_done_callback(partial(_close_unstarted, placed))

    async def _add(
        self, records: list[Task], who: Principal, what: str, requests: Requests
    ) -> None:
        await self.book.add(records, f"submitted by {who.actor}", requests)
        self.audit.record(who, "task.submit", what)

    def _queued_unawaited(self, adding: asyncio.Task[None]) -> None:
        """A submission is stored (and queued), its submitter gone: a pass considers its
        tasks (a failure is logged by ``_failure_logged``)."""
        if not adding.cancelled() and adding.exception() is None:
            self.kick()

    async def _submission(
        self, work: Coroutine[Any, Any, None], turn: Turn | None, ids: tuple[int, int]
    ) -> None:
        """Run a submission's write, and what must follow it, as a task of the Host's,
        shielded from its submitter: one gone meanwhile (a deadline) leaves it to finish
        (``_queued_unawaited``), and a stopping Host lets it finish (up to
        ADDING_GRACE_SECONDS) so that the submitter gets its answer. Once those have
        finished, the Host takes no more (nothing of the submission is written). The
        submission's request_id ``turn`` lasts until the write ends. ``ids``: its batch's
        and its first task's (``_in_doubt``)."""
        if self._closed:
            work.close()
            raise Unavailable(STOPPING)
        adding = outliving(work)
        adding.add_done_callback(partial(self._in_doubt, *ids))
        if turn is not None:
            turn.hand_to(adding)
        self._adding.add(adding)
        adding.add_done_callback(self._adding.discard)
        try:
            await asyncio.shield(adding)
        except asyncio.CancelledError:
            adding.add_done_callback(_failure_logged("storing a submission whose submitter left"))
            adding.add_done_callback(self._queued_unawaited)
            raise

    def _storing_task(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` (a write and what follows it) as a task the Host waits for, or
        cancels, when it stops; it may outlive the call that started it."""
        storing = outliving(work)
        self._storing.add(storing)
        storing.add_done_callback(self._storing.discard)
        return storing

    def _dispatch(self, task: Task) -> None:
        """Send a stored placement to its Runner, unless it moved on meanwhile, a kill came
        while it was being stored (the kill, sent after, finds nothing to stop: its command
        never starts), or its Runner is away (it is then dispatched when it comes back); one
        whose node registered again without its CPUs, GPUs or memory fails instead."""
        link = self.nodes.link_of(task.assigned_node)
        if link is None or task.status != TaskStatus.ASSIGNING or task.kill_requested:
            return
        failing = self.runners.dispatch_placed(link, task)
        if failing is not None:  # its Runner registered again with less
            storing = self._storing_task(failing)
            storing.add_done_callback(_failure_logged("failing a placement its node lost"))

    def _place_at_once(self, records: list[Task]) -> bool:
        """Place what ``Scheduler.place_now`` allows of a small submission (a task queued
        ahead of it that could use its nodes makes it wait for a pass); True if every task
        was placed."""
        if self._stopped:
            return False
        placements = []
        for task in records:
            if task.status != TaskStatus.PENDING:
                continue
            allocation = self.scheduler.place_now(self.book.queue, request_of(task))
            if allocation is not None:
                placements.append((task, allocation))
        if placements:
            self._store_in_background(self._placed(placements))
        return len(placements) == len(records)

    async def _add_placed(
        self, task: Task, who: Principal, requests: Requests, turn: Turn | None
    ) -> bool:
        """Store and dispatch a submission's one task placed at once, when it fits now and
        nothing queued ahead could use its nodes (``Scheduler.place_now``): its row is
        written already placed. False: it was not placed (it is stored pending)."""
        if self._stopped:
            return False
        allocation = self.scheduler.place_now(self.book.queue, request_of(task))
        if allocation is None:
            return False
        self.ahead.placed(task.task_id, allocation)
        # Shielded: once its write is queued it is stored, submitter gone or not (a call
        # cancelled at its deadline), and the task must then be known and dispatched.
        stored = self._store_placed(task, allocation, who, requests)
        await self._submission(stored, turn, (task.batch_id, task.task_id))
        return True

    async def _store_placed(
        self, task: Task, allocation: Allocation, who: Principal, requests: Requests
    ) -> None:
        try:
            await self.book.add_placed(
                task, f"submitted by {who.actor}", *_placement(allocation), requests
            )
        except Exception:
            if task.task_id not in self.book.active:  # not stored: its placement is undone
                self.scheduler.release(allocation.hostname, task.task_id)
                self.ahead.drop(task.task_id)
                self.kick()
            raise
        self._dispatch(task)
        self.audit.record(who, "task.submit", str(task.task_id))

    def _placed(self, placements: list[tuple[Task, Allocation]]) -> list[Placed]:
        """Pending tasks now hold their allocations: each made so in memory in turn; each
        node's are stored as one write (then dispatched)."""
        now = utcnow()
        by_node: dict[str, list[Change]] = {}
        for task, allocation in placements:
            self.ahead.placed(task.task_id, allocation)
            fields, detail = _placement(allocation)
            change = self.book.change(task, TaskStatus.ASSIGNING, detail, fields, now)
            by_node.setdefault(allocation.hostname, []).append(change)
        return [
            ([change.task for change in changes], self.book.store_changes(changes))
            for changes in by_node.values()
        ]

    async def _store_and_dispatch(self, placed: list[Placed]) -> None:
        """Dispatch each node's placements once they are stored. The store orders writes
        per node, so one coroutine per node awaits that node's writes in turn: each is
        dispatched as soon as it is stored, whatever other nodes still wait for, and the
        coroutine takes a turn in the bulk lane (bulk_lane) for every few it dispatches."""
        by_node: dict[str, list[Placed]] = {}
        for tasks, stored in placed:
            by_node.setdefault(tasks[0].assigned_node or "", []).append((tasks, stored))
        results = await asyncio.gather(*map(self._dispatch_when_stored, by_node.values()))
        failed = [exc for node_failed in results for exc in node_failed]
        if failed:
            log.error("storing placements failed: %s", failed[0])

    async def _dispatch_when_stored(self, placed: list[Placed]) -> list[Exception]:
        failed: list[Exception] = []
        since_turn = 0
        for tasks, stored in placed:
            try:
                await stored
            except Exception as exc:
                failed.append(exc)
                continue
            since_turn += len(tasks)
            if since_turn >= SMALL:  # bulk: a turn in the lane for every few dispatched
                await self.lane.turn()
                since_turn = 0
            for task in tasks:
                self._dispatch(task)
        return failed

    async def _place_pending(self) -> list[Placed]:
        """Place what fits now, in memory: each node's placed tasks with the coroutine
        that stores their placements. Every PLACEMENT_SLICE placements the loop serves
        other work, so a pass placing a job array's thousands never holds it for long."""
        if not self.book.queue:
            return []
        placed: list[Placed] = []
        placements: list[tuple[Task, Allocation]] = []
        plan = self.scheduler.iter_plan(self.book.queue, time.time_ns() // 1_000_000)
        try:
            for request, allocation in plan:
                task = self.book.active.get(request.task_id)
                if task is None or task.status != TaskStatus.PENDING:
                    self.scheduler.release(allocation.hostname, request.task_id)
                    continue
                placements.append((task, allocation))
                if len(placements) == PLACEMENT_SLICE:
                    placed += self._placed(placements)
                    placements = []
                    await self.lane.turn()
        except asyncio.CancelledError:
            for _, never in placed:
                never.close()  # the Host is stopping: placed again on its start
            raise
        except Exception:
            log.exception("a placement pass failed part way; what it placed is stored")
        finally:
            # What the scheduler placed is made so, whatever stopped the pass (its tasks
            # left the queue and hold their resources there).
            if placements:
                placed += self._placed(placements)
        return placed

    def _foresee(self) -> None:
        """Have busy nodes prepare the queued tasks they are expected to start next."""
        if self.config.scheduling.prepare_ahead and (self.book.queue or len(self.ahead)):
            foreseen = self.scheduler.lookahead(
                self.book.queue, self.config.scheduling.prepare_ahead
            )
            self.ahead.update(foreseen, self.nodes.link_of, self.book.active.get)

    # ----- nodes ------------------------------------------------------------------------

    def _active_counts(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for task in self.book.active.values():
            if task.assigned_node:
                counts[task.assigned_node] = counts.get(task.assigned_node, 0) + 1
        return counts

    def node_summaries(
        self, hostname: str = ""
    ) -> list[tuple[NodeView, NodeResources | None, int]]:
        """Each node (or just ``hostname``) with its free capacity and active task count."""
        selected = self.nodes.selected(hostname)
        counts = self._active_counts()
        return [
            (node, self.scheduler.nodes.get(node.hostname), counts.get(node.hostname, 0))
            for node in selected
        ]

    async def set_draining(self, hostname: str, draining: bool, who: Principal) -> NodeView:
        """Drained at once (nothing more is placed there while the change is written); the
        change is taken back if it cannot be written, not left until the Host restarts. A
        caller that goes meanwhile leaves it done: its write is (``Store.run``)."""
        node = self.nodes.get(hostname)
        changing = self._storing_task(self._set_draining(node, draining, who))
        try:
            await asyncio.shield(changing)
        except asyncio.CancelledError:
            changing.add_done_callback(_failure_logged("a drain change whose caller left"))
            raise
        return node

    async def _set_draining(self, node: NodeView, draining: bool, who: Principal) -> None:
        async with self._drains:
            hostname, before = node.hostname, node.draining
            self.nodes.set_draining(hostname, draining)
            try:
                await self.store.run(self.store.set_draining, hostname, draining)
            except Exception:
                if self.nodes.nodes.get(hostname) is node:
                    self.nodes.set_draining(hostname, before)
                raise
        if before == draining:  # drained (or taking work) already: no change to audit
            return
        self.audit.record(who, "node.drain" if draining else "node.undrain", hostname)
        self.notifier.notify(
            "node.drained" if draining else "node.undrained",
            node=hostname,
            draining=draining,
            by=who.actor,
        )
        log.info("node %s %s", hostname, "draining" if draining else "accepting tasks again")
        if not draining:
            self.kick()

    def health(self, hostname: str = "") -> list[NodeView]:
        return self.nodes.selected(hostname)

    def unread_gpus(self, hostname: str) -> list[int]:
        """The node's GPUs missing from its latest readings (see NodeTable.gpus_read)."""
        return self.scheduler.unread_gpus(hostname)

    def watch_health(
        self, hostname: str = "", announce: bool = False
    ) -> AsyncIterator[tuple[NodeView, node_pb2.Health | None] | Forgotten | None]:
        return self.nodes.watch_health(hostname, announce)

    def environment_loaded_on(self, name: str, timestamp: int) -> list[str]:
        return self.nodes.loaded_on(name, timestamp)

    def refuse_environment_in_use(self, name: str) -> None:
        """Refuse to delete environment ``name`` while unfinished tasks (VPS included) use
        it, or are being stored: queued, they would fail late on every node without its
        image. Naming how many in each status and the first few."""
        users = [
            t
            for t in (*self.book.active.values(), *self.book.arriving())
            if t.container_name == name
        ]
        if not users:
            return
        counts = Counter(TaskStatus(t.status) for t in users)
        statuses = ", ".join(f"{counts[s]} {s.value}" for s in TaskStatus if counts[s])
        ids = sorted({t.task_id for t in users})
        shown = ", ".join(map(str, ids[:IN_USE_IDS_SHOWN]))
        more = len(ids) - IN_USE_IDS_SHOWN
        raise FailedPrecondition(
            f"name: environment {name!r} is used by {len(ids)} unfinished "
            f"task{'s' if len(ids) > 1 else ''} ({statuses}: {shown}"
            f"{f' and {more} more' if more > 0 else ''}); wait for them to end or kill them "
            "(hakuriver.client kill ID), then delete it"
        )

    # ----- SSH tunnels ------------------------------------------------------------------

    async def _running_vps(self, task_id: int, who: Principal) -> Task:
        task = await self.get_task(task_id, who)
        if task.kind != TaskKind.VPS:
            raise FailedPrecondition(f"task {task_id} is not a VPS task")
        if task.status != TaskStatus.RUNNING:
            await self._refused_as_shown(task)
            raise FailedPrecondition(f"task {task_id} is {task.status}, not running")
        return task

    async def create_ssh_ticket(self, task_id: int, who: Principal) -> tuple[str, datetime]:
        """A one-time ticket for the SSH proxy port to a running VPS ``who`` may reach."""
        await self._running_vps(task_id, who)
        self.audit.record(who, "ssh.ticket", task_id)
        return self.ssh_tickets.issue(task_id, who)

    async def open_tunnel(self, held: Ticket) -> tuple[Tunnel, Principal]:
        """A tunnel to the sshd of the VPS a redeemed ticket was issued for, through its
        Runner's link (the holder's right to it is checked again), and its holder."""
        task_id = held.task_id
        # The holder as they stand now: a token revoked or a user deleted since the ticket
        # was issued opens nothing.
        who = self.access.again(held.who)
        task = await self._running_vps(task_id, who)
        link = self.nodes.link_of(task.assigned_node)
        if link is None:
            raise Unavailable(f"runner {task.assigned_node} of task {task_id} is not connected")
        return self.tunnels.open(link, task_id, task.ssh_port), who
