"""The thread pool for every blocking call: docker-py, /proc, NVML, output files.

One pool, so a burst of dispatches or output followers cannot start unbounded threads.
Its threads are daemons: some calls block for as long as a task lives (waiting for a VPS's
exit), and the interpreter joins every thread of a ``ThreadPoolExecutor`` at exit, so a
stopped Runner hung until it was killed. Nothing a pool thread does needs finishing: the
next Runner adopts the tasks and reads on from what was reported.
"""

from __future__ import annotations

import asyncio
import contextlib
import queue
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from hakuriver_common.daemon_threads import call_into

T = TypeVar("T")
MAX_THREADS = 128
_Work = tuple[Callable[..., Any], tuple[Any, ...], asyncio.Future[Any]]


class BlockingPool:
    def __init__(self, max_threads: int = MAX_THREADS) -> None:
        self._max = max_threads
        self._work: queue.SimpleQueue[_Work | None] = queue.SimpleQueue()
        # Released by a thread each time it finished a call (it then waits for the next):
        # a call that takes one needs no new thread (as ThreadPoolExecutor does).
        self._idle = threading.Semaphore(0)
        self._threads = 0
        self._lock = threading.Lock()
        self._closed = False

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Start ``fn(*args)`` on a pool thread now; await the future for its result."""
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        if self._closed:
            future.cancel()
            return future
        self._work.put((fn, args, future))
        if not self._idle.acquire(blocking=False):
            with self._lock:
                if self._threads < self._max:
                    self._threads += 1
                    threading.Thread(
                        target=self._serve,
                        name=f"runner-docker_{self._threads}",
                        daemon=True,
                    ).start()
        return future

    def _serve(self) -> None:
        while True:
            work = self._work.get()
            if work is None:
                return
            fn, args, future = work
            call_into(future, fn, *args)
            del work, fn, args, future
            self._idle.release()

    def shutdown(self) -> None:
        """Start no more calls: those queued are cancelled, idle threads end; calls under
        way are left to end on their own (or with the process)."""
        self._closed = True
        while True:
            try:
                work = self._work.get_nowait()
            except queue.Empty:
                break
            if work is not None:
                future = work[2]
                with contextlib.suppress(RuntimeError):
                    future.get_loop().call_soon_threadsafe(future.cancel)
        with self._lock:
            for _ in range(self._threads):
                self._work.put(None)
