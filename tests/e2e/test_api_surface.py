"""Standard gRPC health and reflection, and Prometheus /metrics from a live Host."""

from __future__ import annotations

import urllib.request

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.e2e.harness import ProcessCluster

pytestmark = pytest.mark.docker


def test_health_service_reports_serving(cluster: ProcessCluster) -> None:
    stub = health_pb2_grpc.HealthStub(cluster.channel)
    for service in ("", "hakuriver.v1.TaskService", "hakuriver.v1.RunnerService"):
        reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_public_services(cluster: ProcessCluster) -> None:
    stub = reflection_pb2_grpc.ServerReflectionStub(cluster.channel)
    request = reflection_pb2.ServerReflectionRequest(list_services="")
    [reply] = list(stub.ServerReflectionInfo(iter([request]), timeout=5))
    names = {s.name for s in reply.list_services_response.service}
    assert {
        "hakuriver.v1.TaskService",
        "hakuriver.v1.LogService",
        "hakuriver.v1.NodeService",
        "hakuriver.v1.RunnerService",
        "grpc.health.v1.Health",
    } <= names


def scrape(cluster: ProcessCluster) -> dict[str, list]:
    with urllib.request.urlopen(f"http://127.0.0.1:{cluster.metrics_port}/metrics", timeout=5) as r:
        text = r.read().decode()
    samples: dict[str, list] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, []).append(sample)
    return samples


def value(samples: dict[str, list], name: str, **labels: str) -> float:
    matching = [
        s.value for s in samples[name] if all(s.labels.get(k) == v for k, v in labels.items())
    ]
    assert len(matching) == 1, (name, labels, samples.get(name))
    return matching[0]


def test_metrics_scrape(cluster: ProcessCluster) -> None:
    before = scrape(cluster)
    completed_before = value(before, "hakuriver_tasks", status="completed", kind="command")
    task = cluster.submit(["sh", "-c", "echo metrics"])
    assert cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    after = scrape(cluster)
    assert (
        value(after, "hakuriver_tasks", status="completed", kind="command") == completed_before + 1
    )
    assert value(after, "hakuriver_nodes", status="online") == len(cluster.runner_names)
    assert value(after, "hakuriver_runners_connected") == len(cluster.runner_names)
    assert value(after, "hakuriver_task_submit_to_running_seconds_count") >= 1
    assert value(after, "hakuriver_log_bytes_received_total") >= len(b"metrics\n")
    assert value(after, "hakuriver_tasks_submitted_total", kind="command") >= 1
    submits = [
        s for s in after["hakuriver_grpc_requests_total"]
        if s.labels["method"].endswith("/SubmitTask") and s.labels["code"] == "OK"
    ]  # fmt: skip
    assert submits and submits[0].value >= 1
    latencies = [
        s for s in after["hakuriver_grpc_request_duration_seconds_count"]
        if s.labels["method"].endswith("/SubmitTask")
    ]  # fmt: skip
    assert latencies and latencies[0].value >= 1
