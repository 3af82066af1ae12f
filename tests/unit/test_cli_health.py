"""`hakuriver.client nodes` and `health` as printed: a reading of 0 bytes is a reading, a
GPU and a NUMA node are named in --json even when numbered 0, and a reading that is no
number or time never reaches them."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path
from typing import Any

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from rich.console import Console

from hakuriver_cli import client, direct
from hakuriver_cli.render import to_dict
from hakuriver_common.proto.hakuriver.v1 import (
    node_pb2,
    node_service_pb2 as npb,
    runner_service_pb2 as rpb,
)
from hakuriver_host.cluster import Cluster
from tests.fake_runner import FakeRunner, eventually
from tests.unit.cli_threads import exit_code, exit_code_later
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import TIMING, LocalCluster
from tests.unit.test_metrics_auth import metric_values

ONLINE = node_pb2.NODE_STATUS_ONLINE
GB = 10**9


def _printed(table: object) -> str:
    screen = Console(record=True, width=200)
    screen.print(table)
    return screen.export_text()


def test_zero_bytes_read_show_as_zero_not_as_unknown() -> None:
    """An idle GPU (no memory used) and a node whose memory is all reserved showed `-`,
    which these tables use for a reading the node could not take."""
    node = node_pb2.Node(
        hostname="a", status=ONLINE, available_memory_bytes=0, total_memory_bytes=8 * GB
    )
    assert client._node_row(node)[3] == "0B/8.0G"

    idle = node_pb2.Gpu(index=0, name="A100", memory_used_bytes=0, memory_total_bytes=40 * GB)
    sample = node_pb2.Health(
        memory_percent=10, memory_used_bytes=GB, memory_total_bytes=10 * GB, gpus=[idle]
    )
    printed = _printed(client._health_table({"a": client.NodeTrend(ONLINE, [sample])}))
    [gpu_row] = [line for line in printed.splitlines() if "gpu 0" in line]
    assert "0B/40.0G" in gpu_row


def test_json_names_gpu_0_and_numa_node_0() -> None:
    """`--json` leaves zeros out, and with them the index of GPU 0 and the id of NUMA node
    0: a script looking a GPU up by its index found no GPU 0."""
    gpus = [node_pb2.Gpu(index=i, name="A100", memory_total_bytes=40 * GB) for i in (0, 1)]
    node = node_pb2.Node(
        hostname="a",
        status=ONLINE,
        gpus=gpus,
        numa_nodes=[node_pb2.NumaNode(id=0, cpus=[0, 1])],
        health=node_pb2.Health(gpus=gpus),
    )
    shown = to_dict(node)
    assert [g["index"] for g in shown["gpus"]] == [0, 1]
    assert [g["index"] for g in shown["health"]["gpus"]] == [0, 1]
    assert [n["id"] for n in shown["numa_nodes"]] == [0]
    assert "draining" not in shown  # other zeros are still left out


@pytest.mark.parametrize(
    ("reading", "field"),
    [
        ({"cpu_percent": math.nan}, "heartbeat.health.cpu_percent"),
        ({"current_max_temp": math.inf}, "heartbeat.health.current_max_temp"),
        (
            {"gpus": [node_pb2.Gpu(index=0, utilization_gpu_percent=-math.inf)]},
            "heartbeat.health.gpus.utilization_gpu_percent",
        ),
        ({"sampled_at": Timestamp(seconds=2**62)}, "heartbeat.health.sampled_at"),
    ],
)
async def test_a_reading_the_cli_cannot_show_is_refused(
    local_cluster: LocalCluster,
    caplog: pytest.LogCaptureFixture,
    reading: dict[str, Any],
    field: str,
) -> None:
    """A Runner's NaN or infinite reading, or a sample time past the year 9999, was kept in
    the node's history, and every `hakuriver.client health` then ended in a traceback
    drawing its trend (`--json`: writing the time)."""
    bad = node_pb2.Health(memory_total_bytes=GB, **reading)
    runner = await local_cluster.add_runner("a", health=lambda: bad)
    await eventually(lambda: runner.heartbeats_sent >= 3, what="heartbeats")
    await eventually(
        lambda: any(field in r.getMessage() for r in caplog.records), what="the refusal logged"
    )
    reply = await local_cluster.nodes.GetHealth(
        npb.GetHealthRequest(hostname="a", include_history=True), timeout=5
    )
    [entry] = reply.nodes
    trend = client.NodeTrend(entry.status, list(entry.history))
    assert "online" in _printed(client._health_table({"a": trend}))  # drawn, no traceback
    assert to_dict(entry)["hostname"] == "a"  # and written as JSON


def test_names_and_errors_are_printed_as_written() -> None:
    """A GPU's name and an error naming a path are text, not rich markup: `[x]` in a path
    was dropped, and a GPU named with `[/x]` ended the command in a MarkupError traceback."""
    gpu = node_pb2.Gpu(index=0, name="[/x] GPU", memory_total_bytes=GB)
    problem = "/srv/[lab]/task_outputs/42.out: No space left on device"
    sample = node_pb2.Health(memory_total_bytes=GB, gpus=[gpu])
    printed = _printed(client._health_table({"a": client.NodeTrend(ONLINE, [sample], problem)}))
    assert "[/x] GPU" in printed
    assert problem in " ".join(printed.split())  # the caption wraps at the table's width


def test_an_offline_node_shows_its_trends_but_no_current_readings() -> None:
    """An offline node's last readings were shown as its current CPU, memory, temperature
    and GPUs (the dashboard shows none; the metrics drop them): 57.7% CPU an hour ago read
    as 57.7% now."""
    gpu = node_pb2.Gpu(index=0, name="A100", utilization_gpu_percent=50, memory_total_bytes=GB)
    sample = node_pb2.Health(
        cpu_percent=57.7, memory_percent=10, memory_total_bytes=GB, current_max_temp=70, gpus=[gpu]
    )
    offline = node_pb2.NODE_STATUS_OFFLINE
    printed = _printed(client._health_table({"a": client.NodeTrend(offline, [sample] * 3)}))
    [row] = [line for line in printed.splitlines() if "offline" in line]
    assert "57.7%" not in printed and "gpu 0" not in printed and "70.0C" not in printed
    assert "▅▅▅" in row  # the trend of its last samples stays
    online = _printed(client._health_table({"a": client.NodeTrend(ONLINE, [sample])}))
    assert "57.7%" in online and "gpu 0" in online and "70.0C" in online


async def test_health_reads_a_history_larger_than_a_grpc_reply(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`health` asked for every node's history in one reply: with a few dozen nodes of 8
    GPUs (150 KB of history each) it passed the 4 MiB a gRPC client accepts, and the command
    failed with RESOURCE_EXHAUSTED for everybody."""
    gpus = [
        node_pb2.Gpu(index=i, name="N" * 256, uuid=f"GPU-{i}".ljust(256, "0")) for i in range(90)
    ]
    big = node_pb2.Health(memory_total_bytes=GB, gpus=gpus)  # 48 KB, under the 64 KiB bound
    names = [f"gpu{i}" for i in range(4)]
    # A sample every 0.025 s, not the Host's 0.2: 30 of them come sooner.
    runners = [
        await local_cluster.add_runner(name, health=lambda: big, heartbeat_interval=0.025)
        for name in names
    ]
    # 30 samples of each: 1.4 MB of history a node, 5.8 MB in all; then no more.
    await eventually(
        lambda: all(r.heartbeats_sent >= 30 for r in runners), within=30, what="30 samples each"
    )
    for runner in runners:
        runner.go_silent()
    config = local_cluster.cli_config(tmp_path / "client.toml")
    await asyncio.to_thread(client.health, "", False, 0, config, True)
    shown = json.loads(capsys.readouterr().out)
    assert sorted(node["hostname"] for node in shown) == names
    assert all(len(node["history"]) > 1 for node in shown)


def test_a_long_watch_keeps_only_the_samples_it_draws() -> None:
    """`health --watch` kept every sample it received: memory and the time of each redraw
    grew for as long as it ran."""
    trend = client.NodeTrend(ONLINE, [])
    for percent in range(1000):
        trend.add(node_pb2.Health(cpu_percent=percent % 100, memory_total_bytes=GB))
    assert len(trend.samples) == client.TREND_POINTS
    assert trend.samples[-1].cpu_percent == 99  # the newest kept
    assert "99.0%" in _printed(client._health_table({"a": trend}))


async def _asked_by_a_watch(
    cluster: LocalCluster,
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    host_announces: bool = True,
) -> list[str]:
    """What `health --watch --count 1 --json` of node "a" asked the Host, in order ("watch"
    when it asked to be told that its watch is in place, "read" for the readings), once it
    printed the node's one sample. ``host_announces=False``: a Host from before
    send_watching, which never says so."""
    assert cluster.server is not None
    host = cluster.server.cluster
    asked: list[str] = []
    read, watch = host.health, host.watch_health

    def reading(hostname: str = "") -> Any:
        asked.append("read")
        return read(hostname)

    def watching(hostname: str = "", announce: bool = False) -> Any:
        asked.append("watch" if announce else "watch, unannounced")
        return watch(hostname, announce and host_announces)

    monkeypatch.setattr(host, "health", reading)
    monkeypatch.setattr(host, "watch_health", watching)
    await asyncio.to_thread(client.health, "a", True, 1, config, True)
    [line] = capsys.readouterr().out.splitlines()
    assert json.loads(line)["hostname"] == "a"
    return asked


@pytest.mark.parametrize("over_connect", [False, True], ids=["grpc", "connect"])
async def test_health_watch_reads_the_readings_once_its_watch_is_in_place(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    over_connect: bool,
) -> None:
    """`health --watch` read the readings, then opened the watch: a node going offline (or
    its Runner's stream closing) between the two was never shown, the node staying online
    in the table. It now reads them after the Host said its watch was in place (over
    Connect too, on a connection of their own while the stream keeps its)."""
    await local_cluster.add_runner("a")
    config = local_cluster.cli_config(tmp_path / "client.toml", over_connect)
    asked = await _asked_by_a_watch(local_cluster, config, capsys, monkeypatch)
    assert asked[:2] == ["watch", "read"]


async def test_health_watch_of_a_host_that_sends_no_marker_reads_the_readings(
    local_cluster: LocalCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A Host from before send_watching never says its watch is in place: `health --watch`
    waited for that word and never read the readings (offline nodes never shown). It reads
    them at the first update instead."""
    await local_cluster.add_runner("a")
    config = local_cluster.cli_config(tmp_path / "client.toml")
    asked = await _asked_by_a_watch(
        local_cluster, config, capsys, monkeypatch, host_announces=False
    )
    assert asked[:2] == ["watch", "read"]


async def test_watch_count_counts_samples_not_changes_of_status(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`health --watch --count N` stopped after N updates of any kind: a Runner that
    reconnected (two changes of status) used up `--count 2` with no sample shown."""
    runner = await local_cluster.add_runner("a", heartbeats=False)
    config = local_cluster.cli_config(tmp_path / "client.toml")
    watching = asyncio.create_task(asyncio.to_thread(client.health, "a", True, 2, config, True))
    printed: list[str] = []

    def lines() -> list[str]:
        printed.extend(capsys.readouterr().out.splitlines())
        return printed

    async def reconnected() -> list[str]:
        await runner.connect()  # its stream closes, then it is back: two changes of status
        return lines()

    await eventually(reconnected, what="a change of status watched")
    while not watching.done():
        runner.send(rpb.ConnectRequest(heartbeat=rpb.Heartbeat(health=runner.health())))
        await asyncio.wait({watching}, timeout=0.05)
    await watching
    shown = [json.loads(line) for line in lines()]
    assert [("current" in node) for node in shown].count(True) == 2
    assert "current" in shown[-1]  # it ended with its second sample
    assert any("current" not in node for node in shown)  # the changes of status, shown


async def test_health_shows_a_draining_node(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`health` could not tell a draining node from one taking tasks (`nodes` could): not
    in its table, its --json, nor live with --watch."""
    await local_cluster.add_runner("a")
    await local_cluster.add_runner("b")
    heard: list[npb.NodeHealth] = []
    call = local_cluster.nodes.WatchHealth(npb.WatchHealthRequest(hostname="a"))

    async def listen() -> None:
        async for update in call:
            heard.append(update.node)

    listener = asyncio.create_task(listen())
    try:
        await eventually(lambda: heard, what="a first sample")
        await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
        told = await eventually(
            lambda: [n for n in heard if not n.HasField("current")], what="watchers told"
        )
        assert [(n.status, n.draining) for n in told] == [(ONLINE, True)]
    finally:
        call.cancel()
        await asyncio.gather(listener, return_exceptions=True)

    config = local_cluster.cli_config(tmp_path / "client.toml")
    nodes, status = await _health_shown(config, capsys, "", STATUS)
    shown = {node["hostname"]: node for node in nodes}
    assert shown["a"]["draining"] is True and "draining" not in shown["b"]
    assert (status["a"], status["b"]) == ("online (draining)", "online")


async def test_a_gpu_utilisation_nvml_cannot_read_is_unknown_not_idle(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GPU in MIG mode (NVML reads no utilisation) showed 0 % in `health`, its --json and
    /metrics: an idle GPU, while its instances may all be busy."""
    gpus = [
        node_pb2.Gpu(index=0, name="A100", utilization_gpu_percent=0, memory_total_bytes=GB),
        node_pb2.Gpu(index=1, name="A100 MIG", utilization_unknown=True, memory_total_bytes=GB),
    ]
    runner = await local_cluster.add_runner(
        "a", health=lambda: node_pb2.Health(memory_total_bytes=GB, gpus=gpus)
    )
    await eventually(lambda: runner.heartbeats_sent >= 2, what="heartbeats")
    values = await metric_values(local_cluster)
    for name in ("hakuriver_gpu_utilization_ratio", "hakuriver_gpu_memory_utilization_ratio"):
        assert values[name, (("gpu", "0"), ("node", "a"))] == 0  # idle: read as 0
        assert (name, (("gpu", "1"), ("node", "a"))) not in values  # unknown: no series
    assert values["hakuriver_gpu_memory_total_bytes", (("gpu", "1"), ("node", "a"))] == GB

    config = local_cluster.cli_config(tmp_path / "client.toml")
    [shown], utilisation = await _health_shown(config, capsys, "a", CPU)
    for sample in (shown["current"], *shown["history"]):
        idle, mig = sample["gpus"]
        assert (idle["utilization_gpu_percent"], idle["utilization_memory_percent"]) == (0, 0)
        assert (mig["utilization_gpu_percent"], mig["utilization_memory_percent"]) == (None, None)
    assert (utilisation["gpu 0"], utilisation["gpu 1"]) == ("0.0%", "-")


async def test_gpu_memory_nvml_cannot_read_is_unknown_not_empty(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """NVML may read no memory for a GPU ("Not Supported", as where its memory is the
    system's): it was reported 0 of 0 bytes, and health, its --json and /metrics showed
    an empty GPU memory of size 0."""
    gpus = [
        node_pb2.Gpu(index=0, name="A100", memory_used_bytes=0, memory_total_bytes=40 * GB),
        node_pb2.Gpu(index=1, name="GB10", utilization_gpu_percent=30),
    ]
    runner = await local_cluster.add_runner(
        "a", health=lambda: node_pb2.Health(memory_total_bytes=GB, gpus=gpus)
    )
    await eventually(lambda: runner.heartbeats_sent >= 2, what="heartbeats")
    values = await metric_values(local_cluster)
    for name, idle in (
        ("hakuriver_gpu_memory_used_bytes", 0),
        ("hakuriver_gpu_memory_total_bytes", 40 * GB),
    ):
        assert values[name, (("gpu", "0"), ("node", "a"))] == idle
        assert (name, (("gpu", "1"), ("node", "a"))) not in values  # unknown: no series
    assert values["hakuriver_gpu_utilization_ratio", (("gpu", "1"), ("node", "a"))] == 0.3

    config = local_cluster.cli_config(tmp_path / "client.toml")
    [shown], memory = await _health_shown(config, capsys, "a", MEMORY)
    idle, unread = shown["current"]["gpus"]
    assert (idle["memory_used_bytes"], idle["memory_total_bytes"]) == ("0", str(40 * GB))
    assert (unread["memory_used_bytes"], unread["memory_total_bytes"]) == (None, None)
    assert (memory["gpu 0"], memory["gpu 1"]) == ("0B/40.0G", "-")


async def test_health_names_a_gpu_that_dropped_out_of_the_readings(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A GPU NVML no longer reads (fallen off the bus) left health's table without a word:
    its row was gone, and nothing said the node had a GPU no task gets (`nodes` did)."""
    gpus = [node_pb2.Gpu(index=i, name="A100", memory_total_bytes=GB) for i in (0, 1)]
    runner = await local_cluster.add_runner(
        "a", gpus=gpus, health=lambda: node_pb2.Health(memory_total_bytes=GB, gpus=gpus[:1])
    )
    await eventually(lambda: runner.heartbeats_sent >= 2, what="heartbeats")
    await eventually(lambda: _unread(local_cluster), what="GPU 1 not read")
    config = local_cluster.cli_config(tmp_path / "client.toml")
    [shown], status = await _health_shown(config, capsys, "a", STATUS)
    assert shown["unread_gpus"] == [1]
    assert (status["gpu 0"], status["gpu 1"]) == ("A100", "not read")


async def test_health_lists_a_gpu_not_read_in_its_place(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """GPU 1 dropped out of 0-2 was listed last, after gpu 2: rows out of NVML's order,
    which `nodes` and the dashboard keep."""
    gpus = [node_pb2.Gpu(index=i, name="A100", memory_total_bytes=GB) for i in (0, 1, 2)]
    read = [gpus[0], gpus[2]]
    runner = await local_cluster.add_runner(
        "a", gpus=gpus, health=lambda: node_pb2.Health(memory_total_bytes=GB, gpus=read)
    )
    await eventually(lambda: runner.heartbeats_sent >= 2, what="heartbeats")
    await eventually(lambda: _unread(local_cluster), what="GPU 1 not read")
    config = local_cluster.cli_config(tmp_path / "client.toml")
    await asyncio.to_thread(client.health, "a", False, 0, config, False)
    cells = [line.split("│") for line in capsys.readouterr().out.splitlines()]
    rows = [row[1].strip() for row in cells if len(row) > 1 and "gpu" in row[1]]
    assert rows == ["gpu 0", "gpu 1", "gpu 2"]


# Columns of health's table split at its borders (1 is "node"); a GPU's row shows its name
# under "status", its utilisation under "cpu" and its memory under "memory".
STATUS, CPU, MEMORY = 2, 3, 5


async def _health_shown(
    config: Path, capsys: pytest.CaptureFixture[str], hostname: str, column: int
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """What `health HOSTNAME --json` prints, and column ``column`` of health's table by the
    name of its row (a node, or "gpu N")."""
    await asyncio.to_thread(client.health, hostname, False, 0, config, True)
    shown = json.loads(capsys.readouterr().out)
    await asyncio.to_thread(client.health, hostname, False, 0, config, False)
    cells = [line.split("│") for line in capsys.readouterr().out.splitlines()]
    return shown, {row[1].strip(): row[column].strip() for row in cells if len(row) > column}


async def _unread(cluster: LocalCluster) -> list[int]:
    return list((await cluster.node("a")).unread_gpus)


async def test_health_watch_of_an_unknown_node_fails_in_one_line(
    local_cluster: LocalCluster, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`health --watch NODE` of a node the Host does not know drew an empty table, then
    the error."""
    config = local_cluster.cli_config(tmp_path / "client.toml")
    watch = ["health", "--watch", "nope", "--config", str(config)]
    assert await asyncio.to_thread(exit_code, direct.run, client.app, "c", watch) == 1
    printed = capsys.readouterr()
    assert printed.out == ""
    assert printed.err == "error: hostname: unknown node 'nope' (NOT_FOUND)\n"


@pytest.mark.parametrize("over_connect", [False, True], ids=["grpc", "connect"])
async def test_health_watch_of_a_node_the_host_forgets_ends_in_one_line(
    make_local_cluster: MakeCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    over_connect: bool,
) -> None:
    """`health --watch NODE` of a node forgotten while watched (offline, no task of it
    kept) sat silent for ever: the Host dropped the node's changes from the watch. Its
    watch now ends with NOT_FOUND, and the command with one line and exit 1."""
    cluster = await make_local_cluster(timing={**TIMING, "forget_node_seconds": 1})
    runner = await cluster.add_runner("idle")
    config = cluster.cli_config(tmp_path / "client.toml", over_connect)
    watch = ["health", "--watch", "idle", "--json", "--config", str(config)]
    watching = exit_code_later(direct.run, client.app, "c", watch)
    await eventually(lambda: capsys.readouterr().out, what="the watch to print a sample")
    await runner.stop()
    assert await asyncio.wait_for(watching, 30) == 1
    assert capsys.readouterr().err.splitlines()[-1] == (
        "error: hostname: node 'idle' was forgotten (offline for timing.forget_node_seconds, "
        "and no task of it kept) (NOT_FOUND)"
    )


async def _watching_every_node(
    cluster: LocalCluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, json_lines: bool
) -> asyncio.Future[int]:
    """`health --watch --count 1` of every node (--json with ``json_lines``) in a thread of
    its own, once it has read the readings of "idle" and "busy"."""
    assert cluster.server is not None
    host = cluster.server.cluster
    read: list[str] = []
    reading = host.health

    def recorded(hostname: str = "") -> Any:
        read.append(hostname)
        return reading(hostname)

    monkeypatch.setattr(host, "health", recorded)
    config = cluster.cli_config(tmp_path / "client.toml")
    shown = ["--json"] if json_lines else []
    watch = ["health", "--watch", "--count", "1", *shown, "--config", str(config)]
    watching = exit_code_later(direct.run, client.app, "c", watch)
    await eventually(lambda: {"idle", "busy"} <= set(read), what="both nodes read")
    return watching


async def _forgotten(cluster: LocalCluster, hostname: str) -> None:
    async def gone() -> bool:
        listed = await cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5)
        return hostname not in {n.hostname for n in listed.nodes}

    await eventually(gone, within=30, what=f"the {hostname} node forgotten")


async def _forgotten_across_a_restart(
    cluster: LocalCluster, idle: FakeRunner, busy: FakeRunner, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Host restarts and forgets ``idle`` (stopped meanwhile); it holds every watch
    until then, so a watch in place before would have been told."""
    held = asyncio.Event()
    watch = Cluster.watch_health

    async def after_forgetting(self: Cluster, hostname: str = "", announce: bool = False) -> Any:
        await held.wait()
        async for change in watch(self, hostname, announce):
            yield change

    monkeypatch.setattr(Cluster, "watch_health", after_forgetting)
    await cluster.stop_host()
    await idle.stop()
    await cluster.start_host()
    await _forgotten(cluster, "idle")
    held.set()
    await eventually(lambda: busy.registrations > 1, what="busy back")


@pytest.mark.parametrize("json_lines", [False, True], ids=["table", "json"])
@pytest.mark.parametrize("restarted", [False, True], ids=["watched", "reconnecting"])
async def test_health_watch_of_every_node_drops_a_node_the_host_forgets(
    make_local_cluster: MakeCluster,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    restarted: bool,
    json_lines: bool,
) -> None:
    """`health --watch` of every node kept the row of a node forgotten while watched
    (offline, no task of it kept) for as long as it ran: the Host told a watch of every
    node nothing of it. The Host now says so (`forgotten`), and the row goes; --json says
    it in a line of its own. Forgotten while the watch reconnected to a restarted Host
    (never told), the row stayed too: the readings read again only added rows."""
    # Forgotten after 1.5 s: "busy", silent for its runner timeout (1 s), is back before.
    cluster = await make_local_cluster(timing={**TIMING, "forget_node_seconds": 1.5})
    idle = await cluster.add_runner("idle", heartbeats=False)
    busy = await cluster.add_runner("busy", heartbeats=False)
    watching = await _watching_every_node(cluster, tmp_path, monkeypatch, json_lines)
    if restarted:
        await _forgotten_across_a_restart(cluster, idle, busy, monkeypatch)
    else:
        await idle.stop()
        await _forgotten(cluster, "idle")
    while not watching.done():  # a sample, once the watch (a new one) is in place
        busy.send(rpb.ConnectRequest(heartbeat=rpb.Heartbeat(health=busy.health())))
        await asyncio.wait({watching}, timeout=0.05)
    assert await watching == 0
    out = capsys.readouterr().out
    if json_lines:
        lines = [json.loads(line) for line in out.splitlines()]
        assert {"hostname": "idle", "status": "offline", "forgotten": True} in lines
        assert lines[-1]["hostname"] == "busy" and "current" in lines[-1]
    else:
        assert "busy" in out and "idle" not in out
