"""``hakuriver.vps``: long-lived containers with SSH, reached through the Host's proxy.

The transports and the generated protos are imported by the commands that call the Host, not here
(see hakuriver_cli/task.py).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from hakuriver_cli import client, direct
from hakuriver_cli.connection import (
    RequestIdOption,
    ask,
    config_or_fail,
    fail,
    found_or_fail,
    host_link,
    submit_once,
    task_id_or_fail,
    unary,
)
from hakuriver_cli.link import task_stub
from hakuriver_cli.render import (
    memory as show_memory,
    print_json,
    show_list,
    status_name,
    submitted_line,
    to_dict,
    when,
)
from hakuriver_cli.task import env_map, mount_pbs, target_pbs
from hakuriver_common import commands as cli
from hakuriver_common.limits import MAX_TASK_CORES
from hakuriver_common.service import ConfigOption, JsonOption, tool_app
from hakuriver_common.statuses import ACTIVE_STATUSES, TaskKind

if TYPE_CHECKING:
    from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2_grpc

app = tool_app("Manage VPS tasks.")
DEFAULT_KEYS = (Path("~/.ssh/id_ed25519.pub"), Path("~/.ssh/id_rsa.pub"))
ACTIVE = sorted(s.pb for s in ACTIVE_STATUSES)


def _read_key(path: Path, name: str) -> str:
    """The key file's text; one line, not a traceback, for a directory, an unreadable or a
    binary file."""
    try:
        return path.read_text().strip()
    except FileNotFoundError:
        fail(f"{name}: no such file", code=2)
    except UnicodeDecodeError:
        fail(f"{name}: not a text file (give the .pub file)", code=2)
    except OSError as exc:
        fail(f"{name}: {exc.strerror or exc}", code=2)


def _not_private(key: str, name: str) -> str:
    """``key``, unless it is a private key: that must stay on this machine, not be sent for
    the Host to refuse."""
    if "PRIVATE KEY" in key:
        fail(
            f"{name}: this is a private key, which stays on your machine; give the public one "
            "(the .pub file, e.g. ~/.ssh/id_ed25519.pub). Nothing was sent",
            code=2,
        )
    return key


def public_key(text: str, path: Path | None) -> str:
    """The key to install: --public-key-string, --public-key-file, else the usual files."""
    if text:
        return _not_private(text.strip(), "--public-key-string")
    if path is not None:  # ``--public-key-file=~/.ssh/lab.pub``: the shell leaves that ~
        name = f"--public-key-file {path}"
        return _not_private(_read_key(path.expanduser(), name), name)
    for candidate in (p.expanduser() for p in DEFAULT_KEYS):
        if candidate.is_file():
            return _not_private(_read_key(candidate, str(candidate)), str(candidate))
    looked = ", ".join(str(p) for p in DEFAULT_KEYS)
    fail(
        f"no public key: pass --public-key-file or --public-key-string (looked for {looked})",
        code=2,
    )


@app.command()
def submit(
    target: Annotated[
        list[str] | None,
        cli.Option(
            "--target", help="HOST[:NUMA_ID][::GPU_ID,...], at most one; default: the Host chooses."
        ),
    ] = None,
    cores: Annotated[
        int,
        cli.Option(
            help="CPU cores to reserve; 0 = no reservation or limit.", min=0, max=MAX_TASK_CORES
        ),
    ] = 0,
    memory: Annotated[str, cli.Option(help="Memory limit, e.g. 8G.")] = "",
    gpus: Annotated[
        int, cli.Option(help="Number of GPUs (or name ids in --target).", **cli.INT32)
    ] = 0,
    env: Annotated[
        list[str] | None,
        cli.Option("--env", help="KEY=VALUE for your SSH sessions; repeatable."),
    ] = None,
    container: Annotated[
        str, cli.Option(help="Environment with an SSH server (default from config).")
    ] = "",
    public_key_file: Annotated[
        Path | None,
        cli.Option(
            help="Public key file to log in with (default: ~/.ssh/id_ed25519.pub, else "
            "~/.ssh/id_rsa.pub)."
        ),
    ] = None,
    public_key_string: Annotated[str, cli.Option(help="Public key text to log in with.")] = "",
    mount: Annotated[
        list[str] | None, cli.Option("--mount", help="HOST_PATH:CONTAINER_PATH[:ro].")
    ] = None,
    privileged: Annotated[bool, cli.Option(help="Run the container privileged.")] = False,
    request_id: RequestIdOption = "",
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Start a VPS: a container running sshd, with your key for root."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    if target and len(target) > 1:  # a repeated option would otherwise keep only its last
        fail(f"--target: a VPS runs on one node; {len(target)} were given", code=2)
    cfg = config_or_fail(config)
    request = tpb.SubmitTaskRequest(
        kind=TaskKind.VPS.pb,
        env=env_map(env or []),
        cores=cores,
        memory=memory,
        gpus=gpus,
        targets=target_pbs(target or []),
        container_name=container,
        ssh_public_key=public_key(public_key_string, public_key_file),
        mounts=mount_pbs(mount or []),
        privileged=privileged,
        request_id=request_id,
    )
    with host_link(cfg) as link:
        submit = task_stub(link).SubmitTask
        [task] = submit_once(submit, request, cfg, listing="hakuriver.vps status").tasks
    if json:
        print_json(to_dict(task))
        return
    cli.echo(submitted_line(task, "VPS task"))
    cli.echo(f"connect when running: hakuriver.ssh {task.task_id}")


VPS_COLUMNS = (
    "task_id",
    "owner",
    "status",
    "node",
    "cores",
    "memory",
    "gpus",
    "submitted",
    "started",
    "ssh_port",
)


def _vps_row(t: task_pb2.Task) -> list[str]:
    return [
        str(t.task_id),
        t.owner or "-",  # an operator's list holds everybody's
        status_name(t.status),
        t.assigned_node or "-",
        str(t.required_cores) if t.required_cores else "auto",
        show_memory(t.required_memory_bytes),
        ",".join(map(str, t.required_gpus)) or "-",
        when(t.submitted_at, t.HasField("submitted_at")),
        when(t.started_at, t.HasField("started_at")),
        str(t.ssh_port) if t.ssh_port else "-",
    ]


@app.command()
def status(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List active VPS tasks (pending, assigning, running, paused, unknown)."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    request = tpb.ListTasksRequest(kind=TaskKind.VPS.pb, statuses=ACTIVE, limit=1000)
    reply = ask(
        config,
        task_stub,
        lambda stub: unary(stub.ListTasks, request),
    )
    show_list(json, reply.tasks, "VPS tasks", VPS_COLUMNS, _vps_row)


VpsIdArgument = Annotated[str, cli.Argument(help="VPS task id.", show_default=False)]


def control_vps(stub: task_service_pb2_grpc.TaskServiceStub, text: str, verb: str) -> task_pb2.Task:
    """``verb`` on the VPS named by ``text``; a command task or a batch is refused before
    anything is done to it: a mistyped id must not stop somebody's training run."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    tid = task_id_or_fail(text)
    request = tpb.GetTaskRequest(task_id=tid)
    task = found_or_fail(stub.GetTask, request, f"no VPS task {tid}").task
    if task.kind != TaskKind.VPS.pb:
        again = f"kill {tid}" if verb == "kill" else f"command {tid} {verb}"
        fail(
            f"task {tid} is a command task, not a VPS; for any task or batch: "
            f"hakuriver.client {again} (FAILED_PRECONDITION)"
        )
    return client.control(stub, tid, verb)


def _control_and_show(text: str, verb: str, config: Path | None, json: bool) -> None:
    client.show_controlled(ask(config, task_stub, lambda stub: control_vps(stub, text, verb)), json)


@app.command()
def kill(task_id: VpsIdArgument, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Stop a VPS (a command task's id is refused: hakuriver.client kill takes any)."""
    _control_and_show(task_id, "kill", config, json)


@app.command()
def command(
    task_id: VpsIdArgument,
    action: client.ActionArgument,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Pause or resume a VPS."""
    _control_and_show(task_id, action, config, json)


def run() -> None:
    direct.run(app, "hakuriver.vps")


if __name__ == "__main__":
    run()
