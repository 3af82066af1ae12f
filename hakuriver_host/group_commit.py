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

A light call (``EXPRESS`` or less) of a key with nothing queued goes to the worker thread at
once, without waiting for the next turn of the event loop: behind the batch being applied
(and another lane's on the same thread), not behind the loop's other work (under load a
turn of the loop takes milliseconds, and the thread sits idle meanwhile). One such call at
a time per lane; when calls are queued, a batch of the others goes between two of them.
Every call's waiters are told as the thread finishes it, so a key's calls complete in order
whichever way they went.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from functools import partial
from typing import Generic, TypeVar

T = TypeVar("T")
# The weight a key may have queued and still go ahead of keys with more.
EXPRESS = 4
_Queued = tuple[list[T], asyncio.Future[None], int]


class GroupCommit(Generic[T]):
    def __init__(
        self,
        apply: Callable[[list[T]], None],
        executor: Executor,
        limit: int | None = None,
        weight: Callable[[list[T]], int] = len,
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
        # The light call sent to the thread at once, while it is not applied yet; and
        # whether one was sent since the drain last took a batch (the drain's turn next).
        self._straight: asyncio.Future[None] | None = None
        self._straight_last = False

    async def submit(self, items: list[T]) -> None:
        """Return once ``items`` were applied; raise what applying their batch raised."""
        await self.enqueue(items)

    def enqueue(self, items: list[T], key: Hashable = None) -> asyncio.Future[None]:
        """Queue ``items`` now, after those of ``key`` queued before; the future is done
        once they were applied."""
        loop = asyncio.get_running_loop()
        done: asyncio.Future[None] = loop.create_future()
        weight = self._weight(items)
        if (
            weight <= EXPRESS
            and key not in self._queued
            and not self._straight_pending()
            and not (self._queued and self._straight_last)
        ):
            # After anything of ``key`` on the thread already: the thread applies in order.
            self._straight = self._run(items, [done])
            self._straight_last = True
            return done
        queue = self._queued.get(key)
        if queue is None:
            queue = self._queued[key] = deque()
        queue.append((items, done, weight))
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
            while queue and (limit is None or not batch or taken + queue[0][2] <= limit):
                call = queue.popleft()
                batch.append(call)
                taken += call[2]
                self._weights[key] -= call[2]
            if queue:  # the limit is reached
                break
            del self._queued[key]
            del self._weights[key]
        return batch

    async def _drain(self) -> None:
        while self._queued:
            straight = self._straight
            if straight is not None and not straight.done():
                await asyncio.wait([straight])  # then the queued get their turn
                continue
            batch = self._take()
            # A batch of light keys was their turn too: the next light call waits for the rest.
            self._straight_last = self._express_last
            items = [item for chunk, _, _ in batch for item in chunk]
            await asyncio.wait([self._run(items, [done for _, done, _ in batch])])

    def _run(self, items: list[T], waiters: list[asyncio.Future[None]]) -> asyncio.Future[None]:
        """Apply ``items`` on the thread; its waiters are told by a callback of the thread's
        result, in the order the thread finished (a key's calls complete in order whether
        they went straight or in a batch), even if the drain was cancelled meanwhile."""
        loop = asyncio.get_running_loop()
        try:
            applied = loop.run_in_executor(self._executor, self._apply, items)
        except RuntimeError as exc:  # the executor was shut down: the store is closed
            applied = loop.create_future()
            applied.set_exception(exc)
        applied.add_done_callback(partial(_settle, waiters))
        return applied

    def _straight_pending(self) -> bool:
        return self._straight is not None and not self._straight.done()


def _settle(waiters: list[asyncio.Future[None]], applied: asyncio.Future[None]) -> None:
    """Tell the waiters of a call how applying it went (one that gave up is not told: its
    items are applied all the same)."""
    exc = applied.exception()
    for done in waiters:
        if not done.done():
            if exc is None:
                done.set_result(None)
            else:
                done.set_exception(exc)
