"""`hakuriver.ssh` puts the options given after the task id before ssh's destination and the
rest after it, reading them as ssh's getopt does; a tunnel the proxy does not open is one
line naming the proxy's address and why."""

from __future__ import annotations

import asyncio
import os
import socket
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hakuriver_cli import connection, ssh
from hakuriver_cli.ssh import ProxyRefused, open_tunnel, split_ssh_args
from hakuriver_common.proto.hakuriver.v1 import task_pb2
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, KILLED_EXIT_CODE, NO_ANSWER, FakeRunner, eventually
from tests.unit.cli_threads import exit_code_later
from tests.unit.local_cluster import LocalCluster, status_of
from tests.unit.test_ssh_tickets import SSH_KEY


@pytest.mark.parametrize(
    ("args", "options", "remote"),
    [
        (["--", "uname", "-a"], [], ["uname", "-a"]),
        (
            ["-i", "k", "-L", "8888:localhost:8888", "nvidia-smi"],
            ["-i", "k", "-L", "8888:localhost:8888"],
            ["nvidia-smi"],
        ),
        (["-oBatchMode=yes", "-ik", "true"], ["-oBatchMode=yes", "-ik"], ["true"]),
        (["-NL", "8888:localhost:8888"], ["-NL", "8888:localhost:8888"], []),
        (["-qi", "k", "echo", "hi"], ["-qi", "k"], ["echo", "hi"]),
        (["-vt", "top"], ["-vt"], ["top"]),
        (["-v", "--", "-x"], ["-v"], ["-x"]),
    ],
    ids=[
        "command",
        "separate",
        "attached",
        "grouped-forward",
        "grouped-identity",
        "flags",
        "dashdash",
    ],
)
def test_ssh_arguments_split_as_getopt_reads_them(
    args: list[str], options: list[str], remote: list[str]
) -> None:
    assert split_ssh_args(args) == (options, remote)


@pytest.mark.parametrize(
    ("args", "said"),
    [
        (
            ["-i", "key", "42"],
            "error: -i is not an option of hakuriver.ssh: ssh's options go after the task id "
            "(hakuriver.ssh TASK_ID -- -i ...)",
        ),
        (
            ["--identity", "key", "42"],
            "error: no such option: --identity (see 'hakuriver.ssh --help')",
        ),
    ],
    ids=["ssh-option", "unknown-long-option"],
)
def test_an_option_before_the_task_id_is_named(
    args: list[str], said: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Unknown options are arguments (ssh's go after the id), so ``hakuriver.ssh -i KEY 42``
    said `task id must be a decimal integer, got '-i'`."""
    with pytest.raises(SystemExit) as ended:
        ssh.app(args, prog_name="hakuriver.ssh")
    assert ended.value.code == 2
    assert capsys.readouterr().err == said + "\n"


def _one_answer(reply: bytes) -> int:
    """A port whose one connection reads the ticket line and gets ``reply``."""
    server = socket.create_server(("127.0.0.1", 0))

    def serve() -> None:
        with server, server.accept()[0] as conn:
            conn.recv(1024)
            conn.sendall(reply)

    threading.Thread(target=serve, daemon=True).start()
    return int(server.getsockname()[1])


def _closed_port() -> int:
    with socket.create_server(("127.0.0.1", 0)) as server:
        return int(server.getsockname()[1])


@pytest.mark.parametrize(
    ("port", "why"),
    [
        (_closed_port, "cannot reach the Host's SSH proxy at 127.0.0.1:{port}: Connection refused"),
        (
            lambda: _one_answer(b""),
            "the Host's SSH proxy at 127.0.0.1:{port} closed the connection",
        ),
        (
            lambda: _one_answer(b"HTTP/1.0 400 Bad request\r\n"),
            "the Host's SSH proxy at 127.0.0.1:{port} is not a HakuRiver SSH proxy: "
            "it answered 'HTTP/1.0 400 Bad request'",
        ),
        (
            lambda: _one_answer(b"ERROR task 42 is paused, not running\n"),
            "task 42 is paused, not running",
        ),
    ],
    ids=["refused", "closed", "not-the-proxy", "error"],
)
def test_a_tunnel_not_opened_says_where_and_why(port: Callable[[], int], why: str) -> None:
    number = port()
    with pytest.raises(ProxyRefused) as refused:
        open_tunnel("127.0.0.1", number, "t")
    assert str(refused.value) == why.format(port=number)


class _Proxy:
    """A stand-in for the Host's SSH proxy: its one connection gets SUCCESS for any ticket,
    then ends when ``end`` is set (the far side ended the tunnel), or once the tool ended
    its side."""

    def __init__(self) -> None:
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.opened = threading.Event()
        self.end = threading.Event()
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        with self.server, self.server.accept()[0] as conn:
            conn.recv(1024)
            conn.sendall(b"SUCCESS\n")
            self.opened.set()
            conn.settimeout(0.05)
            while not self.end.is_set():
                try:
                    if not conn.recv(1024):
                        return
                except TimeoutError:
                    continue


class _Pipe:
    """What the tool reads as its stdin or writes as its stdout: a pipe's end."""

    def __init__(self, fd: int) -> None:
        self.fd = fd

    def fileno(self) -> int:
        return self.fd


@dataclass
class _Session:
    """`hakuriver.ssh --proxy-command` of a running VPS, relaying through ``_Proxy``."""

    vps: int
    runner: FakeRunner
    proxy: _Proxy
    ended: asyncio.Future[int]  # its exit code
    ssh_writes: int  # ssh's end of the tool's stdin
    pipes: tuple[int, ...]  # the other ends, closed after

    def close(self, ssh_closed: bool) -> None:
        for fd in (*self.pipes, *(() if ssh_closed else (self.ssh_writes,))):
            os.close(fd)


async def _proxied_session(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, **runner: Any
) -> _Session:
    runner_pb = await cluster.add_runner("a", answer=HOLD, **runner)
    request = {"kind": task_pb2.TASK_KIND_VPS, "ssh_public_key": SSH_KEY}
    [vps] = await cluster.submit_running(**request)
    monkeypatch.setattr(connection, "RPC_TIMEOUT_SECONDS", 3600.0)  # never the bound here
    proxy, ended, pipes = _proxy_command(cluster, vps.task_id, tmp_path, monkeypatch)
    assert await asyncio.to_thread(proxy.opened.wait, 10)
    return _Session(vps.task_id, runner_pb, proxy, ended, pipes[0], tuple(pipes[1:]))


def _proxy_command(
    cluster: LocalCluster, vps: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[_Proxy, asyncio.Future[int], list[int]]:
    """`hakuriver.ssh --proxy-command VPS` started, relaying through a ``_Proxy``: the
    proxy, the tool's exit code to come, and the pipes (ssh's end of the tool's stdin
    first, then the others)."""
    config = cluster.cli_config(tmp_path / "client.toml")
    stdin, ssh_writes = os.pipe()
    ssh_reads, stdout = os.pipe()
    monkeypatch.setattr(sys, "stdin", _Pipe(stdin))
    monkeypatch.setattr(sys, "stdout", _Pipe(stdout))
    proxy = _Proxy()
    args = (str(vps), None, "127.0.0.1", proxy.port, 0, "root", True, config, False)
    return proxy, exit_code_later(ssh.main, *args), [ssh_writes, ssh_reads, stdout, stdin]


async def _proxied_session_ended(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ssh_ended_first: bool
) -> int:
    """A session ended with the Host not answering any more (stopped, and something silent
    on its port, as behind a network partition): by ssh closing its side first, or by the
    far side. Its exit code."""
    session = await _proxied_session(cluster, tmp_path, monkeypatch)
    port = cluster.config.network.host_port
    await cluster.stop_host()
    with socket.create_server(("127.0.0.1", port)):  # accepts, never answers
        if ssh_ended_first:
            os.close(session.ssh_writes)
        else:
            session.proxy.end.set()
        code = await asyncio.wait_for(session.ended, 60)
    session.close(ssh_ended_first)
    return code


async def test_a_session_the_far_side_ended_asks_a_silent_host_briefly(
    local_cluster: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """As ssh's ProxyCommand, the tool asks the Host who it is at the end of a tunnel the
    far side ended (to say why the Host ended the session) and ssh waits for it: a Host not
    answering held ssh's exit for a call's 30 s deadline. It asks for END_ASK_SECONDS
    (0.5 s here, not 5: the call's deadline is an hour)."""
    monkeypatch.setattr(ssh, "END_ASK_SECONDS", 0.5)
    code = await _proxied_session_ended(local_cluster, tmp_path, monkeypatch, False)
    assert code == 1
    port = local_cluster.config.network.host_port
    assert (
        capsys.readouterr().err == f"error: the host at 127.0.0.1:{port} did not answer in time\n"
    )


async def test_a_session_ssh_ended_asks_the_host_nothing(
    local_cluster: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """ssh ended its side of the tunnel first (a logout, or its own timeout behind a
    network partition): the Host did not end the session, and is not asked why."""
    assert await _proxied_session_ended(local_cluster, tmp_path, monkeypatch, True) == 0
    assert capsys.readouterr().err == ""


async def test_a_session_its_vps_ended_says_so(
    local_cluster: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A VPS killed (or its sshd gone, its Runner away) ends its sessions: ssh said only
    'Connection to 127.0.0.1 closed by remote host', so the tool says what became of it. A
    Runner reports a killed VPS's end after its tunnels closed: here it reports only once
    the tool has asked who it is at the end."""
    session = await _proxied_session(local_cluster, tmp_path, monkeypatch, answer_kills=False)
    killing = asyncio.ensure_future(local_cluster.kill(session.vps))

    async def asked_whoami() -> float:
        return (await local_cluster.request_counts()).get(
            ("/hakuriver.v1.AccessService/WhoAmI", "OK"), 0.0
        )

    await eventually(lambda: ("kill", session.vps) in session.runner.commands, 10)
    before = await asked_whoami()
    session.proxy.end.set()

    async def asked_again() -> bool:
        return await asked_whoami() > before

    await eventually(asked_again, 10, what="the tool asking who it is at the end")
    session.runner.finish(session.vps, KILLED_EXIT_CODE)
    assert status_of(await asyncio.wait_for(killing, 30)) is TaskStatus.KILLED
    assert await asyncio.wait_for(session.ended, 60) == 1
    session.close(ssh_closed=False)
    said = capsys.readouterr().err
    assert said == f"error: the session ended: task {session.vps} is killed\n"


async def _ssh_to_a_starting_vps(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> tuple[int, FakeRunner, _Proxy, asyncio.Future[int], list[int]]:
    """`hakuriver.ssh --proxy-command` of a VPS its Runner has not started yet (it answers
    the dispatch later: ``start_late``): the VPS, its Runner, and ``_proxy_command``'s."""
    runner = await cluster.add_runner("a", answer=NO_ANSWER)
    vps = await cluster.submit(kind=task_pb2.TASK_KIND_VPS, ssh_public_key=SSH_KEY)
    await eventually(lambda: vps.task_id in runner.unanswered, 10, what="the dispatch")
    return vps.task_id, runner, *_proxy_command(cluster, vps.task_id, tmp_path, monkeypatch)


async def test_a_vps_still_starting_is_waited_for(
    local_cluster: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """`hakuriver.ssh` right after `vps submit` said "task N is assigning, not running"
    (a VPS takes a moment to start, longer when its image is loaded first): it waits for
    it, saying so, and opens the session once it runs."""
    vps, runner, proxy, ended, pipes = await _ssh_to_a_starting_vps(
        local_cluster, tmp_path, monkeypatch
    )
    said = ""

    def waiting() -> bool:
        nonlocal said
        said += capsys.readouterr().err
        return said == f"waiting for VPS {vps} to start (assigning)\n"

    await eventually(waiting, 10, what="the tool saying it waits")
    assert not proxy.opened.is_set()
    runner.start_late(vps)
    assert await asyncio.to_thread(proxy.opened.wait, 10)
    os.close(pipes[0])  # ssh ends the session
    assert await asyncio.wait_for(ended, 30) == 0
    for fd in pipes[1:]:
        os.close(fd)


async def test_a_vps_that_does_not_start_in_time_is_said_so(
    local_cluster: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    monkeypatch.setattr(ssh, "START_WAIT_SECONDS", 0.5)
    vps, _, proxy, ended, pipes = await _ssh_to_a_starting_vps(local_cluster, tmp_path, monkeypatch)
    assert await asyncio.wait_for(ended, 30) == 1
    assert not proxy.opened.is_set()
    assert capsys.readouterr().err == (
        f"waiting for VPS {vps} to start (assigning)\nerror: task {vps} is assigning, not running\n"
    )
    for fd in pipes:
        os.close(fd)
