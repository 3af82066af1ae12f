"""Prometheus metrics of the Host, in a registry of its own (one per Host instance)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from hakuriver_host.task_machine import TaskStatus

LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300)


class HostMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.nodes = Gauge(
            "hakuriver_nodes", "Runner nodes by status.", ["status"], registry=self.registry
        )
        self.tasks = Gauge(
            "hakuriver_tasks", "Tasks by status.", ["status"], registry=self.registry
        )
        self.runners_connected = Gauge(
            "hakuriver_runners_connected",
            "Runners with an open Connect stream.",
            registry=self.registry,
        )
        self.submit_to_running = Histogram(
            "hakuriver_task_submit_to_running_seconds",
            "Time from submission to the runner reporting the task running.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.tasks_submitted = Counter(
            "hakuriver_tasks_submitted_total", "Tasks accepted.", registry=self.registry
        )
        self.log_bytes = Counter(
            "hakuriver_log_bytes_received_total",
            "Task output bytes stored.",
            registry=self.registry,
        )
        for status in TaskStatus:
            self.tasks.labels(status=status.value).set(0)
        for node_status in ("online", "offline"):
            self.nodes.labels(status=node_status).set(0)

    def task_moved(self, old: TaskStatus | None, new: TaskStatus) -> None:
        if old is not None:
            self.tasks.labels(status=old.value).dec()
        self.tasks.labels(status=new.value).inc()
