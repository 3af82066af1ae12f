"""Monitoring: health history and watch, Prometheus metrics and rules, task history, webhooks."""

from __future__ import annotations

import json
import os
import re
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.harness import ProcessCluster, free_port, running_cluster, wait_for

pytestmark = pytest.mark.docker
DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring"
FAKE_NVML = str(Path(__file__).parent.parent / "fake_nvml")


class Receiver:
    """A webhook receiver on loopback that fails its first request, then records events."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []
        self.failures_left = 1
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.failures_left > 0:
                    receiver.failures_left -= 1
                    self.send_response(500)
                else:
                    receiver.events.append(json.loads(body))
                    self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = HTTPServer(("127.0.0.1", free_port()), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hook"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def of(self, event: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["event"] == event]


@pytest.fixture(scope="module")
def receiver() -> Iterator[Receiver]:
    r = Receiver()
    yield r
    r.server.shutdown()


@pytest.fixture(scope="module")
def mon(
    docker_ready: None, receiver: Receiver, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ProcessCluster]:
    extra = f'[[webhooks]]\nurl = "{receiver.url}"\nevents = ["*"]\nretry_base_seconds = 0.2\n'
    root = tmp_path_factory.mktemp("mon")
    with running_cluster(root, runner_count=1, heartbeat_timeout_factor=4, extra_config=extra) as c:
        c.start_runner(
            f"{c.runner_names[0]}-gpu",
            env={
                "PYTHONPATH": os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")]),
                "HAKURIVER_FAKE_GPUS": "2",
            },
        )
        yield c


def scrape(cluster: ProcessCluster) -> dict[str, list[Any]]:
    url = f"http://127.0.0.1:{cluster.metrics_port}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples: dict[str, list[Any]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list[Any]], name: str, **labels: str) -> float:
    found = [
        s.value
        for s in samples.get(name, [])
        if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(found) == 1, (name, labels, samples.get(name))
    return float(found[0])


def test_health_history_trend_and_watch(mon: ProcessCluster) -> None:
    name = mon.runner_names[0]

    def history() -> list[Any]:
        [entry] = json.loads(mon.cli("client", "health", name, "--json").stdout)
        return entry.get("history", [])

    assert (
        len(wait_for(lambda: len(history()) >= 3 and history(), what="three samples of history"))
        >= 3
    )
    table = mon.cli("client", "health")
    assert table.returncode == 0
    assert re.search("[▁▂▃▄▅▆▇█]", table.stdout), table.stdout
    assert "gpu 0" in table.stdout and "NVIDIA A100" in table.stdout
    watched = mon.cli("client", "health", name, "--watch", "--count", "3", "--json", timeout=30)
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert len(lines) == 3 and {line["hostname"] for line in lines} == {name}
    assert all(int(line["current"]["memory_total_bytes"]) > 0 for line in lines)


def test_a_watched_table_to_a_pipe_ends_its_last_line(mon: ProcessCluster) -> None:
    """Printed to a pipe or file, `health --watch` left its table's last line unended (the
    shell prompt followed it); `--count` without `--watch`, or below 0, was ignored."""
    name = mon.runner_names[0]
    watched = mon.cli("client", "health", name, "--watch", "--count", "1", timeout=30)
    assert watched.returncode == 0, watched.stderr
    assert watched.stdout.endswith("┘\n"), watched.stdout[-40:]
    alone = mon.cli("client", "health", "--count", "3")
    assert alone.returncode == 2
    assert alone.stderr == (
        "error: --count needs --watch: without it health prints the readings once\n"
    )
    below = mon.cli("client", "health", "--watch", "--count", "-1")
    assert below.returncode == 2 and "--count" in below.stderr, below.stderr


def test_prometheus_metrics_from_a_live_host(mon: ProcessCluster) -> None:
    gpu_node = mon.runner_names[1]
    failed = mon.submit(["sh", "-c", "exit 2"])
    assert mon.wait_final(failed.task_id).status == task_pb2.TASK_STATUS_FAILED

    def scraped() -> dict[str, list[Any]] | None:
        samples = scrape(mon)
        return samples if "hakuriver_gpu_temperature_celsius" in samples else None

    samples = wait_for(scraped, what="GPU metrics")
    for node in mon.runner_names:
        assert value(samples, "hakuriver_node_up", node=node) == 1
        assert value(samples, "hakuriver_node_memory_total_bytes", node=node) > 0
        assert 0 <= value(samples, "hakuriver_node_cpu_utilization_ratio", node=node) <= 1
    assert value(samples, "hakuriver_gpu_utilization_ratio", node=gpu_node, gpu="1") == 0.51
    assert value(samples, "hakuriver_gpu_temperature_celsius", node=gpu_node, gpu="0") == 60
    assert value(samples, "hakuriver_gpu_power_limit_watts", node=gpu_node, gpu="0") == 250
    assert value(samples, "hakuriver_gpu_memory_total_bytes", node=gpu_node, gpu="0") == 40e9
    assert value(samples, "hakuriver_tasks_finished_total", status="failed", kind="command") >= 1
    assert value(samples, "hakuriver_tasks", status="failed", kind="command") >= 1
    assert value(samples, "hakuriver_queue_depth") == 0
    assert value(samples, "hakuriver_task_dispatch_seconds_count") >= 1
    assert value(samples, "hakuriver_runners_connected") == 2


def _metric_names(expression: str) -> set[str]:
    return set(re.findall(r"\b(hakuriver_[a-z0-9_]+)\b", expression))


def test_alert_rules_and_dashboard_use_real_metrics(mon: ProcessCluster) -> None:
    names = set(
        wait_for(
            lambda: scrape(mon) if "hakuriver_gpu_temperature_celsius" in scrape(mon) else None,
            what="a full scrape",
        )
    )
    rules = yaml.safe_load((DOCS / "prometheus-alerts.yml").read_text())
    alerts = {r["alert"]: r for group in rules["groups"] for r in group["rules"]}
    assert {
        "HakuRiverHostDown",
        "HakuRiverNodeOffline",
        "HakuRiverGpuOverheating",
        "HakuRiverTaskFailureRateHigh",
        "HakuRiverQueueLong",
    } <= set(alerts)
    for alert, rule in alerts.items():
        used = _metric_names(rule["expr"])
        if alert == "HakuRiverHostDown":  # Prometheus's own series of the scrape
            assert not used and rule["expr"].startswith('up{job="hakuriver"}'), rule["expr"]
            continue
        assert used, alert
        assert used <= names, (alert, used - names)
        assert rule["labels"]["severity"] in ("warning", "critical")
    dashboard = json.loads((DOCS / "grafana-dashboard.json").read_text())
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            used = _metric_names(target["expr"])
            assert used and used <= names, (panel["title"], used - names)


def test_task_history_filters_and_detail(mon: ProcessCluster, tmp_path: Path) -> None:
    task = mon.submit(
        ["sh", "-c", "exit 0", "first-arg"],
        targets=[task_pb2.Target(hostname=mon.runner_names[0])],
        env={"COLOUR": "blue"},
        cores=1,
        memory="64M",
        mounts=[task_pb2.Mount(host_path=str(tmp_path), container_path="/data", read_only=True)],
    )
    mon.wait_final(task.task_id)

    def ids(*args: str) -> list[str]:
        result = mon.cli("task", "list", "--json", *args)
        assert result.returncode == 0, result.stderr
        return [t["task_id"] for t in json.loads(result.stdout)]

    assert str(task.task_id) in ids("--kind", "command", "--since", "10m")
    assert str(task.task_id) not in ids("--kind", "vps")
    assert str(task.task_id) not in ids("--since", "2999-01-01T00:00")
    assert str(task.task_id) in ids("--node", mon.runner_names[0], "--status", "completed")
    assert str(task.task_id) not in ids("--node", mon.runner_names[1])
    page = ids("--limit", "1")
    assert len(page) == 1 and ids("--limit", "1", "--before", page[0]) != page
    bad = mon.cli("task", "list", "--since", "yesterday")
    assert bad.returncode == 2 and "--since 'yesterday'" in bad.stderr
    detail = mon.cli("client", "status", str(task.task_id))
    assert detail.returncode == 0, detail.stderr
    shown = dict(
        line.split(None, 1) if " " in line.strip() else (line.strip(), "")
        for line in detail.stdout.split("\ntimeline:")[0].splitlines()
        if line.strip()
    )
    expected = {
        "task_id": str(task.task_id),
        "task_type": "command",
        "status": "completed",
        "command": "sh",
        "arguments": "-c exit 0 first-arg",
        "env": "COLOUR=blue",
        "assigned_node": mon.runner_names[0],
        "required_cores": "1",
        "required_memory_bytes": str(64_000_000),
        "required_gpus": "-",
        "gpu_count": "-",
        "target_numa_node_id": "-",
        "batch_id": "-",  # a single-target submission has no batch
        "privileged": "false",
        "mounts": f"{tmp_path}:/data:ro",
        "exit_code": "0",
        "error_message": "-",
        "ssh_port": "-",
    }
    assert {k: shown.get(k, "").strip() for k in expected} == expected, detail.stdout
    for field in ("container_name", "submitted_at", "started_at", "completed_at"):
        assert shown.get(field, "-").strip() != "-", (field, detail.stdout)
    assert shown["stdout_path"].strip().endswith(f"{task.task_id}.out")
    assert shown["stderr_path"].strip().endswith(f"{task.task_id}.err")
    timeline = [
        line.split()[2] for line in detail.stdout.split("timeline:")[1].splitlines() if line.strip()
    ]
    assert timeline[0] == "pending" and timeline[-1] == "completed" and "running" in timeline, (
        timeline
    )


def test_webhooks_and_metrics_follow_nodes_and_tasks(
    mon: ProcessCluster, receiver: Receiver
) -> None:
    failed = mon.submit(["sh", "-c", "exit 9"])
    mon.wait_final(failed.task_id)
    event = wait_for(
        lambda: [
            e for e in receiver.of("task.failed") if e["task"]["task_id"] == str(failed.task_id)
        ],
        what="the task.failed webhook",
    )[0]
    assert event["task"]["exit_code"] == 9 and event["task"]["kind"] == "command"
    assert event["task"]["command"] == "sh -c 'exit 9'", event["task"]
    assert event["task"]["owner"] == "admin"
    assert receiver.failures_left == 0, "the first delivery should have failed and been retried"
    gpu_node = mon.runner_names[1]
    mon.kill_runner(gpu_node)
    wait_for(
        lambda: any(e["node"] == gpu_node for e in receiver.of("node.offline")), what="node.offline"
    )
    offline = scrape(mon)
    assert value(offline, "hakuriver_node_up", node=gpu_node) == 0
    stale = [
        s for s in offline.get("hakuriver_gpu_temperature_celsius", [])
        if s.labels["node"] == gpu_node
    ]  # fmt: skip
    assert not stale, "an offline node's readings must not linger (alerts would fire on them)"
    mon.start_runner(
        gpu_node,
        env={
            "PYTHONPATH": os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")]),
            "HAKURIVER_FAKE_GPUS": "2",
        },
    )
    wait_for(
        lambda: any(e["node"] == gpu_node for e in receiver.of("node.online")), what="node.online"
    )


def _health_gpus(cluster: ProcessCluster, name: str) -> list[int]:
    [entry] = json.loads(cluster.cli("client", "health", name, "--json").stdout)
    return [g.get("index", 0) for g in entry["current"].get("gpus", [])]


def _gpu_series(cluster: ProcessCluster, name: str) -> set[str]:
    """The GPUs of node ``name`` that have a temperature series."""
    samples = scrape(cluster).get("hakuriver_gpu_temperature_celsius", [])
    return {s.labels["gpu"] for s in samples if s.labels["node"] == name}


def test_a_gpu_lost_or_nvml_failing_keeps_the_node_and_its_tasks(
    mon: ProcessCluster, tmp_path: Path
) -> None:
    """NVML failing under a running Runner (a GPU fallen off the bus, the driver gone, NVML
    not answering at all) is shown in its readings and metrics (no stale series of a GPU
    no longer read, on which an alert could fire); the node stays connected and its tasks
    keep running. A task naming the fallen GPU waits, saying so (readings without any GPU
    change nothing), and is placed once the GPU is read again."""
    lost = tmp_path / "lost-gpus"
    name = mon.start_runner(
        f"{mon.runner_names[0]}-lossy",
        env={
            "PYTHONPATH": os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")]),
            "HAKURIVER_FAKE_GPUS": "4",
            "HAKURIVER_FAKE_NVML_LOST": str(lost),
        },
    )
    task = mon.submit(["sleep", "300"], targets=[task_pb2.Target(hostname=name)])
    mon.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    assert _health_gpus(mon, name) == [0, 1, 2, 3]
    faults = (
        ("1", [0, 2, 3]),
        ("all", []),
        (None, [0, 1, 2, 3]),
        ("hang", []),
        (None, [0, 1, 2, 3]),
    )
    named = None
    for fault, reported in faults:
        if fault is None:
            lost.unlink()
        else:
            lost.write_text(fault)
        wait_for(lambda r=reported: _health_gpus(mon, name) == r, what=f"GPUs {reported}")  # type: ignore[misc]
        wait_for(
            lambda r=reported: _gpu_series(mon, name) == {str(i) for i in r},  # type: ignore[misc]
            what=f"metrics of GPUs {reported} alone",
        )
        [node] = [n for n in json.loads(mon.cli("client", "nodes", "--json").stdout)
                  if n["hostname"] == name]  # fmt: skip
        assert node["status"] == "online" and not node.get("disconnected"), node
        if fault in ("1", "all"):
            on_one = task_pb2.Target(hostname=name, gpu_ids=[1])
            named = named or mon.submit(["true"], targets=[on_one])
            waiting = mon.get(named.task_id)
            assert waiting.status == task_pb2.TASK_STATUS_PENDING, waiting
            assert waiting.status_detail == (
                f"node {name}'s GPU 1 dropped out of its readings (NVML cannot read it)"
            )
    assert named is not None
    placed = mon.get(named.task_id)  # GPU 1 read again two steps ago
    assert placed.status != task_pb2.TASK_STATUS_PENDING and list(placed.required_gpus) == [1]
    assert mon.get(task.task_id).status == task_pb2.TASK_STATUS_RUNNING
    mon.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30)
    mon.wait_final(task.task_id)
    mon.kill_runner(name)


def test_a_gpu_unread_when_the_host_restarts_stays_its_nodes_until_the_runner_restarts(
    fresh_cluster: ProcessCluster, tmp_path: Path
) -> None:
    """GPU 1 cannot be read when the Host restarts: the Runner's registration with the new
    Host reads GPU 0 alone, yet the same Runner process keeps GPU 1 on its node, unread (it
    was dropped from the node until the Runner restarted). A restarted Runner has the GPUs
    it reads."""
    lost = tmp_path / "lost-gpus"
    env = {
        "PYTHONPATH": os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")]),
        "HAKURIVER_FAKE_GPUS": "2",
        "HAKURIVER_FAKE_NVML_LOST": str(lost),
    }
    name = fresh_cluster.start_runner(f"{fresh_cluster.runner_names[0]}-gpu", env=env)
    lost.write_text("1")
    wait_for(lambda: _health_gpus(fresh_cluster, name) == [0], what="GPU 0 alone read")

    fresh_cluster.kill_host()
    fresh_cluster.start_host()
    wait_for(lambda: fresh_cluster.node_online(name), what="the Runner back")
    assert _node_gpus(fresh_cluster, name) == ([0, 1], [1])

    fresh_cluster.kill_runner(name)
    fresh_cluster.start_runner(name, env=env)
    wait_for(lambda: _node_gpus(fresh_cluster, name) == ([0], []), what="GPU 0 alone")


def _node_gpus(cluster: ProcessCluster, name: str) -> tuple[list[int], list[int]]:
    """The node's GPUs and those of them unread, as ``hakuriver.client nodes --json`` shows."""
    nodes = json.loads(cluster.cli("client", "nodes", "--json").stdout)
    [node] = [n for n in nodes if n["hostname"] == name]
    return [g.get("index", 0) for g in node["gpus"]], node.get("unread_gpus", [])


def test_a_gpu_in_mig_mode_has_no_utilisation_rather_than_0(mon: ProcessCluster) -> None:
    """NVML reads no utilisation for a GPU in MIG mode: a real Runner reported 0 %, and
    health, its --json and /metrics showed an idle GPU while its instances could be busy."""
    name = mon.start_runner(
        f"{mon.runner_names[0]}-mig",
        env={
            "PYTHONPATH": os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")]),
            "HAKURIVER_FAKE_GPUS": "2",
            "HAKURIVER_FAKE_MIG": "1",
        },
    )
    wait_for(lambda: _health_gpus(mon, name) == [0, 1], what="its GPUs read")
    [entry] = json.loads(mon.cli("client", "health", name, "--json").stdout)
    read, mig = entry["current"]["gpus"]
    assert (read["utilization_gpu_percent"], read["utilization_memory_percent"]) == (50, 10)
    assert (mig["utilization_gpu_percent"], mig["utilization_memory_percent"]) == (None, None)
    table = mon.cli("client", "health", name).stdout
    [row] = [line.split("│") for line in table.splitlines() if "gpu 1" in line]
    assert row[3].strip() == "-", table
    samples = scrape(mon)
    for metric in ("hakuriver_gpu_utilization_ratio", "hakuriver_gpu_memory_utilization_ratio"):
        assert {s.labels["gpu"] for s in samples[metric] if s.labels["node"] == name} == {"0"}
    assert value(samples, "hakuriver_gpu_memory_total_bytes", node=name, gpu="1") == 40e9
    mon.kill_runner(name)
