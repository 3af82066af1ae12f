"""One open Connect stream of a Runner, as the Host sees it."""

from __future__ import annotations

import asyncio

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb

# Above this many queued messages, bulk senders (SSH tunnels) wait; control messages never do.
HIGH_WATER = 256


class RunnerSession:
    """One open Connect stream; messages to the runner queue in its outbox."""

    def __init__(self, hostname: str) -> None:
        self.hostname = hostname
        self.outbox: asyncio.Queue[rpb.ConnectResponse | None] = asyncio.Queue()
        self._room = asyncio.Event()
        self._room.set()

    def send(self, message: rpb.ConnectResponse) -> None:
        self.outbox.put_nowait(message)
        if self.outbox.qsize() > HIGH_WATER:
            self._room.clear()

    async def next(self) -> rpb.ConnectResponse | None:
        """The next message to write to the stream (None: close it)."""
        message = await self.outbox.get()
        if self.outbox.qsize() <= HIGH_WATER:
            self._room.set()
        return message

    async def room(self) -> None:
        """Wait until the outbox is below its high-water mark."""
        await self._room.wait()

    def close(self) -> None:
        self.outbox.put_nowait(None)
