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
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
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

    async def submit(self, items: list[T]) -> None:
        """Return once ``items`` were applied; raise what applying their batch raised."""
        await self.enqueue(items)

    def enqueue(self, items: list[T], key: Hashable = None) -> asyncio.Future[None]:
        """Queue ``items`` now, after those of ``key`` queued before; the future is done
        once they were applied."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        queue = self._queued.get(key)
        if queue is None:
            queue = self._queued[key] = deque()
        weight = self._weight(items)
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
        loop = asyncio.get_running_loop()
        while self._queued:
            batch = self._take()
            items = [item for chunk, _, _ in batch for item in chunk]
            try:
                await loop.run_in_executor(self._executor, self._apply, items)
            except Exception as exc:
                for _, done, _ in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done, _ in batch:
                    if not done.done():
                        done.set_result(None)
