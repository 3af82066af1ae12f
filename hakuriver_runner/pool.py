"""The thread pool for every blocking call: docker-py, /proc, NVML, output files.

One pool, so a burst of dispatches or output followers cannot start unbounded threads.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class BlockingPool:
    def __init__(self) -> None:
        self._executor = ThreadPoolExecutor(max_workers=128, thread_name_prefix="runner-docker")

    def run(self, fn: Callable[..., T], *args: Any) -> asyncio.Future[T]:
        """Start ``fn(*args)`` on a pool thread now; await the future for its result."""
        return asyncio.get_running_loop().run_in_executor(self._executor, fn, *args)

    def shutdown(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)
