"""GPU readings taken off the heartbeat's path.

NVML can block for minutes on a GPU in a bad state. A heartbeat (or a registration) that
waited for it would leave the whole node silent: offline, its tasks, CPU tasks too, unknown
and then lost. So a reading is started on a pool thread and waited for a while only; one
still under way is not started again, and the beat goes without GPUs until it returns.
"""

from __future__ import annotations

import asyncio
import logging

from hakuriver_common.proto.hakuriver.v1 import node_pb2
from hakuriver_runner.pool import BlockingPool
from hakuriver_runner.system_info import GpuProbe

log = logging.getLogger(__name__)


class GpuReadings:
    def __init__(self, probe: GpuProbe, pool: BlockingPool) -> None:
        self._probe = probe
        self._pool = pool
        self._reading: asyncio.Future[list[node_pb2.Gpu]] | None = None
        self._waited = 0.0

    async def take(self, within: float) -> list[node_pb2.Gpu]:
        """The GPUs NVML reads now, or none if it has not answered within ``within``
        seconds (the reading goes on; the next call waits for the same one)."""
        if not self._probe.available:
            return []
        if self._reading is None:
            self._reading = self._pool.run(self._probe.sample)
        reading = self._reading
        await asyncio.wait({reading}, timeout=within)
        if not reading.done():
            if not self._waited:
                log.warning("NVML does not answer: reporting no GPUs until it does")
            self._waited += within
            return []
        if self._waited:
            log.info("NVML answered after %.0fs or more", self._waited)
        self._reading, self._waited = None, 0.0
        if reading.cancelled():  # the pool shut down
            return []
        return reading.result()
