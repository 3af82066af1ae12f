"""``hakuriver.task``: submit command tasks, list them, read and follow their output."""

from __future__ import annotations

import sys
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from typing import Annotated

import grpc
import typer
from google.protobuf.timestamp_pb2 import Timestamp

from hakuriver_cli.connection import (
    JsonOption,
    TaskIdArgument,
    config_or_fail,
    fail,
    host_channel,
    task_id_or_fail,
    unary,
)
from hakuriver_cli.render import TASK_COLUMNS, print_json, status_name, table, task_rows, to_dict
from hakuriver_common.config import Config
from hakuriver_common.mounts import parse_mount
from hakuriver_common.proto.hakuriver.v1 import (
    log_service_pb2 as lpb,
    log_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.service import ConfigOption
from hakuriver_common.statuses import FINAL_TASK_STATUSES
from hakuriver_common.targets import parse_target

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Submit and follow command tasks."
)


def parse_targets(values: list[str]) -> list[task_pb2.Target]:
    targets = []
    for text in values:
        try:
            spec = parse_target(text)
        except ValueError as exc:
            fail(str(exc), code=2)
        targets.append(
            task_pb2.Target(
                hostname=spec.hostname, numa_node_id=spec.numa_node_id, gpu_ids=spec.gpu_ids
            )
        )
    return targets


def _env(values: list[str]) -> dict[str, str]:
    env = {}
    for text in values:
        key, sep, value = text.partition("=")
        if not sep or not key:
            fail(f"--env {text!r}: expected KEY=VALUE", code=2)
        env[key] = value
    return env


def parse_mounts(values: list[str]) -> list[task_pb2.Mount]:
    mounts = []
    for text in values:
        try:
            spec = parse_mount(text)
        except ValueError as exc:
            fail(str(exc), code=2)
        mounts.append(
            task_pb2.Mount(
                host_path=spec.host_path,
                container_path=spec.container_path,
                read_only=spec.read_only,
            )
        )
    return mounts


def _wait_final(channel: grpc.Channel, task_id: int) -> task_pb2.Task:
    stub = task_service_pb2_grpc.TaskServiceStub(channel)
    task = None
    for update in stub.WatchTask(tpb.WatchTaskRequest(task_id=task_id)):
        task = update.task
    if task is None or task.status not in FINAL_TASK_STATUSES:
        fail(f"lost track of task {task_id} before it finished")
    return task


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    command: Annotated[
        list[str] | None,
        typer.Argument(help="Command and arguments, after --.", show_default=False),
    ] = None,
    target: Annotated[
        list[str] | None,
        typer.Option(
            "--target", help="HOST[:NUMA_ID][::GPU_ID,...]; repeat for one task per target."
        ),
    ] = None,
    cores: Annotated[int | None, typer.Option(help="CPU cores to reserve (default 1).")] = None,
    memory: Annotated[str, typer.Option(help="Memory limit, e.g. 512M or 4G (1000-based).")] = "",
    gpus: Annotated[
        int, typer.Option(help="Number of GPUs on any node (or name ids in --target).")
    ] = 0,
    env: Annotated[list[str] | None, typer.Option("--env", help="KEY=VALUE; repeatable.")] = None,
    container: Annotated[
        str, typer.Option(help="Container environment (default from config).")
    ] = "",
    mount: Annotated[
        list[str] | None, typer.Option("--mount", help="HOST_PATH:CONTAINER_PATH[:ro]; repeatable.")
    ] = None,
    privileged: Annotated[bool, typer.Option(help="Run the container privileged.")] = False,
    priority: Annotated[int, typer.Option(help="Higher runs first when queued.")] = 0,
    wait: Annotated[bool, typer.Option(help="Wait until every task finishes.")] = False,
    poll_interval: Annotated[
        float, typer.Option(help="Accepted for compatibility; --wait streams status changes.")
    ] = 1.0,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Submit a command task: hakuriver.task submit [OPTIONS] -- CMD ARGS..."""
    cfg = config_or_fail(config)
    argv = list(command or [])
    request = tpb.SubmitTaskRequest(
        kind=task_pb2.TASK_KIND_COMMAND,
        command=argv[0] if argv else "",
        arguments=argv[1:],
        env=_env(env or []),
        cores=cores,
        memory=memory,
        targets=parse_targets(target or []),
        container_name=container,
        privileged=privileged,
        mounts=parse_mounts(mount or []),
        priority=priority,
        gpus=gpus,
    )
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        response = unary(stub.SubmitTask, request)
        tasks = list(response.tasks)
        if not json:
            for task in tasks:
                where = f" on {task.target_hostname}" if task.target_hostname else ""
                queued = f", queue position {task.queue_position}" if task.queue_position else ""
                typer.echo(
                    f"submitted task {task.task_id}{where} ({status_name(task.status)}{queued})"
                )
            if response.batch_id:
                typer.echo(f"batch {response.batch_id}")
        if wait:
            tasks = [_wait_final(channel, t.task_id) for t in tasks]
    if json:
        print_json({"batch_id": str(response.batch_id), "tasks": [to_dict(t) for t in tasks]})
    elif wait:
        for task in tasks:
            code = f", exit code {task.exit_code}" if task.HasField("exit_code") else ""
            error = f": {task.error_message}" if task.error_message else ""
            typer.echo(f"task {task.task_id}: {status_name(task.status)}{code}{error}")
    if wait and any(t.status != task_pb2.TASK_STATUS_COMPLETED for t in tasks):
        raise typer.Exit(1)


class KindFilter(StrEnum):
    command = "command"
    vps = "vps"


_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _since(text: str) -> Timestamp:
    """A Timestamp from '30m', '2h', '7d' ago, or from an ISO 8601 time."""
    stamp = Timestamp()
    if text[:-1].isdigit() and text[-1] in _AGO:
        stamp.FromDatetime(datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * _AGO[text[-1]]))
        return stamp
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since {text!r}: use 30m, 2h, 7d or an ISO time like 2026-11-22T08:00", code=2)
    stamp.FromDatetime(moment if moment.tzinfo else moment.astimezone())
    return stamp


class StatusFilter(StrEnum):
    pending = "pending"
    assigning = "assigning"
    running = "running"
    paused = "paused"
    completed = "completed"
    failed = "failed"
    killed = "killed"
    killed_oom = "killed_oom"
    lost = "lost"


@app.command("list")
def list_tasks(
    status: Annotated[
        list[StatusFilter] | None, typer.Option("--status", help="Only these statuses; repeatable.")
    ] = None,
    node: Annotated[str, typer.Option(help="Only tasks placed on this node.")] = "",
    batch: Annotated[str, typer.Option(help="Only tasks of this batch id.")] = "",
    limit: Annotated[int, typer.Option(help="At most this many tasks.")] = 50,
    before: Annotated[str, typer.Option(help="Only tasks older than this id (paging).")] = "",
    kind: Annotated[KindFilter | None, typer.Option(help="Only command or vps tasks.")] = None,
    since: Annotated[
        str, typer.Option(help="Only tasks submitted since: 30m, 2h, 7d, or an ISO time.")
    ] = "",
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """List tasks, newest first."""
    cfg = config_or_fail(config)
    request = tpb.ListTasksRequest(
        statuses=[getattr(task_pb2, f"TASK_STATUS_{s.value.upper()}") for s in status or []],
        node=node,
        batch_id=task_id_or_fail(batch) if batch else 0,
        limit=limit,
        before_task_id=task_id_or_fail(before) if before else 0,
        kind=task_pb2.TASK_KIND_VPS
        if kind is KindFilter.vps
        else (
            task_pb2.TASK_KIND_COMMAND
            if kind is KindFilter.command
            else task_pb2.TASK_KIND_UNSPECIFIED
        ),
        submitted_after=_since(since) if since else None,
    )
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        response = unary(stub.ListTasks, request)
    if json:
        print_json([to_dict(t) for t in response.tasks])
        return
    table("tasks", TASK_COLUMNS, task_rows(response.tasks))


def _print_log(cfg: Config, task_id: str, stream: int, follow: bool) -> None:
    tid = task_id_or_fail(task_id)
    out = sys.stdout.buffer
    with host_channel(cfg) as channel:
        stub = log_service_pb2_grpc.LogServiceStub(channel)
        request = lpb.ReadLogRequest(task_id=tid, stream=stream, follow=follow)  # type: ignore[arg-type]
        try:
            for chunk in stub.ReadLog(request):
                out.write(chunk.data)
                out.flush()
        except KeyboardInterrupt:
            return


FollowOption = Annotated[
    bool, typer.Option("--follow", "-f", help="Keep printing new output until the task finishes.")
]


@app.command()
def stdout(
    task_id: TaskIdArgument, follow: FollowOption = False, config: ConfigOption = None
) -> None:
    """Print a command task's standard output."""
    _print_log(config_or_fail(config), task_id, task_pb2.LOG_STREAM_STDOUT, follow)


@app.command()
def stderr(
    task_id: TaskIdArgument, follow: FollowOption = False, config: ConfigOption = None
) -> None:
    """Print a command task's standard error."""
    _print_log(config_or_fail(config), task_id, task_pb2.LOG_STREAM_STDERR, follow)


@app.command("wait")
def wait_task(
    task_id: TaskIdArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Wait until a task finishes; exit 0 only if it completed."""
    cfg = config_or_fail(config)
    tid = task_id_or_fail(task_id)
    with host_channel(cfg) as channel:
        task = _wait_final(channel, tid)
    if json:
        print_json(to_dict(task))
    else:
        typer.echo(f"task {tid}: {status_name(task.status)}")
    if task.status != task_pb2.TASK_STATUS_COMPLETED:
        raise typer.Exit(1)


def run() -> None:
    app()


if __name__ == "__main__":
    run()
