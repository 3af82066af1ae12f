"""Group commit: many callers' items applied by one thread call, each caller awaiting its own.

While one batch is being applied on the worker thread, items that arrive queue up and go
together in the next call. Under load this turns one thread hop (and one GIL hand-over) per
item into one per batch; when idle, an item is applied at once.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Generic, TypeVar

T = TypeVar("T")


class GroupCommit(Generic[T]):
    def __init__(self, apply: Callable[[list[T]], None], executor: Executor) -> None:
        self._apply = apply
        self._executor = executor
        self._queued: list[tuple[list[T], asyncio.Future[None]]] = []
        self._worker: asyncio.Task[None] | None = None

    async def submit(self, items: list[T]) -> None:
        """Return once ``items`` were applied; raise what applying their batch raised."""
        await self.enqueue(items)

    def enqueue(self, items: list[T]) -> asyncio.Future[None]:
        """Queue ``items`` now (batches keep the order of these calls); the future is done
        once they were applied."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._queued.append((items, done))
        if self._worker is None or self._worker.done():
            self._worker = asyncio.create_task(self._drain())
        return done

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queued:
            batch, self._queued = self._queued, []
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
