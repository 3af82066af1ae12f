"""/metrics behind auth.metrics_token, on a real in-process Host: Prometheus's bearer
token opens it, anything else gets 401; with no token configured it stays open."""

from __future__ import annotations

import asyncio
import socket
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable

import pytest
from prometheus_client.parser import text_string_to_metric_families

from hakuriver_common.proto.hakuriver.v1 import audit_service_pb2 as aupb
from hakuriver_host import metrics_http
from tests.fake_runner import eventually
from tests.unit.local_cluster import LocalCluster

TOKEN = "metrics-" + "x" * 40


def _get(
    port: int, authorization: str | None, path: str = "/metrics", method: str = "GET"
) -> tuple[int, dict[str, str], str]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}{path}", method=method)
    if authorization is not None:
        request.add_header("Authorization", authorization)
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as refused:
        return refused.code, dict(refused.headers), refused.read().decode()


async def scrape(
    cluster: LocalCluster,
    authorization: str | None = None,
    path: str = "/metrics",
    method: str = "GET",
) -> tuple[int, dict[str, str], str]:
    """GET /metrics from a thread: the Host serving it runs on this event loop's thread."""
    assert cluster.server is not None
    port = cluster.server.metrics_port
    return await asyncio.to_thread(_get, port, authorization, path, method)


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


async def metric_values(cluster: LocalCluster) -> Samples:
    """Every sample /metrics serves, by name and labels (sorted (name, value) pairs)."""
    _, _, body = await scrape(cluster)
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(body)
        for sample in family.samples
    }


def metric_names(text: str) -> set[str]:
    return {family.name for family in text_string_to_metric_families(text)}


async def test_a_metrics_token_is_required_as_a_bearer_token(
    make_local_cluster: Callable[..., Awaitable[LocalCluster]],
) -> None:
    cluster = await make_local_cluster(auth={"metrics_token": TOKEN})
    for refused in (None, "Bearer wrong-token", f"Bearer {TOKEN}x", f"Basic {TOKEN}", TOKEN):
        status, headers, body = await scrape(cluster, refused)
        assert status == 401, refused
        assert headers["WWW-Authenticate"].startswith("Bearer"), headers
        assert "hakuriver_" not in body, "a refused scrape must not see any metric"
    for accepted in (f"Bearer {TOKEN}", f"bearer {TOKEN}"):
        status, headers, body = await scrape(cluster, accepted)
        assert status == 200, accepted
        assert headers["Content-Type"].startswith("text/plain"), headers
        assert {"hakuriver_queue_depth", "hakuriver_runners_connected"} <= metric_names(body)
    # Refusals are audited as a refused gRPC call is: anonymous, with its source. A
    # stranger's are limited (a scraper with a wrong token in a loop must not fill the
    # disk): the first of the minute is written at once, the rest counted in one row at
    # its end, or when the Host stops.
    request = aupb.ListAuditEventsRequest(action="metrics.scrape")
    said = "no bearer token, or not auth.metrics_token"
    first = await eventually(
        lambda: _rows(cluster.audit.ListAuditEvents(request, timeout=5), 1), what="1 row"
    )
    assert [(e.actor, e.target, e.outcome, e.peer, e.detail) for e in first] == [
        ("anonymous", "/metrics", aupb.AUDIT_OUTCOME_REFUSED, "ipv4:127.0.0.1", said)
    ]
    await cluster.restart_host()
    rows = (await cluster.audit.ListAuditEvents(request, timeout=5)).events
    assert rows[0].detail.startswith(f"{said} (and 4 more like it in the last ")
    assert [e.id for e in rows][1:] == [first[0].id]


async def _rows(
    reply: Awaitable[aupb.ListAuditEventsResponse], count: int
) -> list[aupb.AuditEvent]:
    events = list((await reply).events)
    return events if len(events) == count else []


async def test_without_a_metrics_token_metrics_are_open(local_cluster: LocalCluster) -> None:
    status, _, body = await scrape(local_cluster)
    assert status == 200
    assert "hakuriver_queue_depth" in metric_names(body)


async def test_only_the_metrics_path_serves_the_metrics(
    make_local_cluster: Callable[..., Awaitable[LocalCluster]],
) -> None:
    cluster = await make_local_cluster(auth={"metrics_token": TOKEN})
    for path in ("/", "/metric", "/metrics/x", "/api/metrics"):
        status, headers, body = await scrape(cluster, f"Bearer {TOKEN}", path)
        assert (status, body) == (404, "not found: the metrics are at /metrics\n"), path
        assert headers["Content-Type"] == "text/plain"
    status, _, body = await scrape(cluster, f"Bearer {TOKEN}", "/metrics/")
    assert status == 200 and "hakuriver_" in body


async def test_head_is_answered_as_get_without_a_body(
    make_local_cluster: Callable[..., Awaitable[LocalCluster]],
) -> None:
    """Load balancers' and some monitors' health checks send HEAD: it got 405, and the
    target looked down while every scrape worked."""
    cluster = await make_local_cluster(auth={"metrics_token": TOKEN})
    status, headers, body = await scrape(cluster, f"Bearer {TOKEN}", method="HEAD")
    assert (status, body) == (200, "")
    assert headers["Content-Type"].startswith("text/plain"), headers
    assert int(headers["Content-Length"]) > 0, "the length of the GET's body"
    for path, authorization, refused in (("/metrics", None, 401), ("/", f"Bearer {TOKEN}", 404)):
        assert (await scrape(cluster, authorization, path, "HEAD"))[::2] == (refused, "")
    status, headers, _ = await scrape(cluster, f"Bearer {TOKEN}", method="POST")
    assert (status, headers["Allow"]) == (405, "OPTIONS,GET,HEAD")


def _left_open(port: int) -> bytes:
    """Connect, send nothing, and read what the server does: b"" once it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=30) as idle:
        return idle.recv(1)


async def test_a_connection_that_sends_nothing_is_closed(
    local_cluster: LocalCluster,
    monkeypatch: pytest.MonkeyPatch,
    capfd: pytest.CaptureFixture[str],
) -> None:
    """Each connection holds a thread of the Host: one that never sent its request held it
    for ever, so anyone who could reach the port could open them until the Host ran out of
    threads."""
    monkeypatch.setattr(metrics_http, "READ_SECONDS", 0.3)
    await local_cluster.restart_host()  # serving with the short wait
    assert local_cluster.server is not None
    port = local_cluster.server.metrics_port
    assert await asyncio.to_thread(_left_open, port) == b""
    status, _, _ = await scrape(local_cluster)
    assert status == 200
    assert "Traceback" not in capfd.readouterr().err
