"""What /metrics says: which nodes are drained (``hakuriver_node_draining``), so the shipped
HakuRiverNodeOffline alert can leave out a node drained before it was shut down."""

from __future__ import annotations

from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb
from hakuriver_common.statuses import NodeStatus
from tests.unit.local_cluster import LocalCluster
from tests.unit.test_metrics_auth import metric_values


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
