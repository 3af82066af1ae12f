"""The dashboard's port answers anybody who connects, so a stranger's connection that is no
request in progress is not kept: a TLS handshake never finished, headers or a call's body
sent a byte at a time; while a stream in progress, quiet for longer than each of those
bounds, is kept. Each bound is shortened here; docs/limits.md gives the real ones."""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl

import pytest

from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    audit_service_pb2 as aupb,
)
from hakuriver_host import web_app, web_server
from tests.fake_runner import HOLD, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster
from tests.unit.test_connect_api import TASKS, endpoint

BOUND = 0.5
# How long a test trickles bytes at most: far past BOUND.
TRICKLE_SECONDS = 10.0
TRICKLE_EVERY = 0.1


async def _tls(cluster: LocalCluster) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    assert cluster.server is not None
    context = ssl.create_default_context(cafile=cluster.config.tls.ca_file)
    return await asyncio.open_connection("127.0.0.1", cluster.server.dashboard_port, ssl=context)


async def _to_the_end(reader: asyncio.StreamReader) -> bytes:
    """What the Host sent until it closed the connection (a TLS connection may end with a
    reset rather than its close_notify)."""
    got = b""
    with contextlib.suppress(ConnectionError, ssl.SSLError):
        while data := await reader.read(65536):
            got += data
    return got


async def _answer_while_trickling(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> bytes | None:
    """Send a byte every TRICKLE_EVERY until the Host closes the connection: what it sent
    first; None: it did not close it within TRICKLE_SECONDS."""
    ended = asyncio.ensure_future(_to_the_end(reader))
    try:
        for _ in range(int(TRICKLE_SECONDS / TRICKLE_EVERY)):
            with contextlib.suppress(ConnectionError):
                writer.write(b"x")
                await writer.drain()
            await asyncio.wait({ended}, timeout=TRICKLE_EVERY)
            if ended.done():
                return ended.result()
        return None
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
    assert await _answer_while_trickling(reader, writer) == b""


async def test_a_calls_body_sent_a_byte_at_a_time_is_cut_off(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Its headers came in time, so Hypercorn waits for its body for good: the call answers
    deadline_exceeded once BODY_SECONDS pass, and the connection closes."""
    monkeypatch.setattr(web_app, "BODY_SECONDS", BOUND)
    cluster = await make_local_cluster()
    reader, writer = await _tls(cluster)
    writer.write(
        b"POST /hakuriver.v1.AccessService/WhoAmI HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
    )
    answer = await _answer_while_trickling(reader, writer)
    assert answer is not None and answer.startswith(b"HTTP/1.1 504 "), answer
    body = answer.split(b"\r\n\r\n", 1)[1]  # one chunk: its JSON between braces
    message = json.loads(body[body.index(b"{") : body.rindex(b"}") + 1])
    assert message == {
        "code": "deadline_exceeded",
        "message": f"request: its body did not arrive within {BOUND:g} s",
    }


async def test_a_quiet_stream_outlives_every_bound(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A watch whose client sends nothing after its request (as a followed log's, for
    hours) is no stranger's idle connection: it still gets the task's end, sent after
    each bound has passed several times over."""
    for bound in ("HANDSHAKE_SECONDS", "KEEP_ALIVE_SECONDS"):
        monkeypatch.setattr(web_server, bound, BOUND)
    monkeypatch.setattr(web_app, "BODY_SECONDS", BOUND)
    cluster = await make_local_cluster()
    runner = await cluster.add_runner(answer=HOLD)
    [task] = await cluster.submit_running()
    api = endpoint(cluster)
    watch = {"taskId": str(task.task_id)}
    watching = asyncio.create_task(
        asyncio.to_thread(api.stream, TASKS + "WatchTask", watch, cluster.admin_token, 2)
    )
    assert cluster.server is not None
    gate = cluster.server.gate
    await eventually(lambda: gate.streams, what="the watch to open")
    await asyncio.sleep(4 * BOUND)
    runner.finish(task.task_id, 0)
    updates, _ = await asyncio.wait_for(watching, 10)
    assert updates[-1]["task"]["status"] == "TASK_STATUS_COMPLETED"


async def _refusal_of_a_large_body(cluster: LocalCluster, authorization: bytes) -> bytes:
    """What the Host answers a ListTasks call that announces a 16 MiB body and sends just
    past STRANGER_BODY_BYTES of it, then waits."""
    reader, writer = await _tls(cluster)
    try:
        writer.write(
            b"POST /hakuriver.v1.TaskService/ListTasks HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + authorization
            + b"Content-Length: "
            + str(web_app.READ_MAX_BYTES).encode()
            + b"\r\n\r\n{"
            + b" " * web_app.STRANGER_BODY_BYTES
        )
        await writer.drain()
        return await asyncio.wait_for(_to_the_end(reader), TRICKLE_SECONDS)
    finally:
        writer.close()


async def test_a_strangers_large_body_is_refused_before_it_arrives(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A call whose token is refused as unauthenticated (none, one the Host never issued, a
    revoked one) is answered after STRANGER_BODY_BYTES of its body, as a small one is, and
    audited the same (a stranger's refusals are summarised: the revoked token's are rows); a
    valid token's large body is still read and served. BODY_SECONDS is shortened: were the
    whole body awaited, the answer would be its deadline_exceeded."""
    monkeypatch.setattr(web_app, "BODY_SECONDS", BOUND)
    cluster = await make_local_cluster()
    api = endpoint(cluster)
    alice = await cluster.add_user("alice")
    made = await alice.access.CreateToken(apb.CreateTokenRequest(), timeout=5)
    await alice.access.RevokeToken(apb.RevokeTokenRequest(token_id=made.token.token_id))
    for token in (None, "not-a-token", made.secret):
        header = b"" if token is None else f"Authorization: Bearer {token}\r\n".encode()
        answer = await _refusal_of_a_large_body(cluster, header)
        assert answer.startswith(b"HTTP/1.1 401 "), answer
        body = answer.split(b"\r\n\r\n", 1)[1]
        small = await asyncio.to_thread(api.call, TASKS + "ListTasks", {}, token)
        assert json.loads(body[body.index(b"{") : body.rindex(b"}") + 1]) == small.json()
    events = await cluster.audit.ListAuditEvents(aupb.ListAuditEventsRequest(), timeout=5)
    revoked = [
        e.detail for e in events.events if e.target == f"/{TASKS}ListTasks" and e.actor == "alice"
    ]
    assert len(revoked) == 2 and revoked[0] == revoked[1], revoked

    token = {"Authorization": f"Bearer {cluster.admin_token}", "Content-Type": "application/json"}
    large = b"{" + b" " * (4 * web_app.STRANGER_BODY_BYTES) + b"}"
    served = await asyncio.to_thread(api.request, f"/{TASKS}ListTasks", large, token)
    assert served.status == 200, served.body
