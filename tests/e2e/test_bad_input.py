"""Bad input: the right gRPC status, a message naming the field, and nothing stored."""

from __future__ import annotations

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.harness import ProcessCluster

pytestmark = pytest.mark.docker


def _task_count(cluster: ProcessCluster) -> int:
    return len(cluster.tasks.ListTasks(tpb.ListTasksRequest(limit=1000), timeout=5).tasks)


def _files(cluster: ProcessCluster) -> set[str]:
    outputs = cluster.shared_dir / "task_outputs"
    return {p.name for p in outputs.iterdir()} if outputs.exists() else set()


SUBMIT_CASES = [
    ("zero cores", dict(command="true", cores=0), grpc.StatusCode.INVALID_ARGUMENT, "cores"),
    ("negative cores", dict(command="true", cores=-2), grpc.StatusCode.INVALID_ARGUMENT, "cores"),
    ("bad memory", dict(command="true", memory="12X"), grpc.StatusCode.INVALID_ARGUMENT, "memory"),
    (
        "unknown host",
        dict(command="true", targets=[task_pb2.Target(hostname="no-such-host")]),
        grpc.StatusCode.NOT_FOUND,
        "target",
    ),
    (
        "unknown environment",
        dict(command="true", container_name="no-such-env"),
        grpc.StatusCode.NOT_FOUND,
        "container_name",
    ),
    ("empty command", dict(command="  "), grpc.StatusCode.INVALID_ARGUMENT, "command"),
    (
        "more cores than any node",
        dict(command="true", cores=100_000),
        grpc.StatusCode.INVALID_ARGUMENT,
        "cores",
    ),
]


@pytest.mark.parametrize(
    ("fields", "code", "field"),
    [case[1:] for case in SUBMIT_CASES],
    ids=[case[0] for case in SUBMIT_CASES],
)
def test_bad_submit_is_refused_and_stores_nothing(
    cluster: ProcessCluster, fields: dict, code: grpc.StatusCode, field: str
) -> None:
    before, files_before = _task_count(cluster), _files(cluster)
    with pytest.raises(grpc.RpcError) as caught:
        cluster.tasks.SubmitTask(tpb.SubmitTaskRequest(**fields), timeout=5)
    assert caught.value.code() == code
    assert caught.value.details().startswith(f"{field}:")
    assert _task_count(cluster) == before
    assert _files(cluster) == files_before


def test_nonexistent_task_is_not_found(cluster: ProcessCluster) -> None:
    for call, request in (
        (cluster.tasks.GetTask, tpb.GetTaskRequest(task_id=12345)),
        (cluster.tasks.KillTask, tpb.KillTaskRequest(task_id=12345)),
        (cluster.tasks.PauseTask, tpb.PauseTaskRequest(task_id=12345)),
    ):
        with pytest.raises(grpc.RpcError) as caught:
            call(request, timeout=5)
        assert caught.value.code() == grpc.StatusCode.NOT_FOUND
        assert "12345" in caught.value.details()


def test_kill_of_finished_task_is_failed_precondition(cluster: ProcessCluster) -> None:
    task = cluster.submit(["true"])
    final = cluster.wait_final(task.task_id)
    with pytest.raises(grpc.RpcError) as caught:
        cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=5)
    assert caught.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "completed" in caught.value.details()
    assert cluster.get(task.task_id) == final


CLI_CASES = [
    (["task", "submit", "--cores", "0", "--", "true"], "'--cores': '0' is out of range (1-4096)"),
    (["task", "submit", "--memory", "12X", "--", "true"], "memory: cannot parse size '12X'"),
    (["task", "submit", "--target", "nowhere", "--", "true"], "target: unknown host 'nowhere'"),
    (["task", "submit", "--container", "nope", "--", "true"], "environment 'nope' not found"),
    (["task", "submit"], "missing the command to run, after --"),
    (["task", "submit", "--target", "a:x", "--", "true"], "NUMA id must be a non-negative integer"),
    (["task", "submit", "--env", "NOEQUALS", "--", "true"], "expected KEY=VALUE"),
    (["client", "status", "999"], "task 999 not found"),
    (["client", "status", "abc"], "task id must be a decimal integer"),
    (["client", "kill", "999"], "task 999 not found"),
    (["task", "stdout", "999"], "task 999 not found"),
    # Usage errors: click's four lines before.
    (["task", "list", "--bogus"], "no such option: --bogus (see 'hakuriver.task list --help')"),
    (["client", "stdout", "5"], "hakuriver.client has no command 'stdout'"),
    (["client", "command", "5"], "missing argument 'ACTION'"),
    (["vps", "submit", "--network", "host"], "no such option: --network"),
]


@pytest.mark.parametrize(("args", "message"), CLI_CASES, ids=[" ".join(c[0]) for c in CLI_CASES])
def test_cli_prints_one_line_and_exits_nonzero(
    cluster: ProcessCluster, args: list[str], message: str
) -> None:
    before = _task_count(cluster)
    result = cluster.cli(*args)
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ") and message in lines[0]
    assert "Traceback" not in result.stderr
    assert _task_count(cluster) == before


def test_cli_reports_unreachable_host(cluster: ProcessCluster, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("HAKURIVER_NETWORK__HOST_PORT", "1")
    monkeypatch.setenv("HAKURIVER_DASHBOARD__PORT", "2")  # the tools call there first
    result = cluster.cli("client", "nodes")
    assert result.returncode == 1
    assert (
        result.stderr.strip()
        == "error: cannot reach the host at 127.0.0.1:1 (is hakuriver.host running?)"
    )
