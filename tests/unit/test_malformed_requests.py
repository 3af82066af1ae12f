"""Malformed requests answer a documented status and never make the Host log a traceback:
corrupt bytes on every kind of call and on the Connect API, a corrupt message in the
Runners' stream, timestamps out of range; a bug answers INTERNAL with one log line. Log
lines are limited per cause (log_limits.LimitedLog)."""

from __future__ import annotations

import asyncio
import json
import logging
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp

from hakuriver_common.channels import bearer
from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    audit_service_pb2 as aupb,
    runner_service_pb2 as rpb,
    task_service_pb2 as tpb,
)
from hakuriver_common.timestamps import MAX_SECONDS, MIN_SECONDS, from_timestamp
from hakuriver_host.log_limits import LimitedLog
from tests.connect_http import Endpoint
from tests.unit.local_cluster import LocalCluster

CORRUPT = b"\xff\xff\xff"
CODE = grpc.StatusCode


def _problems(caplog: pytest.LogCaptureFixture) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.exc_info or r.levelno >= logging.ERROR]


async def test_corrupt_bytes_answer_invalid_argument_with_one_log_line(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    channel = local_cluster.channel(local_cluster.admin_token)
    unary = channel.unary_unary("/hakuriver.v1.TaskService/GetTask")
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await unary(CORRUPT, timeout=5)
        assert raised.value.code() is CODE.INVALID_ARGUMENT
        assert raised.value.details() == "request: not a valid hakuriver.v1.GetTaskRequest message"
    stream = channel.unary_stream("/hakuriver.v1.TaskService/WatchTask")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in stream(CORRUPT, timeout=5):
            pass
    assert raised.value.code() is CODE.INVALID_ARGUMENT
    health = channel.unary_unary("/grpc.health.v1.Health/Check")
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await health(CORRUPT, timeout=5)
    assert (
        raised.value.details() == "request: not a valid grpc.health.v1.HealthCheckRequest message"
    )
    lines = [r for r in caplog.records if "not a valid hakuriver.v1.GetTaskRequest" in r.message]
    assert len(lines) == 1  # three requests, one cause, one line (the count comes later)
    assert not _problems(caplog)


async def test_a_corrupt_message_in_the_runner_stream_ends_it_with_invalid_argument(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    channel = local_cluster.channel()
    join = bearer(local_cluster.config.auth.join_token)
    connect = channel.stream_stream("/hakuriver.v1.RunnerService/Connect")
    register = rpb.ConnectRequest(
        register=rpb.RegisterRunner(hostname="bad-bytes", total_cores=2, total_memory_bytes=2**30)
    )
    call = connect(metadata=join, timeout=5)
    await call.write(register.SerializeToString())
    first = rpb.ConnectResponse.FromString(await call.read())
    assert first.HasField("registered")
    await call.write(CORRUPT)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        while await call.read() is not grpc.aio.EOF:
            pass
    assert raised.value.code() is CODE.INVALID_ARGUMENT
    assert raised.value.details() == "request: not a valid hakuriver.v1.ConnectRequest message"
    # As the first message too.
    call = connect(metadata=join, timeout=5)
    await call.write(CORRUPT)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call.read()
    assert raised.value.code() is CODE.INVALID_ARGUMENT
    assert not _problems(caplog)


async def test_timestamps_out_of_range_answer_invalid_argument_naming_the_field(
    local_cluster: LocalCluster,
) -> None:
    for seconds in (MAX_SECONDS + 1, MIN_SECONDS - 1, 2**62):
        request = tpb.ListTasksRequest(submitted_after=Timestamp(seconds=seconds))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await local_cluster.tasks.ListTasks(request, timeout=5)
        assert raised.value.code() is CODE.INVALID_ARGUMENT
        assert (raised.value.details() or "").startswith("submitted_after: must be between")
    token = apb.CreateTokenRequest(expires_at=Timestamp(seconds=1, nanos=-1))
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await local_cluster.access.CreateToken(token, timeout=5)
    assert raised.value.code() is CODE.INVALID_ARGUMENT
    assert (raised.value.details() or "").startswith("expires_at: must be between")
    edge = tpb.ListTasksRequest(submitted_after=Timestamp(seconds=MAX_SECONDS, nanos=999_999_999))
    await local_cluster.tasks.ListTasks(edge, timeout=5)


def test_from_timestamp_keeps_unset_unset() -> None:
    request = tpb.ListTasksRequest()
    assert from_timestamp(request, "submitted_after") is None
    request.submitted_after.seconds = 0
    stamp = from_timestamp(request, "submitted_after")
    assert stamp is not None and stamp.year == 1970 and stamp.tzinfo is not None


async def test_a_bug_answers_internal_and_logs_one_line_per_cause(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.WARNING)
    assert local_cluster.server is not None

    async def broken(*args: object) -> None:
        raise RuntimeError("a bug")

    monkeypatch.setattr(local_cluster.server.cluster, "get_task_with_events", broken)
    for _ in range(3):
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await local_cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=1), timeout=5)
        assert raised.value.code() is CODE.INTERNAL
        assert raised.value.details() == "internal error (logged on the Host)"
    logged = [r for r in caplog.records if "internal error RuntimeError" in r.message]
    assert len(logged) == 1 and logged[0].levelno == logging.ERROR
    assert logged[0].exc_info is not None  # the traceback, the first time only
    # No line from grpc itself (it logs a traceback per call for what escapes a servicer).
    assert not [r for r in caplog.records if r.name.startswith("grpc")]


async def test_a_malformed_connect_body_is_invalid_argument(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    assert local_cluster.server is not None
    endpoint = Endpoint(
        f"https://127.0.0.1:{local_cluster.server.dashboard_port}",
        Path(local_cluster.config.tls.ca_file),
    )
    auth = {"Authorization": f"Bearer {local_cluster.admin_token}"}
    path = "/hakuriver.v1.TaskService/GetTask"
    for body, kind in ((CORRUPT, "application/proto"), (b"{", "application/json")):
        reply = await asyncio.to_thread(
            endpoint.request, path, body, {"Content-Type": kind, **auth}
        )
        assert reply.status == 400
        assert reply.json() == {
            "code": "invalid_argument",
            "message": "request: not a valid hakuriver.v1.GetTaskRequest message",
        }
    assert not _problems(caplog)


async def test_a_malformed_connect_body_from_a_refused_caller_gets_the_refusal(
    local_cluster: LocalCluster,
) -> None:
    """As over gRPC: who may call is judged before the body, and the refusal audited."""
    assert local_cluster.server is not None
    endpoint = Endpoint(
        f"https://127.0.0.1:{local_cluster.server.dashboard_port}",
        Path(local_cluster.config.tls.ca_file),
    )
    alice = await local_cluster.add_user("alice")
    calls = (
        ({}, "/hakuriver.v1.AccessService/WhoAmI", 401, "unauthenticated"),
        (
            {"Authorization": "Bearer wrong"},
            "/hakuriver.v1.AccessService/WhoAmI",
            401,
            "unauthenticated",
        ),
        (
            {"Authorization": f"Bearer {alice.token}"},
            "/hakuriver.v1.AccessService/ListUsers",
            403,
            "permission_denied",
        ),
    )
    for body, kind in ((CORRUPT, "application/proto"), (b"{", "application/json")):
        for auth, path, status, code in calls:
            headers = {"Content-Type": kind, **auth}
            reply = await asyncio.to_thread(endpoint.request, path, body, headers)
            assert (reply.status, reply.json()["code"]) == (status, code), (path, auth, body)
    events = await local_cluster.audit.ListAuditEvents(aupb.ListAuditEventsRequest(), timeout=5)
    refused = [e for e in events.events if e.target.endswith("/ListUsers") and e.actor == "alice"]
    assert len(refused) == 2


def _stream_end(reply_body: bytes) -> object:
    """The end-of-stream JSON of a Connect stream answer that holds nothing else."""
    assert reply_body[0] == 0x02, reply_body[:20]
    return json.loads(reply_body[5:])


async def test_a_badly_framed_connect_stream_request_is_invalid_argument(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """No envelope, two, one cut short or flagged compressed: as any malformed request (the
    caller's refusal first), never the runtime's unimplemented or internal."""
    caplog.set_level(logging.WARNING)
    assert local_cluster.server is not None
    endpoint = Endpoint(
        f"https://127.0.0.1:{local_cluster.server.dashboard_port}",
        Path(local_cluster.config.tls.ca_file),
    )
    path = "/hakuriver.v1.LogService/ReadLog"
    one = b"\x00\x00\x00\x00\x02{}"
    framings = (b"", one + one, one[:-1], b"\x01" + one[1:])
    for token, code in ((local_cluster.admin_token, "invalid_argument"), ("", "unauthenticated")):
        headers = {"Content-Type": "application/connect+json", "Authorization": f"Bearer {token}"}
        for body in framings:
            reply = await asyncio.to_thread(endpoint.request, path, body, headers)
            assert reply.status == 200
            assert _stream_end(reply.body)["error"]["code"] == code, body  # type: ignore[index]
    assert not _problems(caplog)


def test_limited_log_logs_once_per_cause_then_a_count() -> None:
    now = [0.0]
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("tests.limited")
    logger.addHandler(Keep())
    logger.propagate = False
    try:
        limited = LimitedLog(logger, interval=60, max_causes=2, clock=lambda: now[0])
        assert limited.log("a", logging.WARNING, "cause %s", "a")
        assert not limited.log("a", logging.WARNING, "cause %s", "a")
        assert not limited.log("a", logging.WARNING, "cause %s", "a")
        assert limited.log("b", logging.WARNING, "cause %s", "b")
        assert limited.log("c", logging.WARNING, "cause %s", "c")  # past max_causes: pooled
        assert not limited.log("d", logging.WARNING, "cause %s", "d")
        assert [r.getMessage() for r in records] == [
            "cause a",
            "cause b",
            "more log lines of other causes",
        ]
        now[0] = 61.0
        assert not limited.log("a", logging.WARNING, "cause %s", "a")  # summary, then counted
        assert records[3].getMessage() == "cause a (and 2 more like it in the last 61 s)"
        limited.flush()
        messages = [r.getMessage() for r in records[4:]]
        assert "cause a (and 1 more like it in the last 0 s)" in messages
        assert "more log lines of other causes (and 1 more like it in the last 61 s)" in messages
    finally:
        logger.handlers.clear()
        logger.propagate = True


def test_limited_log_keeps_counts_when_nothing_else_happens() -> None:
    async def scenario() -> list[str]:
        seen: list[str] = []

        class Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                seen.append(record.getMessage())

        logger = logging.getLogger("tests.limited.timer")
        logger.addHandler(Keep())
        logger.propagate = False
        limited = LimitedLog(logger, interval=0.05)
        limited.log("x", logging.WARNING, "x")
        limited.log("x", logging.WARNING, "x")
        await asyncio.sleep(0.2)  # the timer writes the summary
        limited.close()
        logger.handlers.clear()
        logger.propagate = True
        return seen

    seen = asyncio.run(scenario())
    assert seen[0] == "x" and seen[1].startswith("x (and 1 more like it in the last")
    assert json.dumps(seen)  # plain strings
