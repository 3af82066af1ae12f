"""The log store on real files: offsets make resends harmless; slow followers catch up."""

from __future__ import annotations

import asyncio
from pathlib import Path

from hakuriver_host.log_store import FOLLOWER_BYTES, FOLLOWER_QUEUE, STDERR, STDOUT, LogStore


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
