"""The dashboard's port answers anybody who connects, so a stranger's connection that is no
request in progress is not kept: a TLS handshake never finished, headers sent a byte at a
time. Each bound is shortened here; docs/limits.md gives the real ones."""

from __future__ import annotations

import asyncio
import ssl

import pytest

from hakuriver_host import web_server
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster

BOUND = 0.5
# How long a test trickles bytes at most: far past BOUND.
TRICKLE_SECONDS = 10.0
TRICKLE_EVERY = 0.1


async def _tls(cluster: LocalCluster) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert cluster.server is not None
    context = ssl.create_default_context(cafile=cluster.config.tls.ca_file)
    return await asyncio.open_connection("127.0.0.1", cluster.server.dashboard_port, ssl=context)


async def _closed_while_trickling(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bool:
    """Send a byte every TRICKLE_EVERY until the Host closes the connection (True) or
    TRICKLE_SECONDS pass (False)."""
    ended = asyncio.ensure_future(reader.read())
    try:
        for _ in range(int(TRICKLE_SECONDS / TRICKLE_EVERY)):
            try:
                writer.write(b"x")
                await writer.drain()
            except ConnectionError:
                return True
            await asyncio.wait({ended}, timeout=TRICKLE_EVERY)
            if ended.done():
                return ended.exception() is not None or ended.result() == b""
        return False
    finally:
        ended.cancel()
        writer.close()


async def test_a_tls_handshake_never_finished_is_cut_off(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A connection that sends nothing is closed after HANDSHAKE_SECONDS: Hypercorn's own
    default held it a minute."""
    monkeypatch.setattr(web_server, "HANDSHAKE_SECONDS", BOUND)
    cluster = await make_local_cluster()
    assert cluster.server is not None
    reader, writer = await asyncio.open_connection("127.0.0.1", cluster.server.dashboard_port)
    try:
        assert await asyncio.wait_for(reader.read(), TRICKLE_SECONDS) == b""
    finally:
        writer.close()


async def test_headers_sent_a_byte_at_a_time_are_cut_off(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The bound on a connection with no request open (KEEP_ALIVE_SECONDS) runs while its
    headers arrive: each byte does not start it again."""
    monkeypatch.setattr(web_server, "KEEP_ALIVE_SECONDS", BOUND)
    cluster = await make_local_cluster()
    reader, writer = await _tls(cluster)
    writer.write(b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
    assert await _closed_while_trickling(reader, writer)
