"""Blocking calls on daemon threads, their outcome handed to an asyncio future.

For calls that may block for as long as they like (a webhook receiver that never answers, a
wait for a VPS's exit): the loop's executor and ``ThreadPoolExecutor`` make non-daemon
threads, which the interpreter joins at exit, so a stopping process hung on them.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable
from typing import Any, TypeVar

T = TypeVar("T")


def _settle(future: asyncio.Future[Any], result: Any, error: BaseException | None) -> None:
    if future.done():  # cancelled meanwhile
        return
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


def call_into(future: asyncio.Future[T], fn: Callable[..., T], *args: Any) -> None:
    """On this thread (not the loop's), ``fn(*args)``; its result or error goes to
    ``future`` on its loop (dropped if the future was cancelled or the loop closed)."""
    result: Any = None
    error: BaseException | None = None
    try:
        result = fn(*args)
    except BaseException as exc:  # handed to the awaiting coroutine
        error = exc
    with contextlib.suppress(RuntimeError):  # its loop closed meanwhile
        future.get_loop().call_soon_threadsafe(_settle, future, result, error)


async def on_daemon_thread(fn: Callable[..., T], *args: Any, name: str = "daemon-call") -> T:
    """``fn(*args)`` on a daemon thread of its own."""
    future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
    threading.Thread(target=call_into, args=(future, fn, *args), name=name, daemon=True).start()
    return await future
