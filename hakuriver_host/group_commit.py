"""Group commit: many callers' items applied by one thread call, each caller awaiting its own.

While one batch is being applied on the worker thread, items that arrive queue up and go
together in the next call. Under load this turns one thread hop (and one GIL hand-over) per
item into one per batch; when idle, an item is applied at once.

Items are applied in the order they were queued among those of one key (by default every
item has the same key). With a ``limit``, a batch weighs at most that much (a call's weight
is what ``weight`` says of its items, by default how many there are; a call heavier than
the limit goes alone), whole keys first, and a key with little queued (``EXPRESS`` or less)
while others have more goes in a small batch of its own, ahead of them: it waits for the
batch being applied, never for another key's thousands queued before it. Batches of such
keys and of the rest take turns, so neither waits for ever.

With ``holds``, a batch that failed for a reason it names (the database away for now, not
a bug) keeps the calls queued with ``keep``: they go back to the head of their keys, in
order, and are applied again after a pause (growing to HELD_PAUSE_MAX, cut short by
``retry_now``), until applied; the batch's other calls fail. ``stop_holding`` ends this:
the next failure fails all. ``taken`` is told of every batch applied: what others hold for
the database can go then.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Generic, NamedTuple, TypeVar

T = TypeVar("T")
log = logging.getLogger(__name__)
# The weight a key may have queued and still go ahead of keys with more.
EXPRESS = 4
# Seconds between attempts at a held batch: the first pause, and the longest.
HELD_PAUSE = 0.5
HELD_PAUSE_MAX = 5.0


class HeldPause:
    """The pause before a write the database refused is tried again: HELD_PAUSE, doubling
    at each refusal up to HELD_PAUSE_MAX, and HELD_PAUSE again once one goes through."""

    def __init__(self) -> None:
        self._seconds = HELD_PAUSE

    def next(self) -> float:
        """This pause; the next one is twice as long (at most HELD_PAUSE_MAX)."""
        seconds = self._seconds
        self._seconds = min(2 * seconds, HELD_PAUSE_MAX)
        return seconds

    def reset(self) -> None:
        self._seconds = HELD_PAUSE


class _Queued(NamedTuple, Generic[T]):
    items: list[T]
    done: asyncio.Future[None]
    weight: int
    key: Hashable
    keep: bool


class GroupCommit(Generic[T]):
    def __init__(
        self,
        apply: Callable[[list[T]], None],
        executor: Executor,
        limit: int | None = None,
        weight: Callable[[list[T]], int] = len,
        holds: Callable[[Exception], str | None] | None = None,
        taken: Callable[[], None] = lambda: None,
    ) -> None:
        self._apply = apply
        self._executor = executor
        self._limit = limit
        self._weight = weight
        # Each key's calls in order, with their weights, and each key's weight queued; a
        # key leaves once it has none queued.
        self._queued: dict[Hashable, deque[_Queued[T]]] = {}
        self._weights: dict[Hashable, int] = {}
        self._worker: asyncio.Task[None] | None = None
        self._express_last = False
        self._holds = holds
        self._taken = taken
        # Why calls are held now ("" when none are), and what ends a pause between attempts.
        self._held = ""
        self._wake = asyncio.Event()

    async def submit(self, items: list[T]) -> None:
        """Return once ``items`` were applied; raise what applying their batch raised."""
        await self.enqueue(items)

    def enqueue(
        self, items: list[T], key: Hashable = None, keep: bool = False
    ) -> asyncio.Future[None]:
        """Queue ``items`` now, after those of ``key`` queued before; the future is done
        once they were applied (``keep``: held while ``holds`` names their batch's failure,
        and applied once it passes)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queued.get(key)
        if queue is None:
            queue = self._queued[key] = deque()
        weight = self._weight(items)
        queue.append(_Queued(items, done, weight, key, keep))
        self._weights[key] = self._weights.get(key, 0) + weight
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return done

    def _take(self) -> list[_Queued[T]]:
        if self._limit is None:
            return self._take_keys(list(self._queued), None)
        few = [key for key, weight in self._weights.items() if weight <= EXPRESS]
        if few and len(few) < len(self._queued) and not self._express_last:
            self._express_last = True
            return self._take_keys(few, self._limit)
        self._express_last = False
        return self._take_keys(list(self._queued), self._limit)

    def _take_keys(self, keys: list[Hashable], limit: int | None) -> list[_Queued[T]]:
        """The calls of ``keys``, each key's oldest first, weighing up to ``limit`` (at
        least one call)."""
        batch: list[_Queued[T]] = []
        taken = 0
        for key in keys:
            queue = self._queued[key]
            while queue and (limit is None or not batch or taken + queue[0].weight <= limit):
                call = queue.popleft()
                batch.append(call)
                taken += call.weight
                self._weights[key] -= call.weight
            if queue:  # the limit is reached
                break
            del self._queued[key]
            del self._weights[key]
        return batch

    def retry_now(self) -> None:
        """The database took another write: held calls are tried again now, not after
        their pause."""
        if self._held:
            self._wake.set()

    def stop_holding(self) -> None:
        """Hold nothing from now on (the Host stops): held calls are tried once more, and
        fail if their batch does."""
        self._holds = None
        self._wake.set()

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        pause = HeldPause()
        while self._queued:
            batch = self._take()
            items = [item for call in batch for item in call.items]
            try:
                await loop.run_in_executor(self._executor, self._apply, items)
            except Exception as exc:
                kept = self._failed(batch, exc)
                if kept:
                    self._wake.clear()
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._wake.wait(), pause.next())
            else:
                if self._held:
                    log.warning("the database takes writes again: the held changes are stored")
                    self._held = ""
                pause.reset()
                for call in batch:
                    if not call.done.done():
                        call.done.set_result(None)
                self._taken()

    def _failed(self, batch: list[_Queued[T]], exc: Exception) -> bool:
        """Fail the batch's calls but those held (put back at the head of their keys, in
        order); whether any was."""
        why = self._holds(exc) if self._holds is not None else None
        kept: list[_Queued[T]] = []
        for call in batch:
            if why and call.keep:  # also if its caller went: a change asked for is made
                kept.append(call)
            elif not call.done.done():
                call.done.set_exception(exc)
        if not kept:
            return False
        if why != self._held:
            log.warning(
                "%d changes held in memory, stored once the database takes writes again: %s",
                len(kept),
                why,
            )
            self._held = why or ""
        back: dict[Hashable, list[_Queued[T]]] = {}
        for call in kept:
            back.setdefault(call.key, []).append(call)
        rest, self._queued = self._queued, {}
        for key, calls in back.items():  # the held keys first, each in its order
            queue = rest.pop(key, None) or deque()
            queue.extendleft(reversed(calls))
            self._queued[key] = queue
            self._weights[key] = self._weights.get(key, 0) + sum(c.weight for c in calls)
        self._queued.update(rest)
        return True
