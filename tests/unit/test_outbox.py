"""The Runner sends queued output that continues itself as one message, never holding a
lone chunk back and never merging across tasks, streams or gaps."""

from __future__ import annotations

import asyncio

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.outbox import MERGED_CHUNK_BYTES, merge_chunks


def _chunk(task_id: int, offset: int, data: bytes, stream: int = 1) -> rpb.ConnectRequest:
    return rpb.ConnectRequest(
        log_chunk=rpb.LogChunk(task_id=task_id, stream=stream, offset=offset, data=data)  # type: ignore[arg-type]
    )


async def test_queued_chunks_that_continue_each_other_go_as_one() -> None:
    queue: asyncio.Queue[rpb.ConnectRequest] = asyncio.Queue()
    for message in (
        _chunk(1, 3, b"de"),
        _chunk(1, 5, b"f"),
        _chunk(2, 0, b"x"),
        _chunk(1, 6, b"g"),
    ):
        queue.put_nowait(message)
    merged, leftover = merge_chunks(_chunk(1, 0, b"abc"), queue)
    assert (merged.log_chunk.offset, merged.log_chunk.data) == (0, b"abcdef")
    assert leftover == _chunk(2, 0, b"x")  # another task's: sent next, in order
    assert queue.get_nowait() == _chunk(1, 6, b"g")


async def test_a_lone_chunk_is_sent_as_is_and_gaps_streams_and_other_messages_split() -> None:
    queue: asyncio.Queue[rpb.ConnectRequest] = asyncio.Queue()
    alone = _chunk(1, 0, b"line\n")
    assert merge_chunks(alone, queue) == (alone, None)
    for following in (
        _chunk(1, 9, b"gap"),
        _chunk(1, 5, b"err", stream=2),
        rpb.ConnectRequest(heartbeat=rpb.Heartbeat()),
    ):
        queue.put_nowait(following)
        assert merge_chunks(alone, queue) == (alone, following)


async def test_merging_stops_at_its_size_bound() -> None:
    queue: asyncio.Queue[rpb.ConnectRequest] = asyncio.Queue()
    piece = b"y" * (MERGED_CHUNK_BYTES // 4)
    for i in range(1, 8):
        queue.put_nowait(_chunk(1, i * len(piece), piece))
    merged, leftover = merge_chunks(_chunk(1, 0, piece), queue)
    assert len(merged.log_chunk.data) == MERGED_CHUNK_BYTES and leftover is None
    assert queue.qsize() == 4
