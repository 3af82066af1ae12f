"""The Runner's outbox: tasks take turns on the stream, so one task's backlog never holds
another's line; a task's own messages keep their order; queued output that continues itself
goes as one message, never holding a lone chunk back and never merging across tasks,
streams or gaps; and every lane is bounded."""

from __future__ import annotations

import asyncio

import pytest

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.outbox import LANE_BYTES, LANE_MESSAGES, MERGED_CHUNK_BYTES, Lanes


def _chunk(task_id: int, offset: int, data: bytes, stream: int = 1) -> rpb.ConnectRequest:
    return rpb.ConnectRequest(
        log_chunk=rpb.LogChunk(task_id=task_id, stream=stream, offset=offset, data=data)  # type: ignore[arg-type]
    )


def _state(task_id: int) -> rpb.ConnectRequest:
    return rpb.ConnectRequest(
        task_state=rpb.TaskStateReport(task_id=task_id, state=rpb.RUNNER_TASK_STATE_EXITED)
    )


async def _fill(lanes: Lanes, *messages: rpb.ConnectRequest) -> None:
    for message in messages:
        await lanes.put(message)


async def test_queued_chunks_that_continue_each_other_go_as_one() -> None:
    lanes = Lanes()
    await _fill(lanes, _chunk(1, 0, b"abc"), _chunk(1, 3, b"de"), _chunk(1, 5, b"f"))
    merged = await lanes.take()
    assert (merged.log_chunk.offset, merged.log_chunk.data) == (0, b"abcdef")


async def test_a_lone_chunk_is_sent_as_is_and_gaps_streams_and_states_split() -> None:
    lanes = Lanes()
    alone = _chunk(1, 0, b"line\n")
    await lanes.put(alone)
    assert await lanes.take() == alone
    following = (_chunk(1, 9, b"gap"), _chunk(1, 12, b"err", stream=2), _state(1))
    await _fill(lanes, alone, *following)
    assert [await lanes.take() for _ in range(4)] == [alone, *following]


async def test_merging_stops_at_its_size_bound() -> None:
    lanes = Lanes()
    piece = b"y" * (MERGED_CHUNK_BYTES // 4)
    await _fill(lanes, *(_chunk(1, i * len(piece), piece) for i in range(4)))
    waiting = asyncio.create_task(
        _fill(lanes, *(_chunk(1, i * len(piece), piece) for i in range(4, 8)))
    )
    first = await lanes.take()
    assert len(first.log_chunk.data) == MERGED_CHUNK_BYTES
    await waiting
    second = await lanes.take()
    assert (second.log_chunk.offset, len(second.log_chunk.data)) == (
        MERGED_CHUNK_BYTES,
        MERGED_CHUNK_BYTES,
    )


async def test_tasks_take_turns_so_a_backlog_delays_another_line_by_one_message() -> None:
    lanes = Lanes()
    # Task 1's backlog: chunks that cannot merge (each leaves a gap), then its final state.
    flood = [_chunk(1, i * 10, b"y\n") for i in range(50)]
    await _fill(lanes, *flood, _state(1))
    line = _chunk(2, 0, b"tick\n")
    heartbeat = rpb.ConnectRequest(heartbeat=rpb.Heartbeat())
    await _fill(lanes, line, heartbeat)
    sent = [await lanes.take() for _ in range(len(flood) + 3)]
    assert sent[:3] == [flood[0], line, heartbeat]
    # Task 1's own messages keep their order, its state after all its output.
    assert [m for m in sent if m.WhichOneof("payload") != "heartbeat" and m != line] == [
        *flood,
        _state(1),
    ]


async def test_a_full_lane_holds_back_its_task_only() -> None:
    lanes = Lanes()
    await _fill(lanes, *(_chunk(1, i * 10, b"y") for i in range(LANE_MESSAGES)))
    blocked = asyncio.create_task(lanes.put(_chunk(1, 99_999, b"y")))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    await asyncio.wait_for(lanes.put(_chunk(2, 0, b"tick\n")), 1)
    assert (await lanes.take()).log_chunk.task_id == 1
    await asyncio.wait_for(blocked, 1)


async def test_a_lane_is_bounded_in_bytes_but_always_takes_one_message() -> None:
    lanes = Lanes()
    big = b"z" * (LANE_BYTES + 1)
    await asyncio.wait_for(lanes.put(_chunk(1, 0, big)), 1)
    blocked = asyncio.create_task(lanes.put(_chunk(1, len(big), b"more")))
    await asyncio.sleep(0.05)
    assert not blocked.done()
    assert len((await lanes.take()).log_chunk.data) == len(big)
    await asyncio.wait_for(blocked, 1)


@pytest.mark.parametrize("kind", ["tunnel_data", "tunnel_close"])
async def test_tunnels_have_lanes_of_their_own(kind: str) -> None:
    lanes = Lanes()
    await _fill(lanes, *(_chunk(1, i * 10, b"y") for i in range(5)))
    tunnel = rpb.ConnectRequest(**{kind: {"tunnel_id": 7}})
    await lanes.put(tunnel)
    assert [await lanes.take() for _ in range(2)][1] == tunnel


async def test_reports_at_the_heads_of_lanes_go_as_one_batch_and_a_lone_one_alone() -> None:
    lanes = Lanes()
    await lanes.put(_state(1))
    assert await lanes.take() == _state(1)
    # Task 3's report waits behind its own output; the reports of 1 and 2 go together.
    await _fill(lanes, _state(1), _chunk(3, 0, b"out"), _state(3), _state(2))
    assert await lanes.take() == _state(1)  # the next lane's head is output: alone
    assert (await lanes.take()).log_chunk.task_id == 3
    together = await lanes.take()
    assert [r.task_id for r in together.task_states.reports] == [2, 3]
