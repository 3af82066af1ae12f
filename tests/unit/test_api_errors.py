"""One interceptor for every RPC: domain errors become their status codes on unary and
streaming calls alike, and every call (streams too) is counted in /metrics."""

from __future__ import annotations

import asyncio
import time

import grpc
import pytest

from hakuriver_common.channels import bearer, open_aio_channel, open_channel
from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    node_pb2,
    node_service_pb2 as npb,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import TaskStatus
from hakuriver_host.errors import InvalidArgument
from hakuriver_host.interceptors import _STATUS_UNSENT, end_call
from tests.fake_runner import HOLD, exit_with
from tests.unit.local_cluster import LocalCluster

CODE = grpc.StatusCode


async def _status_of_stream(call: grpc.aio.UnaryStreamCall) -> tuple[CODE, str]:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call:
            pass
    return raised.value.code(), raised.value.details() or ""


async def test_streaming_rpcs_report_domain_errors_with_their_codes(
    local_cluster: LocalCluster,
) -> None:
    tasks, logs, nodes = local_cluster.tasks, local_cluster.logs, local_cluster.nodes
    assert await _status_of_stream(tasks.WatchTask(tpb.WatchTaskRequest(task_id=0))) == (
        CODE.INVALID_ARGUMENT,
        "task_id: must be a positive integer, got 0",
    )
    assert await _status_of_stream(tasks.WatchTask(tpb.WatchTaskRequest(task_id=42))) == (
        CODE.NOT_FOUND,
        "task_id: task 42 not found",
    )
    assert await _status_of_stream(nodes.WatchHealth(npb.WatchHealthRequest(hostname="x"))) == (
        CODE.NOT_FOUND,
        "hostname: unknown node 'x'",
    )
    await local_cluster.add_runner("a", answer=exit_with(0, stdout=b"hi\n"))
    task = await local_cluster.submit("echo")
    bad_stream = lpb.ReadLogRequest(task_id=task.task_id, stream=task_pb2.LOG_STREAM_UNSPECIFIED)
    assert await _status_of_stream(logs.ReadLog(bad_stream)) == (
        CODE.INVALID_ARGUMENT,
        "stream: must be STDOUT or STDERR",
    )
    negative = lpb.ReadLogRequest(
        task_id=task.task_id, stream=task_pb2.LOG_STREAM_STDOUT, offset=-1
    )
    assert await _status_of_stream(logs.ReadLog(negative)) == (
        CODE.INVALID_ARGUMENT,
        "offset: must not be negative, got -1",
    )
    lag = lpb.ReadLogRequest(
        task_id=task.task_id, stream=task_pb2.LOG_STREAM_STDOUT, max_lag_bytes=-5
    )
    assert await _status_of_stream(logs.ReadLog(lag)) == (
        CODE.INVALID_ARGUMENT,
        "max_lag_bytes: must not be negative, got -5",
    )


async def test_runner_stream_must_start_with_register(local_cluster: LocalCluster) -> None:
    async with open_aio_channel(local_cluster.config) as channel:
        stub = runner_service_pb2_grpc.RunnerServiceStub(channel)
        call = stub.Connect(metadata=bearer(local_cluster.config.auth.join_token))
        await call.write(rpb.ConnectRequest(heartbeat=rpb.Heartbeat(health=node_pb2.Health())))
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await call.read()
    assert raised.value.code() == CODE.INVALID_ARGUMENT
    assert raised.value.details() == "register: the first message must be register"


async def test_unary_rpcs_report_domain_errors_with_their_codes(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", answer=exit_with(0))
    task = await local_cluster.submit("true")
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    with pytest.raises(grpc.aio.AioRpcError) as finished:
        await local_cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id))
    assert finished.value.code() == CODE.FAILED_PRECONDITION
    assert finished.value.details() == (
        f"task {task.task_id} is completed: only pending, assigning, running, paused, unknown "
        "tasks can be killed"
    )
    with pytest.raises(grpc.aio.AioRpcError) as unknown:
        await local_cluster.tasks.PauseTask(tpb.PauseTaskRequest(task_id=7))
    assert unknown.value.code() == CODE.NOT_FOUND
    with pytest.raises(grpc.aio.AioRpcError) as bad:
        await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=5000))
    assert bad.value.code() == CODE.INVALID_ARGUMENT


async def test_every_call_is_counted_by_method_and_code(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", answer=exit_with(0, stdout=b"out\n"))
    task = await local_cluster.submit("echo")
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    assert await local_cluster.read_log(task.task_id) == b"out\n"
    await _status_of_stream(local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=99)))
    counts = await local_cluster.request_counts()
    assert counts[("/hakuriver.v1.TaskService/SubmitTask", "OK")] == 1
    assert counts[("/hakuriver.v1.LogService/ReadLog", "OK")] == 1
    assert counts[("/hakuriver.v1.TaskService/WatchTask", "NOT_FOUND")] == 1


async def _once_ended(
    cluster: LocalCluster, method: str, *codes: str
) -> dict[tuple[str, str], float]:
    """The call counts once ``method`` was counted with one of ``codes`` (a stream is
    counted when its handler ends, after its caller saw the end), or after 5 s."""
    for _ in range(50):
        counts = await cluster.request_counts()
        if any(counts.get((method, code)) for code in codes):
            break
        await asyncio.sleep(0.1)
    return counts


async def test_a_stream_whose_caller_went_away_is_counted_as_cancelled(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a")
    await runner.drop()
    connect = "/hakuriver.v1.RunnerService/Connect"
    counts = await _once_ended(local_cluster, connect, "CANCELLED")
    assert counts.get((connect, "CANCELLED")) == 1, counts
    assert (connect, "UNKNOWN") not in counts


async def test_a_runner_stream_whose_requests_ended_is_counted_as_cancelled(
    local_cluster: LocalCluster,
) -> None:
    """A Runner never ends its side of the stream: one that ended went away, however grpc
    told the Host (the unit test above saw the end of the requests first now and then)."""
    runner = await local_cluster.add_runner("a")
    await runner.end_requests()
    connect = "/hakuriver.v1.RunnerService/Connect"
    counts = await _once_ended(local_cluster, connect, "CANCELLED", "OK")
    assert counts.get((connect, "CANCELLED")) == 1, counts
    assert not counts.get((connect, "OK")), counts


async def test_a_stream_whose_deadline_passed_is_counted_as_deadline_exceeded(
    local_cluster: LocalCluster,
) -> None:
    """grpc cancels a call whose deadline passes; the count says why, as the caller saw it."""
    await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    watch = local_cluster.tasks.WatchTask(tpb.WatchTaskRequest(task_id=task.task_id), timeout=0.5)
    assert (await _status_of_stream(watch))[0] == CODE.DEADLINE_EXCEEDED
    method = "/hakuriver.v1.TaskService/WatchTask"
    counts = await _once_ended(local_cluster, method, "DEADLINE_EXCEEDED", "CANCELLED")
    assert counts.get((method, "DEADLINE_EXCEEDED")) == 1, counts
    assert (method, "CANCELLED") not in counts, counts


class _Context:
    """A servicer context as a loaded Host may find it when it ends a call: its client's
    deadline passed, or the client going away while the status is being sent."""

    def __init__(self, remaining: float, unsent: bool = False) -> None:
        self.remaining = remaining
        self.unsent = unsent
        self.aborted: list[CODE] = []

    def done(self) -> bool:
        return False

    def time_remaining(self) -> float:
        return self.remaining

    async def abort(self, code: CODE, message: str) -> None:
        self.aborted.append(code)
        if self.unsent:
            raise _STATUS_UNSENT('Failed "execute_batch"')
        raise _Aborted(message)


class _Aborted(Exception):
    pass


async def test_a_call_whose_client_is_gone_ends_as_cancelled_not_with_grpcs_traceback() -> None:
    """The fuzz tier under load saw grpc log ERROR tracebacks for refusals it could not
    send (ReadLog, WatchHealth: their clients' 0.3 s deadlines had passed)."""
    answered = _Context(remaining=5.0)
    with pytest.raises(_Aborted):
        await end_call(answered, CODE.NOT_FOUND, "gone")
    assert answered.aborted == [CODE.NOT_FOUND]
    late = _Context(remaining=0.0)
    with pytest.raises(asyncio.CancelledError):
        await end_call(late, CODE.NOT_FOUND, "gone")
    assert late.aborted == []
    unsent = _Context(remaining=5.0, unsent=True)
    with pytest.raises(asyncio.CancelledError):
        await end_call(unsent, CODE.NOT_FOUND, "gone")
    assert unsent.aborted == [CODE.NOT_FOUND]


async def test_a_call_refused_after_its_deadline_counts_as_deadline_exceeded(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A loaded Host that gets to refuse a call only after its client's deadline has nobody
    to refuse it to: the call ends as cancelled, and /metrics counts it as its client saw
    it end."""
    assert local_cluster.server is not None

    async def late_refusal(task_id: int, who: object) -> None:
        time.sleep(0.05)  # noqa: ASYNC251 (the Host's loop busy past the deadline)
        raise InvalidArgument("task_id: refused too late")

    monkeypatch.setattr(local_cluster.server.cluster, "get_task", late_refusal)

    def read_late() -> list[CODE]:
        """From a client on a thread of its own, as a real one is, connected first (the
        deadline is for the call alone)."""
        channel = open_channel(local_cluster.config, local_cluster.admin_token)
        codes = []
        try:
            grpc.channel_ready_future(channel).result(timeout=10)
            logs = log_service_pb2_grpc.LogServiceStub(channel)
            for _ in range(3):
                with pytest.raises(grpc.RpcError) as raised:
                    for _ in logs.ReadLog(lpb.ReadLogRequest(task_id=1), timeout=0.02):
                        pass
                codes.append(raised.value.code())
        finally:
            channel.close()
        return codes

    assert await asyncio.to_thread(read_late) == [CODE.DEADLINE_EXCEEDED] * 3
    await asyncio.sleep(0.3)  # the last handler done (a call whose deadline passed before
    # it reached the Host is dropped by grpc, and counted nowhere)
    counts = await local_cluster.request_counts()
    method = "/hakuriver.v1.LogService/ReadLog"
    assert counts.get((method, "DEADLINE_EXCEEDED"), 0) >= 1, counts
    assert (method, "CANCELLED") not in counts, counts
    assert (method, "INVALID_ARGUMENT") not in counts
