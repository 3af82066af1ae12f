"""What /metrics says: nothing while the Host is still loading its state (a 503, not false
zeros), which nodes are drained (``hakuriver_node_draining``), so the shipped
HakuRiverNodeOffline alert can leave out a node drained before it was shut down, and what
each node has allocated to tasks."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import pytest

from hakuriver_common.proto.hakuriver.v1 import node_pb2, node_service_pb2 as npb, task_pb2
from hakuriver_common.statuses import NodeStatus
from hakuriver_host.server import HostServer
from hakuriver_host.store import Store
from tests.fake_runner import HOLD, eventually
from tests.unit.local_cluster import LocalCluster
from tests.unit.test_metrics_auth import metric_values, scrape

RUNNING = ("hakuriver_tasks", (("kind", "command"), ("status", "running")))


async def test_metrics_answer_503_until_the_host_has_loaded_its_state(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A restarted Host served /metrics before it had read its tasks and nodes from the
    database: no task running, no node, nothing queued. Prometheus stored those zeros
    (the running task's count dropped to 0 and back), and alerts on them could fire."""
    await local_cluster.add_runner("a", answer=HOLD)
    await local_cluster.submit_running()
    assert (await metric_values(local_cluster))[RUNNING] == 1
    await local_cluster.stop_host()

    loaded = threading.Event()
    load_tasks_in = Store.load_tasks_in

    def slow_load(store: Store, *args: Any) -> Any:  # a large database, a slow disk
        loaded.wait(timeout=60)
        return load_tasks_in(store, *args)

    monkeypatch.setattr(Store, "load_tasks_in", slow_load)
    server = local_cluster.server = HostServer(  # stopped with the cluster
        local_cluster.config, prepare_default_environment=False
    )
    starting = asyncio.create_task(server.start())
    try:
        await eventually(lambda: server.metrics_port, what="/metrics listening")
        status, _, body = await scrape(local_cluster)
        assert (status, body) == (
            503,
            "the Host is starting: its metrics are served once it has loaded its state\n",
        )
    finally:
        loaded.set()
        await starting
    assert (await metric_values(local_cluster))[RUNNING] == 1


async def _draining(cluster: LocalCluster) -> dict[str, float]:
    return {
        dict(labels)["node"]: value
        for (name, labels), value in (await metric_values(cluster)).items()
        if name == "hakuriver_node_draining"
    }


async def test_a_drained_node_is_drained_in_the_metrics(local_cluster: LocalCluster) -> None:
    a = await local_cluster.add_runner("a")
    await local_cluster.add_runner("b")
    assert await _draining(local_cluster) == {"a": 0, "b": 0}
    await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
    assert await _draining(local_cluster) == {"a": 1, "b": 0}

    await a.drop()  # shut down for maintenance: offline, and still drained
    await local_cluster.wait_node("a", NodeStatus.OFFLINE)
    await local_cluster.restart_host()
    assert await _draining(local_cluster) == {"a": 1, "b": 0}

    await local_cluster.nodes.UndrainNode(npb.UndrainNodeRequest(hostname="a"), timeout=5)
    assert await _draining(local_cluster) == {"a": 0, "b": 0}


async def _allocated(cluster: LocalCluster) -> dict[tuple[str, ...], float]:
    """The allocation series /metrics serves, by name and label values."""
    return {
        (name, *(value for _, value in labels)): value
        for (name, labels), value in (await metric_values(cluster)).items()
        if name.startswith(("hakuriver_node_cpu_cores", "hakuriver_node_gpus")) or "allocat" in name
    }


async def test_the_metrics_show_what_each_node_has_allocated(
    local_cluster: LocalCluster,
) -> None:
    """/metrics showed each node's health but not what HakuRiver had given its tasks: a
    dashboard could not show cores allocated out of the node's, nor which GPUs were taken."""
    gpus = [node_pb2.Gpu(index=i, uuid=f"GPU-{i}", name="fake") for i in (0, 1, 2)]
    runner = await local_cluster.add_runner("a", cores=4, gpus=gpus, answer=HOLD)
    [task] = await local_cluster.submit_running(
        cores=3, memory="1G", targets=[task_pb2.Target(hostname="a", gpu_ids=[0, 2])]
    )
    free = {
        ("hakuriver_node_cpu_cores", "a"): 4,
        ("hakuriver_node_cpu_cores_allocated", "a"): 0,
        ("hakuriver_node_memory_allocatable_bytes", "a"): 8 * 2**30,
        ("hakuriver_node_memory_allocated_bytes", "a"): 0,
        ("hakuriver_node_gpus", "a"): 3,
        ("hakuriver_node_gpus_allocated", "a"): 0,
        ("hakuriver_gpu_allocated", "0", "a"): 0,
        ("hakuriver_gpu_allocated", "1", "a"): 0,
        ("hakuriver_gpu_allocated", "2", "a"): 0,
    }
    assert await _allocated(local_cluster) == {
        **free,
        ("hakuriver_node_cpu_cores_allocated", "a"): 3,
        ("hakuriver_node_memory_allocated_bytes", "a"): 10**9,
        ("hakuriver_node_gpus_allocated", "a"): 2,
        ("hakuriver_gpu_allocated", "0", "a"): 1,
        ("hakuriver_gpu_allocated", "2", "a"): 1,
    }
    runner.finish(task.task_id, 0)
    await local_cluster.wait_status(task.task_id)

    async def released() -> bool:
        return await _allocated(local_cluster) == free

    await eventually(released, what="the task's resources released in /metrics")
