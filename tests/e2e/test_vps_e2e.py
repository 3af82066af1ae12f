"""VPS tasks and SSH through the Host's proxy, with a real sshd in a real container."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncssh
import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.harness import ProcessCluster, running_cluster, wait_for

pytestmark = pytest.mark.docker
RUNNING = {task_pb2.TASK_STATUS_RUNNING}


def tunnel(cluster: ProcessCluster, task_id: int | str) -> tuple[socket.socket | None, str]:
    """Speak the proxy protocol: the connected socket on SUCCESS, else None and the answer."""
    sock = socket.create_connection(("127.0.0.1", cluster.ssh_proxy_port), timeout=10)
    sock.sendall(f"REQUEST_TUNNEL {task_id}\n".encode())
    answer = b""
    while not answer.endswith(b"\n"):
        data = sock.recv(1)
        if not data:
            break
        answer += data
    text = answer.decode().strip()
    if text != "SUCCESS":
        sock.close()
        return None, text
    sock.settimeout(None)
    return sock, text


async def connect(
    cluster: ProcessCluster, task_id: int, key: asyncssh.SSHKey
) -> asyncssh.SSHClientConnection:
    sock, answer = tunnel(cluster, task_id)
    assert sock is not None, answer
    return await asyncssh.connect(
        sock=sock, username="root", client_keys=[key], known_hosts=None, connect_timeout=20
    )


@pytest.fixture(scope="module")
def vps_cluster(
    sshd_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessCluster]:
    with running_cluster(tmp_path_factory.mktemp("vps"), runner_count=1) as c:
        yield c


@pytest.fixture(scope="module")
def key(tmp_path_factory: pytest.TempPathFactory) -> asyncssh.SSHKey:
    return asyncssh.generate_private_key("ssh-ed25519")


@pytest.fixture(scope="module")
def key_files(key: asyncssh.SSHKey, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("keys")
    key.write_private_key(folder / "id")
    (folder / "id").chmod(0o600)
    key.write_public_key(folder / "id.pub")
    return folder


@pytest.fixture(scope="module")
def vps(vps_cluster: ProcessCluster, key_files: Path, sshd_image: str) -> int:
    result = vps_cluster.cli(
        "vps",
        "submit",
        "--container",
        sshd_image,
        "--public-key-file",
        str(key_files / "id.pub"),
        "--json",
    )
    assert result.returncode == 0, result.stderr
    task_id = int(json.loads(result.stdout)["task_id"])
    running = vps_cluster.wait_status(task_id, RUNNING, timeout=60)
    assert running.ssh_port > 0 and running.kind == task_pb2.TASK_KIND_VPS
    return task_id


def test_asyncssh_runs_commands_and_copies_files(
    vps_cluster: ProcessCluster, vps: int, key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    async def scenario() -> None:
        async with await connect(vps_cluster, vps, key) as conn:
            result = await conn.run("echo hello $(id -u)", check=True)
            assert result.stdout == "hello 0\n"
            local = tmp_path / "payload.bin"
            local.write_bytes(os.urandom(3_000_000))
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(local), "/tmp/payload.bin")
            digest = await conn.run("sha256sum /tmp/payload.bin", check=True)
            assert digest.stdout.split()[0] == hashlib.sha256(local.read_bytes()).hexdigest()

    asyncio.run(scenario())


def test_many_sessions_at_once(vps_cluster: ProcessCluster, vps: int, key: asyncssh.SSHKey) -> None:
    async def one(i: int) -> str:
        async with await connect(vps_cluster, vps, key) as conn:
            return (await conn.run(f"echo session-{i}", check=True)).stdout

    async def scenario() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(6)))

    assert asyncio.run(scenario()) == [f"session-{i}\n" for i in range(6)]


def test_system_ssh_and_scp_through_the_proxy(
    vps_cluster: ProcessCluster, vps: int, key_files: Path, tmp_path: Path
) -> None:
    env = {**os.environ, "HAKURIVER_CONFIG": str(vps_cluster.config_path), "HOME": str(tmp_path)}
    identity = ["-i", str(key_files / "id"), "-o", "BatchMode=yes"]
    direct = vps_cluster.cli("ssh", str(vps), "--", *identity, "echo via-hakuriver-ssh")
    assert direct.returncode == 0 and direct.stdout == "via-hakuriver-ssh\n", direct.stderr
    proxy = f"{sys.executable} -m hakuriver_cli.ssh --proxy-command %h"
    common = [
        *identity,
        "-o",
        f"ProxyCommand={proxy}",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]
    source = tmp_path / "notes.txt"
    source.write_text("copied with scp\n")
    copy = subprocess.run(
        ["scp", *common, str(source), f"root@{vps}:/tmp/notes.txt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert copy.returncode == 0, copy.stderr
    check = subprocess.run(
        ["ssh", *common, f"root@{vps}", "cat /tmp/notes.txt"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert check.stdout == "copied with scp\n", check.stderr


def test_wrong_key_is_refused_by_sshd(vps_cluster: ProcessCluster, vps: int) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(connect(vps_cluster, vps, stranger))


def test_proxy_refuses_bad_requests_clearly(vps_cluster: ProcessCluster) -> None:
    command = vps_cluster.submit(["true"])
    vps_cluster.wait_final(command.task_id)
    assert tunnel(vps_cluster, 12345) == (None, "ERROR task_id: task 12345 not found")
    assert tunnel(vps_cluster, command.task_id) == (
        None,
        f"ERROR task {command.task_id} is not a VPS task",
    )
    assert tunnel(vps_cluster, "abc")[1] == "ERROR task id must be a decimal integer, got 'abc'"
    sock = socket.create_connection(("127.0.0.1", vps_cluster.ssh_proxy_port), timeout=10)
    sock.sendall(b"HELLO\n")
    assert sock.recv(200) == b"ERROR expected: REQUEST_TUNNEL <task_id>\n"
    sock.close()


def test_submit_errors(
    vps_cluster: ProcessCluster, key_files: Path, sshd_image: str, tmp_path: Path
) -> None:
    name = vps_cluster.runner_names[0]
    two = [task_pb2.Target(hostname=name), task_pb2.Target(hostname=name)]
    with pytest.raises(grpc.RpcError) as caught:
        vps_cluster.tasks.SubmitTask(
            tpb.SubmitTaskRequest(
                kind=task_pb2.TASK_KIND_VPS,
                targets=two,
                container_name=sshd_image,
                ssh_public_key=(key_files / "id.pub").read_text(),
            ),
            timeout=5,
        )
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most one target" in caught.value.details()
    env_home = {"HOME": str(tmp_path)}
    result = subprocess.run(
        [*vps_cluster.cli_argv("vps"), "submit", "--container", sshd_image],
        capture_output=True,
        text=True,
        env={**os.environ, **env_home, "HAKURIVER_CONFIG": str(vps_cluster.config_path)},
    )
    assert result.returncode == 2 and "no public key" in result.stderr


def test_environment_without_sshd_fails_clearly(
    vps_cluster: ProcessCluster, key_files: Path
) -> None:
    result = vps_cluster.cli(
        "vps", "submit", "--public-key-file", str(key_files / "id.pub"), "--json"
    )
    task_id = int(json.loads(result.stdout)["task_id"])
    final = vps_cluster.wait_final(task_id, timeout=90)
    assert final.status == task_pb2.TASK_STATUS_FAILED
    assert "no SSH server" in final.error_message


def test_pause_stalls_resume_continues_kill_ends(
    vps_cluster: ProcessCluster, key_files: Path, key: asyncssh.SSHKey, sshd_image: str
) -> None:
    reply = vps_cluster.tasks.SubmitTask(
        tpb.SubmitTaskRequest(
            kind=task_pb2.TASK_KIND_VPS,
            container_name=sshd_image,
            ssh_public_key=(key_files / "id.pub").read_text(),
        ),
        timeout=10,
    )
    task_id = reply.tasks[0].task_id
    vps_cluster.wait_status(task_id, RUNNING, timeout=60)

    async def scenario() -> None:
        conn = await connect(vps_cluster, task_id, key)
        assert (await conn.run("echo before", check=True)).stdout == "before\n"
        await asyncio.to_thread(
            vps_cluster.tasks.PauseTask, tpb.PauseTaskRequest(task_id=task_id), timeout=20
        )
        stalled = asyncio.ensure_future(conn.run("echo during", check=True))
        done, _ = await asyncio.wait({stalled}, timeout=1.5)
        assert not done, "the session should stall while the VPS is paused"
        await asyncio.to_thread(
            vps_cluster.tasks.ResumeTask, tpb.ResumeTaskRequest(task_id=task_id), timeout=20
        )
        assert (await asyncio.wait_for(stalled, 20)).stdout == "during\n"
        killed = await asyncio.to_thread(
            vps_cluster.tasks.KillTask, tpb.KillTaskRequest(task_id=task_id), timeout=30
        )
        assert killed.task.status == task_pb2.TASK_STATUS_KILLED
        await asyncio.wait_for(conn.wait_closed(), 20)

    asyncio.run(scenario())
    assert tunnel(vps_cluster, task_id)[1] == f"ERROR task {task_id} is killed, not running"


def test_vps_survives_a_runner_restart_on_the_same_port(
    vps_cluster: ProcessCluster, vps: int, key: asyncssh.SSHKey
) -> None:
    before = vps_cluster.get(vps)
    vps_cluster.kill_runner()
    vps_cluster.start_runner()
    after = vps_cluster.wait_status(vps, RUNNING)
    assert after.ssh_port == before.ssh_port

    def reconnected() -> bool:
        sock, _ = tunnel(vps_cluster, vps)
        if sock is not None:
            sock.close()
        return sock is not None

    wait_for(reconnected, what="the proxy to reach the VPS again")

    async def again() -> str:
        async with await connect(vps_cluster, vps, key) as conn:
            return (await conn.run("echo still-here", check=True)).stdout

    assert asyncio.run(again()) == "still-here\n"
    status = json.loads(vps_cluster.cli("vps", "status", "--json").stdout)
    assert [t["ssh_port"] for t in status if int(t["task_id"]) == vps] == [before.ssh_port]


def _sshd_sessions(port: int) -> int:
    """Established TCP connections whose local port is the VPS's sshd port (host networking)."""
    count = 0
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                fields = line.split()
                if int(fields[1].rsplit(":", 1)[1], 16) == port and fields[3] == "01":
                    count += 1
    return count


def test_dropped_clients_free_their_sessions(
    vps_cluster: ProcessCluster, vps: int, key: asyncssh.SSHKey
) -> None:
    port = vps_cluster.get(vps).ssh_port
    baseline = _sshd_sessions(port)

    async def scenario() -> None:
        connections = [await connect(vps_cluster, vps, key) for _ in range(3)]
        assert _sshd_sessions(port) == baseline + 3
        for conn in connections[:2]:
            conn.abort()  # the client vanishes without a goodbye
        await asyncio.to_thread(
            wait_for, lambda: _sshd_sessions(port) == baseline + 1, 20, "sshd sessions to close"
        )
        connections[2].close()
        await connections[2].wait_closed()

    asyncio.run(scenario())
    wait_for(lambda: _sshd_sessions(port) == baseline, what="the last session to close")
