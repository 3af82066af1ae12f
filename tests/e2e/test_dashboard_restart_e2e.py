"""The dashboard across a Host restart, in headless Chromium against a real cluster of its
own (the restart would disturb test_dashboard_e2e.py's shared one): open pages say they are
reconnecting while the Host is away and stop saying so once it is back."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Request, expect

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from tests.e2e.browser import Tabs
from tests.e2e.harness import BASE_ENV, ProcessCluster, running_cluster

pytestmark = pytest.mark.docker


@pytest.fixture
def own_cluster(docker_ready: None, tmp_path: Path) -> Iterator[ProcessCluster]:
    """One Runner, the test's own; the Docker page, which has no stream, reads its lists
    every second (dashboard.refresh_seconds), so it finds the Host gone within a second,
    not 15."""
    refresh = {"dashboard": "refresh_seconds = 1"}
    with running_cluster(tmp_path, runner_count=1, extra_sections=refresh) as cluster:
        yield cluster


@pytest.fixture
def tabs(own_cluster: ProcessCluster, browser: Browser) -> Iterator[Tabs]:
    opened = Tabs(browser, own_cluster.dashboard_url)
    try:
        yield opened
    finally:
        opened.close()


def test_a_quiet_output_stops_saying_reconnecting_once_the_host_is_back(
    own_cluster: ProcessCluster, tabs: Tabs
) -> None:
    """A followed stream that has nothing to send (a task's empty stderr) gets no answer
    from the Host until it does; its notice must not stay up after the Host is back."""
    cluster = own_cluster
    task = cluster.submit(["sh", "-c", "echo started; sleep 300"], container_name=BASE_ENV)
    cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    tab = tabs.open(cluster.admin_token)
    tab.goto(f"/tasks/{task.task_id}")
    expect(tab.page.get_by_test_id("stdout")).to_contain_text("started")
    cluster.kill_host(signal.SIGTERM)
    reconnecting = tab.page.get_by_text("(reconnecting…)")
    # The page's notice, and each output's (stdout, stderr): retrying, not broken (red).
    expect(reconnecting).to_have_count(3)
    expect(tab.page.locator("main .error")).to_have_count(0)
    cluster.start_host()
    expect(reconnecting).to_have_count(0, timeout=20_000)
    expect(tab.page.get_by_test_id("stdout")).to_have_text("started\n")
    expect(tab.page.get_by_test_id("task-status")).to_have_text("running")
    cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30)


LIVE_PAGES = ["/", "/nodes", "/gpus", "/tasks", "/vps", "/docker"]


def test_every_live_page_says_it_is_reconnecting_while_the_host_is_away(
    own_cluster: ProcessCluster, tabs: Tabs
) -> None:
    """Not a bare error ('Failed to fetch' in red, as if something were broken for good):
    each live page says it is reconnecting, and stops saying so once the Host is back."""
    cluster = own_cluster
    paths = [*LIVE_PAGES, f"/nodes/{cluster.runner_names[0]}"]
    opened = [tabs.open(cluster.admin_token) for _ in paths]
    for tab, path in zip(opened, paths, strict=True):
        tab.goto(path)
        expect(tab.page.locator("main h1").first).to_be_visible()
    home = opened[0]

    # Home counts tasks again once its stream is back in place (send_watching): once the
    # stream's retry has failed twice, a failure has had its chance to show.
    def watch(request: Request) -> bool:
        return "WatchTasks" in request.url

    with home.page.expect_event("requestfailed", watch):
        cluster.kill_host(signal.SIGTERM)
    with home.page.expect_event("requestfailed", watch):
        pass
    for tab in opened:
        notice = tab.page.get_by_test_id("reconnecting")
        expect(notice, tab.page.url).to_be_visible(timeout=20_000)
        # A red message, not a cell in red (a non-zero exit code in a list).
        expect(tab.page.locator("main .error:not(td)"), tab.page.url).to_have_count(0)
    cluster.start_host()
    for tab in opened:
        notice = tab.page.get_by_test_id("reconnecting")
        expect(notice, tab.page.url).to_have_count(0, timeout=20_000)


def test_with_docker_away_the_docker_page_still_lists_the_tarballs(
    own_cluster: ProcessCluster, tabs: Tabs
) -> None:
    """Docker down on the Host fails the list of its containers, not that of the tarballs
    on shared storage (the page showed neither, and no containers as "none")."""
    cluster = own_cluster
    shelf = cluster.shared_dir / "hakuriver-containers"
    shelf.mkdir(parents=True, exist_ok=True)
    (shelf / "demo-1700000000.tar").write_bytes(b"")
    cluster.kill_host(signal.SIGTERM)
    cluster.start_host({"DOCKER_HOST": f"unix://{cluster.root}/no-docker.sock"})
    tab = tabs.open(cluster.admin_token)
    tab.goto("/docker")
    expect(tab.page.get_by_test_id("tar-row-demo")).to_be_visible()
    expect(tab.page.get_by_test_id("env-load-error")).to_contain_text(
        "Docker is not available on the Host"
    )
    expect(tab.page.get_by_test_id("env-table")).not_to_contain_text("No environment containers")
