"""The Host's outbox to one Runner: commands queued one after another of the same kind go
as one batch message to a Runner that takes them, never across another kind (the order
of a task's commands is kept) and never held back waiting for a batch."""

from __future__ import annotations

import asyncio

from hakuriver_common.limits import MAX_BATCH_MESSAGES
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_host.runner_link import InFlight, RunnerLink


def _queue(link: RunnerLink, *commands: tuple[str, int]) -> None:
    for kind, task_id in commands:
        if kind == "dispatch":
            link.dispatch(rpb.DispatchCommand(task_id=task_id))
        elif kind == "release":
            link.release(task_id)
        else:
            link.kill(task_id, 1.0)


async def _sent(link: RunnerLink) -> list[tuple[str, list[int]]]:
    """What the stream carries until the outbox is empty: (kind, task ids) per message."""
    sent = []
    while not link.outbox.empty() or link._carried:
        message = await link.next()
        assert message is not None
        kind = message.WhichOneof("payload")
        assert kind is not None
        if kind == "dispatches":
            sent.append((kind, [d.task_id for d in message.dispatches.dispatches]))
        elif kind == "releases":
            sent.append((kind, [r.task_id for r in message.releases.releases]))
        else:
            sent.append((kind, [getattr(message, kind).task_id]))
    return sent


MIXED = (
    ("dispatch", 1),
    ("dispatch", 2),
    ("release", 3),
    ("release", 4),
    ("kill", 5),
    ("release", 6),
    ("dispatch", 7),
    ("release", 8),
    ("release", 9),
)


async def test_runs_of_one_kind_are_batched_in_order() -> None:
    link = RunnerLink("a", batches=True, release_batches=True)
    _queue(link, *MIXED)
    assert await _sent(link) == [
        ("dispatches", [1, 2]),
        ("releases", [3, 4]),
        ("kill", [5]),
        ("release", [6]),
        ("dispatch", [7]),
        ("releases", [8, 9]),
    ]


async def test_a_runner_that_takes_no_release_batches_gets_them_one_by_one() -> None:
    link = RunnerLink("a", batches=True, release_batches=False)
    _queue(link, *MIXED)
    assert await _sent(link) == [
        ("dispatches", [1, 2]),
        ("release", [3]),
        ("release", [4]),
        ("kill", [5]),
        ("release", [6]),
        ("dispatch", [7]),
        ("release", [8]),
        ("release", [9]),
    ]


async def test_a_batch_is_bounded_and_a_lone_release_goes_at_once() -> None:
    link = RunnerLink("a", batches=True, release_batches=True)
    count = MAX_BATCH_MESSAGES + 3
    _queue(link, *(("release", i) for i in range(count)))
    sent = await _sent(link)
    assert [len(ids) for _, ids in sent] == [MAX_BATCH_MESSAGES, 3]
    assert [i for _, ids in sent for i in ids] == list(range(count))
    _queue(link, ("release", 99))
    assert await _sent(link) == [("release", [99])]


async def test_reports_in_flight_are_counted_in_reports() -> None:
    """A Runner's reports being stored are bounded in reports, not messages: a message
    waits until what it carries fits (one bigger than the bound takes all of it)."""
    budget = InFlight(10)
    assert await budget.take(6) == 6
    waiting = asyncio.create_task(budget.take(5))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    budget.give(6)
    assert await asyncio.wait_for(waiting, 1) == 5
    huge = asyncio.create_task(budget.take(1_000))
    await asyncio.sleep(0.01)
    assert not huge.done()
    budget.give(5)
    assert await asyncio.wait_for(huge, 1) == 10
