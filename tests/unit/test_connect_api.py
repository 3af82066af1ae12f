"""The dashboard's port: the public API over the Connect protocol (JSON, as curl or the
browser calls it), the terminal WebSocket's gate, and the static files with their security
headers. One implementation behind both transports: what one does, the other sees."""

from __future__ import annotations

import asyncio
import base64
import gzip
import http.client
import json
import logging
import os
import socket
import ssl
import threading
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import grpc
import pytest
import websockets
from websockets.exceptions import InvalidStatus

from hakuriver_common.channels import open_aio_channel
from hakuriver_common.proto.hakuriver.v1 import (
    audit_service_pb2 as aupb,
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import TaskStatus
from hakuriver_host import web_app
from hakuriver_host.authorization import RIGHTS
from hakuriver_host.connect_bridge import CUT_BY_STOP
from hakuriver_host.web_app import CONTENT_SECURITY_POLICY, SHELL_PROTOCOL
from tests.connect_http import Endpoint
from tests.fake_runner import HOLD, eventually, exit_with
from tests.unit.local_cluster import LocalCluster

MakeCluster = Callable[..., Awaitable[LocalCluster]]
TASKS = "hakuriver.v1.TaskService/"


def endpoint(cluster: LocalCluster) -> Endpoint:
    assert cluster.server is not None
    return Endpoint(
        f"https://127.0.0.1:{cluster.server.dashboard_port}", Path(cluster.config.tls.ca_file)
    )


async def test_a_task_submitted_over_connect_is_the_one_grpc_sees(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner()
    alice = await local_cluster.add_user("alice")
    api = endpoint(local_cluster)
    who = await asyncio.to_thread(api.call, "hakuriver.v1.AccessService/WhoAmI", {}, alice.token)
    assert (who.status, who.json()["user"], who.json()["role"]) == (200, "alice", "ROLE_USER")
    submitted = await asyncio.to_thread(
        api.call, TASKS + "SubmitTask", {"command": "echo", "arguments": ["hi"]}, alice.token
    )
    assert submitted.status == 200, submitted.body
    task_id = int(submitted.json()["tasks"][0]["taskId"])
    seen = await local_cluster.get(task_id)
    assert (seen.owner, seen.command, list(seen.arguments)) == ("alice", "echo", ["hi"])


async def test_a_call_cut_by_the_host_stopping_says_so(local_cluster: LocalCluster) -> None:
    """A kill still waiting for its Runner when the Host stops: its caller hears why, as
    UNAVAILABLE (which the CLI explains), not a bare HTTP 500."""
    runner = await local_cluster.add_runner("a", answer=HOLD, answer_kills=False)
    alice = await local_cluster.add_user("alice")
    submitted = await alice.tasks.SubmitTask(tpb.SubmitTaskRequest(command="job"), timeout=5)
    task_id = submitted.tasks[0].task_id
    await local_cluster.wait_status(task_id, TaskStatus.RUNNING)
    api = endpoint(local_cluster)
    kill = asyncio.ensure_future(
        asyncio.to_thread(api.call, TASKS + "KillTask", {"taskId": str(task_id)}, alice.token)
    )
    await eventually(lambda: ("kill", task_id) in runner.commands, what="the kill sent")
    assert local_cluster.server is not None
    await local_cluster.server.stop()
    local_cluster.server = None
    reply = await kill
    assert reply.status == 503, reply.body
    assert reply.json() == {"code": "unavailable", "message": CUT_BY_STOP}


async def test_refusals_and_errors_are_the_grpc_ones(local_cluster: LocalCluster) -> None:
    alice = await local_cluster.add_user("alice")
    bob = await local_cluster.add_user("bob")
    await local_cluster.add_runner(answer=HOLD)
    api = endpoint(local_cluster)

    anonymous = await asyncio.to_thread(api.call, TASKS + "ListTasks", {}, None)
    assert (anonymous.status, anonymous.json()["code"]) == (401, "unauthenticated")

    drain = {"hostname": "node-0"}
    refused = await asyncio.to_thread(
        api.call, "hakuriver.v1.NodeService/DrainNode", drain, alice.token
    )
    with pytest.raises(grpc.aio.AioRpcError) as over_grpc:
        await alice.nodes.DrainNode(npb.DrainNodeRequest(**drain), timeout=5)
    assert refused.status == 403
    assert refused.json() == {
        "code": "permission_denied",
        "message": over_grpc.value.details(),
    }
    events = await local_cluster.audit.ListAuditEvents(aupb.ListAuditEventsRequest(), timeout=5)
    refusals = [e for e in events.events if e.target == "/hakuriver.v1.NodeService/DrainNode"]
    assert [e.actor for e in refusals] == ["alice", "alice"], "both transports audit refusals"
    assert all(e.peer.startswith("ipv4:127.0.0.1:") for e in refusals), refusals

    bad = {"command": "true", "cores": -1}
    invalid = await asyncio.to_thread(api.call, TASKS + "SubmitTask", bad, alice.token)
    with pytest.raises(grpc.aio.AioRpcError) as bad_grpc:
        await alice.tasks.SubmitTask(tpb.SubmitTaskRequest(command="true", cores=-1), timeout=5)
    assert invalid.status == 400
    assert invalid.json() == {"code": "invalid_argument", "message": bad_grpc.value.details()}

    bobs = (await bob.tasks.SubmitTask(tpb.SubmitTaskRequest(command="x"), timeout=5)).tasks[0]
    hidden = await asyncio.to_thread(
        api.call, TASKS + "GetTask", {"taskId": str(bobs.task_id)}, alice.token
    )
    assert (hidden.status, hidden.json()["code"]) == (404, "not_found")
    listed = await asyncio.to_thread(api.call, TASKS + "ListTasks", {}, alice.token)
    assert listed.json().get("tasks", []) == [], "alice sees none of bob's tasks"


def _following(task_id: int) -> dict[str, Any]:
    return {"taskId": str(task_id), "stream": "LOG_STREAM_STDOUT", "follow": True}


async def _follow_over_connect(
    api: Endpoint, request: dict[str, Any], cluster: LocalCluster, limit: int
) -> tuple[list[Any], Any]:
    """The admin's ReadLog ``request`` over Connect, on a thread: up to ``limit`` messages
    and the end of stream (Endpoint.stream)."""
    return await asyncio.to_thread(
        api.stream, "hakuriver.v1.LogService/ReadLog", request, cluster.admin_token, limit
    )


async def test_a_log_follows_over_a_server_stream(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner(answer=HOLD)
    [task] = await local_cluster.submit_running()
    runner.write(task.task_id, b"first\n")
    api = endpoint(local_cluster)
    request = _following(task.task_id)
    reading = asyncio.create_task(_follow_over_connect(api, request, local_cluster, 2))
    await asyncio.sleep(0.3)
    runner.write(task.task_id, b"second\n")
    messages, end = await asyncio.wait_for(reading, 10)
    assert b"".join(base64.b64decode(m["data"]) for m in messages) == b"first\nsecond\n"
    assert end is None

    _, refused_end = await asyncio.to_thread(
        api.stream, "hakuriver.v1.LogService/ReadLog", request, None, 1
    )
    assert refused_end["error"]["code"] == "unauthenticated"


async def test_the_runner_stream_is_not_on_the_dashboard_port(local_cluster: LocalCluster) -> None:
    api = endpoint(local_cluster)
    for path in ("hakuriver.v1.RunnerService/Connect", "hakuriver.v1.ShellService/Shell"):
        reply = await asyncio.to_thread(api.call, path, {}, local_cluster.admin_token)
        assert reply.status == 404, path
    _, upload = await asyncio.to_thread(
        api.stream, "hakuriver.v1.EnvironmentService/ImportRootfs", {}, local_cluster.admin_token, 1
    )
    assert upload["error"]["code"] == "unimplemented"
    assert "call it over gRPC" in upload["error"]["message"]
    assert local_cluster.server is not None
    served = local_cluster.server.web_app().services
    methods = {f"{prefix}/{name}" for prefix in served for name in _method_names(prefix)}
    assert methods and methods <= set(RIGHTS)


def _method_names(prefix: str) -> list[str]:
    return [m.rsplit("/", 1)[1] for m in RIGHTS if m.startswith(prefix + "/")]


def _alpn(port: int, ca_file: str) -> str | None:
    context = ssl.create_default_context(cafile=ca_file)
    context.set_alpn_protocols(["h2", "http/1.1"])
    with (
        socket.create_connection(("127.0.0.1", port), timeout=5) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        return tls.selected_alpn_protocol()


async def test_https_offers_http2(local_cluster: LocalCluster) -> None:
    """Browsers keep six HTTP/1.1 connections per host, and each live stream holds one;
    over HTTP/2 every stream of every tab shares one connection."""
    assert local_cluster.server is not None
    port = local_cluster.server.dashboard_port
    ca_file = str(local_cluster.config.tls.ca_file)
    assert await asyncio.to_thread(_alpn, port, ca_file) == "h2"


async def test_pages_carry_the_security_headers(
    make_local_cluster: MakeCluster, tmp_path: Path
) -> None:
    built = tmp_path / "dist"
    (built / "assets").mkdir(parents=True)
    (built / "index.html").write_text("<!doctype html><title>HakuRiver</title>")
    script = b"console.log('hakuriver');" * 40
    (built / "assets" / "index-abc123.js").write_bytes(script)
    cluster = await make_local_cluster(dashboard={"port": 0, "assets_dir": built})
    api = endpoint(cluster)
    for page in ("/", "/tasks/12", "/docker"):
        reply = await asyncio.to_thread(api.request, page)
        assert reply.status == 200 and b"<title>HakuRiver" in reply.body, page
        assert reply.headers["content-security-policy"] == CONTENT_SECURITY_POLICY
        assert "'unsafe-inline'" not in CONTENT_SECURITY_POLICY
        assert reply.headers["x-frame-options"] == "DENY"
        assert reply.headers["cache-control"] == "no-cache"
    asset = await asyncio.to_thread(
        api.request, "/assets/index-abc123.js", None, {"Accept-Encoding": "gzip"}
    )
    assert asset.headers["content-encoding"] == "gzip"
    assert gzip.decompress(asset.body) == script
    assert "immutable" in asset.headers["cache-control"]
    assert asset.headers["content-type"].startswith(("text/javascript", "application/javascript"))
    missing = await asyncio.to_thread(api.request, "/assets/gone.js")
    assert missing.status == 404
    posted = await asyncio.to_thread(api.request, "/", b"x", None, "POST")
    assert posted.status == 405


async def test_a_new_build_is_served_without_a_restart(
    make_local_cluster: MakeCluster, tmp_path: Path
) -> None:
    built = tmp_path / "dist"
    built.mkdir()
    (built / "index.html").write_text("<!doctype html><title>first build</title>")
    cluster = await make_local_cluster(dashboard={"port": 0, "assets_dir": built})
    api = endpoint(cluster)
    assert b"first build" in (await asyncio.to_thread(api.request, "/")).body
    (built / "index.html").write_text("<!doctype html><title>second build</title>")
    os.utime(built / "index.html", ns=(1, 10**18))
    assert b"second build" in (await asyncio.to_thread(api.request, "/tasks")).body


async def test_pages_are_told_the_ssh_proxy_port(
    make_local_cluster: MakeCluster, tmp_path: Path
) -> None:
    """The VPS page's hakuriver.ssh --proxy-port: the API does not publish the port, so the
    Host writes it into index.html's meta tag (as Vite builds it: content="" />)."""
    built = tmp_path / "dist"
    built.mkdir()
    (built / "index.html").write_text(
        '<!doctype html><meta name="hakuriver-ssh-proxy-port" content="" /><title>x</title>'
    )
    cluster = await make_local_cluster(dashboard={"port": 0, "assets_dir": built})
    port = cluster.server.ssh_proxy_port
    assert port > 0
    body = (await asyncio.to_thread(endpoint(cluster).request, "/vps")).body
    assert f'<meta name="hakuriver-ssh-proxy-port" content="{port}">'.encode() in body


async def test_pages_are_told_how_often_to_read_their_lists_again(
    make_local_cluster: MakeCluster, tmp_path: Path
) -> None:
    """The pages without a stream (Docker, Tokens, Users) refresh every
    dashboard.refresh_seconds, which the Host writes into index.html's meta tag."""
    built = tmp_path / "dist"
    built.mkdir()
    meta = '<meta name="hakuriver-refresh-seconds" content="" />'
    (built / "index.html").write_text(f"<!doctype html>{meta}<title>x</title>")
    dashboard = {"port": 0, "assets_dir": built, "refresh_seconds": 2.5}
    cluster = await make_local_cluster(dashboard=dashboard)
    body = (await asyncio.to_thread(endpoint(cluster).request, "/docker")).body
    assert b'<meta name="hakuriver-refresh-seconds" content="2.5">' in body


@pytest.mark.parametrize("authentication", [True, False])
async def test_pages_are_told_whether_the_host_is_open(
    make_local_cluster: MakeCluster, tmp_path: Path, authentication: bool
) -> None:
    """An open Host (auth.authentication = false) has nobody to sign in: the dashboard is
    told so in index.html rather than asking without a token, which an authenticating Host
    would refuse and audit at every sign-in."""
    built = tmp_path / "dist"
    built.mkdir()
    (built / "index.html").write_text('<meta name="hakuriver-open" content="" /><title>x</title>')
    cluster = await make_local_cluster(
        dashboard={"port": 0, "assets_dir": built}, auth={"authentication": authentication}
    )
    body = (await asyncio.to_thread(endpoint(cluster).request, "/")).body
    told = "" if authentication else "true"
    assert f'<meta name="hakuriver-open" content="{told}">'.encode() in body


async def test_unbuilt_pages_say_how_to_build_them(
    make_local_cluster: MakeCluster, tmp_path: Path
) -> None:
    cluster = await make_local_cluster(dashboard={"port": 0, "assets_dir": tmp_path / "none"})
    reply = await asyncio.to_thread(endpoint(cluster).request, "/")
    assert reply.status == 503
    assert b"scripts/build-dashboard.sh" in reply.body


async def _shell_close(
    cluster: LocalCluster, protocols: list[str], origin: str | None = None
) -> tuple[int, str]:
    assert cluster.server is not None
    port = cluster.server.dashboard_port
    context = ssl.create_default_context(cafile=str(cluster.config.tls.ca_file))
    async with websockets.connect(
        f"wss://127.0.0.1:{port}/ws/shell",
        ssl=context,
        subprotocols=protocols,  # type: ignore[arg-type]
        origin=origin or f"https://127.0.0.1:{port}",  # type: ignore[arg-type]
        open_timeout=5,
    ) as socket:
        await socket.send(b"")  # a start message with nothing in it
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket.recv(), 5)
    assert closed.value.rcvd is not None
    return closed.value.rcvd.code, closed.value.rcvd.reason


async def test_the_terminal_socket_passes_the_same_gate(local_cluster: LocalCluster) -> None:
    alice = await local_cluster.add_user("alice")
    unauthenticated = 4000 + grpc.StatusCode.UNAUTHENTICATED.value[0]
    denied = 4000 + grpc.StatusCode.PERMISSION_DENIED.value[0]
    assert (await _shell_close(local_cluster, [SHELL_PROTOCOL]))[0] == unauthenticated
    code, reason = await _shell_close(local_cluster, [SHELL_PROTOCOL, f"bearer.{alice.token}"])
    assert code == denied
    assert reason.startswith("/hakuriver.v1.ShellService/Shell needs the operator role")
    with pytest.raises(InvalidStatus):
        await _shell_close(
            local_cluster,
            [SHELL_PROTOCOL, f"bearer.{local_cluster.admin_token}"],
            origin="https://elsewhere.example",
        )


async def test_bodies_are_bounded_and_never_decompressed(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    api = endpoint(local_cluster)
    token = {"Authorization": f"Bearer {local_cluster.admin_token}"}
    squeezed = gzip.compress(b'{"command": "' + b"x" * 100_000 + b'"}')
    headers = {**token, "Content-Type": "application/json", "Content-Encoding": "gzip"}
    reply = await asyncio.to_thread(api.request, f"/{TASKS}SubmitTask", squeezed, headers)
    assert reply.json()["code"] == "unimplemented", "a gzip body is refused, not inflated"
    monkeypatch.setattr(web_app, "MAX_REQUEST_BYTES", 1000)
    big = {**token, "Content-Type": "application/json"}
    reply = await asyncio.to_thread(api.request, f"/{TASKS}ListTasks", b" " * 2000, big)
    assert (reply.status, reply.json()["code"]) == (429, "resource_exhausted")
    stream = {**token, "Content-Type": "application/connect+json"}
    reply = await asyncio.to_thread(
        api.request, "/hakuriver.v1.LogService/ReadLog", b" " * 2000, stream
    )
    assert reply.status == 200 and reply.body[0] == 0x02  # one end-of-stream message
    assert json.loads(reply.body[5:])["error"]["code"] == "resource_exhausted"


async def test_grpc_over_http1_is_refused_without_a_traceback(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """A gRPC content type over HTTP/1.1 (no trailers): a 415 that says where gRPC is, not
    a 500 from the runtime with a traceback in the Host's log."""
    api = endpoint(local_cluster)
    token = {"Authorization": f"Bearer {local_cluster.admin_token}"}
    for kind in ("application/grpc", "application/grpc+proto"):
        headers = {**token, "Content-Type": kind}
        reply = await asyncio.to_thread(api.request, f"/{TASKS}ListTasks", b"\0" * 5, headers)
        assert reply.status == 415, (kind, reply.status)
        assert b"network.host_port" in reply.body
    assert not [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_a_call_of_the_wrong_shape_is_told_which_it_takes(
    local_cluster: LocalCluster,
) -> None:
    """A stream called as unary (curl's application/json, as api.md's unary examples), a
    unary method called enveloped or with another content type (curl -d sends a form's): a
    415 that says what the method takes; it was a 415 with an empty body."""
    api = endpoint(local_cluster)
    token = {"Authorization": f"Bearer {local_cluster.admin_token}"}
    unary = {**token, "Content-Type": "application/json"}
    reply = await asyncio.to_thread(api.request, f"/{TASKS}WatchTasks", b"{}", unary)
    assert reply.status == 415
    assert reply.body.decode() == (
        "WatchTasks is a server stream: send Content-Type application/connect+json (or "
        "application/connect+proto) and the request as one enveloped message (docs/api.md)\n"
    )
    for kind in ("application/connect+json", "text/plain"):
        headers = {**token, "Content-Type": kind}
        reply = await asyncio.to_thread(api.request, f"/{TASKS}ListTasks", b"\0\0\0\0\2{}", headers)
        assert reply.status == 415
        assert reply.body.decode().startswith("ListTasks is unary: send Content-Type application/")
    # Served over gRPC only: said whatever the content type (enveloped, as unimplemented).
    rootfs = "/hakuriver.v1.EnvironmentService/ImportRootfs"
    reply = await asyncio.to_thread(api.request, rootfs, b"{}", unary)
    assert reply.status == 415
    assert reply.body.decode() == (
        f"{rootfs} streams its request: call it over gRPC (browsers cannot stream a body)\n"
    )


def _grpc_web_frames(body: bytes) -> tuple[list[bytes], dict[str, str]]:
    """A gRPC-Web answer's messages, and its trailer frame's fields."""
    messages: list[bytes] = []
    trailers: dict[str, str] = {}
    while body:
        flags, size = body[0], int.from_bytes(body[1:5], "big")
        frame, body = body[5 : 5 + size], body[5 + size :]
        if flags & 0x80:
            lines = frame.decode().split("\r\n")
            trailers = dict(line.split(": ", 1) for line in lines if line)
        else:
            messages.append(frame)
    return messages, trailers


async def test_grpc_web_is_served_as_api_md_says(local_cluster: LocalCluster) -> None:
    """gRPC-Web was served on the dashboard's port but said nowhere: the documented call
    (JSON, one frame; a refusal in the trailer frame; a server stream in binary) works, and
    its text form, which is not served, answered HTTP 415 with an empty body."""
    await local_cluster.add_runner("a", answer=exit_with(0, stdout=b"hi\n"))
    task = await local_cluster.submit("echo")
    await local_cluster.wait_status(task.task_id)
    api = endpoint(local_cluster)
    token = {"Authorization": f"Bearer {local_cluster.admin_token}"}
    who = "/hakuriver.v1.AccessService/WhoAmI"
    as_json = {"Content-Type": "application/grpc-web+json"}
    reply = await asyncio.to_thread(api.request, who, b"\0\0\0\0\2{}", {**token, **as_json})
    assert reply.status == 200
    [answer], trailers = _grpc_web_frames(reply.body)
    assert (json.loads(answer)["user"], trailers["grpc-status"]) == ("admin", "0")
    reply = await asyncio.to_thread(api.request, who, b"\0\0\0\0\2{}", as_json)
    assert _grpc_web_frames(reply.body)[1]["grpc-status"] == "16"  # UNAUTHENTICATED
    request = lpb.ReadLogRequest(task_id=task.task_id, stream=task_pb2.LOG_STREAM_STDOUT)
    body = request.SerializeToString()
    frame = b"\0" + len(body).to_bytes(4, "big") + body
    binary = {**token, "Content-Type": "application/grpc-web+proto"}
    reply = await asyncio.to_thread(api.request, "/hakuriver.v1.LogService/ReadLog", frame, binary)
    messages, trailers = _grpc_web_frames(reply.body)
    assert b"".join(lpb.ReadLogResponse.FromString(m).data for m in messages) == b"hi\n"
    assert trailers["grpc-status"] == "0"
    text = {**token, "Content-Type": "application/grpc-web-text"}
    reply = await asyncio.to_thread(api.request, who, base64.b64encode(b"\0" * 5), text)
    assert reply.status == 415
    assert reply.body.decode() == (
        "gRPC-Web text (base64) is not served: send application/grpc-web+proto or "
        "application/grpc-web+json (docs/api.md)\n"
    )


async def test_a_refused_call_whose_body_stays_open_is_answered(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused call's body is read before the answer, but not for ever: a streaming client
    keeping its body open until it is answered (gRPC over HTTP/1.1; a Connect stream by a
    name not ours) gets its refusal, not a hang until its own deadline."""
    monkeypatch.setattr(web_app, "DRAIN_SECONDS", 0.2)
    assert local_cluster.server is not None
    port = local_cluster.server.dashboard_port
    context = ssl.create_default_context(cafile=str(local_cluster.config.tls.ca_file))

    def call(host: str, kind: str) -> int | None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        try:
            connection.putrequest("POST", f"/{TASKS}WatchTasks", skip_host=True)
            connection.putheader("Host", host)
            connection.putheader("Authorization", f"Bearer {local_cluster.admin_token}")
            connection.putheader("Content-Type", kind)
            connection.putheader("Transfer-Encoding", "chunked")
            connection.endheaders()
            connection.send(b"7\r\n\x00\x00\x00\x00\x02{}\r\n")  # one message; no end
            return connection.getresponse().status
        except TimeoutError:
            return None
        finally:
            connection.close()

    ours = await asyncio.to_thread(call, f"127.0.0.1:{port}", "application/grpc")
    theirs = await asyncio.to_thread(call, "evil.example", "application/connect+json")
    assert (ours, theirs) == (415, 200)  # 200: a Connect stream's error is its end message


async def test_a_quiet_stream_ends_when_its_client_goes(local_cluster: LocalCluster) -> None:
    assert local_cluster.server is not None
    port = local_cluster.server.dashboard_port
    book = local_cluster.server.cluster.book
    context = ssl.create_default_context(cafile=str(local_cluster.config.tls.ca_file))

    started = threading.Event()

    def open_and_drop() -> None:
        connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
        body = b"\x00\x00\x00\x00\x02{}"
        connection.request(
            "POST",
            f"/{TASKS}WatchTasks",
            body,
            {
                "Authorization": f"Bearer {local_cluster.admin_token}",
                "Content-Type": "application/connect+json",
            },
        )
        started.wait(10)
        connection.close()

    dropping = asyncio.create_task(asyncio.to_thread(open_and_drop))
    await eventually(lambda: book._list_watchers, what="the watch to start")
    started.set()
    await dropping
    await eventually(lambda: not book._list_watchers, what="the watch to end with its client")


async def test_pages_reached_by_an_unknown_name_are_refused(local_cluster: LocalCluster) -> None:
    """DNS rebinding: another site's name resolving to this Host."""
    api = endpoint(local_cluster)
    for host, status in (("evil.example", 421), ("localhost", 503), ("127.0.0.1:1", 503)):
        reply = await asyncio.to_thread(api.request, "/", None, {"Host": host})
        assert reply.status in (status, 200), (host, reply.status)
        assert (reply.status == 421) == (status == 421), host
    # A Connect call by that name is refused in the protocol, so its client says why.
    token = {"Authorization": f"Bearer {local_cluster.admin_token}", "Host": "evil.example"}
    unary = {**token, "Content-Type": "application/json"}
    reply = await asyncio.to_thread(api.request, f"/{TASKS}ListTasks", b"{}", unary)
    assert (reply.status, reply.json()) == (403, web_app.MISDIRECTED)
    stream = {**token, "Content-Type": "application/connect+json"}
    reply = await asyncio.to_thread(api.request, f"/{TASKS}WatchTasks", b"", stream)
    assert reply.status == 200 and reply.body[0] == 0x02  # one end-of-stream message
    assert json.loads(reply.body[5:])["error"] == web_app.MISDIRECTED


async def test_a_bad_terminal_frame_ends_the_session(local_cluster: LocalCluster) -> None:
    assert local_cluster.server is not None
    port = local_cluster.server.dashboard_port
    context = ssl.create_default_context(cafile=str(local_cluster.config.tls.ca_file))
    async with websockets.connect(
        f"wss://127.0.0.1:{port}/ws/shell",
        ssl=context,
        subprotocols=[SHELL_PROTOCOL, f"bearer.{local_cluster.admin_token}"],  # type: ignore[list-item]
        origin=f"https://127.0.0.1:{port}",  # type: ignore[arg-type]
        open_timeout=5,
    ) as socket_:
        await socket_.send(b"\xff\xff not a protobuf")
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await asyncio.wait_for(socket_.recv(), 10)
    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 4000 + grpc.StatusCode.INVALID_ARGUMENT.value[0]


async def test_a_unary_call_ends_when_its_connect_timeout_passes(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Connect-Timeout-Ms bounds the Host's work on the call, as a gRPC deadline does: the
    caller gets deadline_exceeded, not an answer after it stopped waiting."""
    assert local_cluster.server is not None

    async def slow(task_id: int, who: object) -> None:
        await asyncio.sleep(3)

    monkeypatch.setattr(local_cluster.server.cluster, "get_task_with_events", slow)
    api = endpoint(local_cluster)
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {local_cluster.admin_token}",
        "Connect-Timeout-Ms": "100",
    }
    reply = await asyncio.to_thread(
        api.request, "/" + TASKS + "GetTask", b'{"taskId": "1"}', headers
    )
    assert reply.json()["code"] == "deadline_exceeded", reply.body


@pytest.mark.parametrize("timeout_ms", ["0", "-1"])
async def test_a_submit_whose_connect_timeout_passed_on_arrival_stores_nothing(
    local_cluster: LocalCluster, timeout_ms: str
) -> None:
    """A call with no time left when it arrives is not begun, as a gRPC call past its
    deadline is not: the submit answered deadline_exceeded and its task was stored and ran."""
    await local_cluster.add_runner()
    headers = {
        "Content-Type": "application/json",
        "Authorization": f"Bearer {local_cluster.admin_token}",
        "Connect-Timeout-Ms": timeout_ms,
    }
    reply = await asyncio.to_thread(
        endpoint(local_cluster).request, "/" + TASKS + "SubmitTask", b'{"command": "x"}', headers
    )
    assert reply.json()["code"] == "deadline_exceeded", reply.body
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert list(listed.tasks) == []


async def test_a_server_stream_ends_when_its_connect_timeout_passes(
    local_cluster: LocalCluster,
) -> None:
    """A watch (or a followed log) with a Connect-Timeout-Ms ends with deadline_exceeded when
    it passes, after what it sent until then, as a gRPC deadline ends a stream."""
    await local_cluster.add_runner(answer=HOLD)
    [task] = await local_cluster.submit_running()
    api = endpoint(local_cluster)
    messages, end = await asyncio.wait_for(
        asyncio.to_thread(
            api.stream,
            TASKS + "WatchTask",
            {"taskId": str(task.task_id)},
            local_cluster.admin_token,
            100,
            400,
        ),
        10,
    )
    assert [m["task"]["status"] for m in messages] == ["TASK_STATUS_RUNNING"], messages
    assert end is not None and end["error"]["code"] == "deadline_exceeded", end
    counts = await local_cluster.request_counts()  # counted as a gRPC deadline is
    watch = "/" + TASKS + "WatchTask"
    assert counts.get((watch, "DEADLINE_EXCEEDED")) == 1, counts
    assert (watch, "CANCELLED") not in counts, counts


async def test_a_followed_log_ends_unavailable_when_the_host_stops(
    local_cluster: LocalCluster,
) -> None:
    """Over either transport a follower learns the Host is going, and comes back: over
    Connect, the web server cancelling the call as it stopped gave a clean end of stream,
    and the CLI took the running task's output for finished (exit 0)."""
    runner = await local_cluster.add_runner(answer=HOLD)
    [task] = await local_cluster.submit_running()
    runner.write(task.task_id, b"first\n")
    over_connect = asyncio.create_task(
        _follow_over_connect(endpoint(local_cluster), _following(task.task_id), local_cluster, 100)
    )
    # A channel of its own: the cluster's are closed before its Host stops.
    channel = open_aio_channel(local_cluster.config, local_cluster.admin_token)
    over_grpc = log_service_pb2_grpc.LogServiceStub(channel).ReadLog(
        lpb.ReadLogRequest(task_id=task.task_id, stream=task_pb2.LOG_STREAM_STDOUT, follow=True),
        timeout=20,
    )
    assert (await over_grpc.read()).data == b"first\n"
    await asyncio.sleep(0.3)  # the Connect follower has its first message too
    await local_cluster.stop_host()
    messages, end = await asyncio.wait_for(over_connect, 20)
    assert [base64.b64decode(m["data"]) for m in messages] == [b"first\n"]
    assert end == {
        "error": {
            "code": "unavailable",
            "message": "the Host is stopping: ask again once it is back",
        }
    }
    with pytest.raises(grpc.aio.AioRpcError) as ended:
        await over_grpc.read()
    await channel.close()
    assert (ended.value.code(), ended.value.details()) == (
        grpc.StatusCode.UNAVAILABLE,
        "the Host is stopping: ask again once it is back",
    )
