"""``hakuriver.client``: nodes, health, task status and control."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer

from hakuriver_cli.connection import (
    JsonOption,
    TaskIdArgument,
    config_or_fail,
    host_channel,
    task_id_or_fail,
    unary,
)
from hakuriver_cli.render import (
    age,
    memory,
    node_status_name,
    print_json,
    print_task_detail,
    status_name,
    table,
    to_dict,
)
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    node_service_pb2 as npb,
    node_service_pb2_grpc,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.service import ConfigOption

app = typer.Typer(
    add_completion=False, no_args_is_help=True, help="Inspect and control the cluster."
)


@app.command()
def nodes(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List runner nodes with their resources and last heartbeat."""
    cfg = config_or_fail(config)
    with host_channel(cfg) as channel:
        stub = node_service_pb2_grpc.NodeServiceStub(channel)
        response = unary(stub.ListNodes, npb.ListNodesRequest())
    if json:
        print_json([to_dict(n) for n in response.nodes])
        return
    table(
        "nodes",
        (
            "hostname",
            "status",
            "cores (free/total)",
            "memory (free/total)",
            "gpus (free/total)",
            "numa",
            "tasks",
            "last_heartbeat",
        ),
        [
            [
                n.hostname,
                node_status_name(n.status) + (" (draining)" if n.draining else ""),
                f"{n.available_cores}/{n.total_cores}",
                f"{memory(n.available_memory_bytes)}/{memory(n.total_memory_bytes)}",
                _gpu_summary(n),
                ", ".join(f"{x.id}:{len(x.cpus)}cpu" for x in n.numa_nodes) or "-",
                str(n.active_tasks),
                age(n.last_heartbeat, n.HasField("last_heartbeat")),
            ]
            for n in response.nodes
        ],
    )


def _gpu_summary(node: node_pb2.Node) -> str:
    if not node.gpus:
        return "-"
    free = len(node.gpus) - len(node.allocated_gpus)
    names = sorted({g.name for g in node.gpus})
    return f"{free}/{len(node.gpus)} ({', '.join(names)})"


def _drain(hostname: str, draining: bool, config: Path | None, json: bool) -> None:
    cfg = config_or_fail(config)
    with host_channel(cfg) as channel:
        stub = node_service_pb2_grpc.NodeServiceStub(channel)
        if draining:
            node = unary(stub.DrainNode, npb.DrainNodeRequest(hostname=hostname)).node
        else:
            node = unary(stub.UndrainNode, npb.UndrainNodeRequest(hostname=hostname)).node
    if json:
        print_json(to_dict(node))
        return
    state = "draining: no new tasks" if node.draining else "accepting tasks"
    typer.echo(f"node {node.hostname}: {state} ({node.active_tasks} active)")


HostnameArgument = Annotated[str, typer.Argument(help="Node hostname.", show_default=False)]


@app.command()
def drain(
    hostname: HostnameArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Stop placing new tasks on a node; its running tasks continue."""
    _drain(hostname, True, config, json)


@app.command()
def undrain(
    hostname: HostnameArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Let a drained node receive tasks again."""
    _drain(hostname, False, config, json)


def _temp(value: float, present: bool) -> str:
    return f"{value:.1f}C" if present else "unknown"


@app.command()
def health(
    hostname: Annotated[str, typer.Argument(help="Only this node.")] = "",
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Show the latest CPU, memory, temperature and GPU readings of nodes."""
    cfg = config_or_fail(config)
    with host_channel(cfg) as channel:
        stub = node_service_pb2_grpc.NodeServiceStub(channel)
        response = unary(stub.GetHealth, npb.GetHealthRequest(hostname=hostname))
    if json:
        print_json([to_dict(n) for n in response.nodes])
        return
    rows = []
    for n in response.nodes:
        h = n.current
        if not n.HasField("current"):
            rows.append([n.hostname, node_status_name(n.status), "-", "-", "-", "-", "-"])
            continue
        rows.append(
            [
                n.hostname,
                node_status_name(n.status),
                f"{h.cpu_percent:.1f}%",
                f"{h.memory_percent:.1f}% "
                f"({memory(h.memory_used_bytes)}/{memory(h.memory_total_bytes)})",
                _temp(h.current_avg_temp, h.HasField("current_avg_temp")),
                _temp(h.current_max_temp, h.HasField("current_max_temp")),
                "; ".join(
                    f"{g.index}:{g.name} {g.utilization_gpu_percent:.0f}% "
                    f"{memory(g.memory_used_bytes)}/{memory(g.memory_total_bytes)}"
                    for g in h.gpus
                )
                or "-",
            ]
        )
    table("health", ("hostname", "status", "cpu", "memory", "avg_temp", "max_temp", "gpus"), rows)


@app.command()
def status(task_id: TaskIdArgument, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Show every field of a task and its status timeline."""
    cfg = config_or_fail(config)
    tid = task_id_or_fail(task_id)
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        response = unary(stub.GetTask, tpb.GetTaskRequest(task_id=tid))
    if json:
        print_json(to_dict(response))
        return
    print_task_detail(response.task, response.events)


@app.command()
def kill(task_id: TaskIdArgument, config: ConfigOption = None, json: JsonOption = False) -> None:
    """Kill a pending, assigning, running or paused task."""
    cfg = config_or_fail(config)
    tid = task_id_or_fail(task_id)
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        response = unary(stub.KillTask, tpb.KillTaskRequest(task_id=tid))
    if json:
        print_json(to_dict(response.task))
        return
    typer.echo(f"task {tid}: {status_name(response.task.status)}")


class Action(StrEnum):
    pause = "pause"
    resume = "resume"


@app.command()
def command(
    task_id: TaskIdArgument,
    action: Annotated[Action, typer.Argument(help="pause or resume.")],
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Pause or resume a task."""
    cfg = config_or_fail(config)
    tid = task_id_or_fail(task_id)
    with host_channel(cfg) as channel:
        stub = task_service_pb2_grpc.TaskServiceStub(channel)
        if action is Action.pause:
            task = unary(stub.PauseTask, tpb.PauseTaskRequest(task_id=tid)).task
        else:
            task = unary(stub.ResumeTask, tpb.ResumeTaskRequest(task_id=tid)).task
    if json:
        print_json(to_dict(task))
        return
    typer.echo(f"task {tid}: {status_name(task.status)}")


def run() -> None:
    app()


if __name__ == "__main__":
    run()
