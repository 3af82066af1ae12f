"""The log store on real files: offsets make resends harmless; slow followers catch up."""

from __future__ import annotations

import asyncio
import itertools
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import log_service_pb2 as lpb, task_pb2
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.log_store import FOLLOWER_BYTES, FOLLOWER_QUEUE, STDERR, STDOUT, LogStore
from tests.fake_runner import HOLD, exit_with
from tests.unit.local_cluster import LocalCluster
from tests.unit.test_authorization import SSH_KEY


def make(tmp_path: Path) -> LogStore:
    return LogStore(tmp_path / "out", tmp_path / "err")


async def test_resent_and_overlapping_chunks_are_written_once(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.append(1, STDOUT, 0, b"hello ")
    await store.append(1, STDOUT, 0, b"hello ")  # resent after a reconnect
    await store.append(1, STDOUT, 3, b"lo world")  # overlaps the end
    await store.append(1, STDERR, 0, b"err")
    assert store.path(1, STDOUT).read_bytes() == b"hello world"
    assert store.path(1, STDERR).read_bytes() == b"err"
    # A new store (a restarted Host) learns the size from the file.
    again = make(tmp_path)
    assert await again.size(1, STDOUT) == 11
    await again.append(1, STDOUT, 0, b"hello world!\n")
    assert store.path(1, STDOUT).read_bytes() == b"hello world!\n"


async def collect(store: LogStore, task_id: int, follow: bool, final: bool) -> bytes:
    parts = [data async for _, data in store.read(task_id, STDOUT, 0, follow, final)]
    return b"".join(parts)


async def test_follower_gets_file_then_live_chunks_then_ends(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.append(7, STDOUT, 0, b"a\n")
    reader = asyncio.create_task(collect(store, 7, follow=True, final=False))
    await asyncio.sleep(0.05)
    await store.append(7, STDOUT, 2, b"b\n")
    await store.append(7, STDERR, 0, b"not mine\n")
    await store.append(7, STDOUT, 4, b"c\n")
    store.close(7)
    assert await asyncio.wait_for(reader, 5) == b"a\nb\nc\n"


async def test_slow_follower_is_not_waited_for_and_catches_up_from_file(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.append(9, STDOUT, 0, b"start\n")
    agen = store.read(9, STDOUT, 0, True, False)
    first = await agen.__anext__()
    assert first == (0, b"start\n")
    # The follower reads nothing while far more chunks than its queue holds arrive.
    offset = 6
    expected = b"start\n"
    for i in range(FOLLOWER_QUEUE * 3):
        line = f"{i}\n".encode()
        await store.append(9, STDOUT, offset, line)
        offset += len(line)
        expected += line
    store.close(9)
    rest = b"".join([data async for _, data in agen])
    assert b"start\n" + rest == expected


async def test_read_of_finished_task_does_not_wait(tmp_path: Path) -> None:
    store = make(tmp_path)
    await store.append(3, STDOUT, 0, b"done\n")
    assert await asyncio.wait_for(collect(store, 3, follow=True, final=True), 2) == b"done\n"


async def test_a_follower_holds_at_most_its_byte_bound(tmp_path: Path) -> None:
    store = make(tmp_path)
    agen = store.read(10, STDOUT, 0, True, False)
    reading = asyncio.ensure_future(agen.__anext__())
    await asyncio.sleep(0)  # the follower is registered and waits for the first chunk
    big = b"x" * (256 * 1024)
    for i in range(FOLLOWER_BYTES // len(big) * 3):
        await store.append(10, STDOUT, i * len(big), big)
    follower = next(iter(store._followers[(10, STDOUT)]))
    assert follower.queued_bytes <= FOLLOWER_BYTES and follower.lagging
    store.close(10)
    first = await reading
    rest = b"".join([data async for _, data in agen])
    assert len(first[1]) + len(rest) == FOLLOWER_BYTES // len(big) * 3 * len(big)


def numbered(first: int, count: int) -> bytes:
    return b"".join(f"line {i:07d}\n".encode() for i in range(first, first + count))


async def test_a_read_with_a_lag_bound_starts_near_the_end_at_a_line(tmp_path: Path) -> None:
    store = make(tmp_path)
    content = numbered(0, 10_000)  # 13 bytes a line
    await store.append(3, STDOUT, 0, content)
    pieces = [p async for p in store.read(3, STDOUT, 0, False, True, max_lag=1000)]
    start = pieces[0][0]
    assert len(content) - 1000 <= start < len(content) - 1000 + 13
    assert content[start - 1 : start] == b"\n"  # a whole line first
    assert b"".join(data for _, data in pieces) == content[start:]
    # Without the bound, every byte.
    assert b"".join([d async for _, d in store.read(3, STDOUT, 0, False, True)]) == content


async def test_a_follower_with_a_lag_bound_skips_ahead_and_says_where(tmp_path: Path) -> None:
    store = make(tmp_path)
    max_lag = 64 * 1024
    agen = store.read(5, STDOUT, 0, True, False, max_lag=max_lag)
    written = b""
    reader = asyncio.create_task(agen.__anext__())
    await asyncio.sleep(0.05)
    # The follower sits on its first chunk while 4 MiB are stored behind it.
    for block in range(32):
        data = numbered(block * 10_000, 10_000)
        await store.append(5, STDOUT, len(written), data)
        written += data
    pieces = [await asyncio.wait_for(reader, 5)]
    reading = asyncio.create_task(collect_pieces(agen))
    await asyncio.sleep(0.05)
    store.close(5)
    pieces += await asyncio.wait_for(reading, 5)
    # What it got: pieces of the file at their offsets, ending at the end, with at least
    # one jump, each landing at a line start within max_lag of the end at the time.
    for offset, data in pieces:
        assert written[offset : offset + len(data)] == data
    assert pieces[-1][0] + len(pieces[-1][1]) == len(written)
    jumps = [
        (prev[0] + len(prev[1]), offset)
        for prev, (offset, _) in itertools.pairwise(pieces)
        if offset != prev[0] + len(prev[1])
    ]
    assert jumps and all(to > end for end, to in jumps)
    assert all(written[to - 1 : to] == b"\n" for _, to in jumps)
    assert sum(len(d) for _, d in pieces) < len(written) // 4


async def collect_pieces(agen: AsyncIterator[tuple[int, bytes]]) -> list[tuple[int, bytes]]:
    return [piece async for piece in agen]


async def test_read_log_over_the_api_honours_the_lag_bound(local_cluster: LocalCluster) -> None:
    content = numbered(0, 5_000)
    await local_cluster.add_runner("a", answer=exit_with(0, stdout=content))
    task = await local_cluster.submit("print")
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    request = lpb.ReadLogRequest(
        task_id=task.task_id, stream=task_pb2.LOG_STREAM_STDOUT, max_lag_bytes=100
    )
    pieces = [(p.offset, p.data) async for p in local_cluster.logs.ReadLog(request, timeout=5)]
    start = pieces[0][0]
    assert len(content) - 100 <= start and content[start - 1 : start] == b"\n"
    assert b"".join(d for _, d in pieces) == content[start:]


async def test_read_log_from_an_offset_past_any_file_is_empty(local_cluster: LocalCluster) -> None:
    """Any int64 offset is a place in the stream: past the end, nothing (not INTERNAL from
    a seek past the file system's largest file)."""
    await local_cluster.add_runner("a", answer=exit_with(0, stdout=b"hi\n"))
    task = await local_cluster.submit("print")
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    for offset in (3, 2**40, 2**63 - 1):
        request = lpb.ReadLogRequest(
            task_id=task.task_id, stream=task_pb2.LOG_STREAM_STDOUT, offset=offset
        )
        assert [p async for p in local_cluster.logs.ReadLog(request, timeout=5)] == []


def test_the_paths_as_text_are_the_paths(tmp_path: Path) -> None:
    store = make(tmp_path)
    assert store.paths(42) == (str(store.path(42, STDOUT)), str(store.path(42, STDERR)))


async def test_reading_a_vps_output_is_refused_at_once(local_cluster: LocalCluster) -> None:
    """A VPS writes no output: a follower would otherwise wait for the VPS's whole life."""
    await local_cluster.add_runner("a", answer=HOLD)
    vps = await local_cluster.submit("", kind=task_pb2.TASK_KIND_VPS, ssh_public_key=SSH_KEY)
    await local_cluster.wait_status(vps.task_id, TaskStatus.RUNNING)
    for follow in (False, True):
        request = lpb.ReadLogRequest(task_id=vps.task_id, follow=follow)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await anext(aiter(local_cluster.logs.ReadLog(request, timeout=5)))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert refused.value.details() == (
            f"task {vps.task_id} is a VPS: it writes no output "
            f"(reach it with hakuriver.ssh {vps.task_id})"
        )
