"""A Runner's message rate (runner_link.Pace), on a clock of the test's own: a burst of up
to twice the rate goes at once, faster senders wait until they average the rate, and a
quiet spell refills the burst but no more."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from hakuriver_host import runner_link
from hakuriver_host.runner_link import Pace


class Clock:
    """time.monotonic and asyncio.sleep for Pace: sleeping moves the clock, nothing waits."""

    def __init__(self) -> None:
        self.now = 1000.0
        self.slept = 0.0

    def monotonic(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.slept += seconds
        self.now += seconds


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Clock:
    fake = Clock()
    # runner_link's own names only: the event loop keeps the real clock.
    monkeypatch.setattr(runner_link, "time", SimpleNamespace(monotonic=fake.monotonic))
    monkeypatch.setattr(runner_link, "asyncio", SimpleNamespace(sleep=fake.sleep))
    return fake


async def test_a_burst_of_twice_the_rate_goes_at_once(clock: Clock) -> None:
    pace = Pace(rate=10)
    for _ in range(20):
        await pace.take()
    assert clock.slept == 0


async def test_past_the_burst_a_sender_averages_the_rate(clock: Clock) -> None:
    pace = Pace(rate=10)
    for _ in range(20 + 50):
        await pace.take()
    assert clock.slept == pytest.approx(5.0)  # 50 messages past the burst, at 10 a second


async def test_a_quiet_spell_refills_the_burst_and_no_more(clock: Clock) -> None:
    pace = Pace(rate=10)
    for _ in range(20):
        await pace.take()
    clock.now += 60  # a minute of silence is worth 600 messages, but the burst holds 20
    for _ in range(20):
        await pace.take()
    assert clock.slept == 0
    await pace.take()
    assert clock.slept == pytest.approx(0.1)
