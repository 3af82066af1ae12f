"""Every size and count that comes over the wire is bounded at the edge: refused with
INVALID_ARGUMENT naming the field and the limit, before the Host keeps or builds anything
from it; replies stay under the message limit whatever the tasks hold."""

from __future__ import annotations

import os
from typing import Any

import grpc
import pytest

from hakuriver_common import limits
from hakuriver_common.channels import bearer
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    node_service_pb2 as npb,
    runner_service_pb2 as rpb,
    runner_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
)
from hakuriver_common.statuses import NodeStatus, TaskStatus
from tests.fake_runner import HOLD, STDOUT, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import TIMING, LocalCluster, status_of
from tests.unit.test_authorization import SSH_KEY

CODE = grpc.StatusCode


async def _submit_refused(cluster: LocalCluster, **fields: Any) -> str:
    fields.setdefault("command", "true")
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await cluster.tasks.SubmitTask(tpb.SubmitTaskRequest(**fields), timeout=5)
    assert refused.value.code() == CODE.INVALID_ARGUMENT, refused.value.details()
    return refused.value.details() or ""


MOST = limits.MAX_TASK_CORES
VPS = {"kind": task_pb2.TASK_KIND_VPS, "command": "", "ssh_public_key": SSH_KEY}
FOR_A_VPS = " for a VPS (0: no reservation or limit)"


@pytest.mark.parametrize(
    ("fields", "said"),
    [
        ({"cores": 0}, f"cores: must be between 1 and {MOST}, got 0"),
        ({"cores": -1}, f"cores: must be between 1 and {MOST}, got -1"),
        ({"cores": 2**31 - 1}, f"cores: must be between 1 and {MOST}, got {2**31 - 1}"),
        ({**VPS, "cores": -1}, f"cores: must be between 0 and {MOST}{FOR_A_VPS}, got -1"),
        (
            {**VPS, "cores": MOST + 1},
            f"cores: must be between 0 and {MOST}{FOR_A_VPS}, got {MOST + 1}",
        ),
    ],
)
async def test_cores_out_of_range_are_refused_naming_the_range(
    local_cluster: LocalCluster, fields: dict[str, Any], said: str
) -> None:
    """A command task's 0 said `must be at least 1` and its 5000 `at most 4096`: each
    named one bound of the range."""
    assert await _submit_refused(local_cluster, **fields) == said


async def test_submissions_beyond_the_limits_are_refused_naming_field_and_limit(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a")
    big = limits.MAX_COMMAND_BYTES + 1
    assert await _submit_refused(local_cluster, command="x" * big) == (
        f"command: at most {limits.MAX_COMMAND_BYTES} bytes allowed, got {big} bytes"
    )
    many = ["a"] * (limits.MAX_ARGUMENTS + 1)
    assert (await _submit_refused(local_cluster, arguments=many)).startswith(
        f"arguments: at most {limits.MAX_ARGUMENTS} allowed"
    )
    env = {f"V{i}": "" for i in range(limits.MAX_ENV_VARS + 1)}
    assert (await _submit_refused(local_cluster, env=env)).startswith(
        f"env: at most {limits.MAX_ENV_VARS} variables allowed"
    )
    assert (await _submit_refused(local_cluster, env={"V": "x" * limits.MAX_ENV_BYTES})).startswith(
        f"env: at most {limits.MAX_ENV_BYTES} bytes allowed"
    )
    assert await _submit_refused(local_cluster, arguments=["a\x00b"]) == (
        "arguments: must not contain NUL bytes"
    )
    assert await _submit_refused(local_cluster, command="tr\x00ue") == (
        "command: must not contain NUL bytes"
    )
    assert await _submit_refused(local_cluster, env={"V": "\x00"}) == (
        "env 'V': must not contain NUL bytes"
    )
    assert (await _submit_refused(local_cluster, memory="2P")).startswith(
        f"memory: at most {limits.MAX_MEMORY_BYTES} bytes allowed"
    )
    mounts = [task_pb2.Mount(host_path="/tmp", container_path=f"/m{i}") for i in range(65)]
    assert (await _submit_refused(local_cluster, mounts=mounts)).startswith(
        f"mounts: at most {limits.MAX_MOUNTS} allowed"
    )
    listed = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(), timeout=5)
    assert list(listed.tasks) == []  # nothing half-written


def _stream(cluster: LocalCluster) -> Any:
    stub = runner_service_pb2_grpc.RunnerServiceStub(cluster.channel())
    return stub.Connect(metadata=bearer(cluster.config.auth.join_token), timeout=10)


def _register(hostname: str = "raw", **fields: Any) -> rpb.ConnectRequest:
    fields.setdefault("total_cores", 2)
    fields.setdefault("total_memory_bytes", 2**30)
    return rpb.ConnectRequest(register=rpb.RegisterRunner(hostname=hostname, **fields))


async def _register_refused(cluster: LocalCluster, message: rpb.ConnectRequest) -> str:
    call = _stream(cluster)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await call.write(message)
        await call.read()
    assert refused.value.code() == CODE.INVALID_ARGUMENT, refused.value.details()
    return refused.value.details() or ""


async def _node_names(cluster: LocalCluster) -> list[str]:
    nodes = (await cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)).nodes
    return [n.hostname for n in nodes]


@pytest.mark.parametrize(
    "hostname",
    ["../../../../tmp/x", "nul\x00name", "rtl\u202ename", "emoji\U0001f600", "-x", "a" * 65],
)
async def test_runner_names_outside_the_safe_set_are_refused(
    local_cluster: LocalCluster, hostname: str
) -> None:
    details = await _register_refused(local_cluster, _register(hostname))
    assert details.startswith("register: hostname ") and "is not a valid runner name" in details
    assert await _node_names(local_cluster) == []


@pytest.mark.parametrize(
    ("fields", "expected"),
    [
        ({"total_cores": 5_000_000}, "register.total_cores: must be between 1 and 4096"),
        ({"total_cores": -3}, "register.total_cores: must be between 1 and 4096, got -3"),
        ({"total_memory_bytes": -1}, "register.total_memory_bytes: must be between 0 and"),
        (
            {"known_task_ids": range(1, limits.MAX_KNOWN_TASK_IDS + 2)},
            f"register.known_task_ids: at most {limits.MAX_KNOWN_TASK_IDS} allowed",
        ),
        (
            {"environments": [f"e{i}" for i in range(limits.MAX_ENVIRONMENTS + 1)]},
            f"register.environments: at most {limits.MAX_ENVIRONMENTS} allowed",
        ),
        (
            {"numa_nodes": [node_pb2.NumaNode(id=0, cpus=[2**31 - 1])]},
            "register.numa_nodes.cpus: must be between 0 and 65535",
        ),
        (
            {"instance_id": "x" * (limits.MAX_INSTANCE_ID_CHARS + 1)},
            f"register.instance_id: at most {limits.MAX_INSTANCE_ID_CHARS} characters, got 65",
        ),
    ],
)
async def test_runner_claims_beyond_the_limits_are_refused_and_not_kept(
    local_cluster: LocalCluster, fields: dict[str, Any], expected: str
) -> None:
    details = await _register_refused(local_cluster, _register(**fields))
    assert details.startswith(expected), details
    assert await _node_names(local_cluster) == []


async def _registered_stream(cluster: LocalCluster, hostname: str = "raw") -> Any:
    call = _stream(cluster)
    await call.write(_register(hostname, environments=["hakuriver-base"]))
    first = await call.read()
    assert first.HasField("registered")
    return call


async def _ended_with(call: Any) -> tuple[grpc.StatusCode, str]:
    while True:
        try:
            message = await call.read()
        except grpc.aio.AioRpcError as exc:
            return exc.code(), exc.details() or ""
        if message is grpc.aio.EOF:
            return await call.code(), await call.details()


async def test_a_heartbeat_advertising_too_many_environments_ends_the_stream(
    local_cluster: LocalCluster,
) -> None:
    call = await _registered_stream(local_cluster)
    names = [f"env{i}" for i in range(100_000)]
    await call.write(rpb.ConnectRequest(heartbeat=rpb.Heartbeat(environments=names)))
    code, details = await _ended_with(call)
    assert code == CODE.INVALID_ARGUMENT
    assert details == "heartbeat.environments: at most 1000 allowed, got 100000"


async def test_a_batch_of_too_many_reports_ends_the_stream(local_cluster: LocalCluster) -> None:
    call = await _registered_stream(local_cluster)
    reports = [rpb.TaskStateReport(task_id=i + 1) for i in range(limits.MAX_BATCH_MESSAGES + 1)]
    await call.write(rpb.ConnectRequest(task_states=rpb.TaskStateBatch(reports=reports)))
    code, details = await _ended_with(call)
    assert code == CODE.INVALID_ARGUMENT
    assert details == "task_states.reports: at most 1024 allowed, got 1025"


async def test_errors_listing_names_stay_short(local_cluster: LocalCluster) -> None:
    many = [f"environment-{i:04d}" for i in range(limits.MAX_ENVIRONMENTS)]
    await local_cluster.add_runner("a", environments=many)
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.tasks.SubmitTask(
            tpb.SubmitTaskRequest(command="true", container_name="missing"), timeout=5
        )
    assert refused.value.code() == CODE.NOT_FOUND
    details = refused.value.details() or ""
    assert details.endswith(f"environment-0019 and {limits.MAX_ENVIRONMENTS - 20} more)")
    assert len(details) < 1000


async def test_a_chunk_past_the_offset_limit_ends_the_stream_and_writes_nothing(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    runner.send(
        rpb.ConnectRequest(
            log_chunk=rpb.LogChunk(task_id=task.task_id, stream=STDOUT, offset=2**62, data=b"x")
        )
    )
    # The Host ends that stream; the Runner reconnects and the task goes on.
    await eventually(lambda: runner.registrations >= 2, what="the runner to reconnect")
    runner.write(task.task_id, b"real output\n")
    runner.finish(task.task_id, 0)
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    assert await local_cluster.read_log(task.task_id) == b"real output\n"


async def test_a_chunk_leaving_a_gap_is_refused_never_padded(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    runner.write(task.task_id, b"one\n")
    await eventually(lambda: local_cluster.read_log(task.task_id), what="the first chunk")
    registrations = runner.registrations

    def chunk(offset: int, data: bytes) -> rpb.ConnectRequest:
        return rpb.ConnectRequest(
            log_chunk=rpb.LogChunk(task_id=task.task_id, stream=STDOUT, offset=offset, data=data)
        )

    runner.send(chunk(100, b"far\n"))  # a gap: refused
    runner.send(chunk(0, b"one\n"))  # a duplicate: idempotent
    runner.send(chunk(2, b"e\ntwo\n"))  # overlaps the end: only the new bytes count
    runner.finish(task.task_id, 0)
    await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
    assert await local_cluster.read_log(task.task_id) == b"one\ntwo\n"
    assert runner.registrations == registrations  # the stream stayed up


async def test_a_task_whose_output_cannot_be_stored_is_not_completed(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [task] = await local_cluster.submit_running()
    # The output path cannot be written (as on a full or broken disk).
    path = task.stdout_path
    os.mkdir(path)
    runner.write(task.task_id, b"lost line\n")
    other = await local_cluster.submit("other")
    await local_cluster.wait_status(other.task_id, TaskStatus.RUNNING)
    runner.write(other.task_id, b"fine\n")
    runner.finish(task.task_id, 0)
    runner.finish(other.task_id, 0)
    failed = await local_cluster.wait_status(task.task_id, TaskStatus.FAILED)
    assert failed.exit_code == 0
    assert (
        failed.error_message.startswith("exited 0, but its output could not all be stored: ")
        and "Is a directory" in failed.error_message
    )
    # It was about that task alone: the stream stayed up and the other task is whole.
    assert status_of(await local_cluster.wait_status(other.task_id)) is TaskStatus.COMPLETED
    assert await local_cluster.read_log(other.task_id) == b"fine\n"
    assert runner.registrations == 1


async def test_list_pages_stay_under_the_message_limit_whatever_tasks_hold(
    local_cluster: LocalCluster,
) -> None:
    await local_cluster.add_runner("a", cores=64, answer=HOLD)
    command = "c" * limits.MAX_COMMAND_BYTES
    arguments = ["a" * 1024] * 250
    env = {f"V{i}": "v" * 1000 for i in range(250)}
    submitted = [
        (await local_cluster.submit(command, *arguments, env=env)).task_id for _ in range(12)
    ]
    first = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=100), timeout=10)
    assert 0 < len(first.tasks) < 12
    assert first.ByteSize() <= limits.MAX_LIST_REPLY_BYTES
    seen = [t.task_id for t in first.tasks]
    before = first.next_before_task_id
    while before:
        page = await local_cluster.tasks.ListTasks(
            tpb.ListTasksRequest(limit=100, before_task_id=before), timeout=10
        )
        assert page.ByteSize() <= limits.MAX_LIST_REPLY_BYTES
        seen += [t.task_id for t in page.tasks]
        before = page.next_before_task_id
    assert seen == sorted(submitted, reverse=True)


async def test_a_large_arrays_submission_answers_under_the_message_limit(
    local_cluster: LocalCluster,
) -> None:
    """A job array of large tasks (hakurun --array's script grows with its spans: `span:{1..500}`
    is 11 KB a task) was created, and its answer, the first 1,000 tasks, was larger than a
    gRPC client accepts: the submitter got RESOURCE_EXHAUSTED for an array that ran anyway,
    and submitting again made it twice. The answer is cut short as a list page is."""
    await local_cluster.add_runner("a", cores=2, answer=HOLD)
    request = tpb.SubmitTaskRequest(
        command="sh",
        arguments=["-c", "x" * 11_000],
        array=tpb.TaskArray(indices=list(range(500))),
    )
    reply = await local_cluster.tasks.SubmitTask(request, timeout=30)
    assert reply.created == 500
    assert reply.ByteSize() <= limits.MAX_LIST_REPLY_BYTES
    shown = [t.array_index for t in reply.tasks]
    assert 0 < len(shown) < 500 and shown == list(range(len(shown)))
    counted = await local_cluster.tasks.GetBatch(
        tpb.GetBatchRequest(batch_id=reply.batch_id), timeout=5
    )
    assert counted.batch.size == 500


async def test_a_full_page_says_where_to_read_on(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", cores=8, answer=HOLD)
    ids = [(await local_cluster.submit()).task_id for _ in range(3)]
    page = await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=2), timeout=5)
    assert page.next_before_task_id == ids[1]
    rest = await local_cluster.tasks.ListTasks(
        tpb.ListTasksRequest(limit=2, before_task_id=page.next_before_task_id), timeout=5
    )
    assert [t.task_id for t in rest.tasks] == [ids[0]] and rest.next_before_task_id == 0


@pytest.mark.parametrize("field", ["before_task_id", "batch_id", "array_index"])
async def test_a_negative_id_in_a_list_is_refused_not_an_empty_page(
    local_cluster: LocalCluster, field: str
) -> None:
    """None matches a negative id: the empty page it answered read as "nothing more" (a
    paging cursor that lost its sign listed no tasks), where ListAuditEvents refuses one."""
    await local_cluster.add_runner("a", answer=HOLD)
    await local_cluster.submit()
    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await local_cluster.tasks.ListTasks(tpb.ListTasksRequest(**{field: -5}), timeout=5)
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert refused.value.details() == f"{field}: must not be negative, got -5"


async def test_offline_nodes_that_never_held_a_task_are_forgotten(
    make_local_cluster: MakeCluster,
) -> None:
    # 1 s: long enough to see both offline, not forgotten yet, right after the idle one stops.
    cluster = await make_local_cluster(timing={**TIMING, "forget_node_seconds": 1})
    idle = await cluster.add_runner("idle")
    used = await cluster.add_runner("used")
    task = await cluster.submit("job", targets=[task_pb2.Target(hostname="used")])
    await cluster.wait_status(task.task_id)
    await used.stop()
    await idle.stop()
    assert await _node_names(cluster) == ["idle", "used"]  # offline, not yet forgotten

    async def forgotten() -> bool:
        return await _node_names(cluster) == ["used"]

    await eventually(forgotten, within=20, what="the idle node to be forgotten")
    await cluster.restart_host(wait_runners=False)
    assert await _node_names(cluster) == ["used"]


async def test_a_drained_node_is_not_forgotten(make_local_cluster: MakeCluster) -> None:
    """An operator's drain outlives an absence: a drained node that never held a task was
    forgotten with the others, and came back undrained, taking work at once."""
    cluster = await make_local_cluster(timing={**TIMING, "forget_node_seconds": 1})
    drained = await cluster.add_runner("drained")
    idle = await cluster.add_runner("idle")
    await cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="drained"), timeout=5)
    await drained.stop()
    await idle.stop()

    async def idle_forgotten() -> bool:
        return await _node_names(cluster) == ["drained"]

    await eventually(idle_forgotten, within=20, what="the idle node to be forgotten")
    await cluster.restart_host(wait_runners=False)
    await drained.connect()
    node = await cluster.wait_node("drained", NodeStatus.ONLINE)
    assert node.draining
    task = await cluster.submit("job")
    assert status_of(await cluster.get(task.task_id)) is TaskStatus.PENDING
