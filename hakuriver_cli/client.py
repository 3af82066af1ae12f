"""``hakuriver.client``: nodes, health, task status and control.

The transports, the generated protos and rich are imported by the commands that use them, not here
(see hakuriver_cli/task.py).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

from hakuriver_cli import direct
from hakuriver_cli.connection import (
    ask,
    bulk_unary,
    config_or_fail,
    fail,
    host_link,
    on_task_or_batch,
    unary,
)
from hakuriver_cli.link import node_stub, task_stub
from hakuriver_cli.reconnect import RETRY_SECONDS, riding_out
from hakuriver_cli.render import (
    age,
    batch_ended,
    batch_line,
    console,
    node_status_name,
    print_json,
    print_task_detail,
    show_list,
    status_name,
    tasks_count,
    to_dict,
    to_json_line,
)
from hakuriver_common import commands as cli
from hakuriver_common.service import ConfigOption, JsonOption, tool_app
from hakuriver_common.statuses import NodeStatus
from hakuriver_common.units import format_size

if TYPE_CHECKING:
    from rich.live import Live
    from rich.table import Table

    from hakuriver_common.proto.hakuriver.v1 import (
        node_pb2,
        node_service_pb2 as npb,
        node_service_pb2_grpc,
        task_pb2,
        task_service_pb2 as tpb,
        task_service_pb2_grpc,
    )

app = tool_app("Inspect and control the cluster.")


NODE_COLUMNS = (
    "hostname",
    "status",
    "cores (free/total)",
    "memory (free/total)",
    "gpus (free/total)",
    "numa",
    "tasks",
    "last_heartbeat",
)


def _status(status: int, disconnected: bool, draining: bool) -> str:
    return (
        node_status_name(status)
        + (" (disconnected)" if disconnected else "")
        + (" (draining)" if draining else "")
    )


def _node_row(n: node_pb2.Node) -> list[str]:
    return [
        n.hostname,
        _status(n.status, n.disconnected, n.draining)
        + (" (output not stored)" if n.output_problem else ""),
        f"{n.available_cores}/{n.total_cores}",
        f"{format_size(n.available_memory_bytes)}/{format_size(n.total_memory_bytes)}",
        _gpu_summary(n),
        ", ".join(f"{x.id}:{len(x.cpus)}cpu" for x in n.numa_nodes) or "-",
        str(n.active_tasks),
        age(n.last_heartbeat, n.HasField("last_heartbeat")),
    ]


@app.command()
def nodes(config: ConfigOption = None, json: JsonOption = False) -> None:
    """List runner nodes with their resources and last heartbeat."""
    from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb

    response = ask(
        config,
        node_stub,
        lambda stub: unary(stub.ListNodes, npb.ListNodesRequest()),
    )
    show_list(json, response.nodes, "nodes", NODE_COLUMNS, _node_row)


def _gpu_summary(node: node_pb2.Node) -> str:
    """Free/total with the models; a GPU not read (no new task gets it) is not free."""
    if not node.gpus:
        return "-"
    unread = set(node.unread_gpus)
    taken = set(node.allocated_gpus) | unread
    free = sum(g.index not in taken for g in node.gpus)
    names = sorted({g.name for g in node.gpus})
    lost = f"; GPU {', '.join(map(str, sorted(unread)))} not read" if unread else ""
    return f"{free}/{len(node.gpus)} ({', '.join(names)}{lost})"


def _drain(hostname: str, draining: bool, config: Path | None, json: bool) -> None:
    from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb

    node = ask(
        config,
        node_stub,
        lambda stub: (
            unary(stub.DrainNode, npb.DrainNodeRequest(hostname=hostname)).node
            if draining
            else unary(stub.UndrainNode, npb.UndrainNodeRequest(hostname=hostname)).node
        ),
    )
    if json:
        print_json(to_dict(node))
        return
    state = "draining: no new tasks" if node.draining else "accepting tasks"
    cli.echo(f"node {node.hostname}: {state} ({node.active_tasks} active)")


HostnameArgument = Annotated[str, cli.Argument(help="Node hostname.", show_default=False)]


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


SPARK = "▁▂▃▄▅▆▇█"
TREND_POINTS = 30


def sparkline(values: list[float], top: float = 100.0) -> str:
    """The last TREND_POINTS values (0..top) as block characters."""
    recent = values[-TREND_POINTS:]
    last = len(SPARK) - 1
    return "".join(SPARK[min(last, max(0, round(v / top * last)))] for v in recent)


@dataclass
class NodeTrend:
    status: int
    samples: list[node_pb2.Health] = field(default_factory=list)
    output_problem: str = ""
    disconnected: bool = False
    draining: bool = False
    unread_gpus: list[int] = field(default_factory=list)

    def add(self, sample: node_pb2.Health) -> None:
        """Keep the last TREND_POINTS samples, all the table draws: a `--watch` kept every
        sample it got, growing and redrawing slower for as long as it ran (a day of 5 s
        heartbeats: 17,280 a node). A sample the trend holds already (sent by the watch while
        the history was being read) is not added twice."""
        if sample.HasField("sampled_at") and sample in self.samples:
            return
        self.samples.append(sample)
        del self.samples[:-TREND_POINTS]

    def update(self, node: npb.NodeHealth) -> None:
        """The node's status now, and its samples: its history (read again when a watch
        starts anew: the trend is kept, a Host restarted meanwhile having none) and the one
        just sent, if any (none: only its status changed)."""
        self.status = node.status
        self.output_problem = node.output_problem
        self.disconnected = node.disconnected
        self.draining = node.draining
        self.unread_gpus = list(node.unread_gpus)
        for sample in node.history:
            self.add(sample)
        if node.HasField("current"):
            self.add(node.current)


def _gpu_row(g: node_pb2.Gpu, history: list[node_pb2.Gpu]) -> list[str]:
    """A GPU's row of the health table; a utilisation NVML cannot read (MIG mode) is `-`,
    and left out of the trends, not drawn as idle; so is memory it gives no size."""
    from rich.markup import escape

    read = [x for x in history if not x.utilization_unknown]
    power = f"{g.power_draw_watts:.0f}W" if g.HasField("power_draw_watts") else "-"
    return [
        f"  gpu {g.index}",
        escape(g.name),
        "-" if g.utilization_unknown else f"{g.utilization_gpu_percent:5.1f}%",
        sparkline([x.utilization_gpu_percent for x in read]),
        (
            f"{format_size(g.memory_used_bytes)}/{format_size(g.memory_total_bytes)}"
            if g.memory_total_bytes
            else "-"
        ),
        sparkline([x.utilization_memory_percent for x in read]),
        f"{_temp(g.temperature_celsius, g.HasField('temperature_celsius'))} {power}",
    ]


def _gpu_history(trend: NodeTrend, index: int) -> list[node_pb2.Gpu]:
    return [x for s in trend.samples for x in s.gpus if x.index == index]


def _health_table(trends: dict[str, NodeTrend]) -> Table:
    """What a Runner or the Host wrote (a GPU's name, an error naming a path) is text, not
    rich markup: `[x]` in a path was dropped, and a `[/x]` ended the command in a traceback."""
    from rich.markup import escape
    from rich.table import Table

    out = Table(title="health", title_justify="left")
    for column in ("node", "status", "cpu", "cpu trend", "memory", "memory trend", "avg/max temp"):
        out.add_column(column)
    for hostname, trend in sorted(trends.items()):
        status = _status(trend.status, trend.disconnected, trend.draining)
        if not trend.samples:
            out.add_row(hostname, status, *["-"] * 5)
            continue
        if node_status_name(trend.status) != NodeStatus.ONLINE:  # its last readings are history
            cpu = sparkline([x.cpu_percent for x in trend.samples])
            memory = sparkline([x.memory_percent for x in trend.samples])
            out.add_row(hostname, status, "-", cpu, "-", memory, "-")
            continue
        h = trend.samples[-1]
        temps = (
            f"{_temp(h.current_avg_temp, h.HasField('current_avg_temp'))}/"
            f"{_temp(h.current_max_temp, h.HasField('current_max_temp'))}"
        )
        out.add_row(
            hostname,
            status,
            f"{h.cpu_percent:5.1f}%",
            sparkline([x.cpu_percent for x in trend.samples]),
            f"{h.memory_percent:5.1f}% "
            f"({format_size(h.memory_used_bytes)}/{format_size(h.memory_total_bytes)})",
            sparkline([x.memory_percent for x in trend.samples]),
            temps,
        )
        rows = {g.index: _gpu_row(g, _gpu_history(trend, g.index)) for g in h.gpus}
        for index in trend.unread_gpus:  # dropped out of its readings: not left unsaid
            rows[index] = [f"  gpu {index}", "not read", *["-"] * 5]
        for index in sorted(rows):  # in NVML's order, as nodes and the dashboard list them
            out.add_row(*rows[index])
    problems = [
        f"{hostname}: its tasks' output could not be stored: {escape(trend.output_problem)}"
        for hostname, trend in sorted(trends.items())
        if trend.output_problem
    ]
    if problems:
        out.caption = "\n".join(problems)
        out.caption_justify = "left"
        out.caption_style = "bold red"
    return out


@app.command()
def health(
    hostname: Annotated[str, cli.Argument(help="Only this node.")] = "",
    watch: Annotated[bool, cli.Option("--watch", help="Keep updating as samples arrive.")] = False,
    count: Annotated[
        int,
        cli.Option(
            min=0,
            help="With --watch: stop after this many samples (0: at Ctrl-C); a change of a "
            "node's status is shown but not counted.",
        ),
    ] = 0,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """CPU, memory, temperature and GPU readings of nodes, with recent trends."""
    if count and not watch:
        fail("--count needs --watch: without it health prints the readings once", 2)
    cfg = config_or_fail(config)
    with host_link(cfg, reconnect_seconds=RETRY_SECONDS) as link:
        stub = node_stub(link)
        if not watch:
            found = _with_history(stub, hostname)
            if json:
                print_json([to_dict(n) for n in found])
            else:
                console().print(_health_table(_trends(found)))
            return
        _watch_table(stub, cfg.host_target, hostname, count, json)


def _trends(found: list[npb.NodeHealth]) -> dict[str, NodeTrend]:
    return {
        n.hostname: NodeTrend(
            n.status,
            list(n.history),
            n.output_problem,
            n.disconnected,
            n.draining,
            list(n.unread_gpus),
        )
        for n in found
    }


def _watch_table(
    stub: node_service_pb2_grpc.NodeServiceStub, target: str, hostname: str, count: int, json: bool
) -> None:
    """`health --watch`: the table (or a JSON line per update) kept up to date. The table
    is drawn from the first readings on: a node the Host does not know is one error line,
    not an empty table and the line."""
    trends: dict[str, NodeTrend] = {}
    with contextlib.ExitStack() as drawn:
        screens: list[Live] = []

        def draw() -> None:
            if json:
                return
            if not screens:
                screens.append(drawn.enter_context(_live(trends)))
            screens[0].update(_health_table(trends))

        def listed(found: list[npb.NodeHealth]) -> None:
            """The readings read when a watch starts, again after a Host restart: a node
            no longer listed was forgotten while the watch was away, and goes as one
            forgotten while watched does (it kept its row)."""
            from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb

            offline = NodeStatus.OFFLINE.pb
            for gone in sorted(trends.keys() - {node.hostname for node in found}):
                show(npb.NodeHealth(hostname=gone, status=offline), True)
            for node in found:
                trends.setdefault(node.hostname, NodeTrend(node.status)).update(node)
            draw()

        def show(node: npb.NodeHealth, forgotten: bool) -> None:
            if forgotten:
                trends.pop(node.hostname, None)
            else:
                trends.setdefault(node.hostname, NodeTrend(node.status)).update(node)
            if json:
                also = {"forgotten": True} if forgotten else {}
                print(to_json_line(node, **also), flush=True)
            draw()

        _watch_health(stub, target, hostname, count, listed, show)


def _with_history(
    stub: node_service_pb2_grpc.NodeServiceStub, hostname: str
) -> list[npb.NodeHealth]:
    """Each node's readings and history (``hostname``'s only, if given), a reply per node:
    in one reply, a few dozen GPU nodes' ten minutes of samples passed the 4 MiB a gRPC
    client accepts, and `health` failed with RESOURCE_EXHAUSTED."""
    from hakuriver_cli.call_error import CallError, Status
    from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb

    if hostname:
        names = [hostname]
    else:
        names = [n.hostname for n in unary(stub.GetHealth, npb.GetHealthRequest()).nodes]
    found: list[npb.NodeHealth] = []
    for name in names:
        request = npb.GetHealthRequest(hostname=name, include_history=True)
        try:
            found.extend(unary(stub.GetHealth, request).nodes)
        except CallError as exc:
            # A listed node forgotten since (offline, no task of it kept) is no node any more.
            if hostname or exc.status is not Status.NOT_FOUND:
                raise
    return found


@contextlib.contextmanager
def _live(trends: dict[str, NodeTrend]) -> Iterator[Live]:
    """The health table redrawn in place. To a pipe or file rich's Live prints the table
    once, at the end, leaving its last line unended."""
    from rich.live import Live

    screen = console()
    try:
        with Live(_health_table(trends), console=screen) as live:
            yield live
    finally:
        if not screen.is_terminal:
            screen.line()


def _watch_health(
    stub: node_service_pb2_grpc.NodeServiceStub,
    target: str,
    hostname: str,
    count: int,
    listed: Callable[[list[npb.NodeHealth]], None],
    show: Callable[[npb.NodeHealth, bool], None],
) -> None:
    """``show`` every update of WatchHealth (and whether it says the Host forgot the node)
    until ``count`` samples came (0: until Ctrl-C; an update without one, a change of
    status, does not count), after ``listed`` the readings and history read once the
    watch is in place (a node going offline between a list read first and the watch was
    never shown); while the Host is away, retry as ``wait`` does, then watch and list
    again."""
    from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb

    seen = 0

    def watch() -> bool | None:
        nonlocal seen
        request = npb.WatchHealthRequest(hostname=hostname, send_watching=True)
        updates = stub.WatchHealth(request)
        read = False
        for update in updates:
            if update.watching or not read:  # a Host before send_watching sends no marker
                listed(_with_history(stub, hostname))
                read = True
                if update.watching:
                    continue
            show(update.node, update.forgotten)
            seen += update.node.HasField("current")
            if count and seen >= count:
                updates.cancel()
                return True
        return None  # the Host ended the stream: it stopped

    riding_out(
        watch,
        lambda timeout: unary(stub.GetHealth, npb.GetHealthRequest(hostname=hostname), timeout),
        target,
        RETRY_SECONDS,
        "watching",
        "watching health again",
    )


BatchOrTaskArgument = Annotated[
    str,
    cli.Argument(
        help="Task id; a batch (job array) id for all its tasks; or ARRAY_ID_INDEX for one "
        "task of an array.",
        show_default=False,
    ),
]


def _print_batch(batch: tpb.BatchSummary, json: bool, affected: int | None = None) -> None:
    if json:
        print_json(
            {"batch": to_dict(batch), **({} if affected is None else {"affected": affected})}
        )
        return
    cli.echo(batch_line(batch))


@app.command()
def status(
    task_id: BatchOrTaskArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Show every field of a task and its status timeline, or a batch's counts by status."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    def task(stub: task_service_pb2_grpc.TaskServiceStub, tid: int) -> None:
        response = unary(stub.GetTask, tpb.GetTaskRequest(task_id=tid))
        if json:
            print_json(to_dict(response))
        else:
            print_task_detail(response.task, response.events)

    def batch(stub: task_service_pb2_grpc.TaskServiceStub, bid: int) -> None:
        _print_batch(unary(stub.GetBatch, tpb.GetBatchRequest(batch_id=bid)).batch, json)

    ask(
        config,
        task_stub,
        lambda s: on_task_or_batch(s, task_id, lambda t: task(s, t), lambda b: batch(s, b)),
    )


class Action(StrEnum):
    pause = "pause"
    resume = "resume"


_DOING = {"kill": "killing", "pause": "pausing", "resume": "resuming"}


def control(stub: task_service_pb2_grpc.TaskServiceStub, tid: int, verb: str) -> task_pb2.Task:
    """Kill, pause or resume one task; past the deadline (its Runner slow to confirm, the
    Host's database away), one line says the Host may still be at it, and where to look."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    still = f"{_DOING[verb]} the task: see hakuriver.client status {tid}"
    if verb == Action.pause:
        return bulk_unary(stub.PauseTask, tpb.PauseTaskRequest(task_id=tid), 0, still).task
    if verb == Action.resume:
        return bulk_unary(stub.ResumeTask, tpb.ResumeTaskRequest(task_id=tid), 0, still).task
    return bulk_unary(stub.KillTask, tpb.KillTaskRequest(task_id=tid), 0, still).task


def _control_batch(
    stub: task_service_pb2_grpc.TaskServiceStub, bid: int, verb: str
) -> tuple[tpb.BatchSummary, int]:
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    # Its size first: the deadline of the call grows with it (bulk_unary).
    size = unary(stub.GetBatch, tpb.GetBatchRequest(batch_id=bid)).batch.size
    still = f"{_DOING[verb]} its tasks: see hakuriver.client status {bid}"
    response: tpb.PauseBatchResponse | tpb.ResumeBatchResponse | tpb.KillBatchResponse
    if verb == Action.pause:
        response = bulk_unary(stub.PauseBatch, tpb.PauseBatchRequest(batch_id=bid), size, still)
    elif verb == Action.resume:
        response = bulk_unary(stub.ResumeBatch, tpb.ResumeBatchRequest(batch_id=bid), size, still)
    else:
        response = bulk_unary(stub.KillBatch, tpb.KillBatchRequest(batch_id=bid), size, still)
    return response.batch, response.affected


_DONE = {"kill": "killed", "pause": "paused", "resume": "resumed"}


def show_controlled(done: task_pb2.Task, json: bool) -> None:
    """A task as a kill, pause or resume left it: its status (or it as JSON)."""
    if json:
        print_json(to_dict(done))
    else:
        cli.echo(f"task {done.task_id}: {status_name(done.status)}")


def control_task(task_id: str, verb: str, config: Path | None, json: bool) -> None:
    """Kill, pause or resume a task or a whole batch, then print its status (or it as
    JSON)."""

    def task(stub: task_service_pb2_grpc.TaskServiceStub, tid: int) -> None:
        show_controlled(control(stub, tid, verb), json)

    def batch(stub: task_service_pb2_grpc.TaskServiceStub, bid: int) -> None:
        summary, affected = _control_batch(stub, bid, verb)
        if not affected and batch_ended(summary):  # refused, as for one task that ended
            what = "array" if summary.array else "batch"
            fail(
                f"{what} {bid}: every task has already ended, none can be {_DONE[verb]} "
                "(FAILED_PRECONDITION)"
            )
        if not json:
            cli.echo(f"{_DONE[verb]} {tasks_count(affected)}")
        _print_batch(summary, json, affected)

    ask(
        config,
        task_stub,
        lambda s: on_task_or_batch(s, task_id, lambda t: task(s, t), lambda b: batch(s, b)),
    )


ActionArgument = Annotated[Action, cli.Argument(help="pause or resume.")]


@app.command()
def kill(
    task_id: BatchOrTaskArgument, config: ConfigOption = None, json: JsonOption = False
) -> None:
    """Kill a pending, assigning, running or paused task, or every such task of a batch."""
    control_task(task_id, "kill", config, json)


@app.command()
def command(
    task_id: BatchOrTaskArgument,
    action: ActionArgument,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Pause or resume a task, or a whole batch (pausing one also holds its pending tasks)."""
    control_task(task_id, action, config, json)


def run() -> None:
    direct.run(app, "hakuriver.client")


if __name__ == "__main__":
    run()
