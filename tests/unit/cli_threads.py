"""Running a command-line tool from an async test: its exit code, in a thread."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


def exit_code(run: Callable[..., object], *args: object) -> int:
    """What ``run(*args)`` exits with (0 when it returns)."""
    try:
        result = run(*args)
    except SystemExit as ended:
        return int(ended.code or 0)
    return int(result or 0)  # type: ignore[call-overload]


def exit_code_later(run: Callable[..., object], *args: object) -> asyncio.Future[int]:
    """The exit code of ``run(*args)`` in a daemon thread: a tool that never ends fails
    its test (a bounded wait on this), not hangs it (a thread of asyncio.to_thread is waited
    for at the end)."""
    loop = asyncio.get_running_loop()
    ended: asyncio.Future[int] = loop.create_future()

    def go() -> None:
        code = exit_code(run, *args)
        loop.call_soon_threadsafe(ended.set_result, code)

    threading.Thread(target=go, daemon=True).start()
    return ended
