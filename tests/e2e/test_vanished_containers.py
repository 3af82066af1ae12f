"""A task whose container disappears behind the Runner's back ends, with a reason, and
frees its resources."""

from __future__ import annotations

from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb, task_pb2
from tests.e2e.harness import ProcessCluster, wait_for


def _container(cluster: ProcessCluster, task_id: int):  # type: ignore[no-untyped-def]
    found = cluster.docker.containers.list(
        all=True, ignore_removed=True, filters={"label": f"hakuriver.task_id={task_id}"}
    )
    return found[0] if found else None


def test_a_container_removed_behind_the_runners_back_fails_its_task(
    fresh_cluster: ProcessCluster,
) -> None:
    cluster = fresh_cluster
    task = cluster.submit(["sleep", "600"])
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    container = wait_for(lambda: _container(cluster, task.task_id), what="the container")
    labels = container.labels
    assert labels["hakuriver.cluster"] and labels["hakuriver.runner"] in cluster.runner_names

    container.remove(force=True)
    final = cluster.wait_final(task.task_id, timeout=20)
    assert final.status == task_pb2.TASK_STATUS_FAILED
    assert final.error_message == "its container disappeared (removed outside HakuRiver)", final
    nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5).nodes
    assert [(n.available_cores, n.active_tasks) for n in nodes] == [
        (n.total_cores, 0) for n in nodes
    ]
