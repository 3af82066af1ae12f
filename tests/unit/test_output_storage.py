"""Output storage that fails (a full disk) is a condition of the node whose tasks' output
could not be stored: ListNodes, GetHealth, WatchHealth and a metric show it while it lasts,
the task that lost output is not completed, the Runner's stream stays up, and the first
write that succeeds again clears it. The full disk is /dev/full behind the output file:
every write to it fails with ENOSPC, as on a full filesystem, with no root needed."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

import pytest
from rich.console import Console

from hakuriver_cli import client
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    node_service_pb2 as npb,
    runner_service_pb2 as rpb,
    task_pb2,
)
from hakuriver_common.statuses import TaskStatus
from hakuriver_host import log_store
from hakuriver_host.server import HostServer
from tests.fake_runner import HOLD, STDOUT, eventually
from tests.unit.local_cluster import LocalCluster, local_config
from tests.unit.test_metrics_auth import metric_values

NO_SPACE = "No space left on device"
ONLINE = node_pb2.NODE_STATUS_ONLINE


async def _failing_gauge(cluster: LocalCluster, node: str) -> float | None:
    values = await metric_values(cluster)
    return values.get(("hakuriver_output_storage_failing", (("node", node),)))


async def test_a_full_output_storage_shows_on_the_node_until_a_write_succeeds(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    watch = local_cluster.nodes.WatchHealth(npb.WatchHealthRequest(hostname="a"), timeout=30)
    watched: list[str] = []

    async def read_watch() -> None:
        async for update in watch:
            watched.append(update.node.output_problem)

    reader = asyncio.create_task(read_watch())
    try:
        [full] = await local_cluster.submit_running()
        os.symlink("/dev/full", full.stdout_path)
        runner.write(full.task_id, b"a line that finds no room\n")

        node = await eventually(
            lambda: _node_with_problem(local_cluster, "a"), what="the node to show the problem"
        )
        assert NO_SPACE in node.output_problem and full.stdout_path in node.output_problem
        health = await local_cluster.nodes.GetHealth(npb.GetHealthRequest(hostname="a"))
        assert NO_SPACE in health.nodes[0].output_problem
        await eventually(lambda: any(NO_SPACE in p for p in watched), what="a health update")
        assert await _failing_gauge(local_cluster, "a") == 1

        runner.finish(full.task_id, 0)
        failed = await local_cluster.wait_status(full.task_id, TaskStatus.FAILED)
        assert failed.exit_code == 0 and NO_SPACE in failed.error_message

        # Space returns: the next task's output is stored and the condition clears.
        os.unlink(full.stdout_path)
        other = await local_cluster.submit("other")
        await local_cluster.wait_status(other.task_id, TaskStatus.RUNNING)
        runner.write(other.task_id, b"stored\n")
        await eventually(
            lambda: _node_cleared(local_cluster, "a"), what="the problem to clear on the node"
        )
        assert (await local_cluster.nodes.GetHealth(npb.GetHealthRequest())).nodes[
            0
        ].output_problem == ""
        await eventually(lambda: watched and watched[-1] == "", what="a clearing health update")
        assert await _failing_gauge(local_cluster, "a") == 0
        runner.finish(other.task_id, 0)
        await local_cluster.wait_status(other.task_id, TaskStatus.COMPLETED)
        assert await local_cluster.read_log(other.task_id) == b"stored\n"
        assert runner.registrations == 1  # the stream stayed up throughout
    finally:
        watch.cancel()
        reader.cancel()


async def _node_with_problem(cluster: LocalCluster, hostname: str) -> object:
    node = await cluster.node(hostname)
    return node if node.output_problem else None


async def _node_cleared(cluster: LocalCluster, hostname: str) -> bool:
    return (await cluster.node(hostname)).output_problem == ""


def test_the_cli_shows_the_problem_in_nodes_and_health() -> None:
    problem = "/srv/shared/task_outputs/42.out: No space left on device"
    row = client._node_row(node_pb2.Node(hostname="a", status=ONLINE, output_problem=problem))
    assert row[1] == "online (output not stored)"
    assert client._node_row(node_pb2.Node(hostname="a", status=ONLINE))[1] == "online"

    screen = Console(record=True, width=200)
    screen.print(client._health_table({"a": client.NodeTrend(ONLINE, [], problem)}))
    shown = " ".join(screen.export_text().split())  # the caption wraps at the table's width
    assert f"a: its tasks' output could not be stored: {problem}" in shown
    screen.print(client._health_table({"a": client.NodeTrend(ONLINE, [])}))
    assert "could not be stored" not in screen.export_text()


async def test_a_write_that_fits_on_a_still_full_storage_does_not_clear_it(
    local_cluster: LocalCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A full file system still takes appends into its files' last, partly filled blocks:
    such a write is no sign that the storage has room again."""
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    full, other = await local_cluster.submit_running(count=2)
    os.symlink("/dev/full", full.stdout_path)
    runner.write(full.task_id, b"no room\n")
    await eventually(lambda: _node_with_problem(local_cluster, "a"), what="the problem")
    monkeypatch.setattr(log_store, "ROOM_BYTES", 2**62)  # as if the storage stayed full
    runner.write(other.task_id, b"fits\n")
    await eventually(
        lambda: _stored(local_cluster, other.task_id, b"fits\n"), what="the other write"
    )
    assert NO_SPACE in (await local_cluster.node("a")).output_problem
    monkeypatch.setattr(log_store, "ROOM_BYTES", 1)  # room again
    runner.write(other.task_id, b"more\n")
    await eventually(lambda: _node_cleared(local_cluster, "a"), what="the problem to clear")


async def _stored(cluster: LocalCluster, task_id: int, data: bytes) -> bool:
    return await cluster.read_log(task_id) == data


def test_a_shared_dir_where_output_cannot_go_names_the_key(tmp_path: Path) -> None:
    # A file where the folder should be; a read-only or squashed mount says EACCES alike.
    (tmp_path / "share").write_text("")
    config = local_config(tmp_path, paths={"shared_dir": tmp_path / "share"})
    with pytest.raises(OSError) as raised:
        HostServer(config, prepare_default_environment=False)
    assert str(raised.value) == (
        f"cannot create {tmp_path / 'share' / 'task_outputs'} for task output "
        "(paths.shared_dir): Not a directory"
    )


async def test_room_again_clears_the_problem_of_a_node_with_no_more_output(
    local_cluster: LocalCluster,
) -> None:
    """The storage is the Host's, one for every node: once a write succeeded with room
    again, a node that sent no more output (drained and shut down, or idle) still showed
    the problem, and HakuRiverOutputNotStored kept firing for it, for good."""
    healthy = await local_cluster.add_runner("a", answer=HOLD)
    gone = await local_cluster.add_runner("b", answer=HOLD)
    [on_a] = await local_cluster.submit_running(targets=[task_pb2.Target(hostname="a")])
    [on_b] = await local_cluster.submit_running(targets=[task_pb2.Target(hostname="b")])
    os.symlink("/dev/full", on_b.stdout_path)
    gone.write(on_b.task_id, b"no room\n")
    await eventually(lambda: _node_with_problem(local_cluster, "b"), what="b's problem")
    gone.finish(on_b.task_id, 0)
    await local_cluster.wait_status(on_b.task_id, TaskStatus.FAILED)
    await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="b"), timeout=5)
    await gone.drop()  # shut down for maintenance

    os.unlink(on_b.stdout_path)  # room again
    healthy.write(on_a.task_id, b"stored\n")
    await eventually(lambda: _node_cleared(local_cluster, "b"), what="b's problem to clear")
    assert await _failing_gauge(local_cluster, "b") == 0


async def test_chunks_after_a_failed_write_count_as_write_errors_not_gaps(
    local_cluster: LocalCluster, caplog: pytest.LogCaptureFixture
) -> None:
    """The chunks after a write that failed cannot continue the file: they were counted and
    logged as gaps a Runner sent, pointing an operator with a full disk at the network."""
    caplog.set_level(logging.WARNING, logger="hakuriver_host.runners")
    runner = await local_cluster.add_runner("a", cores=2, answer=HOLD)
    full, other = await local_cluster.submit_running(count=2)
    os.symlink("/dev/full", full.stdout_path)
    runner.write(full.task_id, b"no room\n")
    runner.write(full.task_id, b"nor here\n")
    gap = rpb.LogChunk(task_id=other.task_id, stream=STDOUT, offset=10, data=b"x")
    runner.send(rpb.ConnectRequest(log_chunk=gap))  # a real gap, handled after the writes

    async def gap_counted() -> bool:
        return (await metric_values(local_cluster)).get(GAPS, 0) > 0

    await eventually(gap_counted, what="the gap to be counted")
    values = await metric_values(local_cluster)
    assert (values[WRITE_ERRORS], values[GAPS]) == (2, 1)
    refused = [r.getMessage() for r in caplog.records if "chunk refused" in r.getMessage()]
    assert [str(other.task_id) in message for message in refused] == [True]


WRITE_ERRORS = ("hakuriver_output_write_errors_total", ())
GAPS = ("hakuriver_output_gaps_refused_total", ())
