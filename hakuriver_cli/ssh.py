"""``hakuriver.ssh TASK_ID``: SSH into a VPS through the Host's SSH proxy.

Every connection through the proxy presents a one-time ticket the tool first gets through
the authenticated API (only the VPS's owner, or an operator, gets one).

Default: checks the task, opens a local listener that forwards each connection through the
proxy, and runs the system ``ssh`` against it. ``--proxy-command`` instead relays stdin and
stdout, for use as an OpenSSH ProxyCommand (so scp, rsync -e ssh and VS Code Remote work):

    ssh -o ProxyCommand='hakuriver.ssh --proxy-command %h' root@TASK_ID
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated

from hakuriver_cli.connection import (
    config_or_fail,
    describe_call_error,
    fail,
    host_link,
    task_id_or_fail,
    unary,
)
from hakuriver_cli.render import role_name, status_name
from hakuriver_common import commands as cli
from hakuriver_common.addresses import bare
from hakuriver_common.service import ConfigOption, VersionOption
from hakuriver_common.statuses import TaskKind, TaskStatus

if TYPE_CHECKING:
    from hakuriver_cli.link import Link
    from hakuriver_common.client_config import ClientConfig
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

# The transports and the generated protos are imported when the tool calls the Host (not for
# --help).

app = cli.App()
CHUNK = 64 * 1024
# The deadline of the question asked when a session ends (who the caller is now, to say why
# the Host ended it), not a call's 30 s: a Host that ended the session answers at once, and
# one that does not answer (a network partition, the Host stopped) held ssh's exit for 30 s.
END_ASK_SECONDS = 5.0
# How long a session the far side ended waits for its VPS to show as ended (a Runner reports
# a killed VPS's end after its tunnels closed, within milliseconds); a VPS still running
# then (a Runner restart ended the tunnel) is said nothing of.
END_WATCH_SECONDS = 2.0
# How long a VPS still starting (pending or assigning: just submitted, its image loading)
# is waited for before the session gives up: ``hakuriver.ssh`` right after ``vps submit``.
START_WAIT_SECONDS = 120.0


class ProxyRefused(Exception):
    """No tunnel: the Host's SSH proxy answered ERROR, or could not be reached or read."""


def ticket_for(link: Link, task_id: int) -> str:
    """A one-time ticket for a tunnel to the VPS (raises CallError when refused)."""
    from hakuriver_cli.link import ssh_stub
    from hakuriver_common.proto.hakuriver.v1 import ssh_service_pb2 as spb

    return unary(ssh_stub(link).CreateSshTicket, spb.CreateSshTicketRequest(task_id=task_id)).ticket


def open_tunnel(host: str, port: int, ticket: str) -> socket.socket:
    """A socket connected through the Host's proxy to the sshd of the ticket's VPS."""
    where = f"the Host's SSH proxy at {host}:{port}"
    try:
        sock = socket.create_connection((host, port), timeout=15)
    except OSError as exc:  # which address failed, not a bare "[Errno 111]" or "timed out"
        raise ProxyRefused(f"cannot reach {where}: {exc.strerror or exc}") from None
    try:
        text = _present(sock, ticket).decode(errors="replace").strip()
    except OSError as exc:
        sock.close()
        raise ProxyRefused(f"no answer from {where}: {exc.strerror or exc}") from None
    if text == "SUCCESS":
        sock.settimeout(None)
        return sock
    sock.close()
    if not text:
        raise ProxyRefused(f"{where} closed the connection")
    if not text.startswith("ERROR "):
        raise ProxyRefused(f"{where} is not a HakuRiver SSH proxy: it answered {text[:80]!r}")
    raise ProxyRefused(text.removeprefix("ERROR ").strip())


def _present(sock: socket.socket, ticket: str) -> bytes:
    """Send the ticket; the proxy's one-line answer (at most 4 KiB of it)."""
    sock.sendall(f"TICKET {ticket}\n".encode())
    answer = b""
    while not answer.endswith(b"\n") and len(answer) < 4096:
        data = sock.recv(1)
        if not data:
            break
        answer += data
    return answer


def _copy(
    read: socket.socket | int,
    write: socket.socket | int,
    at_eof: Callable[[], object] | None = None,
) -> None:
    """Copy bytes until EOF (``at_eof`` called then, if given), then half-close the other
    side."""
    try:
        while True:
            data = read.recv(CHUNK) if isinstance(read, socket.socket) else os.read(read, CHUNK)
            if not data:
                break
            if isinstance(write, socket.socket):
                write.sendall(data)
            else:
                os.write(write, data)
        if at_eof is not None:
            at_eof()
    except OSError:
        pass
    finally:
        with contextlib.suppress(OSError):
            if isinstance(write, socket.socket):
                write.shutdown(socket.SHUT_WR)
            else:
                os.close(write)


def _relay(client: socket.socket, upstream: socket.socket, far_ended: threading.Event) -> None:
    """Relay until both sides end; ``far_ended`` set when the tunnel ended while the client
    still sent (the Host ended the session, or the VPS ended)."""
    sent_all = threading.Event()
    back = threading.Thread(target=_copy, args=(client, upstream, sent_all.set), daemon=True)
    back.start()

    def upstream_ended() -> None:  # before the client sees the end: ssh exits then
        if not sent_all.is_set():
            far_ended.set()

    _copy(upstream, client, upstream_ended)
    back.join()
    client.close()
    upstream.close()


def _serve_local(
    listener: socket.socket,
    host: str,
    port: int,
    task_id: int,
    cfg: ClientConfig,
    said: threading.Event,
    far_ended: threading.Event,
) -> None:
    with host_link(cfg) as link:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:
                return
            _forward(client, link, host, port, task_id, cfg, said, far_ended)


def _forward(
    client: socket.socket,
    link: Link,
    host: str,
    port: int,
    task_id: int,
    cfg: ClientConfig,
    said: threading.Event,
    far_ended: threading.Event,
) -> None:
    """Relay ``client`` through a tunnel of its own; why not, on stderr (``said`` set)."""
    from hakuriver_cli.call_error import CallError

    try:
        upstream = open_tunnel(host, port, ticket_for(link, task_id))
    except CallError as exc:
        print(f"hakuriver.ssh: {describe_call_error(exc, cfg.host_target, cfg)}", file=sys.stderr)
        said.set()
        client.close()
        return
    except ProxyRefused as exc:
        print(f"hakuriver.ssh: {exc}", file=sys.stderr)
        said.set()
        client.close()
        return
    threading.Thread(target=_relay, args=(client, upstream, far_ended), daemon=True).start()


def _whoami(link: Link, timeout: float | None = None) -> apb.WhoAmIResponse:
    from hakuriver_cli.link import access_stub
    from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb

    return unary(access_stub(link).WhoAmI, apb.WhoAmIRequest(), timeout)


def _status_once(link: Link, task_id: int, leaves: int, seconds: float) -> int:
    """The task's status once it is no longer ``leaves`` (a status it may pass through on
    the way counts as ``leaves`` too, see ``_STARTING``), or its last status if it still
    is after ``seconds``."""
    from hakuriver_cli.call_error import CallError, Status
    from hakuriver_cli.link import task_stub
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    staying = _STARTING if leaves in _STARTING else {leaves}
    status = leaves
    request = tpb.WatchTaskRequest(task_id=task_id)
    try:
        for update in task_stub(link).WatchTask(request, timeout=seconds):
            status = int(update.task.status)
            if status not in staying:
                return status
    except CallError as exc:
        if exc.status is not Status.DEADLINE_EXCEEDED:
            raise
    return status


# A VPS on its way to running.
_STARTING = {int(TaskStatus.PENDING.pb), int(TaskStatus.ASSIGNING.pb)}


def _say_why_ended(
    cfg: ClientConfig, then: apb.WhoAmIResponse, task_id: int, far_ended: bool
) -> bool:
    """Whether the Host ended the session, said in one line on stderr: ssh says only that
    the connection closed (exit 255) when the Host ends it because its token was revoked or
    expired, its user removed, or its user's role changed (``then``: who it began as), or,
    when the tunnel's far side ended it (``far_ended``), because the VPS stopped running
    (killed, its sshd gone, its Runner away). The Host's refusal of the token, if it
    refuses it now, is said as every tool says it; a Host that does not answer within
    END_ASK_SECONDS, too."""
    try:
        with host_link(cfg) as link:
            now = _whoami(link, END_ASK_SECONDS)
            if now.role != then.role:
                cli.echo(
                    f"error: the host ended the session: the role of {now.user} changed from "
                    f"{role_name(then.role)} to {role_name(now.role)}: connect again",
                    err=True,
                )
                return True
            status = (
                _status_once(link, task_id, int(TaskStatus.RUNNING.pb), END_WATCH_SECONDS)
                if far_ended
                else TaskStatus.RUNNING.pb
            )
    except cli.Exit:
        return True  # host_link said why: the token refused, the task gone, or the Host gone
    if status == TaskStatus.RUNNING.pb:
        return False
    cli.echo(f"error: the session ended: task {task_id} is {status_name(status)}", err=True)
    return True


def _proxy(sock: socket.socket, cfg: ClientConfig, then: apb.WhoAmIResponse, task_id: int) -> None:
    """Relay stdin and stdout through the tunnel until it ends. Ended from the far side
    while ssh still sends (the Host ended the session), say why; ssh having ended its side
    first (it is done: a logout, or its own timeout behind a network partition), ask the
    Host nothing."""
    stdin, stdout = sys.stdin.fileno(), sys.stdout.fileno()
    sent_all = threading.Event()  # before the tunnel's half-close: before its far end
    threading.Thread(target=_copy, args=(stdin, sock, sent_all.set), daemon=True).start()
    # A copy of stdout, closed at the tunnel's end: ssh sees the end only when the tool
    # exits, after saying why (ssh ends its ProxyCommand as soon as it sees the end).
    _copy(sock, os.dup(stdout))
    if not sent_all.is_set() and _say_why_ended(cfg, then, task_id, True):
        raise cli.Exit(1)


# ssh(1) options that take a value.
VALUE_OPTIONS = set("BbcDEeFIiJLlmOoPpQRSWw")


def _wants_value(option: str) -> bool:
    """Whether the next argument is this option's value: ``-i``, and ``-NL`` too (flags
    grouped as getopt reads them, the last one taking a value not given in the same word)."""
    for position, flag in enumerate(option[1:], start=1):
        if flag in VALUE_OPTIONS:
            return position == len(option) - 1
    return False


def split_ssh_args(args: list[str]) -> tuple[list[str], list[str]]:
    """(options, remote command): ssh wants options before the destination."""
    if args and args[0] == "--":
        args = args[1:]
    options: list[str] = []
    index = 0
    while index < len(args) and args[index].startswith("-") and args[index] != "--":
        option = args[index]
        options.append(option)
        index += 1
        if _wants_value(option) and index < len(args):
            options.append(args[index])
            index += 1
    if index < len(args) and args[index] == "--":
        index += 1
    return options, args[index:]


def _check_task(link: Link, task_id: int) -> apb.WhoAmIResponse:
    """Fail unless the task is a running VPS; who the caller is, to begin the session as.
    A VPS still starting (``hakuriver.ssh`` right after ``vps submit``) is waited for, up
    to START_WAIT_SECONDS, saying so."""
    from hakuriver_cli.link import task_stub
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    task = unary(task_stub(link).GetTask, tpb.GetTaskRequest(task_id=task_id)).task
    then = _whoami(link)
    if task.kind != TaskKind.VPS.pb:
        fail(f"task {task_id} is not a VPS task")
    status = int(task.status)
    if status in _STARTING:
        cli.echo(f"waiting for VPS {task_id} to start ({status_name(status)})", err=True)
        status = _status_once(link, task_id, status, START_WAIT_SECONDS)
    if status != TaskStatus.RUNNING.pb:
        fail(f"task {task_id} is {status_name(status)}, not running")
    return then


def _no_option_for_id(text: str) -> None:
    """Fail (exit 2) when the task id is an option: unknown options are taken as arguments
    (ssh's go after the id), so ``-i KEY 42`` read ``-i`` as the id."""
    if text.startswith("--") and len(text) > 2:
        fail(f"no such option: {text} (see 'hakuriver.ssh --help')", code=2)
    if text[:1] == "-" and text[1:2].isalpha():
        fail(
            f"{text} is not an option of hakuriver.ssh: ssh's options go after the task id "
            f"(hakuriver.ssh TASK_ID -- {text} ...)",
            code=2,
        )


@app.command(context_settings={"allow_interspersed_args": False, "ignore_unknown_options": True})
def main(
    task_id: Annotated[str, cli.Argument(help="VPS task id.", show_default=False)],
    ssh_args: Annotated[list[str] | None, cli.Argument(help="Extra arguments for ssh.")] = None,
    host: Annotated[str, cli.Option("--host", help="Host address (default from config).")] = "",
    proxy_port: Annotated[
        int, cli.Option(help="Host SSH proxy port (default from config).", min=0, max=65535)
    ] = 0,
    local_port: Annotated[
        int, cli.Option(help="Local listener port (0 = any free).", min=0, max=65535)
    ] = 0,
    user: Annotated[str, cli.Option(help="User to log in as.")] = "root",
    proxy_command: Annotated[
        bool, cli.Option("--proxy-command", help="Relay stdin/stdout (OpenSSH ProxyCommand).")
    ] = False,
    config: ConfigOption = None,
    version: VersionOption = False,
) -> None:
    """SSH into a running VPS task through the Host."""
    _no_option_for_id(task_id)
    cfg = config_or_fail(config)
    tid = task_id_or_fail(task_id)
    address = bare(host or cfg.network.host_reachable_address)
    port = proxy_port or cfg.network.host_ssh_proxy_port
    with host_link(cfg) as link:  # one connection: the check, and a ProxyCommand's ticket
        then = _check_task(link, tid)
        ticket = ticket_for(link, tid) if proxy_command else ""
    if proxy_command:
        try:
            sock = open_tunnel(address, port, ticket)
        except ProxyRefused as exc:
            fail(f"cannot open a tunnel to task {tid}: {exc}")
        _proxy(sock, cfg, then, tid)
        return
    ssh = shutil.which("ssh")
    if ssh is None:
        fail("no ssh client found (install openssh-client)")
    try:
        listener = socket.create_server(("127.0.0.1", local_port))
    except OSError as exc:  # a port in use or not ours: one line, not a traceback
        fail(f"--local-port {local_port}: {os.strerror(exc.errno) if exc.errno else exc}")
    listen_port = listener.getsockname()[1]
    said, far_ended = threading.Event(), threading.Event()
    threading.Thread(
        target=_serve_local,
        args=(listener, address, port, tid, cfg, said, far_ended),
        daemon=True,
    ).start()
    options, remote = split_ssh_args(ssh_args or [])
    argv = [
        ssh,
        "-p",
        str(listen_port),
        "-o",
        f"HostKeyAlias=hakuriver-task-{tid}",
        "-o",
        "StrictHostKeyChecking=accept-new",
        *options,
        f"{user}@127.0.0.1",
        *remote,
    ]
    code = subprocess.call(argv)
    listener.close()
    if code == 255 and not said.is_set():
        _say_why_ended(cfg, then, tid, far_ended.is_set())
    raise cli.Exit(code)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
