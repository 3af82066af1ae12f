"""The tools' Connect link (hakuriver_cli/connect_link.py) against a real Host's HTTPS
dashboard port: answers and errors as the gRPC link gives them, server streams, a stream left
early, and every call going over gRPC when the dashboard port cannot be reached. The link
blocks, so each test runs it in a thread beside the Host's event loop."""

from __future__ import annotations

import asyncio
import socket
import ssl
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pytest

from hakuriver_cli.call_error import CallError, Status
from hakuriver_cli.connect_link import ConnectLink
from hakuriver_cli.grpc_link import GrpcLink
from hakuriver_cli.link import Link, log_stub, node_stub, task_stub
from hakuriver_common.channels import open_channel
from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    node_service_pb2 as npb,
    task_pb2,
    task_service_pb2 as tpb,
)
from tests.e2e.harness import free_port
from tests.fake_runner import HOLD
from tests.unit.local_cluster import LocalCluster

T = TypeVar("T")


def _no_grpc() -> Link:
    raise AssertionError("the call went over gRPC")


def connect_link(
    cluster: LocalCluster,
    token: str,
    port: int | None = None,
    grpc_link: Callable[[], Link] = _no_grpc,
) -> ConnectLink:
    assert cluster.server is not None
    tls = ssl.create_default_context(cafile=str(cluster.config.tls.ca_file))
    return ConnectLink(
        "127.0.0.1", port or cluster.server.dashboard_port, tls, "127.0.0.1", token, grpc_link
    )


async def in_thread(call: Callable[[], T]) -> T:
    return await asyncio.to_thread(call)


def failure(call: Callable[[], Any]) -> CallError:
    with pytest.raises(CallError) as raised:
        call()
    return raised.value


async def test_answers_and_errors_are_the_grpc_links(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner()
    alice = await local_cluster.add_user("alice")
    link = connect_link(local_cluster, alice.token)
    over_grpc = GrpcLink(open_channel(local_cluster.config, alice.token))

    def submit_and_watch() -> list[int]:
        stub = task_stub(link)
        request = tpb.SubmitTaskRequest(kind=task_pb2.TASK_KIND_COMMAND, command="true")
        [task] = stub.SubmitTask(request, timeout=10).tasks
        seen = [u.task.status for u in stub.WatchTask(tpb.WatchTaskRequest(task_id=task.task_id))]
        assert stub.GetTask(tpb.GetTaskRequest(task_id=task.task_id)).task.owner == "alice"
        return seen

    statuses = await in_thread(submit_and_watch)
    assert statuses[-1] == task_pb2.TASK_STATUS_COMPLETED

    def errors(over: Link) -> list[tuple[Status, str]]:
        found = [
            failure(lambda: task_stub(over).GetTask(tpb.GetTaskRequest(task_id=12345))),
            failure(lambda: node_stub(over).DrainNode(npb.DrainNodeRequest(hostname="node-0"))),
            failure(lambda: task_stub(over).SubmitTask(tpb.SubmitTaskRequest(cores=-1))),
        ]
        return [(e.status, e.details) for e in found]

    over_connect = await in_thread(lambda: errors(link))
    assert [status for status, _ in over_connect] == [
        Status.NOT_FOUND,
        Status.PERMISSION_DENIED,
        Status.INVALID_ARGUMENT,
    ]
    assert over_connect == await in_thread(lambda: errors(over_grpc))

    stranger = connect_link(local_cluster, "hkr_not-a-token")
    refused = await in_thread(
        lambda: failure(lambda: task_stub(stranger).ListTasks(tpb.ListTasksRequest()))
    )
    assert refused.status is Status.UNAUTHENTICATED
    # An error is an answer: the port is served, so a later failure to connect is the Host
    # gone (reported), not a reason to go over gRPC.
    assert stranger.answered
    for each in (link, stranger, over_grpc):
        each.close()


async def test_a_stream_left_early_spoils_no_later_call(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner(answer=HOLD)
    [task] = await local_cluster.submit_running()
    runner.write(task.task_id, b"first\n")
    link = connect_link(local_cluster, local_cluster.admin_token)
    request = lpb.ReadLogRequest(
        task_id=task.task_id, stream=task_pb2.LOG_STREAM_STDOUT, follow=True
    )

    def leave_then_call(cancel: bool) -> tuple[bytes, int]:
        stream = log_stub(link).ReadLog(request)
        first = next(stream).data
        if cancel:
            stream.cancel()  # else just dropped, mid-stream, as a `break` leaves it
        return first, task_stub(link).GetTask(tpb.GetTaskRequest(task_id=task.task_id)).task.status

    for cancel in (False, True):
        assert await asyncio.to_thread(leave_then_call, cancel) == (
            b"first\n",
            task_pb2.TASK_STATUS_RUNNING,
        )
    link.close()


async def test_a_call_made_while_a_stream_is_read_leaves_the_stream_going(
    local_cluster: LocalCluster,
) -> None:
    """A call while a stream was still being read closed the stream's connection (one
    connection for all): the stream then broke (UNAVAILABLE), which `health --watch`, reading
    the readings once its watch is in place, took for the Host gone, again and again."""
    await local_cluster.add_runner("a")
    link = connect_link(local_cluster, local_cluster.admin_token)

    def watch_read_watch() -> tuple[bool, list[str], str]:
        stub = node_stub(link)
        stream = stub.WatchHealth(npb.WatchHealthRequest(send_watching=True))
        first = next(stream)
        read = stub.GetHealth(npb.GetHealthRequest(hostname="a", include_history=True))
        second = next(stream)
        stream.cancel()
        return first.watching, [n.hostname for n in read.nodes], second.node.hostname

    assert await in_thread(watch_read_watch) == (True, ["a"], "a")
    health = await in_thread(lambda: node_stub(link).GetHealth(npb.GetHealthRequest()))
    assert [n.hostname for n in health.nodes] == ["a"]  # the link goes on after the cancel
    link.close()


async def test_without_the_dashboard_every_call_goes_over_grpc(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner()
    opened: list[GrpcLink] = []

    def grpc_link() -> Link:
        opened.append(GrpcLink(open_channel(local_cluster.config, local_cluster.admin_token)))
        return opened[-1]

    link = connect_link(local_cluster, local_cluster.admin_token, free_port(), grpc_link)

    def calls() -> tuple[int, Status]:
        nodes = node_stub(link).ListNodes(npb.ListNodesRequest(), timeout=10).nodes
        missing = failure(lambda: task_stub(link).GetTask(tpb.GetTaskRequest(task_id=1)))
        return len(nodes), missing.status

    assert await in_thread(calls) == (1, Status.NOT_FOUND)
    assert link.over_grpc and len(opened) == 1
    link.close()


async def test_plain_http_against_the_https_dashboard_says_so(
    local_cluster: LocalCluster,
) -> None:
    assert local_cluster.server is not None
    link = ConnectLink(
        "127.0.0.1",
        local_cluster.server.dashboard_port,
        None,
        "127.0.0.1",
        local_cluster.admin_token,
        _no_grpc,
    )
    refused = await in_thread(
        lambda: failure(lambda: node_stub(link).ListNodes(npb.ListNodesRequest()))
    )
    assert refused.status is Status.UNAVAILABLE
    assert "expects TLS" in refused.problem and "dashboard.plaintext" in refused.problem
    link.close()


async def _call_to_a_host_that_dies(says: bytes) -> tuple[CallError, int]:
    """ListNodes over a link to a one-call Host that reads the request, sends ``says`` and
    dies; the error it ends with and the Host's port."""
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def host_that_dies() -> None:
        conn, _ = listener.accept()
        conn.recv(65536)
        conn.sendall(says)
        listener.close()
        conn.close()

    dying = threading.Thread(target=host_that_dies, daemon=True)
    dying.start()
    link = ConnectLink("127.0.0.1", port, None, "127.0.0.1", "", _no_grpc)
    try:
        gone = await in_thread(
            lambda: failure(lambda: node_stub(link).ListNodes(npb.ListNodesRequest(), timeout=10))
        )
    finally:
        dying.join(10)
        link.close()
    return gone, port


async def test_a_host_that_stops_mid_call_is_not_taken_for_a_tls_port() -> None:
    """A plain HTTP call whose Host dies before answering (SIGKILL mid create-tar) was told
    `it expects TLS (remove dashboard.plaintext ...)`, as the connection closed unanswered."""
    gone, _ = await _call_to_a_host_that_dies(b"")
    assert gone.status is Status.UNAVAILABLE
    assert "TLS" not in gone.problem and "did hakuriver.host stop or restart?" in gone.problem


async def test_a_host_that_stops_in_the_middle_of_an_answer_is_said_so() -> None:
    """The answer's headers came, then the Host died before the rest (SIGKILL during
    create-tar's progress): `the connection ... broke: IncompleteRead(0 bytes read)` said
    nothing a user could act on."""
    gone, port = await _call_to_a_host_that_dies(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/proto\r\nContent-Length: 100\r\n\r\npart"
    )
    assert gone.status is Status.UNAVAILABLE
    assert gone.problem == (
        f"the host at 127.0.0.1:{port} closed the connection in the middle of its answer "
        "(did hakuriver.host stop or restart?)"
    )


async def test_another_web_server_on_the_dashboard_port_is_said_so_in_one_line() -> None:
    """A config whose dashboard.port named another web server printed that server's whole
    HTML error page as the error."""
    page = b"<!DOCTYPE HTML>\n<html>\n<body><h1>Error response</h1></body>\n</html>\n"
    refused, port = await _call_to_a_host_that_dies(
        b"HTTP/1.1 501 Unsupported method\r\nContent-Type: text/html;charset=utf-8\r\n"
        b"Content-Length: %d\r\n\r\n%s" % (len(page), page)
    )
    assert refused.problem == (
        f"127.0.0.1:{port} answered HTTP 501 Unsupported method with a web page, not as the "
        "Host's dashboard port: is dashboard.port the one the Host's config sets?"
    )
