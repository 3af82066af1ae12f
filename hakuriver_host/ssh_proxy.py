"""The Host's SSH proxy: TCP clients reach a VPS's sshd through its Runner's Connect stream.

A client first gets a one-time ticket through the authenticated API
(SshService.CreateSshTicket: only the VPS's owner or an operator gets one), connects to
``host_ssh_proxy_port`` and sends ``TICKET <ticket>\\n``. The Host redeems the ticket, checks
the task is still a running VPS its holder may reach, asks the Runner (on the stream the
Runner opened) to connect to that VPS's sshd, and nothing else, answers ``SUCCESS\\n`` or
``ERROR <reason>\\n``, then relays bytes both ways. The Host never dials a Runner; SSH
authentication stays between ssh and sshd.

The Runner dials the same port for the tunnel's bytes: ``TUNNEL <id>\\n``; the Host
answers ``CHALLENGE <nonce>\\n``, the Runner its proof (hakuriver_common.tunnel_proof: an
HMAC under the one-time secret the Host sent it on its own stream), the Host
``SUCCESS\\n``. That connection is plain TCP, as the client's is: what crosses it is SSH's
own encrypted stream. Without that connection (a Runner that cannot reach this port)
the bytes ride the Runner's stream, and a client that stops reading is disconnected once it
is more than TUNNEL_BUFFER chunks behind, so it never stalls that stream. A session is only
as good as the token its ticket came from: it ends (audited) as soon as that token is
revoked, expires or its user is deleted. Until its request line is read, a connection is a
stranger's: each address may hold MAX_SSH_PROXY_WAITING of them, each at most REQUEST_LIMIT
bytes for REQUEST_TIMEOUT.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import socket
from collections.abc import Awaitable, Callable, Coroutine, Iterator
from typing import Any

from hakuriver_common import tunnel_proof
from hakuriver_common.limits import MAX_SSH_PROXY_WAITING
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_common.roles import AuditOutcome
from hakuriver_common.socket_copy import LineSocket, copy, prepared, until_first
from hakuriver_host.cluster import Cluster
from hakuriver_host.errors import ApiError, Hidden, Unauthenticated
from hakuriver_host.holdings import Holdings
from hakuriver_host.identity import ANONYMOUS, Principal, peer_name, role_changed
from hakuriver_host.ssh_tickets import Ticket
from hakuriver_host.tunnels import Dialed, Tunnel

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
OPEN_TIMEOUT = 10.0
# A read's most on the Runner's stream (a message each).
CHUNK = 64 * 1024
# A request line's most: a ticket line is 51 bytes ("TICKET ", the 43 characters of
# secrets.token_urlsafe(32), every ticket the Host has issued, and a newline), a Runner's
# TUNNEL line at most 27 and its proof 65. A stranger's connection holds at most this much
# while it waits, MAX_SSH_PROXY_WAITING of them per address.
REQUEST_LIMIT = 1024
# Pending connections the kernel holds while the loop is busy.
BACKLOG = 128

Copy = Coroutine[Any, Any, None]


class TooManyWaiting(Exception):
    """The connection's address holds MAX_SSH_PROXY_WAITING connections that have not sent
    their request line yet: no refusal of a right, so not audited."""


async def _first_line(connection: LineSocket) -> bytes:
    """The client's request line; one longer than REQUEST_LIMIT is no request either."""
    try:
        return await asyncio.wait_for(connection.readline(REQUEST_LIMIT), REQUEST_TIMEOUT)
    except ValueError:
        return b""
    except TimeoutError:
        raise TimeoutError(f"no request line within {REQUEST_TIMEOUT:g} s") from None


def _request(line: bytes) -> tuple[str, str]:
    """The request line's word (TICKET from a client, TUNNEL from a Runner) and argument."""
    parts = line.decode(errors="replace").split()
    if len(parts) != 2 or parts[0] not in ("TICKET", "TUNNEL"):
        raise ValueError("expected: TICKET <ticket> (get one with SshService.CreateSshTicket)")
    return parts[0], parts[1]


async def _opened(tunnel: Tunnel) -> Dialed | None:
    """Until the Runner has connected the tunnel to the sshd; a bare "timed out" would not
    say which hop was slow."""
    try:
        return await asyncio.wait_for(asyncio.shield(tunnel.opened), OPEN_TIMEOUT)
    except TimeoutError:
        raise TimeoutError(
            f"the VPS's runner did not open the tunnel within {OPEN_TIMEOUT:g} s"
        ) from None


def _peer(sock: socket.socket) -> str:
    try:
        host, port = sock.getpeername()[:2]
    except OSError:
        return ""
    return peer_name(host, port)


def _listeners(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on ``host``'s addresses (as asyncio's servers bind them: an IPv6
    one for IPv6 only, addresses reusable at once after a restart)."""
    sockets: list[socket.socket] = []
    try:
        for family, kind, proto, _, address in socket.getaddrinfo(
            host or None, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(BACKLOG)
            sock.setblocking(False)
    except OSError:
        for sock in sockets:
            sock.close()
        raise
    return sockets


def _on_stream(client: LineSocket, tunnel: Tunnel, holds: Callable[[], bool]) -> list[Copy]:
    """The session's two copies when its bytes ride the Runner's stream: the client's in
    TunnelData messages, the Runner's from what the stream brought (``tunnel.incoming``)."""
    loop = asyncio.get_running_loop()

    async def send(data: bytes) -> None:
        await tunnel.link.room()
        tunnel.link.send(
            rpb.ConnectResponse(tunnel_data=rpb.TunnelData(tunnel_id=tunnel.tunnel_id, data=data))
        )

    async def upstream() -> None:
        with contextlib.suppress(OSError):
            if client.rest and holds():
                await send(client.rest)
            while (data := await loop.sock_recv(client.sock, CHUNK)) and holds():
                await send(data)

    async def downstream() -> None:
        with contextlib.suppress(OSError):
            while (data := await tunnel.incoming.get()) is not None and holds():
                await loop.sock_sendall(client.sock, data)

    return [upstream(), downstream()]


class SshProxy:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self._listeners: list[socket.socket] = []
        self._tasks: set[asyncio.Task[None]] = set()
        # Connections in their handshake (request line, a Runner's proof), by address.
        self._waiting = Holdings()

    async def start(self, host: str, port: int) -> int:
        self._listeners = _listeners(host, port)
        for listener in self._listeners:
            self._spawn(self._accept(listener))
        bound = int(self._listeners[0].getsockname()[1])
        self.cluster.tunnels.dial_port = bound
        return bound

    async def stop(self) -> None:
        """Stop listening and end every connection (a session's client sees its end)."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for listener in self._listeners:
            listener.close()
        self._listeners = []

    def _spawn(self, job: Awaitable[None]) -> None:
        task = asyncio.ensure_future(job)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, address = await loop.sock_accept(listener)
            except OSError as exc:
                # Out of descriptors, say: the connection waits in the backlog meanwhile.
                log.warning("SSH proxy cannot accept a connection: %s", exc)
                await asyncio.sleep(0.5)
                continue
            try:
                prepared(sock)
            except OSError:  # reset before it was served (macOS says so here)
                sock.close()
                continue
            self._spawn(self._serve(sock, peer_name(address[0])))

    @contextlib.contextmanager
    def _handshake(self, source: str) -> Iterator[None]:
        """Count a connection from ``source`` while it reads its handshake's lines: a
        stranger's bytes are buffered then, so each address gets MAX_SSH_PROXY_WAITING."""
        if not self._waiting.take(source, MAX_SSH_PROXY_WAITING):
            raise TooManyWaiting(
                f"{source} holds {MAX_SSH_PROXY_WAITING} connections that have not sent their "
                f"request line, the most allowed (each waits at most {REQUEST_TIMEOUT:g} s)"
            )
        try:
            yield
        finally:
            self._waiting.give(source)

    def _holder(self, held: Ticket | None) -> Principal:
        """Whom the audit names for a refused ticket: nobody known before it was redeemed
        (the refusals of strangers are counted), else its holder as they stand now, with
        no role when their token no longer vouches for one."""
        if held is None:
            return ANONYMOUS
        try:
            return self.cluster.access.again(held.who)
        except Unauthenticated:
            return dataclasses.replace(held.who, role=None)

    async def _serve_runner(self, tunnel_id: str, connection: LineSocket) -> bool:
        """A Runner's connection for a tunnel's bytes: handed to the tunnel's client, whose
        session closes it. One that is not the tunnel's is refused (audited). Whether it
        was handed over."""
        nonce = tunnel_proof.challenge()
        await connection.send(f"CHALLENGE {nonce}\n".encode())
        answer = (await _first_line(connection)).decode(errors="replace").strip()
        tunnel = None
        if tunnel_id.isascii() and tunnel_id.isdigit() and len(tunnel_id) <= 19:
            dialed = Dialed(connection.sock, connection.rest)
            tunnel = self.cluster.tunnels.dialed(int(tunnel_id), nonce, answer, dialed)
        if tunnel is None:
            reason = f"no tunnel {tunnel_id} waits for that proof"
            self._refused(connection.sock, ANONYMOUS, reason)
            await connection.send(f"ERROR {reason}\n".encode())
            return False
        # Sent before the client's session can write to this connection: this call does
        # not wait for a handshake's few bytes.
        await connection.send(b"SUCCESS\n")
        return True

    async def _serve(self, sock: socket.socket, source: str) -> None:
        hub = self.cluster.tunnels
        connection = LineSocket(sock)
        tunnel: Tunnel | None = None
        held: Ticket | None = None
        handed_over = False
        try:
            try:
                with self._handshake(source):
                    word, argument = _request(await _first_line(connection))
                    if word == "TUNNEL":
                        handed_over = await self._serve_runner(argument, connection)
                        return
                held = self.cluster.ssh_tickets.redeem(argument)
                tunnel, who = await self.cluster.open_tunnel(held)
                dialed = await _opened(tunnel)
                # Its holder may have lost the VPS while the Runner opened the tunnel.
                if (reason := self._no_longer(who)) is not None:
                    raise Unauthenticated(reason)
            except (ValueError, ApiError, ConnectionError, TimeoutError, TooManyWaiting) as exc:
                reason = exc.message if isinstance(exc, ApiError) else str(exc) or "timed out"
                # A refusal of the caller (no ticket, one not good, or a holder who may no
                # longer reach the VPS) is audited; a tunnel that could not open is not the
                # caller's doing.
                if isinstance(exc, Unauthenticated | Hidden | ValueError):
                    task = held.task_id if held is not None else 0
                    self._refused(sock, self._holder(held), reason, task)
                await connection.send(f"ERROR {reason}\n".encode())
                return
            path = "stream" if dialed is None else "dialled"
            self.cluster.metrics.ssh_tunnels.labels(path=path).inc()
            await connection.send(b"SUCCESS\n")
            await self._relay(connection, tunnel, who, dialed)
        except (ConnectionError, OSError):
            pass
        finally:
            if tunnel is not None:
                hub.close(tunnel)
                tunnel.release()
            if not handed_over:
                sock.close()

    def _refused(self, sock: socket.socket, who: Principal, reason: str, task_id: int = 0) -> None:
        """Audit a refused tunnel, with the address the client came from and, for a session
        ended, the VPS it reached."""
        target = str(task_id) if task_id else ""
        self.cluster.audit.record(
            who, "ssh.tunnel", target, AuditOutcome.REFUSED, reason, _peer(sock)
        )

    def _no_longer(self, who: Principal) -> str | None:
        """Why ``who`` may no longer use a tunnel let in: a token that stopped holding, or
        another role than the one it was let in with; None: it may."""
        try:
            now = self.cluster.access.again(who)
        except Unauthenticated as exc:
            return exc.message
        return None if now.role == who.role else role_changed(now, who)

    async def _relay(
        self,
        client: LineSocket,
        tunnel: Tunnel,
        who: Principal,
        dialed: Dialed | None,
    ) -> None:
        refused: list[str] = []

        def holds() -> bool:
            """Whether ``who`` may still use the tunnel (its token good, its role the one it
            was let in with); the first refusal is audited."""
            if refused:
                return False
            reason = self._no_longer(who)
            if reason is None:
                return True
            refused.append(reason)
            self._refused(client.sock, who, reason, tunnel.task_id)
            return False

        revoked = asyncio.Event()

        async def idle() -> None:
            """Until the token stops holding, checked when one is revoked or a user deleted
            and when it expires: an idle session ends then, not at its next byte."""
            while True:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(revoked.wait(), self.cluster.access.seconds_left(who))
                revoked.clear()
                if not holds():
                    return

        if dialed is None:
            jobs = _on_stream(client, tunnel, holds)
        else:
            jobs = [
                copy(client.sock, dialed.sock, client.rest, holds),
                copy(dialed.sock, client.sock, dialed.rest, holds),
            ]
        stop_telling = self.cluster.access.on_revoked(revoked.set)
        try:
            await until_first([*jobs, idle()])
        finally:
            stop_telling()
