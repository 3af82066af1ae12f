"""What the Host does with its Runners: registration and reconciliation of their tasks,
their reports (interpreted by the task machine), output, heartbeats, and silence.

RunnerGateway is the runner-facing half of the core; Cluster is the client-facing half.
Both change tasks only through the TaskBook.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from typing import Any

from hakuriver_common.config import Config
from hakuriver_common.limits import name_list
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb, task_pb2
from hakuriver_common.roles import AuditOutcome
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.access import Access
from hakuriver_host.audit import AuditLog
from hakuriver_host.bulk_lane import SMALL
from hakuriver_host.convert import dispatch_of
from hakuriver_host.errors import InvalidArgument, PermissionDenied
from hakuriver_host.identity import Kind, Principal
from hakuriver_host.log_store import STDERR, STDOUT, Gap, LogStore, Lost, OutputError
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.models import Task, utcnow
from hakuriver_host.nodes import NodeTable
from hakuriver_host.runner_checks import (
    check_batch,
    check_chunk,
    check_heartbeat,
    check_register,
)
from hakuriver_host.runner_link import RunnerLink
from hakuriver_host.store import WRITE_BATCH, Store, log_refusal
from hakuriver_host.task_book import Change, TaskBook, allocation_of
from hakuriver_host.task_machine import GOES_UNKNOWN, PLACED_STATUSES, Effect, TaskFacts, on_report
from hakuriver_host.tunnels import TunnelHub

log = logging.getLogger(__name__)

LOG_STREAMS: dict[int, str] = {
    task_pb2.LOG_STREAM_STDOUT: STDOUT,
    task_pb2.LOG_STREAM_STDERR: STDERR,
}


async def _stored_then(
    stores: list[Awaitable[None]], release: Callable[[int], None], task_ids: list[int]
) -> None:
    for stored in stores:
        await stored
    for task_id in task_ids:
        release(task_id)


class RunnerGateway:
    def __init__(
        self,
        config: Config,
        store: Store,
        logs: LogStore,
        metrics: HostMetrics,
        nodes: NodeTable,
        book: TaskBook,
        tunnels: TunnelHub,
        kick: Callable[[], None],
        access: Access,
        audit: AuditLog,
    ) -> None:
        self.config = config
        self.store = store
        self.logs = logs
        self.metrics = metrics
        self.nodes = nodes
        self.book = book
        self.tunnels = tunnels
        self.kick = kick
        self.access = access
        self.audit = audit
        # Set from the database when the Host starts (Cluster.start).
        self.cluster_id = ""
        self._background: set[asyncio.Task[None]] = set()
        # Active tasks whose output could not all be stored, and why.
        self.output_errors: dict[int, str] = {}

    async def run_monitor(self) -> None:
        """Check for silent Runners, forever."""
        timing = self.config.timing
        interval = min(timing.cleanup_check_interval, timing.heartbeat_interval)
        while True:
            await asyncio.sleep(interval)
            try:
                await self.check_silent_runners()
            except Exception as exc:  # checked again at the next interval
                log_refusal(log, exc, "runner check put off")

    async def _admit(self, hostname: str, who: Principal, peer: str) -> str:
        """May ``who`` register as ``hostname``? A new credential's secret when it joined
        with the join token; PermissionDenied (audited) when it may not."""
        why = ""
        if who.kind is Kind.RUNNER and who.name != hostname:
            why = f"register: this credential belongs to runner {who.name}, not {hostname}"
        elif who.kind is Kind.JOINING and self.access.runner_registered(hostname):
            why = (
                f"register: runner {hostname} is registered with its own credential; the "
                "join token cannot take its place (an admin can revoke it: "
                f"hakuriver.admin runner revoke {hostname})"
            )
        elif who.kind not in (Kind.RUNNER, Kind.JOINING, Kind.USER):
            why = "register: a runner credential or the join token is needed"
        if why:
            self.audit.record(who, "runner.register", hostname, AuditOutcome.REFUSED, why, peer)
            raise PermissionDenied(why)
        if who.kind is not Kind.JOINING:
            return ""
        secret = await self.access.issue_runner_credential(hostname)
        joined = Principal(Kind.RUNNER, hostname)
        self.audit.record(joined, "runner.join", hostname, peer=peer, detail="credential issued")
        return secret

    async def connect(
        self, reg: rpb.RegisterRunner, who: Principal, peer: str = ""
    ) -> tuple[RunnerLink, rpb.RegisterAck]:
        """A Runner registered: check who it is, reconcile its tasks with ours, and open its
        link."""
        if not reg.hostname:
            raise InvalidArgument("register: hostname must not be empty")
        check_register(reg)
        credential = await self._admit(reg.hostname, who, peer)
        node, link = self.nodes.connect(reg)
        try:
            await self.store.save_node(node.record())
            ack = await self._reconcile(link, reg)
            ack.runner_credential = credential
        except BaseException:
            self.gone(link)
            raise
        log.info(
            "runner %s registered: %d cores, %d adopted, %d discarded",
            reg.hostname,
            reg.total_cores,
            len(ack.adopt),
            len(ack.discard_task_ids),
        )
        await self._warn_unrecorded(reg.hostname, list(ack.discard_task_ids))
        self.kick()
        return link, ack

    async def _warn_unrecorded(self, hostname: str, discarded: list[int]) -> None:
        """Tasks a Runner runs that this Host never heard of (its database restored from a
        backup older than them): the Runner stops them, so the admin learns which."""
        unrecorded = await self.store.run(self.store.unrecorded, discarded) if discarded else []
        if unrecorded:
            log.warning(
                "runner %s had %d tasks this Host has no record of (a database restored from "
                "an older backup?); it stops and discards them, their output stays in "
                "shared_dir: %s",
                hostname,
                len(unrecorded),
                name_list([str(task_id) for task_id in unrecorded]),
            )

    async def _reconcile(self, link: RunnerLink, reg: rpb.RegisterRunner) -> rpb.RegisterAck:
        """Which of its tasks the Runner keeps (with the output offsets we have) or discards;
        ours it did not report are dispatched again (assigning, once its placement is
        stored), killed (assigning, asked to be killed) or lost, and those it keeps that
        were asked to be killed are killed again (sent after the answer). Statuses are read
        afresh after every await: a task may end meanwhile."""
        ack = rpb.RegisterAck(
            heartbeat_interval_seconds=self.config.timing.heartbeat_interval,
            cluster_id=self.cluster_id,
        )
        known = set(reg.known_task_ids)
        for task_id in sorted(known):
            task = self.book.active.get(task_id)
            if task is None or task.assigned_node != reg.hostname:
                await self._discard_when_stored(link, task_id, ack)
                continue
            ack.adopt.append(
                rpb.AdoptTask(
                    task_id=task_id,
                    stdout_offset=await self.logs.size(task_id, STDOUT),
                    stderr_offset=await self.logs.size(task_id, STDERR),
                )
            )
            if task.kill_requested:  # its kill may never have reached the Runner
                link.kill(task_id, self.config.timing.kill_grace_seconds)
        for task in self.book.on_node(reg.hostname):
            status = TaskStatus(task.status)
            if task.task_id in known or status not in PLACED_STATUSES:
                continue
            if status is TaskStatus.ASSIGNING:
                if task.kill_requested:  # its kill was cut short with the Runner's stream
                    by = f" by {task.killed_by}" if task.killed_by else ""  # a kill from before
                    detail = f"killed{by} before it started"
                    await self.book.move(task, TaskStatus.KILLED, detail=detail)
                elif (
                    self.book.shown_status(task) == task.status
                    and (failing := self.dispatch_placed(link, task)) is not None
                ):
                    await failing
                # Else its placement is not stored yet: dispatched once it is, on the link
                # its node has then (this one), as every placement is (Cluster._dispatch).
                continue
            await self.book.move(
                task,
                TaskStatus.LOST,
                detail="gone after runner reconnect",
                error_message=(
                    f"runner {reg.hostname} came back without the task: its container or "
                    "process could not be re-adopted"
                ),
            )
        return ack

    def _cannot_start(self, task: Task) -> str:
        """Why a placed task cannot start on its node as the node is now ("" if it can): its
        Runner registered again with less (a machine reconfigured, a GPU gone) before it
        started."""
        scheduler = self.nodes.scheduler
        if not scheduler.shrunk(task.assigned_node or ""):
            return ""
        lacks = scheduler.lacks(allocation_of(task))
        if not lacks:
            return ""
        return f"its node {task.assigned_node} registered again without {lacks}: submit it again"

    def dispatch_placed(self, link: RunnerLink, task: Task) -> Coroutine[Any, Any, None] | None:
        """Send a placed task to its Runner; if its node no longer has what it was placed on
        (never dispatched on CPUs or GPUs the node does not have), the move failing it
        instead, for the caller to await or store in the background."""
        why = self._cannot_start(task)
        if not why:
            link.dispatch(dispatch_of(task))
            return None
        return self.book.move(task, TaskStatus.FAILED, "its node has less now", error_message=why)

    async def _discard_when_stored(
        self, link: RunnerLink, task_id: int, ack: rpb.RegisterAck
    ) -> None:
        """A task the Runner keeps that is not active here: discarded at once, unless it
        ended on this node and its end is not stored yet (held while the database was
        away): then released once it is, as its report's would have been, so that a Host
        stopped meanwhile hears it again from the Runner."""
        ending = self._ending_on(link, task_id)
        if ending is None:
            ack.discard_task_ids.append(task_id)
            return
        stored = _stored_then([self.book.stored(ending)], link.release, [task_id])
        await self._later(link, 1, stored)

    def _ending_on(self, link: RunnerLink, task_id: int) -> Task | None:
        """The task, if it ended on this link's node and its end is not stored yet: its
        Runner is released from it only once it is."""
        ending = self.book.finishing(task_id)
        return ending if ending is not None and ending.assigned_node == link.hostname else None

    def _end_stored(self, link: RunnerLink, task_id: int) -> list[Awaitable[None]]:
        """What a release of a task no longer active waits for: its end being stored, if it
        ended on this link's node and that is not stored yet (none else)."""
        ending = self._ending_on(link, task_id)
        return [] if ending is None else [self.book.stored(ending)]

    def _went_silent(self, hostname: str, away: float) -> None:
        """A silent Runner's tasks unknown, or lost (``check_silent_runners``), made so in
        memory now and stored in the background, in its node's order: held while the
        database is away, as a Runner's reports are, and stored once it is back."""
        timing = self.config.timing
        lost_after = timing.lost_after_seconds
        changes: list[Change] = []
        now = utcnow()
        for task in self.book.on_node(hostname):
            status = TaskStatus(task.status)
            if status not in PLACED_STATUSES:
                continue
            if away > lost_after:
                why = (
                    f"runner {hostname} was away for more than {lost_after:g}s "
                    "(timing.lost_after_seconds)"
                )
                fields = {"error_message": why}
                changes.append(
                    self.book.change(task, TaskStatus.LOST, "runner away too long", fields, now)
                )
            elif status in GOES_UNKNOWN:
                detail = f"runner {hostname} silent for more than {timing.runner_timeout:g}s"
                changes.append(self.book.change(task, TaskStatus.UNKNOWN, detail, None, now))
        for start in range(0, len(changes), WRITE_BATCH):  # a transaction's worth each
            stored = self.book.store_changes(changes[start : start + WRITE_BATCH])
            self._in_background(self._silence_stored(hostname, stored))

    @staticmethod
    async def _silence_stored(hostname: str, stored: Awaitable[None]) -> None:
        try:
            await stored
        except Exception as exc:  # the Host stops with them held, or a bug
            log_refusal(log, exc, "runner %s: its tasks' silence is not stored", hostname)

    async def _forget_idle_nodes(self, now: float) -> None:
        """Forget nodes offline for ``forget_node_seconds`` of which no task is kept (they
        never held one, or all theirs were forgotten: ``retention``): a registration costs
        the Host nothing for ever (nodes with tasks stay, with their history, and so do
        drained ones)."""
        for hostname in self.nodes.idle_offline(self.config.timing.forget_node_seconds, now):
            if self.book.on_node(hostname):
                continue
            if await self.store.run(self.store.node_ever_used, hostname):
                continue
            node = self.nodes.nodes.get(hostname)
            if node is None or node.link is not None:
                continue
            self.nodes.forget(hostname)
            await self.store.run(self.store.delete_node, hostname)
            back = self.nodes.nodes.get(hostname)
            if back is not None:  # it registered again meanwhile: keep its new row
                await self.store.save_node(back.record())
            log.info("forgot node %s: offline, and no task of it is kept", hostname)

    def gone(self, link: RunnerLink) -> None:
        self.tunnels.link_gone(link)
        if self.nodes.disconnect(link):
            log.info("runner %s disconnected", link.hostname)

    async def on_message(self, link: RunnerLink, msg: rpb.ConnectRequest) -> None:
        self.nodes.touch(link.hostname)
        kind = msg.WhichOneof("payload")
        if kind == "log_chunk":
            await self._on_chunk(link, msg.log_chunk)
        elif kind == "heartbeat":
            check_heartbeat(msg.heartbeat)
            if self.nodes.heartbeat(link.hostname, msg.heartbeat):
                self._in_background(self._store_node(link.hostname))
                self.kick()
            if self.nodes.gpus_read(link.hostname, msg.heartbeat.health.gpus):
                self.kick()
        elif kind == "task_state":
            await self._on_reports(link, (msg.task_state,))
        elif kind == "task_states":
            check_batch(msg.task_states)
            if len(msg.task_states.reports) >= SMALL:
                await self.book.lane.turn()
            await self._on_reports(link, msg.task_states.reports)
        elif kind in ("tunnel_opened", "tunnel_data", "tunnel_close"):
            self.tunnels.on_message(link, msg)
        else:
            log.warning("runner %s sent unexpected %s", link.hostname, kind)

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` beside the stream (``settle`` waits for it)."""
        background = asyncio.create_task(work)
        self._background.add(background)
        background.add_done_callback(self._background.discard)

    async def _store_node(self, hostname: str) -> None:
        """Store a node's changed row (its environments, GPUs), beside the stream: the stream's
        messages are read meanwhile (SQLite locked by another program holds a write for
        5 s, and the Runner was then taken for silent). A database away for now is no
        reason to end the Runner's stream: the row is stored at the next check for silent
        Runners that the database takes (``heartbeats_to_store``)."""
        node = self.nodes.nodes.get(hostname)
        if node is None:  # forgotten meanwhile
            return
        try:
            await self.store.save_node(node.record())
        except Exception as exc:
            node.stored_heartbeat = None
            log_refusal(log, exc, "runner %s: its node's row is stored later", hostname)

    async def _on_chunk(self, link: RunnerLink, chunk: rpb.LogChunk) -> None:
        """Store a chunk of a task's output. A gap or a failed write is about that task
        alone: logged once per task, counted, and the stream goes on; the chunks a failed
        write leaves unable to continue the file count as write errors (logged with the
        first), not as gaps (a Runner's fault). A task whose output
        could not be stored is not reported completed (see task_machine); its node shows
        the problem until a write of any task's output succeeds with room on the storage
        again (a full file system still takes a few appends)."""
        check_chunk(chunk)
        if not await self._chunk_owned(link, chunk.task_id):
            return
        stream = LOG_STREAMS.get(chunk.stream, STDERR)
        try:
            await self.logs.append(chunk.task_id, stream, chunk.offset, chunk.data)
        except Gap as exc:
            self.metrics.output_gaps.inc()
            if link.first_problem(chunk.task_id):
                log.warning("task %s %s: chunk refused: %s", chunk.task_id, stream, exc)
            return
        except Lost:
            self.metrics.output_errors.inc()
            return
        except OutputError as exc:
            self.metrics.output_errors.inc()
            self.nodes.output_stored(link.hostname, str(exc))
            if chunk.task_id not in self.output_errors:
                self.output_errors[chunk.task_id] = str(exc)
                log.error("task %s: its output could not be stored: %s", chunk.task_id, exc)
                task = self.book.active.get(chunk.task_id)
                if task is not None:
                    why = f"output could not be stored: {exc}"
                    await self.book.persist(task, why, status_detail=why)
            return
        # The storage is the Host's, the same for every node: room again clears them all,
        # not only this one (a node with no more output, drained and shut down, showed
        # the problem, and kept its alert firing, for good).
        problems = self.nodes.output_problems()
        if problems and await self.logs.has_room():
            for hostname in problems:
                self.nodes.output_stored(hostname)
        self.metrics.log_bytes.inc(len(chunk.data))

    def _owns(self, link: RunnerLink, task_id: int, what: str) -> bool:
        """Is the task active and placed on this link's Runner? A Runner reports only on
        its own tasks; anything else is dropped (and audited once per task and link)."""
        task = self.book.active.get(task_id)
        if task is not None and task.assigned_node == link.hostname:
            return True
        if link.first_foreign(task_id):
            self._refuse_report(link, task_id, what)
        return False

    async def _chunk_owned(self, link: RunnerLink, task_id: int) -> bool:
        """``_owns`` for output, which a Runner still sends of its task that the Host ended
        (killed while the Runner was away or did not confirm): that is dropped quietly, and
        only output of tasks never this Runner's is audited (looked up once per task and
        link, as audited)."""
        task = self.book.active.get(task_id)
        if task is not None and task.assigned_node == link.hostname:
            return True
        if link.first_foreign(task_id) and (
            task is not None or not await self._ended_on(link, task_id)
        ):
            self._refuse_report(link, task_id, "log chunk")
        return False

    async def _ended_on(self, link: RunnerLink, task_id: int) -> bool:
        """Did the task, no longer active, run on this link's node? (A database away for
        now cannot tell: then no.)"""
        ending = self.book.finishing(task_id)
        if ending is not None:
            return ending.assigned_node == link.hostname
        try:
            return await self.store.read(self.store.task_node, task_id) == link.hostname
        except Exception as exc:
            why = "runner %s: output of task %s audited as not its own (its node is not read)"
            log_refusal(log, exc, why, link.hostname, task_id)
            return False

    def _refuse_report(self, link: RunnerLink, task_id: int, what: str) -> None:
        self.audit.record(
            Principal(Kind.RUNNER, link.hostname),
            "runner.report",
            task_id,
            AuditOutcome.REFUSED,
            f"{what} for a task not running on {link.hostname}",
        )

    async def _on_reports(self, link: RunnerLink, reports: Sequence[rpb.TaskStateReport]) -> None:
        """Apply a message's reports in memory as they are read, each seeing what those
        before it made, and store them in the background, so that the next messages on
        the stream are read meanwhile and their writes share a transaction (the store keeps
        a node's changes in order). Their status changes are one write (up to a
        transaction's worth; ``TaskBook.store_changes``). A container is released only
        once its task's final status is stored, and ``_later`` bounds the reports being
        stored per Runner."""
        stores: list[Awaitable[None]] = []
        made: list[Change] = []
        releases: list[int] = []
        now = utcnow()
        try:
            for report in reports:
                task = self._reported(link, report.task_id)
                outcome = on_report(self._facts(task), report)
                if task is not None:
                    if Effect.NOTE_DETAIL in outcome.effects:
                        if made:  # stored in the order they were made
                            stores.append(self.book.store_changes(made))
                            made = []
                        stores.append(
                            self.book.note(task, outcome.detail, status_detail=outcome.detail)
                        )
                    if outcome.status is not None:
                        made.append(
                            self.book.change(
                                task, outcome.status, outcome.detail, outcome.fields, now
                            )
                        )
                        if len(made) >= WRITE_BATCH:  # a transaction's worth
                            stores.append(self.book.store_changes(made))
                            made = []
                    if Effect.STARTED in outcome.effects:
                        self._observe_started(link, task)
                if Effect.RELEASE in outcome.effects:
                    releases.append(report.task_id)
                    if task is None:  # an end reported again: released once the first is stored
                        stores.extend(self._end_stored(link, report.task_id))
        finally:  # what was made in memory is stored, whatever stopped the message
            if made:
                stores.append(self.book.store_changes(made))
            if stores or releases:
                await self._later(link, len(reports), _stored_then(stores, link.release, releases))

    def _reported(self, link: RunnerLink, task_id: int) -> Task | None:
        """The active task a report is about, if it is this link's Runner's (a report on
        another's is audited, ``_owns``)."""
        task = self.book.active.get(task_id)
        if task is not None and task.assigned_node != link.hostname:
            self._owns(link, task_id, "state report")
            return None
        return task

    def _facts(self, task: Task | None) -> TaskFacts | None:
        """What the state machine reads of a task a report is about (None: not active)."""
        if task is None:
            return None
        return TaskFacts(
            TaskStatus.of(task.status),
            task.kill_requested,
            task.killed_by,
            task.required_memory_bytes,
            task.ssh_port,
            self.output_errors.get(task.task_id, ""),
            task.submitted_at,
        )

    async def _later(self, link: RunnerLink, reports: int, work: Coroutine[Any, Any, None]) -> None:
        """Run ``work`` (storing ``reports`` reports) in the background once the link has
        room for them. A failure (the database) closes the link, as when reports were
        stored in turn: the Runner reconnects and reports again."""
        taken = await link.in_flight.take(reports)
        background = asyncio.create_task(work)
        self._background.add(background)

        def done(finished: asyncio.Task[None]) -> None:
            self._background.discard(finished)
            link.in_flight.give(taken)
            failure = None if finished.cancelled() else finished.exception()
            if failure is not None:
                why = "runner %s: reports are not stored (it sends them again when it reconnects)"
                log_refusal(log, failure, why, link.hostname)
                link.close()

        background.add_done_callback(done)

    async def settle(self) -> None:
        """Wait until the reports being stored are stored (the Host is stopping)."""
        while self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    def _observe_started(self, link: RunnerLink, task: Task) -> None:
        now = utcnow()
        self.metrics.submit_to_running.observe(max(0.0, (now - task.submitted_at).total_seconds()))
        dispatched = link.started(task.task_id)
        if dispatched is not None:
            self.metrics.dispatch_latency.observe(dispatched)

    async def check_silent_runners(self) -> None:
        """Running and paused tasks of a Runner silent past the timeout are unknown (they
        may still run there; assigning ones stay assigning, dispatched again if the Runner
        returns without them); past ``lost_after_seconds`` of silence all are lost. Made
        so for every silent Runner before anything is written: a write the database
        refuses puts off the rest of the check, never this."""
        timeout = self.config.timing.runner_timeout
        now = time.monotonic()
        silent, went = self.nodes.silent(timeout)
        for node in silent:
            self._went_silent(node.hostname, now - node.last_seen)
        # Stored offline (a restarted Host loads them so), and the heartbeats of the others
        # once per timeout, together: group-committed.
        rows = {node.hostname: node for node in [*went, *self.nodes.heartbeats_to_store(timeout)]}
        try:
            await asyncio.gather(*(self.store.save_node(node.record()) for node in rows.values()))
        except Exception:
            for node in rows.values():  # stored at a later check (heartbeats_to_store)
                node.stored_heartbeat = None
            raise
        await self._forget_idle_nodes(now)
