"""``hakuriver.vps``: long-lived containers with SSH, reached through the Host's proxy."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hakuriver_cli.connection import (
    JsonOption,
    TaskIdArgument,
    config_or_fail,
    fail,
    host_channel,
    task_id_or_fail,
    unary,
)
from hakuriver_cli.render import (
    memory as show_memory,
    print_json,
    status_name,
    table,
    to_dict,
    when,
)
from hakuriver_cli.task import parse_mounts, parse_targets
from hakuriver_common.proto.hakuriver.v1 import (
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.service import ConfigOption

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Manage VPS tasks.")
DEFAULT_KEYS = (Path("~/.ssh/id_ed25519.pub"), Path("~/.ssh/id_rsa.pub"))
ACTIVE = [
    task_pb2.TASK_STATUS_PENDING,
    task_pb2.TASK_STATUS_ASSIGNING,
    task_pb2.TASK_STATUS_RUNNING,
    task_pb2.TASK_STATUS_PAUSED,
]


def public_key(text: str, path: Path | None) -> str:
    """The key to install: --public-key-string, --public-key-file, else the usual files."""
    if text:
        return text.strip()
    candidates = [path] if path is not None else [p.expanduser() for p in DEFAULT_KEYS]
    for candidate in candidates:
        if candidate.is_file():
            return candidate.read_text().strip()
    if path is not None:
        fail(f"--public-key-file {path}: no such file", code=2)
    looked = ", ".join(str(p) for p in DEFAULT_KEYS)
    fail(
        f"no public key: pass --public-key-file or --public-key-string (looked for {looked})",
        code=2,
    )


@app.command()
def submit(
    target: Annotated[
        str, typer.Option(help="HOST[:NUMA_ID][::GPU_ID,...]; default: the Host chooses.")
    ] = "",
    cores: Annotated[
        int, typer.Option(help="CPU cores to reserve; 0 = no reservation or limit.")
    ] = 0,
    memory: Annotated[str, typer.Option(help="Memory limit, e.g. 8G.")] = "",
    gpus: Annotated[int, typer.Option(help="Number of GPUs (or name ids in --target).")] = 0,
    container: Annotated[
        str, typer.Option(help="Environment with an SSH server (default from config).")
    ] = "",
    public_key_file: Annotated[
        Path | None, typer.Option(help="Public key file to log in with.")
    ] = None,
    public_key_string: Annotated[str, typer.Option(help="Public key text to log in with.")] = "",
    mount: Annotated[
        list[str] | None, typer.Option("--mount", help="HOST_PATH:CONTAINER_PATH[:ro].")
    ] = None,
    privileged: Annotated[bool, typer.Option(help="Run the container privileged.")] = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Start a VPS: a container running sshd, with your key for root."""
    cfg = config_or_fail(config)
    request = tpb.SubmitTaskRequest(
        kind=task_pb2.TASK_KIND_VPS,
        cores=cores,
        memory=memory,
        gpus=gpus,
        targets=parse_targets([target] if target else []),
        container_name=container,
        ssh_public_key=public_key(public_key_string, public_key_file),
        mounts=parse_mounts(mount or []),
        privileged=privileged,
    )
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        [task] = unary(stub.SubmitTask, request).tasks
    if json:
        print_json(to_dict(task))
        return
    typer.echo(f"submitted VPS task {task.task_id} ({status_name(task.status)})")
    typer.echo(f"connect when running: hakuriver.ssh {task.task_id}")


@app.command()
def status(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List active VPS tasks (pending, assigning, running, paused)."""
    cfg = config_or_fail(config)
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        reply = unary(
            stub.ListTasks,
            tpb.ListTasksRequest(kind=task_pb2.TASK_KIND_VPS, statuses=ACTIVE, limit=1000),
        )
    if json:
        print_json([to_dict(t) for t in reply.tasks])
        return
    table(
        "VPS tasks",
        (
            "task_id",
            "status",
            "node",
            "cores",
            "memory",
            "gpus",
            "submitted",
            "started",
            "ssh_port",
        ),
        [
            [
                str(t.task_id),
                status_name(t.status),
                t.assigned_node or "-",
                str(t.required_cores) if t.required_cores else "auto",
                show_memory(t.required_memory_bytes),
                ",".join(map(str, t.required_gpus)) or "-",
                when(t.submitted_at, t.HasField("submitted_at")),
                when(t.started_at, t.HasField("started_at")),
                str(t.ssh_port) if t.ssh_port else "-",
            ]
            for t in reply.tasks
        ],
    )


@app.command()
def kill(task_id: TaskIdArgument, config: ConfigOption = None) -> None:
    """Stop a VPS."""
    cfg = config_or_fail(config)
    tid = task_id_or_fail(task_id)
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        task = unary(stub.KillTask, tpb.KillTaskRequest(task_id=tid)).task
    typer.echo(f"task {tid}: {status_name(task.status)}")


@app.command()
def command(
    task_id: TaskIdArgument,
    action: Annotated[str, typer.Argument(help="pause or resume.")],
    config: ConfigOption = None,
) -> None:
    """Pause or resume a VPS."""
    if action not in ("pause", "resume"):
        fail(f"action must be pause or resume, got {action!r}", code=2)
    cfg = config_or_fail(config)
    tid = task_id_or_fail(task_id)
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        if action == "pause":
            task = unary(stub.PauseTask, tpb.PauseTaskRequest(task_id=tid)).task
        else:
            task = unary(stub.ResumeTask, tpb.ResumeTaskRequest(task_id=tid)).task
    typer.echo(f"task {tid}: {status_name(task.status)}")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
