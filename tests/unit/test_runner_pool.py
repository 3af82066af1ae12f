"""The Runner's pool of blocking calls: results and errors reach the awaiting coroutine,
calls that block do not hold up others, and its threads never hold up the process's exit."""

from __future__ import annotations

import asyncio
import threading

import pytest

from hakuriver_runner.pool import BlockingPool


async def test_results_and_errors_come_back() -> None:
    pool = BlockingPool()
    try:
        assert await pool.run(sum, [1, 2, 3]) == 6
        with pytest.raises(ZeroDivisionError):
            await pool.run(lambda: 1 / 0)
    finally:
        pool.shutdown()


async def test_a_call_that_blocks_holds_up_no_other_and_no_exit() -> None:
    pool = BlockingPool()
    release = threading.Event()
    try:
        blocked = pool.run(release.wait)
        # Each call had a thread of its own while the first blocks.
        assert await asyncio.wait_for(pool.run(lambda: "free"), 5) == "free"
        assert await asyncio.wait_for(pool.run(lambda: "again"), 5) == "again"
        assert not blocked.done()
        # The interpreter joins non-daemon threads at exit: a stopped Runner hung on them.
        assert all(t.daemon for t in threading.enumerate() if t.name.startswith("runner-docker"))
    finally:
        release.set()
        pool.shutdown()
    assert await blocked is True


async def test_after_shutdown_calls_are_cancelled() -> None:
    pool = BlockingPool(max_threads=1)
    release = threading.Event()
    busy = pool.run(release.wait)
    queued = pool.run(lambda: "never")
    pool.shutdown()
    late = pool.run(lambda: "never")
    release.set()
    assert await busy is True
    for future in (queued, late):
        with pytest.raises(asyncio.CancelledError):
            await future
