"""What a task can reach (issue 11, 4a), with a real Runner and real containers: none of the
Host's or Runner's secrets, nothing of the Runner's state, nor other tasks' host-process
spools; with network "none" not even the Host's ports on the node's loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from tests.e2e.harness import ProcessCluster, running_cluster

pytestmark = pytest.mark.docker
SECRET_PREFIXES = ("hkrt_", "hkrr_", "hkrj_")
# Every file a container sees but the kernel's (busybox); a canary shows the search works.
FIND_SECRETS = (
    "echo hkrj_canary > /tmp/canary; "
    r"find / \( -path /proc -o -path /sys -o -path /dev \) -prune -o -type f -print0 "
    "| xargs -0 grep -ls -e hkrt_ -e hkrr_ -e hkrj_; true"
)


def reach(ports: list[int]) -> list[str]:
    """An argv printing, for each TCP port on 127.0.0.1, whether it accepts a connection."""
    lines = [f"nc -w 2 127.0.0.1 {p} -e true && echo {p} open || echo {p} closed" for p in ports]
    return ["sh", "-c", "; ".join(lines)]


def host_ports(cluster: ProcessCluster) -> list[int]:
    """The Host's gRPC, SSH proxy, metrics and dashboard ports, all on the node's loopback."""
    return [cluster.host_port, cluster.ssh_proxy_port, cluster.metrics_port, cluster.dashboard_port]


def run(
    cluster: ProcessCluster, tasks: task_service_pb2_grpc.TaskServiceStub, argv: list[str], **f: Any
) -> tuple[task_pb2.Task, str]:
    """Submit through ``tasks``; the finished task and its stdout."""
    request = tpb.SubmitTaskRequest(command=argv[0], arguments=argv[1:], **f)
    task_id = tasks.SubmitTask(request, timeout=10).tasks[0].task_id
    final = cluster.wait_final(task_id)
    return final, cluster.read_log(task_id).decode()


@pytest.fixture(scope="module")
def cluster(
    docker_ready: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessCluster]:
    """A Runner started from a shell holding the admin's token and the join token; users may
    mount from the shared data folder (which every task can write)."""
    root = tmp_path_factory.mktemp("isolation")
    roots = {"auth": f'user_mount_roots = ["{root / "shared" / "shared_data"}"]'}
    with running_cluster(root, runner_count=0, extra_sections=roots) as c:
        c.start_runner(
            f"r{c.tag}-0",
            env={"HAKURIVER_TOKEN": c.admin_token, "HAKURIVER_AUTH__JOIN_TOKEN": c.join_token},
        )
        yield c


@pytest.fixture(scope="module")
def user(cluster: ProcessCluster) -> task_service_pb2_grpc.TaskServiceStub:
    """A plain user's task stub."""
    channel = cluster.user_channel(cluster.add_user("ursula"))
    return task_service_pb2_grpc.TaskServiceStub(channel)


def secrets_of(cluster: ProcessCluster) -> list[str]:
    """The admin's token, the join token and the Runner's credential."""
    credential = cluster.runner_state_dir(cluster.runner_names[0]) / "credential"
    return [cluster.admin_token, cluster.join_token, credential.read_text().strip()]


def assert_no_secrets(cluster: ProcessCluster, env_output: str) -> None:
    names = [line.split("=", 1)[0] for line in env_output.splitlines()]
    assert "HAKURIVER_TASK_ID" in names, env_output
    assert "HAKURIVER_TOKEN" not in names
    assert not [n for n in names if n.startswith("HAKURIVER_AUTH__")]
    for secret in [*SECRET_PREFIXES, *secrets_of(cluster)]:
        assert secret not in env_output


def test_a_container_task_gets_no_secrets_nor_the_runners_state(
    cluster: ProcessCluster, user: task_service_pb2_grpc.TaskServiceStub
) -> None:
    state = cluster.runner_state_dir(cluster.runner_names[0])
    final, env = run(cluster, user, ["env"])
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
    assert_no_secrets(cluster, env)
    final, found = run(cluster, user, ["sh", "-c", FIND_SECRETS])
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
    assert found == "/tmp/canary\n"
    final, listing = run(cluster, user, ["sh", "-c", f"ls {state} 2>&1 || echo absent"])
    assert listing.endswith("absent\n") and "credential" not in listing


def test_a_host_process_task_gets_no_secrets(
    cluster: ProcessCluster, user: task_service_pb2_grpc.TaskServiceStub
) -> None:
    """Host processes are for operators; even theirs do not inherit the Runner's secrets."""
    final, env = run(cluster, cluster.tasks, ["env"], container_name="NULL")
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
    assert_no_secrets(cluster, env)
    with pytest.raises(grpc.RpcError) as refused:
        run(cluster, user, ["env"], container_name="NULL")
    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED


def test_a_container_task_cannot_see_host_process_spools(
    cluster: ProcessCluster, user: task_service_pb2_grpc.TaskServiceStub, tmp_path: Path
) -> None:
    """/local_temp is shared by every task of the node; a host process's output and exit
    files must not be in it, or any user's task could read or forge them."""
    flag = tmp_path / "go"
    script = f"echo operator-only-output; while [ ! -e {flag} ]; do sleep 0.1; done"
    operator = cluster.submit(["sh", "-c", script], container_name="NULL")
    cluster.wait_status(operator.task_id, {task_pb2.TASK_STATUS_RUNNING})
    try:
        look = "ls -aR /local_temp; cat /local_temp/hakuriver-tasks/*/*/stdout 2>/dev/null; true"
        final, listing = run(cluster, user, ["sh", "-c", look])
        assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
        assert "operator-only-output" not in listing
        assert "process.json" not in listing and str(operator.task_id) not in listing
    finally:
        flag.touch()
    assert cluster.wait_final(operator.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    assert cluster.read_log(operator.task_id) == b"operator-only-output\n"


def test_network_none_cannot_reach_the_hosts_ports(
    cluster: ProcessCluster, user: task_service_pb2_grpc.TaskServiceStub
) -> None:
    ports = host_ports(cluster)
    isolated, out = run(cluster, user, reach(ports), network=task_pb2.TASK_NETWORK_NONE)
    assert isolated.network == task_pb2.TASK_NETWORK_NONE
    assert out.split("\n")[:-1] == [f"{p} closed" for p in ports]
    shared, out = run(cluster, user, reach(ports), network=task_pb2.TASK_NETWORK_HOST)
    assert shared.network == task_pb2.TASK_NETWORK_HOST
    assert out.split("\n")[:-1] == [f"{p} open" for p in ports]


def test_a_users_mount_cannot_leave_its_root_through_a_link(
    cluster: ProcessCluster, user: task_service_pb2_grpc.TaskServiceStub
) -> None:
    """A task links /etc into the shared folder, an allowed root; mounting the link would
    mount the node's /etc."""
    shared_data = cluster.shared_dir / "shared_data"
    final, _ = run(cluster, user, ["sh", "-c", "mkdir -p /shared/mine && ln -s /etc /shared/etc"])
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message

    def mount(name: str) -> task_pb2.Mount:
        return task_pb2.Mount(host_path=str(shared_data / name), container_path="/data")

    final, out = run(cluster, user, ["ls", "/data"], mounts=[mount("etc")])
    assert final.status == task_pb2.TASK_STATUS_FAILED and out == ""
    assert final.error_message == (
        f"mounts: {shared_data / 'etc'} goes through a symbolic link (it resolves to /etc); "
        "mount the real path"
    )
    final, out = run(
        cluster,
        user,
        ["sh", "-c", "echo ok > /data/file && cat /data/file"],
        mounts=[mount("mine")],
    )
    assert final.status == task_pb2.TASK_STATUS_COMPLETED and out == "ok\n", final.error_message


# Opens a packet socket, as a sniffer does (the sshd environment has perl; busybox does not).
RAW_SOCKET = (
    "use Socket; print socket(my $s, 17, SOCK_RAW, 0x0300) ? qq(raw ok\\n) : qq(raw refused: $!\\n)"
)


def test_a_task_cannot_watch_the_nodes_traffic(
    cluster: ProcessCluster, user: task_service_pb2_grpc.TaskServiceStub, sshd_image: str
) -> None:
    """On the node's network a raw socket sees all of its traffic, loopback included (SSH
    proxy tickets, the metrics token): task containers run without NET_RAW."""
    final, out = run(cluster, user, ["perl", "-e", RAW_SOCKET], container_name=sshd_image)
    assert final.status == task_pb2.TASK_STATUS_COMPLETED, final.error_message
    assert out == "raw refused: Operation not permitted\n"
    # The probe itself works: Docker's default capabilities include NET_RAW.
    plain = cluster.docker.containers.run(
        f"hakuriver/{sshd_image}:base", ["perl", "-e", RAW_SOCKET], network_mode="host", remove=True
    )
    assert plain == b"raw ok\n"


def test_the_admins_default_network_applies_to_tasks_that_name_none(
    docker_ready: None, tmp_path: Path
) -> None:
    sections = {"auth": 'default_task_network = "none"'}
    with running_cluster(tmp_path, runner_count=1, extra_sections=sections) as c:
        stub = task_service_pb2_grpc.TaskServiceStub(c.user_channel(c.add_user("ursula")))
        ports = host_ports(c)
        isolated, out = run(c, stub, reach(ports))
        assert isolated.network == task_pb2.TASK_NETWORK_NONE
        assert out.split("\n")[:-1] == [f"{p} closed" for p in ports]
        chosen, out = run(c, stub, reach(ports), network=task_pb2.TASK_NETWORK_HOST)
        assert chosen.network == task_pb2.TASK_NETWORK_HOST
        assert out.split("\n")[:-1] == [f"{p} open" for p in ports]
