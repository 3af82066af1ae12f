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
revoked, expires or its user is deleted.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
from collections.abc import Awaitable, Callable

from hakuriver_common import tunnel_proof
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_common.roles import AuditOutcome
from hakuriver_host.cluster import Cluster
from hakuriver_host.errors import ApiError, Hidden, Unauthenticated
from hakuriver_host.identity import ANONYMOUS, Principal, role_changed
from hakuriver_host.ssh_tickets import Ticket
from hakuriver_host.tunnels import Dialed, Tunnel

log = logging.getLogger(__name__)

REQUEST_TIMEOUT = 10.0
OPEN_TIMEOUT = 10.0
# A read's most on the Runner's stream (a message each), and on a dialled connection.
CHUNK = 64 * 1024
DIALED_CHUNK = 1024 * 1024


async def _first_line(reader: asyncio.StreamReader) -> bytes:
    """The client's request line; one longer than the stream's limit (DIALED_CHUNK) is no
    request either (asyncio's own words for it are not for the client)."""
    try:
        return await asyncio.wait_for(reader.readline(), REQUEST_TIMEOUT)
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


Send = Callable[[bytes], Awaitable[None]]
Receive = Callable[[], Awaitable[bytes | None]]


def _far_end(tunnel: Tunnel, dialed: Dialed | None) -> tuple[int, Send, Receive]:
    """How the client's bytes reach the Runner and the Runner's reach the client: the
    connection it dialled, or else its stream; and the most to read at a time."""
    if dialed is not None:

        async def write(data: bytes) -> None:
            dialed.writer.write(data)
            await dialed.writer.drain()

        async def read() -> bytes | None:
            return await dialed.reader.read(DIALED_CHUNK) or None

        return DIALED_CHUNK, write, read

    async def send(data: bytes) -> None:
        await tunnel.link.room()
        tunnel.link.send(
            rpb.ConnectResponse(tunnel_data=rpb.TunnelData(tunnel_id=tunnel.tunnel_id, data=data))
        )

    return CHUNK, send, tunnel.incoming.get


class SshProxy:
    def __init__(self, cluster: Cluster) -> None:
        self.cluster = cluster
        self.server: asyncio.Server | None = None

    async def start(self, host: str, port: int) -> int:
        self.server = await asyncio.start_server(self._serve, host, port, limit=DIALED_CHUNK)
        bound = int(self.server.sockets[0].getsockname()[1])
        self.cluster.tunnels.dial_port = bound
        return bound

    async def stop(self) -> None:
        if self.server is not None:
            self.server.close()
            await self.server.wait_closed()

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

    async def _serve_runner(
        self, tunnel_id: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """A Runner's connection for a tunnel's bytes: handed to the tunnel's client, and
        held open until the tunnel ends. One that is not the tunnel's is refused (audited)."""
        nonce = tunnel_proof.challenge()
        writer.write(f"CHALLENGE {nonce}\n".encode())
        await writer.drain()
        answer = (await _first_line(reader)).decode(errors="replace").strip()
        tunnel = None
        if tunnel_id.isdigit():
            dialed = Dialed(reader, writer)
            tunnel = self.cluster.tunnels.dialed(int(tunnel_id), nonce, answer, dialed)
        if tunnel is None:
            reason = f"no tunnel {tunnel_id} waits for that proof"
            self._refused(writer, ANONYMOUS, reason)
            writer.write(f"ERROR {reason}\n".encode())
            await writer.drain()
            return
        writer.write(b"SUCCESS\n")
        await writer.drain()
        await tunnel.ended.wait()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        hub = self.cluster.tunnels
        tunnel: Tunnel | None = None
        held: Ticket | None = None
        try:
            try:
                word, argument = _request(await _first_line(reader))
                if word == "TUNNEL":
                    await self._serve_runner(argument, reader, writer)
                    return
                held = self.cluster.ssh_tickets.redeem(argument)
                tunnel, who = await self.cluster.open_tunnel(held)
                dialed = await _opened(tunnel)
            except (ValueError, ApiError, ConnectionError, TimeoutError) as exc:
                reason = exc.message if isinstance(exc, ApiError) else str(exc) or "timed out"
                # A refusal of the caller (no ticket, one not good, or a holder who may no
                # longer reach the VPS) is audited; a tunnel that could not open is not the
                # caller's doing.
                if isinstance(exc, Unauthenticated | Hidden | ValueError):
                    task = held.task_id if held is not None else 0
                    self._refused(writer, self._holder(held), reason, task)
                writer.write(f"ERROR {reason}\n".encode())
                await writer.drain()
                return
            path = "stream" if dialed is None else "dialled"
            self.cluster.metrics.ssh_tunnels.labels(path=path).inc()
            writer.write(b"SUCCESS\n")
            await writer.drain()
            await self._relay(reader, writer, tunnel, who, dialed)
        except (ConnectionError, OSError):
            pass
        finally:
            if tunnel is not None:
                hub.close(tunnel)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    def _refused(
        self, writer: asyncio.StreamWriter, who: Principal, reason: str, task_id: int = 0
    ) -> None:
        """Audit a refused tunnel, with the address the client came from and, for a session
        ended, the VPS it reached."""
        peer = writer.get_extra_info("peername")
        target = str(task_id) if task_id else ""
        self.cluster.audit.record(
            who, "ssh.tunnel", target, AuditOutcome.REFUSED, reason, str(peer or "")
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
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        tunnel: Tunnel,
        who: Principal,
        dialed: Dialed | None,
    ) -> None:
        refused: list[str] = []
        chunk, send, receive = _far_end(tunnel, dialed)

        def holds() -> bool:
            """Whether ``who`` may still use the tunnel (its token good, its role the one it
            was let in with); the first refusal is audited."""
            if refused:
                return False
            reason = self._no_longer(who)
            if reason is None:
                return True
            refused.append(reason)
            self._refused(writer, who, reason, tunnel.task_id)
            return False

        async def upstream() -> None:
            while (data := await reader.read(chunk)) and holds():
                await send(data)

        async def downstream() -> None:
            while (data := await receive()) is not None and holds():
                writer.write(data)
                await writer.drain()

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

        stop_telling = self.cluster.access.on_revoked(revoked.set)
        tasks = [asyncio.create_task(job()) for job in (upstream, downstream, idle)]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_telling()
            for task in tasks:
                task.cancel()
