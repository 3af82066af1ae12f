"""VPS tasks and SSH through the Host's proxy, with a real sshd in a real container.

The proxy port takes ``TICKET <ticket>\\n``; a ticket comes from SshService.CreateSshTicket,
which only the VPS's owner (or an operator) gets, and it opens one tunnel, once.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import secrets
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import asyncssh
import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    node_service_pb2 as npb,
    ssh_service_pb2 as spb,
    ssh_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.roles import Role
from hakuriver_runner.ssh_ports import ephemeral_range
from tests.e2e.harness import ProcessCluster, running_cluster, wait_for
from tests.e2e.test_api_surface import scrape

pytestmark = pytest.mark.docker
RUNNING = {task_pb2.TASK_STATUS_RUNNING}
# Longer than any test here takes from taking a ticket to presenting it (the pause test:
# about 2 s), about as long as the tests between early_ticket and the last one.
TICKET_SECONDS = 10
REFUSED_TICKET = "ERROR unknown, used or expired ticket (ask for a new one)"


@dataclass(frozen=True)
class Person:
    """A user of the cluster: their token and a channel calling with it."""

    token: str
    channel: grpc.Channel


def ticket(channel: grpc.Channel, task_id: int) -> spb.CreateSshTicketResponse:
    stub = ssh_service_pb2_grpc.SshServiceStub(channel)
    return stub.CreateSshTicket(spb.CreateSshTicketRequest(task_id=task_id), timeout=10)


def present(cluster: ProcessCluster, line: str) -> tuple[socket.socket | None, str]:
    """Send one request line to the proxy port: the socket on SUCCESS, else None and the answer."""
    sock = socket.create_connection(("127.0.0.1", cluster.ssh_proxy_port), timeout=10)
    sock.sendall(f"{line}\n".encode())
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


def tunnel(
    cluster: ProcessCluster, channel: grpc.Channel, task_id: int
) -> tuple[socket.socket | None, str]:
    """A fresh ticket through ``channel``, presented on the proxy port."""
    return present(cluster, f"TICKET {ticket(channel, task_id).ticket}")


async def connect(
    cluster: ProcessCluster, channel: grpc.Channel, task_id: int, key: asyncssh.SSHKey
) -> asyncssh.SSHClientConnection:
    sock, answer = await asyncio.to_thread(tunnel, cluster, channel, task_id)
    assert sock is not None, answer
    return await asyncssh.connect(
        sock=sock, username="root", client_keys=[key], known_hosts=None, connect_timeout=20
    )


def cli_as(
    cluster: ProcessCluster, token: str, home: Path, tool: str, *args: str
) -> subprocess.CompletedProcess[str]:
    """A CLI tool run with ``token`` in HAKURIVER_TOKEN (it wins over the credentials file)."""
    env = {
        **os.environ,
        "HAKURIVER_CONFIG": str(cluster.config_path),
        "HAKURIVER_TOKEN": token,
        "HOME": str(home),
        "COLUMNS": "200",
    }
    return subprocess.run(
        [*cluster.cli_argv(tool), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )


def submit_vps(
    cluster: ProcessCluster,
    person: Person,
    key_files: Path,
    environment: str,
    home: Path,
    *options: str,
) -> int:
    """A VPS of ``environment`` submitted by ``person`` with the CLI, the test key and
    ``options``."""
    result = cli_as(
        cluster,
        person.token,
        home,
        "vps",
        "submit",
        "--container",
        environment,
        "--public-key-file",
        str(key_files / "id.pub"),
        "--json",
        *options,
    )
    assert result.returncode == 0, result.stderr
    return int(json.loads(result.stdout)["task_id"])


@pytest.fixture(scope="module")
def vps_cluster(
    sshd_image: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessCluster]:
    """Its SSH tickets live TICKET_SECONDS (timing.ssh_ticket_seconds), not 30: the last
    test presents one that expired, without waiting half a minute for it."""
    timing = {"timing": f"ssh_ticket_seconds = {TICKET_SECONDS}"}
    root = tmp_path_factory.mktemp("vps")
    with running_cluster(root, runner_count=1, extra_sections=timing) as c:
        yield c


@pytest.fixture(scope="module")
def owner(vps_cluster: ProcessCluster) -> Person:
    """A plain user who owns the module's VPS."""
    token = vps_cluster.add_user("alice")
    return Person(token, vps_cluster.user_channel(token))


@pytest.fixture(scope="module")
def stranger(vps_cluster: ProcessCluster) -> Person:
    """Another plain user."""
    token = vps_cluster.add_user("bob")
    return Person(token, vps_cluster.user_channel(token))


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
def vps(
    vps_cluster: ProcessCluster,
    owner: Person,
    key_files: Path,
    sshd_image: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> int:
    """A running VPS submitted by ``owner`` with the CLI."""
    task_id = submit_vps(vps_cluster, owner, key_files, sshd_image, tmp_path_factory.mktemp("home"))
    running = vps_cluster.wait_status(task_id, RUNNING, timeout=60)
    assert running.ssh_port > 0 and running.kind == task_pb2.TASK_KIND_VPS
    assert running.owner == "alice"
    return task_id


@pytest.fixture(scope="module")
def early_ticket(owner: Person, vps: int) -> spb.CreateSshTicketResponse:
    """A ticket taken when the module's first test runs and presented by its last one, after
    it expired (the tests in between take about as long as a ticket lives)."""
    return ticket(owner.channel, vps)


def test_the_ssh_port_lies_below_the_kernels_ephemeral_range(
    vps_cluster: ProcessCluster, vps: int
) -> None:
    """No outgoing connection on the node can take it between its choice and sshd's bind."""
    assert 1024 <= vps_cluster.get(vps).ssh_port < ephemeral_range().start


def test_asyncssh_runs_commands_and_copies_files(
    vps_cluster: ProcessCluster,
    owner: Person,
    vps: int,
    key: asyncssh.SSHKey,
    tmp_path: Path,
    early_ticket: spb.CreateSshTicketResponse,
) -> None:
    async def scenario() -> None:
        async with await connect(vps_cluster, owner.channel, vps, key) as conn:
            result = await conn.run("echo hello $(id -u)", check=True)
            assert result.stdout == "hello 0\n"
            local = tmp_path / "payload.bin"
            local.write_bytes(os.urandom(3_000_000))
            async with conn.start_sftp_client() as sftp:
                await sftp.put(str(local), "/tmp/payload.bin")
            digest = await conn.run("sha256sum /tmp/payload.bin", check=True)
            assert digest.stdout.split()[0] == hashlib.sha256(local.read_bytes()).hexdigest()

    asyncio.run(scenario())
    # The Runner dialled the proxy port for the session's bytes: none went on its stream.
    tunnels = {
        s.labels["path"]: s.value for s in scrape(vps_cluster)["hakuriver_ssh_tunnels_total"]
    }
    assert tunnels.get("dialled", 0) >= 1 and tunnels.get("stream", 0) == 0, tunnels


def test_many_sessions_at_once(
    vps_cluster: ProcessCluster, owner: Person, vps: int, key: asyncssh.SSHKey
) -> None:
    async def one(i: int) -> str:
        async with await connect(vps_cluster, owner.channel, vps, key) as conn:
            return (await conn.run(f"echo session-{i}", check=True)).stdout

    async def scenario() -> list[str]:
        return await asyncio.gather(*(one(i) for i in range(6)))

    assert asyncio.run(scenario()) == [f"session-{i}\n" for i in range(6)]


def _ssh_options(key_files: Path) -> list[str]:
    """System ssh: our key, no prompts, no known_hosts."""
    return [
        "-i",
        str(key_files / "id"),
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=no",
        "-o",
        "UserKnownHostsFile=/dev/null",
        "-o",
        "LogLevel=ERROR",
    ]


def test_owner_uses_hakuriver_ssh_ssh_and_scp(
    vps_cluster: ProcessCluster, owner: Person, vps: int, key_files: Path, tmp_path: Path
) -> None:
    # ssh reads the home of the passwd entry, not $HOME: name a known_hosts of the test's own.
    known = f"UserKnownHostsFile={tmp_path / 'known_hosts'}"
    identity = ["-i", str(key_files / "id"), "-o", "BatchMode=yes", "-o", known]
    direct = cli_as(
        vps_cluster, owner.token, tmp_path, "ssh", str(vps), "--", *identity, "echo via-ssh"
    )
    assert direct.returncode == 0 and direct.stdout == "via-ssh\n", direct.stderr
    quiet = cli_as(vps_cluster, owner.token, tmp_path, "ssh", str(vps), "--", *identity, "true")
    assert quiet.returncode == 0, quiet.stderr

    env = {
        **os.environ,
        "HAKURIVER_CONFIG": str(vps_cluster.config_path),
        "HAKURIVER_TOKEN": owner.token,
        "HOME": str(tmp_path),
    }
    proxy = f"ProxyCommand={sys.executable} -m hakuriver_cli.ssh --proxy-command %h"
    common = [*_ssh_options(key_files), "-o", proxy]
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

    # The ~/.ssh/config block of docs/vps.md.
    ssh_config = tmp_path / "ssh_config"
    ssh_config.write_text(
        "Host hakuriver-*\n"
        "    User root\n"
        f"    ProxyCommand sh -c 'exec {sys.executable} -m hakuriver_cli.ssh --proxy-command"
        ' "${0#hakuriver-}"\' %n\n'
    )
    named = subprocess.run(
        ["ssh", "-F", str(ssh_config), *_ssh_options(key_files), f"hakuriver-{vps}", "echo named"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert named.stdout == "named\n", named.stderr


def test_variables_given_with_env_reach_every_ssh_session(
    vps_cluster: ProcessCluster,
    owner: Person,
    key_files: Path,
    sshd_image: str,
    tmp_path: Path,
) -> None:
    """sshd gives each session a clean environment: variables only in the container's (its
    own) reached no session. Values keep spaces, quotes, backslashes and $ as given, in a
    command's session and in a login shell's (which reads /etc/profile), with the task id
    as a command task has it."""
    odd = 'it\'s "$HOME" \\ `x` ${Y}'
    task_id = submit_vps(
        vps_cluster,
        owner,
        key_files,
        sshd_image,
        tmp_path,
        "--env",
        "GREETING=hello world",
        "--env",
        f"ODD={odd}",
    )
    vps_cluster.wait_status(task_id, RUNNING, timeout=60)
    env = {
        **os.environ,
        "HAKURIVER_CONFIG": str(vps_cluster.config_path),
        "HAKURIVER_TOKEN": owner.token,
        "HOME": str(tmp_path),
    }
    proxy = f"ProxyCommand={sys.executable} -m hakuriver_cli.ssh --proxy-command %h"
    ssh = ["ssh", *_ssh_options(key_files), "-o", proxy, f"root@{task_id}"]
    shown = 'printf %s "$GREETING|$ODD|$HAKURIVER_TASK_ID"'
    expected = f"hello world|{odd}|{task_id}"
    command = subprocess.run([*ssh, shown], env=env, capture_output=True, text=True, timeout=60)
    assert (command.returncode, command.stdout) == (0, expected), command.stderr
    # No command: sshd runs root's shell as a login shell (after the motd), reading the
    # commands from stdin.
    login = subprocess.run(
        [*ssh, "-T"], input=shown, env=env, capture_output=True, text=True, timeout=60
    )
    assert login.returncode == 0, login.stderr
    assert login.stdout.rsplit("\n", 1)[-1] == expected


def test_a_local_port_in_use_is_one_line(
    vps_cluster: ProcessCluster, owner: Person, vps: int, tmp_path: Path
) -> None:
    with socket.create_server(("127.0.0.1", 0)) as busy:
        port = busy.getsockname()[1]
        taken = cli_as(
            vps_cluster, owner.token, tmp_path, "ssh", "--local-port", str(port), str(vps), "true"
        )
    assert taken.returncode == 1, taken.stderr
    assert taken.stderr == f"error: --local-port {port}: Address already in use\n"


def _session_ended(argv: list[str], env: dict[str, str], end: Callable[[], object]) -> list[str]:
    """Start an SSH session with ``argv`` (that prints ready, then sleeps), ``end`` it once
    it is up, and return what was said on stderr; the session must exit 255 (ssh's "the
    connection closed")."""
    with subprocess.Popen(
        [*argv, "echo ready; sleep 60"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    ) as session:
        assert session.stdout is not None and session.stderr is not None
        assert session.stdout.readline() == "ready\n"
        end()
        assert session.wait(timeout=30) == 255
        return session.stderr.read().splitlines()


def _env(vps_cluster: ProcessCluster, token: str, home: Path) -> dict[str, str]:
    return {
        **os.environ,
        "HAKURIVER_CONFIG": str(vps_cluster.config_path),
        "HAKURIVER_TOKEN": token,
        "HOME": str(home),
    }


def test_a_session_whose_token_is_revoked_ends_saying_why(
    vps_cluster: ProcessCluster, owner: Person, vps: int, key_files: Path, tmp_path: Path
) -> None:
    """The Host ends the session at once; ssh says only 'Connection ... closed by remote
    host' (exit 255), so hakuriver.ssh says the Host's refusal of the token."""
    made = vps_cluster.access.CreateToken(
        apb.CreateTokenRequest(user="alice", description="laptop"), timeout=10
    )
    argv = [*vps_cluster.cli_argv("ssh"), str(vps), "--", *_ssh_options(key_files)]
    revoke = apb.RevokeTokenRequest(token_id=made.token.token_id)
    said = _session_ended(
        argv,
        _env(vps_cluster, made.secret, tmp_path),
        lambda: vps_cluster.access.RevokeToken(revoke, timeout=10),
    )
    assert said[-1] == (
        f"error: the host refused the API token: API token {made.token.token_id} was revoked"
    ), said


@pytest.mark.parametrize("proxy_command", [False, True], ids=["hakuriver.ssh", "ProxyCommand"])
def test_a_session_whose_users_role_changed_ends_saying_why(
    vps_cluster: ProcessCluster,
    vps: int,
    key_files: Path,
    tmp_path: Path,
    proxy_command: bool,
) -> None:
    """The Host ends the session when its user gets another role (the ticket was given for
    the role they had); the token still holds, so nothing was said but ssh's 'Connection
    closed'."""
    name = f"op-{'proxy' if proxy_command else 'ssh'}"
    token = vps_cluster.add_user(name, Role.OPERATOR)  # an operator reaches any VPS
    if proxy_command:
        proxy = f"ProxyCommand={sys.executable} -m hakuriver_cli.ssh --proxy-command %h"
        argv = ["ssh", *_ssh_options(key_files), "-o", proxy, f"root@{vps}"]
    else:
        argv = [*vps_cluster.cli_argv("ssh"), str(vps), "--", *_ssh_options(key_files)]
    promote = apb.SetUserRoleRequest(name=name, role=Role.ADMIN.pb)
    said = _session_ended(
        argv,
        _env(vps_cluster, token, tmp_path),
        lambda: vps_cluster.access.SetUserRole(promote, timeout=10),
    )
    assert (
        f"error: the host ended the session: the role of {name} changed from operator to "
        "admin: connect again"
    ) in said, said


def test_a_session_whose_vps_is_killed_ends_saying_so(
    vps_cluster: ProcessCluster, key_files: Path, sshd_image: str, tmp_path: Path
) -> None:
    """ssh says only 'Connection to 127.0.0.1 closed by remote host' (exit 255); the
    Runner reports the kill after the tunnel closed, and hakuriver.ssh says what became of
    the VPS."""
    task_id = _running_admin_vps(vps_cluster, key_files, sshd_image)
    argv = [*vps_cluster.cli_argv("ssh"), str(task_id), "--", *_ssh_options(key_files)]
    kill = tpb.KillTaskRequest(task_id=task_id)
    said = _session_ended(
        argv,
        _env(vps_cluster, vps_cluster.admin_token, tmp_path),
        lambda: vps_cluster.tasks.KillTask(kill, timeout=30),
    )
    assert said[-1] == f"error: the session ended: task {task_id} is killed", said


def test_another_user_cannot_reach_the_vps(
    vps_cluster: ProcessCluster, stranger: Person, vps: int, key_files: Path, tmp_path: Path
) -> None:
    with pytest.raises(grpc.RpcError) as theirs:
        ticket(stranger.channel, vps)
    with pytest.raises(grpc.RpcError) as missing:
        ticket(stranger.channel, 12345)
    assert theirs.value.code() == missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert theirs.value.details() == f"task_id: task {vps} not found"
    assert missing.value.details() == "task_id: task 12345 not found"

    listed = cli_as(vps_cluster, stranger.token, tmp_path, "vps", "status", "--json")
    assert listed.returncode == 0 and json.loads(listed.stdout) == [], listed.stderr
    for args in (
        [str(vps), "--", "-i", str(key_files / "id"), "-o", "BatchMode=yes", "true"],
        ["--proxy-command", str(vps)],
    ):
        refused = cli_as(vps_cluster, stranger.token, tmp_path, "ssh", *args)
        assert refused.returncode != 0 and refused.stdout == ""
        assert refused.stderr.strip() == f"error: task_id: task {vps} not found (NOT_FOUND)"


def _host_key(cluster: ProcessCluster, task_id: int) -> str:
    [container] = cluster.docker.containers.list(filters={"label": f"hakuriver.task_id={task_id}"})
    code, out = container.exec_run(["cat", "/etc/ssh/ssh_host_ed25519_key.pub"])
    assert code == 0, out
    return str(out.decode().split()[1])


def test_each_vps_has_a_host_key_of_its_own(
    vps_cluster: ProcessCluster,
    owner: Person,
    key_files: Path,
    vps: int,
    sshd_image: str,
    tmp_path: Path,
) -> None:
    """Not the image's: those would be the same in every VPS, readable by each user."""
    other = submit_vps(vps_cluster, owner, key_files, sshd_image, tmp_path)
    try:
        vps_cluster.wait_status(other, RUNNING, timeout=60)
        assert _host_key(vps_cluster, other) != _host_key(vps_cluster, vps)
    finally:
        vps_cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=other), timeout=30)


def test_an_operator_gets_a_ticket_for_any_vps(vps_cluster: ProcessCluster, vps: int) -> None:
    """Operators (and admins) reach every VPS's sshd; logging in still needs a key it takes."""
    operator = vps_cluster.user_channel(vps_cluster.add_user("olga", Role.OPERATOR))
    for channel in (operator, vps_cluster.channel):
        assert channel is not None
        sock, answer = tunnel(vps_cluster, channel, vps)
        assert sock is not None, answer
        with sock:
            assert sock.recv(4) == b"SSH-"


def test_a_ticket_opens_one_tunnel_once(
    vps_cluster: ProcessCluster, owner: Person, vps: int
) -> None:
    issued = ticket(owner.channel, vps)
    assert issued.expires_at.seconds > time.time()
    sock, answer = present(vps_cluster, f"TICKET {issued.ticket}")
    assert sock is not None, answer
    sock.close()
    assert present(vps_cluster, f"TICKET {issued.ticket}") == (None, REFUSED_TICKET)
    forged = secrets.token_urlsafe(32)
    assert present(vps_cluster, f"TICKET {forged}") == (None, REFUSED_TICKET)


def test_wrong_key_is_refused_by_sshd(vps_cluster: ProcessCluster, owner: Person, vps: int) -> None:
    stranger = asyncssh.generate_private_key("ssh-ed25519")
    with pytest.raises(asyncssh.PermissionDenied):
        asyncio.run(connect(vps_cluster, owner.channel, vps, stranger))


def test_proxy_refuses_bad_requests_clearly(vps_cluster: ProcessCluster) -> None:
    admin = vps_cluster.channel
    assert admin is not None
    command = vps_cluster.submit(["true"])
    vps_cluster.wait_final(command.task_id)
    with pytest.raises(grpc.RpcError) as missing:
        ticket(admin, 12345)
    assert missing.value.code() == grpc.StatusCode.NOT_FOUND
    assert missing.value.details() == "task_id: task 12345 not found"
    with pytest.raises(grpc.RpcError) as not_vps:
        ticket(admin, command.task_id)
    assert not_vps.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert not_vps.value.details() == f"task {command.task_id} is not a VPS task"
    expected = "ERROR expected: TICKET <ticket> (get one with SshService.CreateSshTicket)"
    for line in ("HELLO", "TICKET", "TICKET a b", f"REQUEST_TUNNEL {command.task_id}"):
        assert present(vps_cluster, line) == (None, expected)


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


def _running_admin_vps(vps_cluster: ProcessCluster, key_files: Path, sshd_image: str) -> int:
    """A VPS the admin submitted through the API, once running."""
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
    return task_id


def test_a_vps_on_a_numa_node_without_cores_runs_on_that_nodes_cpus(
    vps_cluster: ProcessCluster, key_files: Path, sshd_image: str
) -> None:
    """A VPS reserves no cores by default: targeted at a NUMA node, its memory was bound
    there but its processes ran on any CPU, reaching that memory from the other nodes."""
    hostname = vps_cluster.runner_names[0]
    [node] = vps_cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=10).nodes
    numa = node.numa_nodes[0]
    reply = vps_cluster.tasks.SubmitTask(
        tpb.SubmitTaskRequest(
            kind=task_pb2.TASK_KIND_VPS,
            container_name=sshd_image,
            ssh_public_key=(key_files / "id.pub").read_text(),
            targets=[task_pb2.Target(hostname=hostname, numa_node_id=numa.id)],
        ),
        timeout=10,
    )
    task_id = reply.tasks[0].task_id
    vps_cluster.wait_status(task_id, RUNNING, timeout=60)
    [container] = vps_cluster.docker.containers.list(
        filters={"label": f"hakuriver.task_id={task_id}"}
    )
    vps_cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task_id), timeout=30)
    bound = container.attrs["HostConfig"]
    assert bound["CpusetMems"] == str(numa.id)
    assert bound["CpusetCpus"] == ",".join(map(str, numa.cpus))


def test_pause_stalls_resume_continues_kill_ends(
    vps_cluster: ProcessCluster, key_files: Path, key: asyncssh.SSHKey, sshd_image: str
) -> None:
    admin = vps_cluster.channel
    assert admin is not None
    task_id = _running_admin_vps(vps_cluster, key_files, sshd_image)
    unused = ticket(admin, task_id)

    async def scenario() -> None:
        conn = await connect(vps_cluster, admin, task_id, key)
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
    not_running = f"task {task_id} is killed, not running"
    # A ticket issued before the kill no longer opens anything: the proxy checks again.
    assert present(vps_cluster, f"TICKET {unused.ticket}") == (None, f"ERROR {not_running}")
    with pytest.raises(grpc.RpcError) as caught:
        ticket(admin, task_id)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert caught.value.details() == not_running


def test_a_vps_paused_and_resumed_outside_hakuriver_shows_so(
    vps_cluster: ProcessCluster, key_files: Path, sshd_image: str
) -> None:
    """``docker pause`` of a VPS's container showed the VPS ``running`` (its sessions
    stalled); ``hakuriver.vps status`` now shows it ``paused``, and ``running`` once
    ``docker unpause`` resumed it."""
    task_id = _running_admin_vps(vps_cluster, key_files, sshd_image)
    [container] = vps_cluster.docker.containers.list(
        filters={"label": f"hakuriver.task_id={task_id}"}
    )

    def shown() -> str:
        listed = json.loads(vps_cluster.cli("vps", "status", "--json").stdout)
        return str(next(t["status"] for t in listed if int(t["task_id"]) == task_id))

    container.pause()
    vps_cluster.wait_status(task_id, {task_pb2.TASK_STATUS_PAUSED})
    assert shown() == "paused"
    container.unpause()
    vps_cluster.wait_status(task_id, RUNNING)
    assert shown() == "running"
    vps_cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task_id), timeout=30)


def test_vps_survives_a_runner_restart_on_the_same_port(
    vps_cluster: ProcessCluster, owner: Person, vps: int, key: asyncssh.SSHKey, tmp_path: Path
) -> None:
    before = vps_cluster.get(vps)
    vps_cluster.kill_runner()
    vps_cluster.start_runner()
    after = vps_cluster.wait_status(vps, RUNNING)
    assert after.ssh_port == before.ssh_port

    def reconnected() -> bool:
        sock, _ = tunnel(vps_cluster, owner.channel, vps)
        if sock is not None:
            sock.close()
        return sock is not None

    wait_for(reconnected, what="the proxy to reach the VPS again")

    async def again() -> str:
        async with await connect(vps_cluster, owner.channel, vps, key) as conn:
            return (await conn.run("echo still-here", check=True)).stdout

    assert asyncio.run(again()) == "still-here\n"
    status = cli_as(vps_cluster, owner.token, tmp_path, "vps", "status", "--json")
    assert [t["ssh_port"] for t in json.loads(status.stdout) if int(t["task_id"]) == vps] == [
        before.ssh_port
    ]


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
    vps_cluster: ProcessCluster, owner: Person, vps: int, key: asyncssh.SSHKey
) -> None:
    port = vps_cluster.get(vps).ssh_port
    baseline = _sshd_sessions(port)

    async def scenario() -> None:
        connections = [await connect(vps_cluster, owner.channel, vps, key) for _ in range(3)]
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


def test_an_expired_ticket_is_refused(
    vps_cluster: ProcessCluster, vps: int, early_ticket: spb.CreateSshTicketResponse
) -> None:
    """Taken by the first test; by now (or after a short wait) it has expired unused."""
    expires = early_ticket.expires_at.ToDatetime().timestamp()
    time.sleep(max(0.0, expires + 1 - time.time()))
    assert vps_cluster.get(vps).status == task_pb2.TASK_STATUS_RUNNING
    assert present(vps_cluster, f"TICKET {early_ticket.ticket}") == (None, REFUSED_TICKET)
