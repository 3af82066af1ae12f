"""Scheduling through a real Host and Runners: queueing, priorities, pinning, drain, GPUs."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_runner.start_gate import LABEL_GATED
from tests.e2e.harness import ProcessCluster, running_cluster, wait_for

pytestmark = pytest.mark.docker
FAKE_NVML = str(Path(__file__).parent.parent / "fake_nvml")
RUNNING = {task_pb2.TASK_STATUS_RUNNING}


@pytest.fixture(scope="module")
def sched(docker_ready: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ProcessCluster]:
    """One ordinary Runner, plus one with two fake GPUs added by the GPU test."""
    root = tmp_path_factory.mktemp("sched")
    with running_cluster(root, runner_count=1, extra_config="keep_failed_containers = true") as c:
        yield c


def _container(cluster: ProcessCluster, task_id: int):  # type: ignore[no-untyped-def]
    found = cluster.docker.containers.list(
        all=True, ignore_removed=True, filters={"label": f"hakuriver.task_id={task_id}"}
    )
    assert len(found) == 1, found
    return found[0]


def _kill(cluster: ProcessCluster, *task_ids: int) -> None:
    for task_id in task_ids:
        cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task_id), timeout=30)


def _node_cores(cluster: ProcessCluster, name: str) -> int:
    nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5).nodes
    return next(n.total_cores for n in nodes if n.hostname == name)


def test_busy_node_queues_and_starts_tasks_in_priority_order(sched: ProcessCluster) -> None:
    name = sched.runner_names[0]
    target = [task_pb2.Target(hostname=name)]
    cores = _node_cores(sched, name)
    blocker = sched.submit(["sleep", "600"], cores=cores, targets=target)
    sched.wait_status(blocker.task_id, RUNNING)
    low = sched.submit(["sleep", "600"], cores=cores, targets=target)
    high = sched.submit(["sleep", "600"], cores=cores, targets=target, priority=5)
    assert low.status == task_pb2.TASK_STATUS_PENDING
    assert sched.get(high.task_id).queue_position == 1
    assert sched.get(low.task_id).queue_position == 2
    listed = sched.cli("task", "list", "--status", "pending")
    assert "pending #1" in listed.stdout and "pending #2" in listed.stdout
    _kill(sched, blocker.task_id)
    sched.wait_status(high.task_id, RUNNING)
    assert sched.get(low.task_id).status == task_pb2.TASK_STATUS_PENDING
    _kill(sched, high.task_id)
    sched.wait_status(low.task_id, RUNNING)
    _kill(sched, low.task_id)


def test_tasks_are_pinned_to_distinct_cpus_and_numa_memory(sched: ProcessCluster) -> None:
    name = sched.runner_names[0]
    cores = _node_cores(sched, name)
    tasks = [
        sched.submit(["sleep", "600"], targets=[task_pb2.Target(hostname=name, numa_node_id=0)])
        for _ in range(cores)
    ]
    pinned = []
    for task in tasks:
        running = sched.wait_status(task.task_id, RUNNING)
        assert len(running.assigned_cpus) == 1
        attrs = _container(sched, task.task_id).attrs
        assert attrs["HostConfig"]["CpusetCpus"] == str(running.assigned_cpus[0])
        assert attrs["HostConfig"]["CpusetMems"] == "0"
        pinned.append(running.assigned_cpus[0])
    assert len(set(pinned)) == cores, "two tasks share a pinned CPU"
    # Every CPU is taken: the next one waits.
    extra = sched.submit(["true"], targets=[task_pb2.Target(hostname=name)])
    assert sched.get(extra.task_id).status == task_pb2.TASK_STATUS_PENDING
    _kill(sched, *(t.task_id for t in tasks))
    assert sched.wait_final(extra.task_id).status == task_pb2.TASK_STATUS_COMPLETED


def test_drained_node_takes_nothing_new_but_running_tasks_continue(sched: ProcessCluster) -> None:
    name = sched.runner_names[0]
    running = sched.submit(["sleep", "600"], targets=[task_pb2.Target(hostname=name)])
    sched.wait_status(running.task_id, RUNNING)
    drained = sched.cli("client", "drain", name)
    assert drained.returncode == 0, drained.stderr
    assert "draining" in drained.stdout
    waiting = sched.submit(["true"], targets=[task_pb2.Target(hostname=name)])
    nodes = json.loads(sched.cli("client", "nodes", "--json").stdout)
    assert [n.get("draining") for n in nodes if n["hostname"] == name] == [True]
    assert sched.get(waiting.task_id).status == task_pb2.TASK_STATUS_PENDING
    assert sched.get(running.task_id).status == task_pb2.TASK_STATUS_RUNNING
    assert sched.cli("client", "undrain", name).returncode == 0
    assert sched.wait_final(waiting.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    _kill(sched, running.task_id)
    unknown = sched.cli("client", "drain", "no-such-node")
    assert unknown.returncode == 1 and "unknown node 'no-such-node'" in unknown.stderr


def _prepared(cluster: ProcessCluster, task_id: int) -> Any:
    """The task's container once it exists, made ahead: started and held at its gate (or
    created only, for an image the gate cannot hold), its command not run."""

    def made() -> Any:
        found = cluster.docker.containers.list(
            all=True, ignore_removed=True, filters={"label": f"hakuriver.task_id={task_id}"}
        )
        ready = [
            c
            for c in found
            if c.labels.get("hakuriver.prepared")
            and c.status == ("running" if c.labels.get(LABEL_GATED) else "created")
        ]
        return ready[0] if ready else None

    return wait_for(made, what=f"task {task_id}'s container prepared ahead")


def test_a_queued_task_has_its_container_made_ahead_and_its_start_only_starts_it(
    sched: ProcessCluster,
) -> None:
    name = sched.runner_names[0]
    target = [task_pb2.Target(hostname=name)]
    busy = [sched.submit(["sleep", "600"], targets=target) for _ in range(_node_cores(sched, name))]
    first_cpu = sched.wait_status(busy[0].task_id, RUNNING).assigned_cpus[0]
    for task in busy[1:]:
        sched.wait_status(task.task_id, RUNNING)
    following = sched.submit(["sh", "-c", "echo ready; sleep 600"], targets=target)
    dropped = sched.submit(["true"], targets=target)

    prepared = _prepared(sched, following.task_id)
    assert prepared.status == "running" and prepared.labels.get(LABEL_GATED)  # held
    assert sched.get(following.task_id).status == task_pb2.TASK_STATUS_PENDING
    assert prepared.attrs["HostConfig"]["CpusetCpus"] == str(first_cpu)
    # A Runner that restarts removes what it prepared; the Host asks for it again.
    sched.kill_runner(name)
    sched.start_runner(name)
    wait_for(
        lambda: (
            not sched.docker.containers.list(
                all=True, ignore_removed=True, filters={"id": prepared.id}
            )
        ),
        what="the restarted Runner removing the container it had prepared",
    )
    again = _prepared(sched, following.task_id)
    assert again.attrs["HostConfig"]["CpusetCpus"] == str(first_cpu)
    dropped_container = _prepared(sched, dropped.task_id)
    _kill(sched, dropped.task_id)
    wait_for(
        lambda: (
            not sched.docker.containers.list(
                all=True, ignore_removed=True, filters={"id": dropped_container.id}
            )
        ),
        what="the killed queued task's prepared container removed",
    )

    _kill(sched, busy[0].task_id)
    running = sched.wait_status(following.task_id, RUNNING)
    assert list(running.assigned_cpus) == [first_cpu]
    assert sched.docker.containers.get(again.id).status == "running"
    wait_for(lambda: sched.read_log(following.task_id) == b"ready\n", what="its output")
    _kill(sched, following.task_id, *(t.task_id for t in busy[1:]))


def test_requests_that_can_never_fit_are_refused_naming_the_limit(sched: ProcessCluster) -> None:
    name = sched.runner_names[0]
    cores = _node_cores(sched, name)
    invalid, missing = grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.NOT_FOUND
    here = [task_pb2.Target(hostname=name)]
    cases = [
        (dict(cores=cores + 1, targets=here), invalid, f"has at most {cores}"),
        (dict(targets=[task_pb2.Target(hostname=name, numa_node_id=7)]), missing, "no NUMA node 7"),
        (dict(targets=[task_pb2.Target(hostname=name, gpu_ids=[3])]), missing, "no GPU 3"),
        (dict(gpus=64), invalid, "gpus: 64 requested"),
        (dict(memory="1000T"), invalid, "memory: 1000000000000000 bytes (1000.0T) requested"),
    ]
    for fields, code, message in cases:
        with pytest.raises(grpc.RpcError) as caught:
            sched.submit(["true"], **fields)
        assert caught.value.code() == code, fields
        assert message in caught.value.details(), caught.value.details()


def test_task_without_gpus_gets_none_from_the_nvidia_runtime(sched: ProcessCluster) -> None:
    """Where the NVIDIA runtime is Docker's default (DGX OS), it gives a container the GPUs
    its NVIDIA_VISIBLE_DEVICES names, which CUDA images set to "all"; a task without GPUs
    says none, and a submission cannot set it. CUDA is told none too (a privileged
    container has every device of the node)."""
    task = sched.submit(["sleep", "600"])
    sched.wait_status(task.task_id, RUNNING)
    config = _container(sched, task.task_id).attrs
    _kill(sched, task.task_id)
    env = dict(item.split("=", 1) for item in config["Config"]["Env"])
    assert (env["NVIDIA_VISIBLE_DEVICES"], env["CUDA_VISIBLE_DEVICES"]) == ("void", "")
    assert not config["HostConfig"]["DeviceRequests"]

    with pytest.raises(grpc.RpcError) as caught:
        sched.submit(["true"], env={"NVIDIA_VISIBLE_DEVICES": "all"})
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "env: NVIDIA_VISIBLE_DEVICES is set by HakuRiver" in caught.value.details()


def test_gpu_task_gets_exactly_its_devices(sched: ProcessCluster) -> None:
    gpu_runner = sched.start_runner(
        f"{sched.runner_names[0]}-gpu",
        env={
            "PYTHONPATH": os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")]),
            "HAKURIVER_FAKE_GPUS": "2",
        },
    )
    nodes = json.loads(sched.cli("client", "nodes", "--json").stdout)
    [node] = [n for n in nodes if n["hostname"] == gpu_runner]
    assert [g.get("index", 0) for g in node["gpus"]] == [0, 1]  # JSON omits zero values
    assert node["gpus"][0]["name"] == "NVIDIA A100"

    task = sched.submit(["true"], targets=[task_pb2.Target(hostname=gpu_runner, gpu_ids=[1])])
    final = sched.wait_final(task.task_id)
    assert list(final.required_gpus) == [1]
    config = _container(sched, task.task_id).attrs
    [request] = config["HostConfig"]["DeviceRequests"]
    assert request["DeviceIDs"] == ["1"]
    assert request["Capabilities"] == [["gpu"]]
    env = dict(item.split("=", 1) for item in config["Config"]["Env"])
    assert env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["HAKURIVER_GPU_IDS"] == "1"
    assert env["CUDA_DEVICE_ORDER"] == "PCI_BUS_ID"  # NVML's order: the node's GPU ids
    assert env["NVIDIA_VISIBLE_DEVICES"] == "1"  # the NVIDIA runtime, default or not, agrees
    if final.status == task_pb2.TASK_STATUS_FAILED:
        # No NVIDIA runtime on this machine: Docker refuses GPU containers, and says so.
        assert "could not select device driver" in final.error_message, final.error_message
    else:
        assert final.status == task_pb2.TASK_STATUS_COMPLETED

    # A privileged container sees every GPU of the node: CUDA is told its own by node id.
    privileged = sched.submit(
        ["true"], targets=[task_pb2.Target(hostname=gpu_runner, gpu_ids=[1])], privileged=True
    )
    sched.wait_final(privileged.task_id)
    config = _container(sched, privileged.task_id).attrs
    env = dict(item.split("=", 1) for item in config["Config"]["Env"])
    assert (env["CUDA_VISIBLE_DEVICES"], env["HAKURIVER_GPU_IDS"]) == ("1", "1")

    counted = sched.submit(["true"], gpus=2)
    placed = sched.wait_final(counted.task_id)
    assert placed.assigned_node == gpu_runner
    assert sorted(placed.required_gpus) == [0, 1]
