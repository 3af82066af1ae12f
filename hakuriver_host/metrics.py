"""Prometheus metrics of the Host, in a registry of its own (one per Host instance).

Names follow Prometheus conventions: ``hakuriver_`` prefix, base units (bytes, seconds,
degrees Celsius, watts, ratios 0-1), ``_total`` for counters.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hakuriver_common.proto.hakuriver.v1 import node_pb2
from hakuriver_common.statuses import FINAL_STATUSES, NodeStatus, TaskKind, TaskStatus

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
            "Task output chunks that could not be stored (a full disk, an I/O error).",
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
        node = ["node"]
        gpu = ["node", "gpu"]
        self.node_cpu = Gauge(
            "hakuriver_node_cpu_utilization_ratio", "CPU utilisation (0-1).", node, registry=r
        )
        self.node_memory_used = Gauge(
            "hakuriver_node_memory_used_bytes", "Memory in use.", node, registry=r
        )
        self.node_memory_total = Gauge(
            "hakuriver_node_memory_total_bytes", "Memory installed.", node, registry=r
        )
        self.node_temperature = Gauge(
            "hakuriver_node_temperature_celsius",
            "Sensor temperature: average and maximum over the node's sensors.",
            ["node", "stat"],
            registry=r,
        )
        self.gpu_utilization = Gauge(
            "hakuriver_gpu_utilization_ratio", "GPU utilisation (0-1).", gpu, registry=r
        )
        self.gpu_memory_utilization = Gauge(
            "hakuriver_gpu_memory_utilization_ratio",
            "GPU memory controller utilisation (0-1).",
            gpu,
            registry=r,
        )
        self.gpu_memory_used = Gauge(
            "hakuriver_gpu_memory_used_bytes", "GPU memory in use.", gpu, registry=r
        )
        self.gpu_memory_total = Gauge(
            "hakuriver_gpu_memory_total_bytes", "GPU memory installed.", gpu, registry=r
        )
        self.gpu_temperature = Gauge(
            "hakuriver_gpu_temperature_celsius", "GPU temperature.", gpu, registry=r
        )
        self.gpu_power = Gauge("hakuriver_gpu_power_watts", "GPU power draw.", gpu, registry=r)
        self.gpu_power_limit = Gauge(
            "hakuriver_gpu_power_limit_watts", "GPU power limit.", gpu, registry=r
        )
        self._gpu_gauges = (
            self.gpu_utilization,
            self.gpu_memory_utilization,
            self.gpu_memory_used,
            self.gpu_memory_total,
            self.gpu_temperature,
            self.gpu_power,
            self.gpu_power_limit,
        )
        # GPU indices seen per node, to remove their series when the node goes offline.
        self._gpus: dict[str, set[str]] = {}
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
        for gauge in (self.node_cpu, self.node_memory_used, self.node_memory_total):
            gauge.remove(node)
        for stat in ("avg", "max"):
            self.node_temperature.remove(node, stat)
        self._drop_gpus(node, self._gpus.pop(node, set()))

    def _drop_gpus(self, node: str, gpus: set[str]) -> None:
        """Drop the series of these GPUs (by index) of a node."""
        for gpu in gpus:
            for gauge in self._gpu_gauges:
                gauge.remove(node, gpu)

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
        """Set a node's readings from its heartbeat. A reading it no longer sends (a sensor
        gone, a GPU fallen off the bus) has its series dropped, as for an offline node:
        a stale value would keep an alert firing, or hide one."""
        self.node_cpu.labels(node=node).set(health.cpu_percent / 100)
        self.node_memory_used.labels(node=node).set(health.memory_used_bytes)
        self.node_memory_total.labels(node=node).set(health.memory_total_bytes)
        avg = health.current_avg_temp if health.HasField("current_avg_temp") else None
        peak = health.current_max_temp if health.HasField("current_max_temp") else None
        _set_or_remove(self.node_temperature, (node, "avg"), avg)
        _set_or_remove(self.node_temperature, (node, "max"), peak)
        seen = {str(g.index) for g in health.gpus}
        self._drop_gpus(node, self._gpus.get(node, set()) - seen)
        self._gpus[node] = seen
        for g in health.gpus:
            self._gpu_health(node, g)

    def _gpu_health(self, node: str, g: node_pb2.Gpu) -> None:
        labels = (node, str(g.index))
        # A GPU whose utilisation NVML cannot read (MIG mode) has no series, not a 0.
        unknown = g.utilization_unknown
        busy = None if unknown else g.utilization_gpu_percent / 100
        memory_busy = None if unknown else g.utilization_memory_percent / 100
        _set_or_remove(self.gpu_utilization, labels, busy)
        _set_or_remove(self.gpu_memory_utilization, labels, memory_busy)
        # No size: NVML read no memory (no GPU has none), so no series rather than 0.
        total = g.memory_total_bytes or None
        _set_or_remove(self.gpu_memory_used, labels, g.memory_used_bytes if total else None)
        _set_or_remove(self.gpu_memory_total, labels, total)
        temperature = g.temperature_celsius if g.HasField("temperature_celsius") else None
        power = g.power_draw_watts if g.HasField("power_draw_watts") else None
        limit = g.power_limit_watts if g.HasField("power_limit_watts") else None
        _set_or_remove(self.gpu_temperature, labels, temperature)
        _set_or_remove(self.gpu_power, labels, power)
        _set_or_remove(self.gpu_power_limit, labels, limit)


def _set_or_remove(gauge: Gauge, labels: tuple[str, ...], value: float | None) -> None:
    """Set a series, or drop it when there is no reading (absent, never a stale value)."""
    if value is not None:
        gauge.labels(*labels).set(value)
    else:
        gauge.remove(*labels)
