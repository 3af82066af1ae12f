"""The queue of messages for the Host on the current Connect stream.

Messages wait in lanes: one per task (its output and its states, in the order they were
made), one per tunnel, one for everything else. The stream takes the lanes in turn, one
message from each, so a task that prints as fast as it can delays another task's line by at
most one of its own messages, not by everything it has queued. Each lane is bounded, and all
of them together, so a slow stream holds back whoever produces messages, including the
threads that read task output; a lane with nothing queued always has room for one message,
so no task waits for another's backlog. The queue exists only while a stream is up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
from collections import deque
from collections.abc import Callable, Hashable

from hakuriver_common.limits import MAX_BATCH_MESSAGES
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb

LANE_BYTES = 1024 * 1024
LANE_MESSAGES = 1024
TOTAL_BYTES = 64 * 1024 * 1024
THREAD_POLL_SECONDS = 0.5
# Queued output chunks that continue each other are sent as one message up to this size.
MERGED_CHUNK_BYTES = 1024 * 1024

_CONTROL = "control"


class SendCancelled(Exception):
    """Raised in a thread whose work was cancelled while it waited for room in the queue."""


def lane_of(message: rpb.ConnectRequest) -> Hashable:
    """Which lane a message waits in: messages of one lane keep their order."""
    kind = message.WhichOneof("payload")
    if kind == "log_chunk":
        return ("task", message.log_chunk.task_id)
    if kind == "task_state":
        return ("task", message.task_state.task_id)
    if kind in ("tunnel_opened", "tunnel_data", "tunnel_close"):
        return ("tunnel", getattr(message, kind).tunnel_id)
    return _CONTROL


def _size(message: rpb.ConnectRequest) -> int:
    if message.WhichOneof("payload") == "log_chunk":
        return len(message.log_chunk.data)
    if message.WhichOneof("payload") == "tunnel_data":
        return len(message.tunnel_data.data)
    return 0


class _Lane:
    __slots__ = ("messages", "size")

    def __init__(self) -> None:
        self.messages: deque[rpb.ConnectRequest] = deque()
        self.size = 0


class Lanes:
    """The lanes of one stream; ``put`` waits for room, ``take`` gives the next message in
    turn."""

    def __init__(self) -> None:
        self._lanes: dict[Hashable, _Lane] = {}
        self._turns: deque[Hashable] = deque()  # lanes with messages, next to be served first
        self._size = 0
        self._changed = asyncio.Condition()

    def _has_room(self, key: Hashable, size: int) -> bool:
        lane = self._lanes.get(key)
        if lane is None:
            return True
        return (
            len(lane.messages) < LANE_MESSAGES
            and lane.size + size <= LANE_BYTES
            and self._size + size <= TOTAL_BYTES
        )

    async def put(self, message: rpb.ConnectRequest) -> None:
        key, size = lane_of(message), _size(message)
        async with self._changed:
            await self._changed.wait_for(lambda: self._has_room(key, size))
            lane = self._lanes.get(key)
            if lane is None:
                lane = self._lanes[key] = _Lane()
                self._turns.append(key)
            lane.messages.append(message)
            lane.size += size
            self._size += size
            self._changed.notify_all()

    async def take(self) -> rpb.ConnectRequest:
        """The next message in turn. Output chunks of a lane that continue each other go as
        one; state reports at the heads of lanes in turn go as one TaskStateBatch."""
        async with self._changed:
            await self._changed.wait_for(lambda: bool(self._turns))
            message = self._pop(self._turns[0])
            if message.WhichOneof("payload") == "task_state":
                reports = [message.task_state]
                while self._turns and len(reports) < MAX_BATCH_MESSAGES:
                    head = self._lanes[self._turns[0]].messages[0]
                    if head.WhichOneof("payload") != "task_state":
                        break
                    reports.append(self._pop(self._turns[0]).task_state)
                if len(reports) > 1:
                    message = rpb.ConnectRequest(task_states=rpb.TaskStateBatch(reports=reports))
            self._changed.notify_all()
            return message

    def _pop(self, key: Hashable) -> rpb.ConnectRequest:
        """The first message of the lane whose turn it is (merged with the chunks behind it
        that continue it); the lane goes to the back of the turns, or away when empty."""
        self._turns.popleft()
        lane = self._lanes[key]
        message = lane.messages.popleft()
        if message.WhichOneof("payload") == "log_chunk":
            message = merge_chunks(message, lane.messages)
        taken = _size(message)
        lane.size -= taken
        self._size -= taken
        if lane.messages:
            self._turns.append(key)
        else:
            del self._lanes[key]
        return message


class Outbox:
    def __init__(self) -> None:
        self._lanes: Lanes | None = None

    def open(self) -> Lanes:
        """Fresh lanes for a new stream; what the previous stream had not sent is dropped."""
        self._lanes = Lanes()
        return self._lanes

    def close(self) -> None:
        self._lanes = None

    async def send(self, message: rpb.ConnectRequest) -> None:
        """Wait for room. Between streams the message is dropped: tasks are re-reported
        from scratch once the next stream registers."""
        if self._lanes is not None:
            await self._lanes.put(message)

    def thread_sender(self, cancelled: Callable[[], bool]) -> Callable[[rpb.ConnectRequest], None]:
        """A blocking send for a worker thread, bound to the current stream's lanes.

        It waits for room, so backpressure reaches the thread, and raises SendCancelled once
        ``cancelled()`` is true: nobody drains a dead stream's lanes, and the thread must not
        wait on them forever.
        """
        loop = asyncio.get_running_loop()
        lanes = self._lanes
        assert lanes is not None

        def send(message: rpb.ConnectRequest) -> None:
            future = asyncio.run_coroutine_threadsafe(lanes.put(message), loop)
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
    first: rpb.ConnectRequest, following: deque[rpb.ConnectRequest]
) -> rpb.ConnectRequest:
    """``first`` (a log chunk) joined with the chunks queued right behind it that continue
    it (same task and stream, next offset), up to MERGED_CHUNK_BYTES; those are taken off
    ``following``. Only what is already queued is merged, so a lone line is never held
    back; a fast writer's lines go as few large messages, which costs both sides far less
    per byte."""
    chunk = first.log_chunk
    parts = [chunk.data]
    end = chunk.offset + len(chunk.data)
    size = len(chunk.data)
    while following and size < MERGED_CHUNK_BYTES:
        head = following[0]
        more = head.log_chunk if head.WhichOneof("payload") == "log_chunk" else None
        if (
            more is None
            or more.task_id != chunk.task_id
            or more.stream != chunk.stream
            or more.offset != end
        ):
            break
        following.popleft()
        parts.append(more.data)
        end += len(more.data)
        size += len(more.data)
    if len(parts) == 1:
        return first
    merged = rpb.LogChunk(
        task_id=chunk.task_id, stream=chunk.stream, offset=chunk.offset, data=b"".join(parts)
    )
    return rpb.ConnectRequest(log_chunk=merged)
