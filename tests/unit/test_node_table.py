"""NodeTable's health watch: every sample in the order it arrived, even to a watcher that
reads late (it must not see the newest sample several times instead)."""

from __future__ import annotations

import asyncio

from google.protobuf.timestamp_pb2 import Timestamp

from hakuriver_common.proto.hakuriver.v1 import node_pb2, runner_service_pb2 as rpb
from hakuriver_host.metrics import HostMetrics
from hakuriver_host.nodes import Forgotten, NodeTable
from hakuriver_host.scheduler import Scheduler
from hakuriver_host.webhooks import Notifier


def _beat(second: int) -> rpb.Heartbeat:
    return rpb.Heartbeat(health=node_pb2.Health(sampled_at=Timestamp(seconds=second)))


async def test_a_late_watcher_gets_each_sample_in_order() -> None:
    table = NodeTable(Scheduler(60), HostMetrics(), Notifier([]), heartbeat_interval=5)
    table.connect(rpb.RegisterRunner(hostname="a", total_cores=2, total_memory_bytes=2**30))
    watch = table.watch_health("a")
    first = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)
    for second in (1, 2, 3):
        table.heartbeat("a", _beat(second))
    samples = [await first, await anext(watch), await anext(watch)]
    assert [(node.hostname, health.sampled_at.seconds) for node, health in samples] == [
        ("a", 1),
        ("a", 2),
        ("a", 3),
    ]
    await watch.aclose()


async def test_a_sample_of_a_node_forgotten_since_is_skipped() -> None:
    """A watcher reading late met a sample of a node forgotten meanwhile (offline long
    enough, never held a task): KeyError ended its stream as an internal error. It hears
    that the node was forgotten instead, and goes on."""
    table = NodeTable(Scheduler(60), HostMetrics(), Notifier([]), heartbeat_interval=5)
    for name in ("a", "b"):
        table.connect(rpb.RegisterRunner(hostname=name, total_cores=2, total_memory_bytes=2**30))
    watch = table.watch_health()
    first = asyncio.ensure_future(anext(watch))
    await asyncio.sleep(0)
    table.heartbeat("a", _beat(1))
    table.forget("a")
    table.heartbeat("b", _beat(2))
    assert await first == Forgotten("a")
    node, health = await anext(watch)  # type: ignore[misc]
    assert (node.hostname, health.sampled_at.seconds if health else None) == ("b", 2)
    await watch.aclose()
