"""Prometheus metrics of the Host, in a registry of its own (one per Host instance).

Names follow Prometheus conventions: ``hakuriver_`` prefix, base units (bytes, seconds,
degrees Celsius, watts, ratios 0-1), ``_total`` for counters.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from hakuriver_common.proto.hakuriver.v1 import node_pb2
from hakuriver_common.statuses import FINAL_STATUSES, NodeStatus, TaskKind, TaskStatus
from hakuriver_host.scheduler import Scheduler

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class HostMetrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.nodes = Gauge("hakuriver_nodes", "Runner nodes by status.", ["status"], registry=r)
        self.node_up = Gauge(
            "hakuriver_node_up",
            "1 while a runner node is online, 0 when offline.",
            ["node"],
            registry=r,
        )
        self.node_draining = Gauge(
            "hakuriver_node_draining",
            "1 while a runner node is drained (it gets no new tasks), 0 otherwise.",
            ["node"],
            registry=r,
        )
        self.tasks = Gauge(
            "hakuriver_tasks", "Tasks by status and kind.", ["status", "kind"], registry=r
        )
        self.queue_depth = Gauge(
            "hakuriver_queue_depth", "Tasks waiting to be placed (pending).", registry=r
        )
        self.calls_waiting = Gauge(
            "hakuriver_grpc_calls_waiting",
            "Unary calls waiting for one of their caller's turns (auth.calls_per_caller).",
            registry=r,
        )
        self.runners_connected = Gauge(
            "hakuriver_runners_connected", "Runners with an open Connect stream.", registry=r
        )
        self.submit_to_running = Histogram(
            "hakuriver_task_submit_to_running_seconds",
            "Time from submission to the runner reporting the task running.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.dispatch_latency = Histogram(
            "hakuriver_task_dispatch_seconds",
            "Time from dispatching a task to its runner to the runner reporting it running.",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.tasks_submitted = Counter(
            "hakuriver_tasks_submitted_total", "Tasks accepted.", ["kind"], registry=r
        )
        self.tasks_finished = Counter(
            "hakuriver_tasks_finished_total",
            "Tasks that reached a final status, by outcome.",
            ["status", "kind"],
            registry=r,
        )
        self.grpc_requests = Counter(
            "hakuriver_grpc_requests_total",
            "gRPC requests by method and status code (streams count when they end).",
            ["method", "code"],
            registry=r,
        )
        self.grpc_latency = Histogram(
            "hakuriver_grpc_request_duration_seconds",
            "gRPC request handling time by method (streams: their whole duration).",
            ["method"],
            registry=r,
        )
        self.output_errors = Counter(
            "hakuriver_output_write_errors_total",
            "Task output chunks that could not be stored (a full disk, an I/O error), and those "
            "after such a chunk, which can no longer continue its file.",
            registry=r,
        )
        self.output_failing = Gauge(
            "hakuriver_output_storage_failing",
            "1 while the Host's latest try to store a node's task output failed (a full "
            "disk, an I/O error); 0 once a write succeeds with room again.",
            ["node"],
            registry=r,
        )
        self.output_gaps = Counter(
            "hakuriver_output_gaps_refused_total",
            "Task output chunks refused because they would leave a gap in the file.",
            registry=r,
        )
        self.log_bytes = Counter(
            "hakuriver_log_bytes_received_total", "Task output bytes stored.", registry=r
        )
        self.ssh_tunnels = Counter(
            "hakuriver_ssh_tunnels_total",
            "SSH sessions let through the proxy, by the path their bytes took from the Runner: "
            "dialled (its own connection to the proxy port) or stream (its Connect stream).",
            ["path"],
            registry=r,
        )
        # The node and GPU readings, from each online node's last heartbeat.
        self.readings = NodeReadings()
        r.register(self.readings)
        # The series of every status and kind, looked up once (``labels`` costs a few us,
        # and every change of a task's status moves three).
        self._by_status: dict[tuple[str, str], Gauge] = {}
        self._finished: dict[tuple[str, str], Counter] = {}
        for status in TaskStatus:
            for kind in TaskKind:
                series = self._by_status[status, kind] = self.tasks.labels(status.value, kind)
                series.set(0)
                if status in FINAL_STATUSES:
                    self._finished[status, kind] = self.tasks_finished.labels(status.value, kind)
        for kind in TaskKind:
            self.tasks_submitted.labels(kind=kind)
        for node_status in NodeStatus:
            self.nodes.labels(status=node_status).set(0)

    def node_offline(self, node: str) -> None:
        """Drop an offline node's readings so alerts never fire on stale values."""
        self.readings.latest.pop(node, None)

    def tasks_added(self, kind: str, count: int) -> None:
        """``count`` new pending tasks of ``kind``, counted at once (a job array is one
        submission)."""
        self._by_status[TaskStatus.PENDING, kind].inc(count)
        self.queue_depth.inc(count)
        self.tasks_submitted.labels(kind=kind).inc(count)

    def tasks_moved(self, moves: Iterable[tuple[TaskStatus, TaskStatus, str]]) -> None:
        """Stored changes of status, (old, new, kind) each (nothing moves to pending: new
        tasks are ``tasks_added``); counted together, as a write's changes are stored: a
        series' update takes a lock, and a Runner's message holds dozens of changes."""
        for (old, new, kind), count in collections.Counter(moves).items():
            self._by_status[old, kind].dec(count)
            self._by_status[new, kind].inc(count)
            if old is TaskStatus.PENDING:
                self.queue_depth.dec(count)
            if new in FINAL_STATUSES:
                self._finished[new, kind].inc(count)

    def tasks_forgotten(self, counts: Mapping[tuple[TaskStatus, TaskKind], int]) -> None:
        """Ended tasks forgotten (``retention``), ``counts`` by (status, kind)."""
        for (status, kind), count in counts.items():
            self._by_status[status, kind].dec(count)

    def node_health(self, node: str, health: node_pb2.Health) -> None:
        """A node's readings, from its heartbeat."""
        self.readings.latest[node] = health

    def allocations_of(self, scheduler: Scheduler) -> None:
        """Serve what ``scheduler``'s nodes have allocated (``Allocations``)."""
        self.registry.register(Allocations(scheduler))


def _node_families() -> dict[str, GaugeMetricFamily]:
    node, gpu = ["node"], ["node", "gpu"]
    families = (
        ("hakuriver_node_cpu_utilization_ratio", "CPU utilisation (0-1).", node),
        ("hakuriver_node_memory_used_bytes", "Memory in use.", node),
        ("hakuriver_node_memory_total_bytes", "Memory installed.", node),
        (
            "hakuriver_node_temperature_celsius",
            "Sensor temperature: average and maximum over the node's sensors.",
            ["node", "stat"],
        ),
        ("hakuriver_gpu_utilization_ratio", "GPU utilisation (0-1).", gpu),
        (
            "hakuriver_gpu_memory_utilization_ratio",
            "GPU memory controller utilisation (0-1).",
            gpu,
        ),
        ("hakuriver_gpu_memory_used_bytes", "GPU memory in use.", gpu),
        ("hakuriver_gpu_memory_total_bytes", "GPU memory installed.", gpu),
        ("hakuriver_gpu_temperature_celsius", "GPU temperature.", gpu),
        ("hakuriver_gpu_power_watts", "GPU power draw.", gpu),
        ("hakuriver_gpu_power_limit_watts", "GPU power limit.", gpu),
    )
    return {name: GaugeMetricFamily(name, text, labels=labels) for name, text, labels in families}


def _present(message: Any, field: str) -> float | None:
    return float(getattr(message, field)) if message.HasField(field) else None


class NodeReadings(Collector):
    """The node and GPU gauges, built from the online nodes' last heartbeats when /metrics
    is scraped: setting a dozen series at every heartbeat cost about a fifth of the Host's
    CPU at 1,000 heartbeats/s. A reading a heartbeat does not carry (a sensor gone, a GPU
    fallen off the bus, an offline node) has no series, never a stale value: a stale value
    would keep an alert firing, or hide one."""

    def __init__(self) -> None:
        self.latest: dict[str, node_pb2.Health] = {}

    def describe(self) -> Iterable[Metric]:
        return list(_node_families().values())

    def collect(self) -> Iterable[Metric]:
        families = _node_families()

        def put(name: str, labels: list[str], value: float | None) -> None:
            if value is not None:
                families[name].add_metric(labels, value)

        for node, health in list(self.latest.items()):
            put("hakuriver_node_cpu_utilization_ratio", [node], health.cpu_percent / 100)
            put("hakuriver_node_memory_used_bytes", [node], health.memory_used_bytes)
            put("hakuriver_node_memory_total_bytes", [node], health.memory_total_bytes)
            temperature = "hakuriver_node_temperature_celsius"
            put(temperature, [node, "avg"], _present(health, "current_avg_temp"))
            put(temperature, [node, "max"], _present(health, "current_max_temp"))
            for g in health.gpus:
                labels = [node, str(g.index)]
                # A GPU whose utilisation NVML cannot read (MIG mode) has no series, not a 0.
                if not g.utilization_unknown:
                    put("hakuriver_gpu_utilization_ratio", labels, g.utilization_gpu_percent / 100)
                    busy = g.utilization_memory_percent / 100
                    put("hakuriver_gpu_memory_utilization_ratio", labels, busy)
                # No size: NVML read no memory (no GPU has none), so no series rather than 0.
                if g.memory_total_bytes:
                    put("hakuriver_gpu_memory_used_bytes", labels, g.memory_used_bytes)
                    put("hakuriver_gpu_memory_total_bytes", labels, g.memory_total_bytes)
                put("hakuriver_gpu_temperature_celsius", labels, _present(g, "temperature_celsius"))
                put("hakuriver_gpu_power_watts", labels, _present(g, "power_draw_watts"))
                put("hakuriver_gpu_power_limit_watts", labels, _present(g, "power_limit_watts"))
        return list(families.values())


def _allocation_families() -> dict[str, GaugeMetricFamily]:
    node = ["node"]
    families = (
        ("hakuriver_node_cpu_cores", "CPU cores tasks can be given.", node),
        ("hakuriver_node_cpu_cores_allocated", "CPU cores held by tasks.", node),
        ("hakuriver_node_memory_allocatable_bytes", "Memory tasks can reserve.", node),
        ("hakuriver_node_memory_allocated_bytes", "Memory reserved by tasks (--memory).", node),
        ("hakuriver_node_gpus", "GPUs tasks can be given.", node),
        ("hakuriver_node_gpus_allocated", "GPUs held by tasks.", node),
        ("hakuriver_gpu_allocated", "1 while a task holds the GPU, 0 otherwise.", ["node", "gpu"]),
    )
    return {name: GaugeMetricFamily(name, text, labels=labels) for name, text, labels in families}


class Allocations(Collector):
    """What the scheduler has given tasks on each node it knows, read when /metrics is
    scraped (from the metrics thread: each node's holders are copied at once, so a change on
    the event loop meanwhile never breaks the reading), not kept up at each placement."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def describe(self) -> Iterable[Metric]:
        return list(_allocation_families().values())

    def collect(self) -> Iterable[Metric]:
        families = _allocation_families()
        for node in list(self.scheduler.nodes.values()):
            held = list(node.holders.values())
            gpus = {g for allocation in held for g in allocation.gpus}
            name = [node.hostname]
            families["hakuriver_node_cpu_cores"].add_metric(name, len(node.cpus))
            cores = sum(len(allocation.cpus) for allocation in held)
            families["hakuriver_node_cpu_cores_allocated"].add_metric(name, cores)
            families["hakuriver_node_memory_allocatable_bytes"].add_metric(name, node.memory_bytes)
            memory = sum(allocation.memory_bytes for allocation in held)
            families["hakuriver_node_memory_allocated_bytes"].add_metric(name, memory)
            families["hakuriver_node_gpus"].add_metric(name, len(node.gpus))
            families["hakuriver_node_gpus_allocated"].add_metric(name, len(gpus))
            for gpu in sorted(set(node.gpus) | gpus):
                taken = 1 if gpu in gpus else 0
                families["hakuriver_gpu_allocated"].add_metric([node.hostname, str(gpu)], taken)
        return list(families.values())
