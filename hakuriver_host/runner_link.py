"""The Host's side of one connected Runner: its Connect stream's outbox, the commands sent on
it, the dispatches it has not yet acknowledged, and the SSH tunnels it carries.

One RunnerLink exists per open stream; a Runner that reconnects gets a new one, so nothing
sent to or expected from the old stream leaks into the new.
"""

from __future__ import annotations

import asyncio
import time
from typing import TypeVar

from hakuriver_common.limits import MAX_BATCH_MESSAGES, RUNNER_MESSAGES_PER_SECOND
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb

T = TypeVar("T")

# Above this many queued messages, bulk senders (SSH tunnels) wait; control messages never do.
HIGH_WATER = 256


class Pace:
    """At most ``rate`` messages a second on average (bursts of twice that): ``take``
    waits when a sender goes faster, so its stream is read more slowly and the flow
    control of the transport pushes back on it."""

    def __init__(self, rate: float) -> None:
        self.rate = rate
        self.capacity = 2 * rate
        self._tokens = self.capacity
        self._last = time.monotonic()

    async def take(self) -> None:
        now = time.monotonic()
        self._tokens = min(self.capacity, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if self._tokens < 1:
            await asyncio.sleep((1 - self._tokens) / self.rate)
            self._tokens = 1.0
            self._last = time.monotonic()
        self._tokens -= 1


# Task ids remembered per link for "first time" checks (bounded: a Runner cannot grow it).
FIRST_TIMES = 1000


def _first(seen: set[int], task_id: int) -> bool:
    if task_id in seen or len(seen) >= FIRST_TIMES:
        return False
    seen.add(task_id)
    return True


# Reports of one Runner being stored at once.
REPORTS_IN_FLIGHT = 1024


class InFlight:
    """A bound on what is being stored for one stream, counted in reports: ``take`` waits
    until there is room (a message of more than the bound takes all of it), ``give``
    frees it. One taker at a time (the stream's reader)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self._freed = asyncio.Event()

    async def take(self, count: int) -> int:
        count = min(max(count, 1), self.limit)
        while self.used + count > self.limit:
            self._freed.clear()
            await self._freed.wait()
        self.used += count
        return count

    def give(self, count: int) -> None:
        self.used -= count
        self._freed.set()


class RunnerLink:
    def __init__(
        self,
        hostname: str,
        batches: bool = False,
        prepares: bool = False,
        release_batches: bool = False,
    ) -> None:
        self.hostname = hostname
        # Whether the Runner takes DispatchBatch messages, prepare messages, and
        # ReleaseBatch messages.
        self.batches = batches
        self.prepares = prepares
        self.release_batches = release_batches
        self.outbox: asyncio.Queue[rpb.ConnectResponse | None] = asyncio.Queue()
        # Taken from the outbox while gathering a batch, to be sent next (None: close).
        self._carried: list[rpb.ConnectResponse | None] = []
        self._room = asyncio.Event()
        self._room.set()
        # Dispatched task ids -> when, until the Runner reports each running.
        self._unacknowledged: dict[int, float] = {}
        # Tasks not its own this Runner reported on (audited once each), and tasks whose
        # chunks were refused (logged once each).
        self._foreign: set[int] = set()
        self._problems: set[int] = set()
        self.pace = Pace(RUNNER_MESSAGES_PER_SECOND)
        # Reports being stored in the background (see RunnerGateway._later): bounded, so a
        # Runner outpacing the database waits on its stream.
        self.in_flight = InFlight(REPORTS_IN_FLIGHT)
        self.closed = False

    def send(self, message: rpb.ConnectResponse) -> None:
        self.outbox.put_nowait(message)
        if self.outbox.qsize() > HIGH_WATER:
            self._room.clear()

    async def next(self) -> rpb.ConnectResponse | None:
        """The next message to write to the stream (None: close it). Dispatches (releases)
        queued one after another go as one DispatchBatch (ReleaseBatch) to a Runner that
        takes them: only what is already queued, so a lone one is never held back."""
        message = self._carried.pop() if self._carried else await self.outbox.get()
        kind = None if message is None else message.WhichOneof("payload")
        if kind == "dispatch" and self.batches:
            dispatches = self._following(message.dispatch, kind)  # type: ignore[union-attr]
            if len(dispatches) > 1:
                message = rpb.ConnectResponse(dispatches=rpb.DispatchBatch(dispatches=dispatches))
        elif kind == "release" and self.release_batches:
            releases = self._following(message.release, kind)  # type: ignore[union-attr]
            if len(releases) > 1:
                message = rpb.ConnectResponse(releases=rpb.ReleaseBatch(releases=releases))
        if self.outbox.qsize() <= HIGH_WATER:
            self._room.set()
        return message

    def _following(self, first: T, kind: str) -> list[T]:
        """``first`` and the commands of the same kind queued right behind it (up to a
        batch); the first message of another kind is carried to be sent next."""
        commands = [first]
        while len(commands) < MAX_BATCH_MESSAGES and not self.outbox.empty():
            following = self.outbox.get_nowait()
            if following is None or following.WhichOneof("payload") != kind:
                self._carried.append(following)
                break
            commands.append(getattr(following, kind))
        return commands

    async def room(self) -> None:
        """Wait until the outbox is below its high-water mark."""
        await self._room.wait()

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.outbox.put_nowait(None)

    def first_foreign(self, task_id: int) -> bool:
        """True the first time this link reports on ``task_id`` that is not its own."""
        return _first(self._foreign, task_id)

    def first_problem(self, task_id: int) -> bool:
        """True the first time a chunk of ``task_id`` on this link is refused."""
        return _first(self._problems, task_id)

    # ----- commands ---------------------------------------------------------------------

    def dispatch(self, command: rpb.DispatchCommand) -> None:
        """Send a task to the Runner, once per link: a placement being stored and the
        reconciliation of a Runner registering meanwhile may both find it assigning."""
        if command.task_id in self._unacknowledged:
            return
        self._unacknowledged[command.task_id] = time.monotonic()
        self.send(rpb.ConnectResponse(dispatch=command))

    def prepare(self, command: rpb.DispatchCommand) -> None:
        """Ask the Runner to make a queued task ready to start (see PreparedAhead)."""
        self.send(rpb.ConnectResponse(prepare=command))

    def started(self, task_id: int) -> float | None:
        """Seconds from dispatching the task on this link to its Runner reporting it running
        (None if it was not dispatched here, e.g. re-adopted)."""
        sent = self._unacknowledged.pop(task_id, None)
        return None if sent is None else time.monotonic() - sent

    def forget(self, task_id: int) -> None:
        """The task is final: stop expecting its first report."""
        self._unacknowledged.pop(task_id, None)

    def kill(self, task_id: int, grace_seconds: float) -> None:
        self.send(
            rpb.ConnectResponse(kill=rpb.KillCommand(task_id=task_id, grace_seconds=grace_seconds))
        )

    def pause(self, task_id: int) -> None:
        self.send(rpb.ConnectResponse(pause=rpb.PauseCommand(task_id=task_id)))

    def resume(self, task_id: int) -> None:
        self.send(rpb.ConnectResponse(resume=rpb.ResumeCommand(task_id=task_id)))

    def release(self, task_id: int) -> None:
        self.send(rpb.ConnectResponse(release=rpb.ReleaseCommand(task_id=task_id)))
