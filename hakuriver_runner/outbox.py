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
# Queued output chunks that continue each other are sent as one message up to this size.
MERGED_CHUNK_BYTES = 1024 * 1024


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


def merge_chunks(
    first: rpb.ConnectRequest, queue: asyncio.Queue[rpb.ConnectRequest]
) -> tuple[rpb.ConnectRequest, rpb.ConnectRequest | None]:
    """``first`` (a log chunk) joined with the chunks queued right behind it that continue
    it (same task and stream, next offset), up to MERGED_CHUNK_BYTES; and the message
    taken from the queue that did not fit, if any, to send next. Only what is already
    queued is merged, so a lone line is never held back; a fast writer's lines go as few
    large messages, which costs both sides far less per byte."""
    chunk = first.log_chunk
    parts = [chunk.data]
    end = chunk.offset + len(chunk.data)
    size = len(chunk.data)
    leftover: rpb.ConnectRequest | None = None
    while size < MERGED_CHUNK_BYTES and not queue.empty():
        following = queue.get_nowait()
        more = following.log_chunk if following.WhichOneof("payload") == "log_chunk" else None
        if (
            more is None
            or more.task_id != chunk.task_id
            or more.stream != chunk.stream
            or more.offset != end
        ):
            leftover = following
            break
        parts.append(more.data)
        end += len(more.data)
        size += len(more.data)
    if len(parts) == 1:
        return first, leftover
    merged = rpb.LogChunk(
        task_id=chunk.task_id, stream=chunk.stream, offset=chunk.offset, data=b"".join(parts)
    )
    return rpb.ConnectRequest(log_chunk=merged), leftover
