"""Group commit: many callers' items applied by one thread call, each caller awaiting its own.

While one batch is being applied on the worker thread, items that arrive queue up and go
together in the next call. Under load this turns one thread hop (and one GIL hand-over) per
item into one per batch; when idle, an item is applied at once.

Items are applied in the order they were queued among those of one key (by default every
item has the same key). With a ``limit``, a batch takes at most that many calls'
items, whole keys first, and a key with few calls queued (``EXPRESS`` or fewer) while
others have more goes in a small batch of its own, ahead of them: it waits for the batch
being applied, never for another key's thousands queued before it. Batches of such keys and
of the rest take turns, so neither waits for ever.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Hashable
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")
# Calls a key may have queued and still go ahead of keys with more.
EXPRESS = 4
_Queued = tuple[list[T], asyncio.Future[None]]


class GroupCommit(Generic[T]):
    def __init__(
        self, apply: Callable[[list[T]], None], executor: Executor, limit: int | None = None
    ) -> None:
        self._apply = apply
        self._executor = executor
        self._limit = limit
        # Each key's calls in order; a key leaves once it has none queued.
        self._queued: dict[Hashable, deque[_Queued[T]]] = {}
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
        queue.append((items, done))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return done

    def _take(self) -> list[_Queued[T]]:
        if self._limit is None:
            return self._take_keys(list(self._queued), None)
        few = [key for key, queue in self._queued.items() if len(queue) <= EXPRESS]
        if few and len(few) < len(self._queued) and not self._express_last:
            self._express_last = True
            return self._take_keys(few, self._limit)
        self._express_last = False
        return self._take_keys(list(self._queued), self._limit)

    def _take_keys(self, keys: list[Hashable], limit: int | None) -> list[_Queued[T]]:
        """The calls of ``keys``, each key's oldest first, up to ``limit`` of them."""
        batch: list[_Queued[T]] = []
        for key in keys:
            queue = self._queued[key]
            while queue and (limit is None or len(batch) < limit):
                batch.append(queue.popleft())
            if not queue:
                del self._queued[key]
            if limit is not None and len(batch) >= limit:
                break
        return batch

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            batch = self._take()
            items = [item for chunk, _ in batch for item in chunk]
            try:
                await loop.run_in_executor(self._executor, self._apply, items)
            except Exception as exc:
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
