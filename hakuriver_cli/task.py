"""``hakuriver.task``: submit command tasks, list them, read and follow their output.

The transports and the generated protos are imported by the commands that call the Host, not
here: ``--help`` and argument errors need only typer, and a plain command line not even that
(see docs/development.md, CLI start-up).
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Annotated

from hakuriver_cli import direct
from hakuriver_cli.call_error import CallError, Status
from hakuriver_cli.connection import (
    RPC_TIMEOUT_SECONDS,
    RequestIdOption,
    TaskIdArgument,
    config_or_fail,
    fail,
    host_link,
    on_task_or_batch,
    parsed,
    submit_once,
    unary,
)
from hakuriver_cli.link import Link, log_stub, task_stub
from hakuriver_cli.reconnect import RETRY_SECONDS, host_gone, riding_out
from hakuriver_cli.render import (
    TASK_COLUMNS,
    batch_ended,
    batch_line,
    capped,
    print_json,
    show_list,
    shown,
    status_name,
    submitted_line,
    task_row,
    tasks_count,
    to_dict,
    to_json_line,
)
from hakuriver_common import commands as cli
from hakuriver_common.limits import MAX_TASK_CORES
from hakuriver_common.service import ConfigOption, JsonOption, tool_app
from hakuriver_common.statuses import (
    FINAL_STATUSES,
    FINAL_TASK_STATUSES,
    TaskKind,
    TaskNetwork,
    TaskStatus,
)

if TYPE_CHECKING:
    from google.protobuf.timestamp_pb2 import Timestamp

    from hakuriver_common.client_config import ClientConfig
    from hakuriver_common.proto.hakuriver.v1 import (
        log_service_pb2 as lpb,
        task_pb2,
        task_service_pb2 as tpb,
        task_service_pb2_grpc,
    )

app = tool_app("Submit and follow command tasks.")


def target_pbs(values: list[str]) -> list[task_pb2.Target]:
    from hakuriver_common.targets import parse_target

    return [spec.pb() for spec in parsed(values, parse_target)]


def mount_pbs(values: list[str]) -> list[task_pb2.Mount]:
    from hakuriver_common.mounts import parse_mount

    return [spec.pb() for spec in parsed(values, parse_mount)]


def _env_pair(text: str) -> tuple[str, str]:
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise ValueError(f"--env {text!r}: expected KEY=VALUE")
    return key, value


def env_map(values: list[str]) -> dict[str, str]:
    """The variables of repeated ``--env KEY=VALUE`` options (the Host checks the names)."""
    return dict(parsed(values, _env_pair))


def _watch_once(stub: task_service_pb2_grpc.TaskServiceStub, task_id: int) -> task_pb2.Task | None:
    """Follow the task's WatchTask stream; its final state, or None if the stream ended
    before it (the Host went away)."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    for update in stub.WatchTask(tpb.WatchTaskRequest(task_id=task_id)):
        if update.task.status in FINAL_TASK_STATUSES:
            return update.task
    return None


def _task_probe(
    stub: task_service_pb2_grpc.TaskServiceStub, task_id: int
) -> Callable[[float], object]:
    """Asks the Host for the task: whether the Host answers again (see reconnect.riding_out)."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    return lambda timeout: unary(stub.GetTask, tpb.GetTaskRequest(task_id=task_id), timeout)


def wait_final(link: Link, target: str, task_id: int, poll_interval: float) -> task_pb2.Task:
    """The task once final. While the Host is unreachable, retry every ``poll_interval``
    seconds for as long as it takes, saying so on stderr when it goes and when it is back."""
    stub = task_stub(link)
    try:
        return riding_out(
            lambda: _watch_once(stub, task_id),
            _task_probe(stub, task_id),
            target,
            poll_interval,
            "waiting",
            f"waiting for task {task_id}",
        )
    except KeyboardInterrupt:
        fail(
            f"stopped waiting; task {task_id} carries on (hakuriver.task wait {task_id})",
            cli.INTERRUPTED,
        )


def wait_batch(link: Link, target: str, batch_id: int, poll_interval: float) -> tpb.BatchSummary:
    """The batch once every task of it is final, asking the Host at growing intervals (up
    to ``poll_interval``); while the Host is unreachable, retry as ``wait_final`` does."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    stub = task_stub(link)
    request = tpb.GetBatchRequest(batch_id=batch_id)

    def until_ended() -> tpb.BatchSummary | None:
        pause = 0.05
        while True:
            try:
                batch = unary(stub.GetBatch, request).batch
            except CallError as exc:
                if exc.status == Status.DEADLINE_EXCEEDED:
                    return None  # a Host that does not answer is away
                raise
            if batch_ended(batch):
                return batch
            time.sleep(pause)
            pause = min(pause * 2, poll_interval)

    try:
        return riding_out(
            until_ended,
            lambda timeout: unary(stub.GetBatch, request, timeout),
            target,
            poll_interval,
            "waiting",
            f"waiting for batch {batch_id}",
        )
    except KeyboardInterrupt:
        fail(
            f"stopped waiting; batch {batch_id} carries on (hakuriver.task wait {batch_id})",
            cli.INTERRUPTED,
        )


def _all_completed(batch: tpb.BatchSummary) -> bool:
    return all(c.status == TaskStatus.COMPLETED.pb for c in batch.counts)


# How many of an ended batch's tasks that did not complete are named: one page of them.
_NAMED_ENDS = 20


def _not_completed(
    stub: task_service_pb2_grpc.TaskServiceStub, batch: tpb.BatchSummary
) -> list[int]:
    """The array indices (a plain batch's task ids) of its last tasks that ended otherwise
    than completed, at most ``_NAMED_ENDS``, in order: what to run again."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    if _all_completed(batch):
        return []
    statuses = [s.pb for s in FINAL_STATUSES if s is not TaskStatus.COMPLETED]
    request = tpb.ListTasksRequest(batch_id=batch.batch_id, statuses=statuses, limit=_NAMED_ENDS)
    listed = unary(stub.ListTasks, request).tasks
    return sorted(t.array_index if batch.array else t.task_id for t in listed)


def _not_completed_line(batch: tpb.BatchSummary, named: list[int]) -> str:
    """``not completed: indices 3, 7``; when there are more, how to list them all."""
    ended = sum(c.count for c in batch.counts if c.status != TaskStatus.COMPLETED.pb)
    what = "indices" if batch.array else "tasks"
    more = ended - len(named)
    rest = f" and {more} more (hakuriver.task list --batch {batch.batch_id})" if more > 0 else ""
    return f"not completed: {what} {', '.join(map(str, named))}{rest}"


def _show_ended_batch(
    stub: task_service_pb2_grpc.TaskServiceStub,
    batch: tpb.BatchSummary,
    out: dict[str, object] | None,
) -> None:
    """An ended batch's counts and which of its tasks did not complete: printed, or added
    to ``out`` (the --json output) as ``not_completed``."""
    named = _not_completed(stub, batch)
    if out is not None:
        out.update(batch=to_dict(batch), not_completed=named)
        return
    cli.echo(batch_line(batch))
    if named:
        cli.echo(_not_completed_line(batch, named))


PollIntervalOption = Annotated[
    float,
    cli.Option(
        min=0.1,
        help="While waiting, seconds between attempts to reach the Host again after losing it, "
        "or to ask again for a stream it refused (auth.streams_per_caller).",
    ),
]


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    command: Annotated[
        list[str] | None,
        cli.Argument(help="Command and arguments, after --.", show_default=False),
    ] = None,
    target: Annotated[
        list[str] | None,
        cli.Option(
            "--target", help="HOST[:NUMA_ID][::GPU_ID,...]; repeat for one task per target."
        ),
    ] = None,
    cores: Annotated[
        int | None,
        cli.Option(help="CPU cores to reserve; default 1.", min=1, max=MAX_TASK_CORES),
    ] = None,
    memory: Annotated[str, cli.Option(help="Memory limit, e.g. 512M or 4G (1000-based).")] = "",
    gpus: Annotated[
        int, cli.Option(help="Number of GPUs on any node (or name ids in --target).", **cli.INT32)
    ] = 0,
    env: Annotated[list[str] | None, cli.Option("--env", help="KEY=VALUE; repeatable.")] = None,
    container: Annotated[str, cli.Option(help="Container environment (default from config).")] = "",
    mount: Annotated[
        list[str] | None, cli.Option("--mount", help="HOST_PATH:CONTAINER_PATH[:ro]; repeatable.")
    ] = None,
    privileged: Annotated[bool, cli.Option(help="Run the container privileged.")] = False,
    network: Annotated[
        TaskNetwork | None,
        cli.Option(
            help="The container's network: host (the node's) or none (isolated); "
            "default: the Host's auth.default_task_network.",
            show_default=False,
        ),
    ] = None,
    priority: Annotated[
        int,
        cli.Option(
            help="Higher runs first when queued; above 0 needs the operator role.", **cli.INT32
        ),
    ] = 0,
    array: Annotated[
        str | None,
        cli.Option(
            help="A job array, one task per index: 1-100, 0-30:10, 1,3,5-7; %N caps how many "
            "run at once (1-1000%10). Each task gets HAKURIVER_ARRAY_ID and "
            "HAKURIVER_ARRAY_INDEX, also replaced in the command and mount paths.",
            show_default=False,
        ),
    ] = None,
    wait: Annotated[bool, cli.Option(help="Wait until every task finishes.")] = False,
    poll_interval: PollIntervalOption = RETRY_SECONDS,
    request_id: RequestIdOption = "",
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Submit a command task: hakuriver.task submit [OPTIONS] -- CMD ARGS..."""
    from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb

    argv = list(command or [])
    if not argv or not argv[0].strip():  # the Host's refusal would be an exit 1 after a call
        fail("missing the command to run, after -- (see 'hakuriver.task submit --help')", code=2)
    cfg = config_or_fail(config)
    request = tpb.SubmitTaskRequest(
        kind=TaskKind.COMMAND.pb,
        command=argv[0],
        arguments=argv[1:],
        env=env_map(env or []),
        cores=cores,
        memory=memory,
        targets=target_pbs(target or []),
        container_name=container,
        privileged=privileged,
        mounts=mount_pbs(mount or []),
        priority=priority,
        gpus=gpus,
        network=network.pb if network is not None else task_pb2.TASK_NETWORK_UNSPECIFIED,
        array=_array(array),
        request_id=request_id,
    )
    if array is not None:
        _submit_array(cfg, request, wait, poll_interval, json)
        return
    with host_link(cfg, reconnect_seconds=poll_interval) as link:
        response = submit_once(task_stub(link).SubmitTask, request, cfg, len(request.targets))
        found = list(response.tasks)
        if len(found) < response.created:  # large tasks: the answer was cut short
            whole = tpb.ListTasksRequest(batch_id=response.batch_id, limit=response.created)
            found = sorted(_listed(task_stub(link), whole), key=lambda t: t.task_id)
        if not json:
            for task in found:
                cli.echo(submitted_line(task))
            if response.batch_id:
                cli.echo(f"batch {response.batch_id}")
        if wait:
            found = [wait_final(link, cfg.host_target, t.task_id, poll_interval) for t in found]
    if json:
        batch = {"batch_id": str(response.batch_id)} if response.batch_id else {}
        print_json({**batch, "tasks": [to_dict(t) for t in found]})  # no batch: no key
    elif wait:
        for task in found:
            cli.echo(_ended_line(task))
    if wait and any(t.status != TaskStatus.COMPLETED.pb for t in found):
        raise cli.Exit(1)


def _ended_line(task: task_pb2.Task) -> str:
    """How submit --wait and wait say a task ended: status, exit code, error (its control
    characters written out: an operator waits on other users' tasks)."""
    return f"task {task.task_id}: {status_name(task.status)}{_outcome(task)}"


def _outcome(task: task_pb2.Task) -> str:
    """``, exit code 1: error`` as far as the task has them."""
    code = f", exit code {task.exit_code}" if task.HasField("exit_code") else ""
    error = f": {shown(task.error_message)}" if task.error_message else ""
    return code + error


def _array(text: str | None) -> tpb.TaskArray | None:
    """The --array given (an empty one is refused, not taken as none: ``--array "$SPEC"``
    with SPEC unset must not submit one plain task)."""
    from hakuriver_common.arrays import parse_array

    return None if text is None else parsed([text], parse_array)[0].pb()


def _submit_array(
    cfg: ClientConfig,
    request: tpb.SubmitTaskRequest,
    wait: bool,
    poll_interval: float,
    json: bool,
) -> None:
    """An array is reported as one: its id and size, and with --wait its counts by status
    (exit 1 unless every task completed)."""
    with host_link(cfg, reconnect_seconds=poll_interval) as link:
        stub = task_stub(link)
        response = submit_once(stub.SubmitTask, request, cfg, len(request.array.indices))
        if not json:
            at_once = capped(request.array.max_running, response.created)
            created = tasks_count(response.created)
            cli.echo(f"submitted array {response.batch_id}: {created}{at_once}")
        batch = (
            wait_batch(link, cfg.host_target, response.batch_id, poll_interval) if wait else None
        )
        found = list(response.tasks)
        if json and batch is not None and found:  # as they ended, not as submitted
            found = _batch_tasks(stub, response.batch_id, [t.task_id for t in found])
        out: dict[str, object] | None = None
        if json:
            out = {
                "batch_id": str(response.batch_id),
                "created": response.created,
                "tasks": [to_dict(t) for t in found],
            }
        if batch is not None:
            _show_ended_batch(stub, batch, out)
    if out is not None:
        print_json(out)
    if batch is not None and not _all_completed(batch):
        raise cli.Exit(1)


def _batch_tasks(
    stub: task_service_pb2_grpc.TaskServiceStub, batch_id: int, task_ids: list[int]
) -> list[task_pb2.Task]:
    """The tasks ``task_ids`` of a batch (the ones a submission's answer shows: at most a
    page, its oldest), as they are now, oldest first: listed from just above the newest of
    them, not from the batch's newest down (a 100,000-task array's 100 pages)."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    request = tpb.ListTasksRequest(
        batch_id=batch_id, limit=len(task_ids), before_task_id=max(task_ids) + 1
    )
    wanted = set(task_ids)
    found = [t for t in _listed(stub, request, len(task_ids)) if t.task_id in wanted]
    return sorted(found, key=lambda t: t.task_id)


def _listed(
    stub: task_service_pb2_grpc.TaskServiceStub,
    request: tpb.ListTasksRequest,
    limit: int | None = None,
) -> list[task_pb2.Task]:
    """ListTasks page after page, newest first, up to ``limit`` tasks (None: all of them):
    the Host cuts a page short when its tasks are large."""
    found: list[task_pb2.Task] = []
    while True:
        response = unary(stub.ListTasks, request)
        found += response.tasks
        if not response.next_before_task_id or (limit is not None and len(found) >= limit):
            return found
        request.before_task_id = response.next_before_task_id
        if limit is not None:
            request.limit = limit - len(found)


_AGO = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def _since(text: str) -> Timestamp:
    """A Timestamp from '30m', '2h', '7d' ago, or from an ISO 8601 time."""
    from google.protobuf.timestamp_pb2 import Timestamp

    stamp = Timestamp()
    ago = text[:-1].isdigit() and text[-1] in _AGO
    try:
        moment = None if ago else datetime.fromisoformat(text)
    except ValueError:
        fail(f"--since {text!r}: use 30m, 2h, 7d or an ISO time like 2026-11-22T08:00", code=2)
    try:  # before the year 1: an error line, not a traceback
        if moment is None:
            moment = datetime.now(UTC) - timedelta(seconds=int(text[:-1]) * _AGO[text[-1]])
        stamp.FromDatetime(moment if moment.tzinfo else moment.astimezone())
    except (OverflowError, ValueError):
        fail(f"--since {text!r} is too far back", code=2)
    return stamp


@app.command("list")
def list_tasks(
    status: Annotated[
        list[TaskStatus] | None, cli.Option("--status", help="Only these statuses; repeatable.")
    ] = None,
    node: Annotated[str, cli.Option(help="Only tasks placed on this node.")] = "",
    batch: Annotated[str, cli.Option(help="Only tasks of this batch id.")] = "",
    limit: Annotated[int, cli.Option(min=1, max=1000, help="At most this many tasks.")] = 50,
    before: Annotated[str, cli.Option(help="Only tasks older than this id (paging).")] = "",
    kind: Annotated[TaskKind | None, cli.Option(help="Only command or vps tasks.")] = None,
    owner: Annotated[
        str, cli.Option(help="Only this user's tasks (operators; users see only their own).")
    ] = "",
    since: Annotated[
        str, cli.Option(help="Only tasks submitted since: 30m, 2h, 7d, or an ISO time.")
    ] = "",
    watch: Annotated[
        bool,
        cli.Option(
            "--watch",
            help="Then print a line for each change of a task the filters take, as the Host "
            "sends it, until Ctrl-C.",
        ),
    ] = False,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """List tasks, newest first; with --watch, then their changes as they happen."""
    from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb

    cfg = config_or_fail(config)
    request = tpb.ListTasksRequest(
        statuses=[s.pb for s in status or []],
        node=node,
        batch_id=_batch_id(batch) if batch else 0,
        limit=limit,
        before_task_id=_option_id("--before", before) if before else 0,
        kind=kind.pb if kind is not None else task_pb2.TASK_KIND_UNSPECIFIED,
        submitted_after=_since(since) if since else None,
        owner=owner,
    )
    with host_link(cfg) as link:
        if watch:
            _watch_list(task_stub(link), cfg.host_target, request, json)
            return
        found = _listed(task_stub(link), request, limit)
    show_list(json, found, "tasks", TASK_COLUMNS, task_row)


def _taken(request: tpb.ListTasksRequest) -> Callable[[task_pb2.Task], bool]:
    """Whether a task the Host sends to a watch passes the filters of ``request`` (its
    ``owner`` the Host applies itself), as they are now: listing pages through it."""
    statuses = set(request.statuses)
    since = request.submitted_after.ToNanoseconds() if request.HasField("submitted_after") else 0
    node, batch_id, kind, before = (
        request.node,
        request.batch_id,
        request.kind,
        request.before_task_id,
    )

    def taken(t: task_pb2.Task) -> bool:
        return (
            (not statuses or t.status in statuses)
            and (not node or t.assigned_node == node)
            and (not batch_id or t.batch_id == batch_id)
            and (not kind or t.kind == kind)
            and (not before or t.task_id < before)
            and t.submitted_at.ToNanoseconds() >= since
        )

    return taken


def _change_line(t: task_pb2.Task) -> str:
    """A task's change as `list --watch` prints it: its status, where, how it ended
    (``task 12 (10_2): failed on node-a, exit code 1: ...``)."""
    array = f" ({t.batch_id}_{t.array_index})" if t.HasField("array_index") else ""
    node = f" on {t.assigned_node}" if t.assigned_node else ""
    return f"task {t.task_id}{array}: {status_name(t.status)}{node}{_outcome(t)}"


def _watch_list(
    stub: task_service_pb2_grpc.TaskServiceStub,
    target: str,
    request: tpb.ListTasksRequest,
    json: bool,
) -> None:
    """`list --watch`: the list, read once the Host says its watch is in place (a change
    between the two is not missed), then a line per change the filters take (a JSON line
    each with --json), until Ctrl-C (exit 130, as every watcher and follower ends). A Host
    that goes away ends it in one line."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    taken = _taken(request)
    updates = stub.WatchTasks(tpb.WatchTasksRequest(owner=request.owner, send_watching=True))
    read = False
    try:
        for update in updates:
            if update.watching or not read:  # a Host before send_watching sends no marker
                _show_listed(_listed(stub, request, request.limit), json)
                read = True
                if update.watching:
                    continue
            if taken(update.task):
                cli.echo(to_json_line(update.task) if json else _change_line(update.task))
    except KeyboardInterrupt:
        updates.cancel()
        raise cli.Exit(cli.INTERRUPTED) from None
    except CallError as exc:
        if not host_gone(exc):
            raise
    fail(f"lost the host at {target}: the watch ended (it stopped, or the network failed)")


def _show_listed(found: list[task_pb2.Task], json: bool) -> None:
    if json:
        for t in found:
            cli.echo(to_json_line(t))
    else:
        show_list(False, found, "tasks", TASK_COLUMNS, task_row)


def _option_id(option: str, text: str) -> int:
    """An id an option takes; one line naming the option if it is not one."""
    from hakuriver_common.ids import parse_task_id

    try:
        return parse_task_id(text)
    except ValueError as exc:
        fail(f"{option}: {exc}", code=2)


def _batch_id(text: str) -> int:
    """--batch's id: an array's (or a batch's), not one task of it (ARRAY_ID_INDEX)."""
    head, sep, _ = text.partition("_")
    if sep and head.strip().isdigit():
        fail(
            f"--batch takes an array's id ({head}), not one of its tasks ({text}): "
            f"hakuriver.client status {text} shows that task",
            code=2,
        )
    return _option_id("--batch", text)


def _print_log(cfg: ClientConfig, task_id: str, stream: int, follow: bool, max_lag: str) -> None:
    from hakuriver_common.proto.hakuriver.v1 import log_service_pb2 as lpb
    from hakuriver_common.units import parse_size

    try:
        lag = parse_size(max_lag) if max_lag else 0
    except ValueError as exc:
        fail(f"--max-lag: {exc}", code=2)
    if lag > cli.INT64["max"]:
        fail(f"--max-lag {max_lag}: at most {cli.INT64['max']} bytes", code=2)
    if max_lag and not lag:  # 0 would be the API's "no bound": every byte, from the start
        fail(f"--max-lag {max_lag}: at least 1 byte; leave it out for every byte", code=2)
    with host_link(cfg, reconnect_seconds=RETRY_SECONDS, near_the_end=lag > 0) as link:

        def read(tid: int) -> None:
            request = lpb.ReadLogRequest(
                task_id=tid,
                stream=stream,  # type: ignore[arg-type]
                follow=follow,
                max_lag_bytes=lag,
            )
            try:
                if follow:
                    _follow_log(link, cfg.host_target, request, max_lag)
                else:
                    _copy_log(link, request, max_lag)
            except KeyboardInterrupt:
                raise cli.Exit(cli.INTERRUPTED) from None  # as `wait` and `health --watch` end

        on_task_or_batch(
            task_stub(link), task_id, read, lambda bid: _a_batch_has_no_output(link, bid)
        )


class _Printed:
    """Whether what was printed so far ends a line: kept across the reads of a follower that
    rides out a Host restart, so a skip right after one still starts on a line of its own."""

    at_line_start = True


def _copy_log(
    link: Link, request: lpb.ReadLogRequest, max_lag: str, printed: _Printed | None = None
) -> bool:
    """Write the output the Host sends for ``request`` to stdout, moving ``request.offset``
    past every byte written (so a request sent again goes on from there); True at its end.
    A skip (``--max-lag``) lands at a line start: when what was written before it ends
    mid-line, a newline ends that line, so the cut line is not glued onto the next one."""
    out = sys.stdout.buffer
    printed = printed or _Printed()
    for chunk in log_stub(link).ReadLog(request):
        if chunk.offset > request.offset:
            if not printed.at_line_start:
                out.write(b"\n")
            out.flush()
            cli.echo(
                f"hakuriver: {chunk.offset - request.offset} bytes of output skipped "
                f"(--max-lag {max_lag})",
                err=True,
            )
        out.write(chunk.data)
        out.flush()
        if chunk.data:
            printed.at_line_start = chunk.data.endswith(b"\n")
        request.offset = chunk.offset + len(chunk.data)
    return True


def _follow_log(link: Link, target: str, request: lpb.ReadLogRequest, max_lag: str) -> None:
    """Follow the output until the task ends; while the Host is away, retry as ``wait``
    does, then go on from the last byte written."""
    stub = task_stub(link)
    probe = _task_probe(stub, request.task_id)
    probe(RPC_TIMEOUT_SECONDS)  # an id no task has, or a Host not there, fails at once
    printed = _Printed()
    riding_out(
        lambda: _copy_log(link, request, max_lag, printed),
        probe,
        target,
        RETRY_SECONDS,
        "following",
        f"following task {request.task_id}'s output",
    )


def _a_batch_has_no_output(link: Link, batch_id: int) -> None:
    """The id named a batch, not a task: say how to name one of its tasks."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    batch = unary(task_stub(link).GetBatch, tpb.GetBatchRequest(batch_id=batch_id)).batch
    listing = f"hakuriver.task list --batch {batch_id}"
    if batch.array:
        fail(f"{batch_id} is a job array: name one of its tasks as {batch_id}_INDEX ({listing})")
    fail(f"{batch_id} is a batch: name one of its tasks by its id ({listing})")


FollowOption = Annotated[
    bool, cli.Option("--follow", "-f", help="Keep printing new output until the task finishes.")
]
MaxLagOption = Annotated[
    str,
    cli.Option(
        "--max-lag",
        help="Never more than this far behind the end of the output (e.g. 1M): start near "
        "the end, and skip ahead when the task writes faster than this reads, saying so on "
        "stderr. Default: every byte.",
    ),
]


@app.command()
def stdout(
    task_id: TaskIdArgument,
    follow: FollowOption = False,
    max_lag: MaxLagOption = "",
    config: ConfigOption = None,
) -> None:
    """Print a command task's standard output."""
    from hakuriver_common.proto.hakuriver.v1 import task_pb2

    _print_log(config_or_fail(config), task_id, task_pb2.LOG_STREAM_STDOUT, follow, max_lag)


@app.command()
def stderr(
    task_id: TaskIdArgument,
    follow: FollowOption = False,
    max_lag: MaxLagOption = "",
    config: ConfigOption = None,
) -> None:
    """Print a command task's standard error."""
    from hakuriver_common.proto.hakuriver.v1 import task_pb2

    _print_log(config_or_fail(config), task_id, task_pb2.LOG_STREAM_STDERR, follow, max_lag)


@app.command("wait")
def wait_task(
    task_id: Annotated[
        str,
        cli.Argument(
            help="Task id; a batch (job array) id for all its tasks; or ARRAY_ID_INDEX.",
            show_default=False,
        ),
    ],
    poll_interval: PollIntervalOption = RETRY_SECONDS,
    config: ConfigOption = None,
    json: JsonOption = False,
) -> None:
    """Wait until a task (or every task of a batch) finishes; exit 0 only if all completed."""
    from hakuriver_common.proto.hakuriver.v1 import task_service_pb2 as tpb

    cfg = config_or_fail(config)

    def task(link: Link, tid: int) -> bool:
        # Fails NOT_FOUND at once for an id no task has (then it may be a batch).
        unary(task_stub(link).GetTask, tpb.GetTaskRequest(task_id=tid))
        done = wait_final(link, cfg.host_target, tid, poll_interval)
        if json:
            print_json(to_dict(done))
        else:
            cli.echo(_ended_line(done))
        return done.status == TaskStatus.COMPLETED.pb

    def batch(link: Link, bid: int) -> bool:
        done = wait_batch(link, cfg.host_target, bid, poll_interval)
        out: dict[str, object] | None = {} if json else None
        _show_ended_batch(task_stub(link), done, out)
        if out is not None:
            print_json(out)
        return _all_completed(done)

    with host_link(cfg, reconnect_seconds=poll_interval) as link:
        completed = on_task_or_batch(
            task_stub(link), task_id, lambda t: task(link, t), lambda b: batch(link, b)
        )
    if not completed:
        raise cli.Exit(1)


def run() -> None:
    direct.run(app, "hakuriver.task")


if __name__ == "__main__":
    run()
