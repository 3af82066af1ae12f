"""The bulk lane (hakuriver_host.bulk_lane): producers' slices run one per turn of the
event loop, in the order they asked, and other work runs between any two of them."""

from __future__ import annotations

import asyncio

from hakuriver_host.bulk_lane import BulkLane


class Turns:
    """Counts turns of the event loop: a callback that puts itself back each turn."""

    def __init__(self) -> None:
        self.count = 0
        self._handle: asyncio.Handle | None = None

    def start(self) -> None:
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def _tick(self) -> None:
        self.count += 1
        self._handle = asyncio.get_running_loop().call_soon(self._tick)

    def stop(self) -> None:
        assert self._handle is not None
        self._handle.cancel()


async def test_slices_of_many_producers_run_one_per_turn_in_order() -> None:
    lane, turns = BulkLane(), Turns()
    ran: list[tuple[str, int, int]] = []  # (producer, slice, turn of the loop)

    async def producer(name: str, slices: int) -> None:
        for number in range(slices):
            await lane.turn()
            ran.append((name, number, turns.count))

    turns.start()
    await asyncio.gather(*(producer(name, 5) for name in "abc"))
    turns.stop()
    assert len(ran) == 15
    loop_turns = [turn for _, _, turn in ran]
    assert len(set(loop_turns)) == 15, f"two slices shared a turn: {ran}"
    # Round robin: each producer asks again after its slice, behind the others.
    assert [name for name, _, _ in ran[3:]] == list("abc") * 4
    for name in "abc":
        assert [n for p, n, _ in ran if p == name] == list(range(5))


async def test_other_work_runs_between_any_two_slices() -> None:
    lane = BulkLane()
    log: list[str] = []

    async def bulk() -> None:
        for _ in range(20):
            await lane.turn()
            log.append("slice")

    async def lone() -> None:
        for _ in range(20):
            await asyncio.sleep(0)
            log.append("lone")

    await asyncio.gather(bulk(), bulk(), lone())
    slices = [i for i, entry in enumerate(log) if entry == "slice"]
    # Until the lone coroutine is done, no two slices run back to back.
    last_lone = max(i for i, entry in enumerate(log) if entry == "lone")
    together = [i for i in slices if i + 1 in slices and i < last_lone]
    assert not together, f"slices back to back at {together}: {log}"


async def test_a_cancelled_waiter_gives_its_turn_up() -> None:
    lane = BulkLane()
    ran: list[str] = []

    async def slice_of(name: str) -> None:
        await lane.turn()
        ran.append(name)

    first = asyncio.create_task(slice_of("first"))
    await asyncio.sleep(0)  # first holds this turn; the next two wait in the lane
    gone = asyncio.create_task(slice_of("gone"))
    last = asyncio.create_task(slice_of("last"))
    await asyncio.sleep(0)
    gone.cancel()
    await asyncio.gather(first, last, return_exceptions=True)
    assert gone.cancelled()
    assert ran == ["first", "last"]
    # The lane is free again: a new slice runs in the next turn.
    await asyncio.wait_for(slice_of("again"), 1)
    assert ran[-1] == "again"
