"""The queue of messages for the Host on the current Connect stream.

It is bounded so that a slow stream holds back whoever produces messages, including the
threads that read task output, and it exists only while a stream is up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections.abc import Callable

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb

OUTBOX_SIZE = 1024
THREAD_POLL_SECONDS = 0.5


class SendCancelled(Exception):
    """Raised in a thread whose work was cancelled while it waited for room in the queue."""


class Outbox:
    def __init__(self) -> None:
        self._queue: asyncio.Queue[rpb.ConnectRequest] | None = None

    def open(self) -> asyncio.Queue[rpb.ConnectRequest]:
        """A fresh queue for a new stream; what the previous stream had not sent is dropped."""
        self._queue = asyncio.Queue(OUTBOX_SIZE)
        return self._queue

    def close(self) -> None:
        self._queue = None

    async def send(self, message: rpb.ConnectRequest) -> None:
        """Wait for room. Between streams the message is dropped: tasks are re-reported
        from scratch once the next stream registers."""
        if self._queue is not None:
            await self._queue.put(message)

    def thread_sender(self, cancelled: Callable[[], bool]) -> Callable[[rpb.ConnectRequest], None]:
        """A blocking send for a worker thread, bound to the current stream's queue.

        It waits for room, so backpressure reaches the thread, and raises SendCancelled once
        ``cancelled()`` is true: nobody drains a dead stream's queue, and the thread must not
        wait on it forever.
        """
        loop = asyncio.get_running_loop()
        queue = self._queue
        assert queue is not None

        def send(message: rpb.ConnectRequest) -> None:
            future = asyncio.run_coroutine_threadsafe(queue.put(message), loop)
            while True:
                try:
                    future.result(THREAD_POLL_SECONDS)
                    return
                except concurrent.futures.TimeoutError:
                    if cancelled():
                        future.cancel()
                        raise SendCancelled from None

        return send
