"""Reconnect delays: capped exponential backoff with jitter."""

from __future__ import annotations

import random


def backoff_delay(
    attempt: int, base: float = 0.2, cap: float = 10.0, rng: random.Random | None = None
) -> float:
    """Delay before reconnect ``attempt`` (0-based): uniform in [c/2, c], c = min(cap, base*2**n).

    The jitter spreads a fleet of runners reconnecting after a Host restart; the lower bound
    keeps a flapping Host from being hammered.
    """
    ceiling = min(cap, base * (2 ** min(attempt, 30)))
    return (rng or random).uniform(ceiling / 2, ceiling)
