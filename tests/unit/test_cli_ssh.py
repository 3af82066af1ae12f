"""`hakuriver.ssh` puts the options given after the task id before ssh's destination and the
rest after it, reading them as ssh's getopt does; a tunnel the proxy does not open is one
line naming the proxy's address and why."""

from __future__ import annotations

import socket
import threading
from collections.abc import Callable

import pytest

from hakuriver_cli.ssh import ProxyRefused, open_tunnel, split_ssh_args


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
