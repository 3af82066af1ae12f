"""One lane for the Host's bulk work: at most one slice of it per turn of the event loop.

A job array's thousands of tasks are queued, placed, dispatched, reported and answered in
slices of a few milliseconds, each yielding to the loop. Yielding alone is not enough: the
slices of every bulk producer (the submission, the placement pass, each node's dispatch,
each Runner's reports) become ready together, and one turn of the loop runs them all, so a
lone call's next step waits behind their sum (~15-25 ms per step, a dozen steps from its
request to its RUNNING). Producers that take a turn in this lane first run one slice per
turn of the loop, in the order they asked: the lone call's steps, and grpc's own, wait for
at most one slice each, and the bulk work as a whole goes as fast as before (a turn of the
loop with nothing else ready costs microseconds).
"""

from __future__ import annotations

import asyncio
from collections import deque

# Work on fewer items than this is not bulk: it runs without a turn (a lone task's change,
# a small submission's few).
SMALL = 16


class BulkLane:
    def __init__(self) -> None:
        self._waiting: deque[asyncio.Future[None]] = deque()
        self._granting = False

    async def turn(self) -> None:
        """Return when this slice may run: in a later turn of the loop than the slice
        before it (of any producer). With nobody waiting, that is the next turn."""
        loop = asyncio.get_running_loop()
        if not self._granting:
            # Ahead of this task's own wake-up in the next turn: it finds nobody to let in
            # (or those who asked after this slice, for the turn after).
            self._granting = True
            loop.call_soon(self._grant)
            await asyncio.sleep(0)
            return
        turn: asyncio.Future[None] = loop.create_future()
        self._waiting.append(turn)
        await turn

    def _grant(self) -> None:
        """Let the oldest waiting slice run (its task wakes in the next turn of the loop)
        and come back in that turn: until then the lane is taken, whoever asks."""
        while self._waiting:
            turn = self._waiting.popleft()
            if not turn.done():  # a cancelled waiter gave its turn up
                turn.set_result(None)
                asyncio.get_running_loop().call_soon(self._grant)
                return
        self._granting = False
