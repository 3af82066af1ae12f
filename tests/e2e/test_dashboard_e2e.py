"""The dashboard in headless Chromium against a real Host, Runners and containers: every page
loads without console errors (and is photographed), a task submitted from the form shows
its output live and is killed from the page, a bad value shows the Host's own message by its
field, users see only their own tasks and only what their role may do, and the terminal
runs a command in an environment container; a submission pressed again after its answer was
lost is created once."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import grpc
import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from playwright.sync_api import Browser, Route, expect

from hakuriver_common.proto.hakuriver.v1 import (
    access_service_pb2 as apb,
    environment_service_pb2 as epb,
    environment_service_pb2_grpc,
    node_pb2,
    node_service_pb2 as npb,
    node_service_pb2_grpc,
    task_pb2,
    task_service_pb2 as tpb,
    task_service_pb2_grpc,
)
from hakuriver_common.roles import Role
from tests.e2e.browser import NO_CLIPBOARD, Dashboard, Tabs, no_problems
from tests.e2e.harness import BASE_ENV, ProcessCluster, running_cluster, wait_for

pytestmark = pytest.mark.docker

FAKE_NVML = str(Path(__file__).parent.parent / "fake_nvml")
LOOP = "for i in $(seq 1 600); do echo line-$i; sleep 0.2; done"
SSH_KEY = "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIE1KjKdQFMK2E8kVmbb3r2Dk5c6bwSvpZ0ZyYy2sQkVx"


class Site:
    """The module's cluster (one Runner and one with two fake GPUs, which fall off the bus
    while ``lost_gpus`` names them), its users and tabs."""

    def __init__(self, cluster: ProcessCluster, browser: Browser, lost_gpus: Path) -> None:
        self.cluster = cluster
        self.tabs = Tabs(browser, cluster.dashboard_url)
        self.lost_gpus = lost_gpus
        self.gpu_node = cluster.start_runner(
            f"{cluster.runner_names[0]}-gpu",
            env={
                "PYTHONPATH": os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")]),
                "HAKURIVER_FAKE_GPUS": "2",
                "HAKURIVER_FAKE_NVML_LOST": str(lost_gpus),
            },
        )
        self.alice = cluster.add_user("alice")
        self.bob = cluster.add_user("bob")
        self.operator = cluster.add_user("olivia", Role.OPERATOR)

    def tasks_as(self, token: str) -> task_service_pb2_grpc.TaskServiceStub:
        return task_service_pb2_grpc.TaskServiceStub(self.cluster.user_channel(token))

    def tab(self, token: str | None) -> Dashboard:
        return self.tabs.open(token)


@pytest.fixture(scope="module")
def site(
    docker_ready: None, browser: Browser, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Site]:
    with running_cluster(tmp_path_factory.mktemp("dashboard"), runner_count=1) as cluster:
        built = Site(cluster, browser, tmp_path_factory.mktemp("fake-nvml") / "lost-gpus")
        try:
            yield built
        finally:
            built.tabs.close()


def _submit_from_form(tab: Dashboard, command: str, **fields: str) -> int:
    tab.goto("/tasks")
    tab.page.get_by_test_id("submit-command").fill(command)
    for name, value in fields.items():
        tab.page.get_by_test_id(f"submit-{name}").fill(value)
    tab.page.get_by_test_id("submit-task").click()
    tab.page.wait_for_url(re.compile(r"/tasks/\d+$"))
    return int(tab.page.url.rsplit("/", 1)[1])


def test_a_task_from_the_form_streams_live_and_is_killed_from_the_page(site: Site) -> None:
    tab = site.tab(site.alice)
    task_id = _submit_from_form(tab, f"sh -c '{LOOP}'", cores="1")
    stdout = tab.page.get_by_test_id("stdout")
    expect(stdout).to_contain_text("line-3")
    # Still following: later lines arrive on the open page, without reloading it.
    expect(stdout).to_contain_text("line-8")
    expect(tab.page.get_by_test_id("task-status")).to_have_text("running")
    tab.shot("task-detail")
    tab.page.get_by_test_id("kill").click()
    tab.page.get_by_test_id("confirm-ok").click()
    expect(tab.page.get_by_test_id("task-status")).to_have_text("killed")
    final = site.cluster.wait_final(task_id)
    assert final.status == task_pb2.TASK_STATUS_KILLED
    assert final.owner == "alice"
    no_problems(tab)


def test_output_is_shown_as_a_terminal_shows_it(site: Site) -> None:
    """A progress bar redraws its line with carriage returns, and colours are escape
    sequences: the page shows the bar's last state and the text without the escapes, also
    when a "\\r\\n" or an escape is cut between two pieces of the stream (the sleeps)."""
    script = (
        "sleep 1; for i in 1 2 3 4 5; do printf '\\rprogress %d0%%' $i; sleep 0.2; done; echo;"
        " printf 'kept\\r'; sleep 1; printf '\\nnext\\n';"
        " printf '\\033['; sleep 1; printf '32mgreen\\033[0m\\r\\n';"
        " printf '\\033]0;a title\\007\\033[1;31mred\\033(B\\033[m plain\\n'"
    )
    request = tpb.SubmitTaskRequest(command="sh", arguments=["-c", script], container_name=BASE_ENV)
    [task] = site.tasks_as(site.alice).SubmitTask(request, timeout=10).tasks
    tab = site.tab(site.alice)
    tab.goto(f"/tasks/{task.task_id}")
    stdout = tab.page.get_by_test_id("stdout")
    expect(stdout).to_contain_text("plain")
    assert stdout.text_content() == "progress 50%\nkept\nnext\ngreen\nred plain\n"
    assert site.cluster.read_log(task.task_id).startswith(b"\rprogress 10%")
    no_problems(tab)


def test_a_queued_task_says_why_it_waits(site: Site) -> None:
    """A task aimed at a drained node waits; its page says so (the Host's waiting reason),
    and it runs once the node is undrained."""
    hostname = site.gpu_node
    nodes = node_service_pb2_grpc.NodeServiceStub(site.cluster.user_channel(site.operator))
    nodes.DrainNode(npb.DrainNodeRequest(hostname=hostname), timeout=10)
    try:
        request = tpb.SubmitTaskRequest(
            command="true", container_name=BASE_ENV, targets=[task_pb2.Target(hostname=hostname)]
        )
        [task] = site.tasks_as(site.alice).SubmitTask(request, timeout=10).tasks
        tab = site.tab(site.alice)
        tab.goto(f"/tasks/{task.task_id}")
        expect(tab.page.get_by_test_id("task-status")).to_have_text("pending")
        expect(tab.page.get_by_test_id("task-detail")).to_have_text(f"node {hostname} is draining")
    finally:
        nodes.UndrainNode(npb.UndrainNodeRequest(hostname=hostname), timeout=10)
    assert site.cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    no_problems(tab)


def test_the_task_lists_filters_and_page_live_in_its_url(site: Site) -> None:
    """Filter the list, go to an older page, open a task, go Back: the filter and the page
    are kept (as are the Newer trail, and a reload); a link with the query shows that list,
    and a query it cannot use is named above a list that still shows."""
    nodes = node_service_pb2_grpc.NodeServiceStub(site.cluster.user_channel(site.operator))
    nodes.DrainNode(npb.DrainNodeRequest(hostname=site.gpu_node), timeout=10)
    tasks = site.tasks_as(site.alice)
    # More pending tasks than a page (50) holds: aimed at the drained node, they wait.
    request = tpb.SubmitTaskRequest(
        command="true",
        container_name=BASE_ENV,
        targets=[task_pb2.Target(hostname=site.gpu_node)],
        array=tpb.TaskArray(indices=list(range(55))),
    )
    submitted = tasks.SubmitTask(request, timeout=30).tasks
    oldest, newest = submitted[0].task_id, submitted[-1].task_id
    try:
        tab = site.tab(site.alice)
        page = tab.page
        tab.goto("/tasks")
        page.get_by_test_id("filter-status-pending").click()
        page.wait_for_url(re.compile(r"/tasks\?status=pending$"))
        expect(page.get_by_test_id(f"task-row-{newest}")).to_be_visible()
        page.get_by_test_id("page-older").click()
        page.wait_for_url(re.compile(r"/tasks\?status=pending&before=\d+$"))
        listed = page.url

        def shows_the_older_pending_page() -> None:
            expect(page.get_by_test_id("filter-status-pending")).to_have_attribute(
                "aria-pressed", "true"
            )
            expect(page.get_by_test_id(f"task-row-{oldest}")).to_be_visible()
            expect(page.get_by_test_id(f"task-row-{newest}")).to_have_count(0)
            assert page.url == listed

        shows_the_older_pending_page()
        page.get_by_test_id(f"task-row-{oldest}").get_by_role("link", name=str(oldest)).click()
        page.wait_for_url(re.compile(rf"/tasks/{oldest}$"))
        page.go_back()
        shows_the_older_pending_page()
        # The Newer trail came back with the entry: Newer is the newest page, not a guess.
        expect(page.get_by_test_id("page-newer")).to_have_text("← Newer")
        page.get_by_test_id("page-newer").click()
        page.wait_for_url(re.compile(r"/tasks\?status=pending$"))
        expect(page.get_by_test_id(f"task-row-{newest}")).to_be_visible()
        page.get_by_test_id("page-older").click()
        page.wait_for_url(listed)
        page.reload()
        shows_the_older_pending_page()
        # The task page's own way back returns to the same list.
        page.get_by_test_id(f"task-row-{oldest}").get_by_role("link", name=str(oldest)).click()
        page.wait_for_url(re.compile(rf"/tasks/{oldest}$"))
        page.get_by_test_id("back-to-tasks").click()
        shows_the_older_pending_page()
        # The menu's Tasks link is the whole list; Back returns to the filtered page.
        page.locator("header.bar").get_by_role("link", name="Tasks", exact=True).click()
        page.wait_for_url(re.compile(r"/tasks$"))
        expect(page.get_by_test_id("filter-status-pending")).to_have_attribute(
            "aria-pressed", "false"
        )
        expect(page.get_by_test_id(f"task-row-{newest}")).to_be_visible()
        page.go_back()
        shows_the_older_pending_page()
        no_problems(tab)

        # A shared link, in a tab of its own: the same list; with no trail, Newer says it
        # goes to the newest page.
        shared = site.tab(site.alice)
        page = shared.page
        page.goto(listed)
        shows_the_older_pending_page()
        expect(page.get_by_test_id("page-newer")).to_have_text("← Newest")
        shared.goto("/tasks?status=bogus&kind=vps&before=x")
        expect(page.get_by_test_id("tasks-query-ignored")).to_have_text(
            "Ignored in the address: status=bogus, before=x."
        )
        expect(page.get_by_test_id("filter-kind")).to_have_value(str(task_pb2.TASK_KIND_VPS))
        expect(page.get_by_test_id("task-table")).to_be_visible()
        # A node's page links to the list of its tasks.
        shared.goto(f"/nodes/{site.gpu_node}")
        page.get_by_test_id("node-all-tasks").click()
        page.wait_for_url(re.compile(rf"/tasks\?node={re.escape(site.gpu_node)}$"))
        expect(page.get_by_test_id("filter-node")).to_have_value(site.gpu_node)
        no_problems(shared)
    finally:
        tasks.KillBatch(tpb.KillBatchRequest(batch_id=submitted[0].batch_id), timeout=30)
        nodes.UndrainNode(npb.UndrainNodeRequest(hostname=site.gpu_node), timeout=10)


def test_a_job_arrays_tasks_show_their_array_and_index(site: Site) -> None:
    request = tpb.SubmitTaskRequest(
        command="true", container_name=BASE_ENV, array=tpb.TaskArray(indices=[0, 7])
    )
    tasks = site.tasks_as(site.alice).SubmitTask(request, timeout=10).tasks
    array_id = tasks[0].batch_id
    tab = site.tab(site.alice)
    tab.goto("/tasks")
    for task in tasks:
        row = tab.page.get_by_test_id(f"task-row-{task.task_id}")
        expect(row.get_by_test_id("task-array")).to_have_text(f"{array_id}[{task.array_index}]")
    tab.goto(f"/tasks/{tasks[1].task_id}")
    expect(tab.page.get_by_test_id("task-array")).to_have_text(f"{array_id}[7]")
    for task in tasks:
        site.cluster.wait_final(task.task_id)
    no_problems(tab)


def test_a_job_array_is_listed_and_summed_up_from_its_link_and_url(site: Site) -> None:
    """An array's ARRAY_ID[INDEX] label, in the list and on a task's page, links to the
    list of that array (/tasks?batch=ID), summed up above it by the Host and kept live;
    the filter combines with the others in the URL; another user's array, or none, shows
    the Host's "not found"."""
    nodes = node_service_pb2_grpc.NodeServiceStub(site.cluster.user_channel(site.operator))
    nodes.DrainNode(npb.DrainNodeRequest(hostname=site.gpu_node), timeout=10)
    tasks = site.tasks_as(site.alice)

    def pending_array(count: int, max_running: int = 0) -> list[task_pb2.Task]:
        request = tpb.SubmitTaskRequest(
            command="true",
            container_name=BASE_ENV,
            targets=[task_pb2.Target(hostname=site.gpu_node)],
            array=tpb.TaskArray(indices=list(range(count)), max_running=max_running),
        )
        return list(tasks.SubmitTask(request, timeout=30).tasks)

    first, other = pending_array(3, max_running=2), pending_array(2)
    array, other_id = first[0].batch_id, other[0].batch_id
    try:
        tasks.KillTask(tpb.KillTaskRequest(task_id=first[1].task_id), timeout=10)
        tab = site.tab(site.alice)
        page = tab.page
        tab.goto("/tasks")
        label = page.get_by_test_id(f"task-row-{first[2].task_id}").get_by_test_id("task-array")
        label.get_by_role("link").click()
        page.wait_for_url(re.compile(rf"/tasks\?batch={array}$"))
        summary = page.get_by_test_id("batch-summary")
        line = f"array {array}: 3 tasks, at most 2 at once"
        expect(summary).to_have_text(f"{line}: 2 pending, 1 killed")
        for task in first:
            expect(page.get_by_test_id(f"task-row-{task.task_id}")).to_be_visible()
        for task in other:
            expect(page.get_by_test_id(f"task-row-{task.task_id}")).to_have_count(0)
        # The counts follow the array's tasks.
        tasks.KillTask(tpb.KillTaskRequest(task_id=first[0].task_id), timeout=10)
        expect(summary).to_have_text(f"{line}: 1 pending, 2 killed")
        # With another filter, in the URL.
        tab.goto(f"/tasks?status=killed&batch={array}")
        expect(page.get_by_test_id("filter-status-killed")).to_have_attribute(
            "aria-pressed", "true"
        )
        expect(page.get_by_test_id(f"task-row-{first[0].task_id}")).to_be_visible()
        expect(page.get_by_test_id(f"task-row-{first[1].task_id}")).to_be_visible()
        expect(page.get_by_test_id(f"task-row-{first[2].task_id}")).to_have_count(0)
        expect(summary).to_contain_text(f"array {array}: 3 tasks")
        # From a task's page to its array's list, and from there back to all tasks.
        tab.goto(f"/tasks/{other[1].task_id}")
        page.get_by_test_id("task-array").get_by_role("link").click()
        page.wait_for_url(re.compile(rf"/tasks\?batch={other_id}$"))
        expect(summary).to_have_text(f"array {other_id}: 2 tasks: 2 pending")
        expect(page.get_by_test_id(f"task-row-{other[0].task_id}")).to_be_visible()
        expect(page.get_by_test_id(f"task-row-{first[2].task_id}")).to_have_count(0)
        page.get_by_test_id("batch-clear").click()
        page.wait_for_url(re.compile(r"/tasks$"))
        expect(page.get_by_test_id(f"task-row-{first[2].task_id}")).to_be_visible()
        expect(page.get_by_test_id("batch")).to_have_count(0)
        tab.goto("/tasks?batch=x&kind=command")
        expect(page.get_by_test_id("tasks-query-ignored")).to_have_text(
            "Ignored in the address: batch=x."
        )
        expect(page.get_by_test_id(f"task-row-{first[2].task_id}")).to_be_visible()
        no_problems(tab)

        # Bob may not see Alice's array: the Host's "not found", as for an unknown one.
        bob = site.tab(site.bob)
        for batch_id in (array, 999_999_999):
            bob.goto(f"/tasks?batch={batch_id}")
            expect(bob.page.get_by_test_id("batch-error")).to_have_text(
                f"batch_id: batch {batch_id} not found"
            )
            expect(bob.page.get_by_test_id("batch-summary")).to_have_count(0)
            expect(bob.page.get_by_test_id("task-table")).to_contain_text(
                "No tasks match these filters."
            )
        # The browser logs the refused calls (404) itself; nothing else went wrong.
        assert bob.problems and all("status of 404" in p for p in bob.problems), bob.problems
    finally:
        for batch_id in (array, other_id):
            tasks.KillBatch(tpb.KillBatchRequest(batch_id=batch_id), timeout=30)
        nodes.UndrainNode(npb.UndrainNodeRequest(hostname=site.gpu_node), timeout=10)


def test_home_counts_are_the_hosts_and_follow_new_tasks(site: Site) -> None:
    """The overview shows the Host's counts (CountTasks; its counting of more tasks than a
    list holds is tests/unit/test_count_tasks.py's) and they move when a task ends."""
    tasks = site.tasks_as(site.alice)

    def completed() -> int:
        since = Timestamp()
        since.FromDatetime(datetime.now(UTC) - timedelta(hours=24))
        request = tpb.CountTasksRequest(
            statuses=[task_pb2.TASK_STATUS_COMPLETED], completed_after=since
        )
        counts = tasks.CountTasks(request, timeout=10).counts
        return sum(c.count for c in counts)

    tab = site.tab(site.alice)
    tab.goto("/")
    shown = tab.page.get_by_test_id("task-count-completed")
    expect(shown).to_have_text(str(completed()))
    request = tpb.SubmitTaskRequest(command="true", container_name=BASE_ENV)
    [task] = tasks.SubmitTask(request, timeout=10).tasks
    assert site.cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    expect(shown).to_have_text(str(completed()))
    no_problems(tab)


def test_a_task_whose_runner_went_is_shown_on_its_node_and_killed_from_its_page(
    site: Site,
) -> None:
    """An unknown task (its Runner away) still holds its node's resources and can be killed:
    its node lists it, and its page offers Kill, as the CLI does."""
    name = site.cluster.start_runner(f"{site.cluster.runner_names[0]}-away")
    tasks = site.tasks_as(site.alice)
    request = tpb.SubmitTaskRequest(
        command="sleep",
        arguments=["300"],
        container_name=BASE_ENV,
        targets=[task_pb2.Target(hostname=name)],
    )
    [task] = tasks.SubmitTask(request, timeout=10).tasks

    def status() -> int:
        return tasks.GetTask(tpb.GetTaskRequest(task_id=task.task_id), timeout=10).task.status

    wait_for(lambda: status() == task_pb2.TASK_STATUS_RUNNING, what="the task to run")
    site.cluster.kill_runner(name)
    wait_for(lambda: status() == task_pb2.TASK_STATUS_UNKNOWN, 60, what="the task to be unknown")
    tab = site.tab(site.alice)
    tab.goto(f"/nodes/{name}")
    expect(tab.page.get_by_test_id(f"node-task-{task.task_id}")).to_be_visible()
    tab.goto(f"/tasks/{task.task_id}")
    tab.page.get_by_test_id("kill").click()
    tab.page.get_by_test_id("confirm-ok").click()
    expect(tab.page.get_by_test_id("task-status")).to_have_text("killed")
    no_problems(tab)


def test_a_vps_that_failed_offers_no_command_to_connect(site: Site) -> None:
    """An environment without an SSH server fails the VPS: the Connect card says it ended
    and why, instead of a command that will never connect."""
    tab = site.tab(site.alice)
    tab.goto("/vps")
    tab.page.get_by_test_id("vps-key").fill(SSH_KEY)
    tab.page.get_by_test_id("vps-environment").select_option(BASE_ENV)
    tab.page.get_by_test_id("vps-create").click()
    ended = tab.page.get_by_test_id("vps-ended")
    expect(ended).to_contain_text("It has ended", timeout=60_000)
    expect(tab.page.get_by_test_id("ssh-command")).to_have_count(0)
    no_problems(tab)


def test_a_long_output_is_shown_from_near_its_end_with_a_notice(site: Site) -> None:
    # 5 MiB of numbered lines (9 bytes each): the page asks for at most its last 2 MiB.
    first, count = 10_000_000, 5 * 1024 * 1024 // 9
    task = site.tasks_as(site.alice).SubmitTask(
        tpb.SubmitTaskRequest(command="seq", arguments=[str(first), str(first + count - 1)]),
        timeout=10,
    )
    task_id = task.tasks[0].task_id
    assert site.cluster.wait_final(task_id, timeout=120).status == task_pb2.TASK_STATUS_COMPLETED
    tab = site.tab(site.alice)
    tab.goto(f"/tasks/{task_id}")
    last = f"{first + count - 1}\n"
    tab.page.wait_for_function(
        "last => document.querySelector('[data-testid=stdout]')?.textContent.endsWith(last)",
        arg=last,
    )
    expect(tab.page.get_by_text("Older output was trimmed or skipped")).to_be_visible()
    # Read in the page: a failed expect() on 2 MiB of text would print all of it.
    text = tab.page.get_by_test_id("stdout").evaluate(
        "e => [e.textContent.slice(0, 60), e.textContent.slice(-9), e.textContent.length]"
    )
    assert re.match(r"\[… \d+ bytes skipped …\]\n\d{8}\n", text[0]), text[0]
    assert text[1] == last, text[1]
    assert text[2] < 2 * 1024 * 1024, text[2]
    no_problems(tab)


def test_a_bad_value_shows_the_hosts_message_beside_its_field(site: Site) -> None:
    with pytest.raises(grpc.RpcError) as refused:
        site.tasks_as(site.alice).SubmitTask(
            tpb.SubmitTaskRequest(command="true", memory="lots"), timeout=10
        )
    message = refused.value.details()  # type: ignore[attr-defined]
    assert message.startswith("memory")
    tab = site.tab(site.alice)
    tab.goto("/tasks")
    tab.page.get_by_test_id("submit-command").fill("true")
    tab.page.get_by_test_id("submit-memory").fill("lots")
    tab.page.get_by_test_id("submit-task").click()
    expect(tab.page.get_by_test_id("error-memory")).to_contain_text(message)
    tab.shot("task-submit-error")
    assert re.search(r"/tasks$", tab.page.url), "a refused submission stays on the form"
    # A number no request can carry is named by its field too, not by the encoder.
    tab.page.get_by_test_id("submit-memory").fill("")
    tab.page.get_by_test_id("submit-priority").fill("99999999999")
    tab.page.get_by_test_id("submit-task").click()
    expect(tab.page.get_by_test_id("error-priority")).to_contain_text(
        "priority: 99999999999 is out of range"
    )


def test_a_submission_pressed_again_after_its_answer_was_lost_is_created_once(
    site: Site,
) -> None:
    """The form sends a request id, the same while the same form is sent again until the
    Host answers: the answer lost on its way (cut here once the Host had made the task) and
    Submit pressed again, the page opens the task the Host made; there is no second one."""
    tab = site.tab(site.alice)
    tab.goto("/tasks")
    lost: list[int] = []

    def cut_the_first_answer(route: Route) -> None:
        if lost:
            route.continue_()
            return
        answered = route.fetch()  # the Host has the request and answers it
        lost.append(answered.status)
        route.abort("connectionreset")

    tab.page.route("**/hakuriver.v1.TaskService/SubmitTask", cut_the_first_answer)
    tab.page.get_by_test_id("submit-command").fill("echo answered-once")
    tab.page.get_by_test_id("submit-task").click()
    expect(tab.page.get_by_test_id("submit-error")).to_be_visible()
    assert lost == [200] and tab.page.url.endswith("/tasks")
    tab.page.get_by_test_id("submit-task").click()
    tab.page.wait_for_url(re.compile(r"/tasks/\d+$"))
    task_id = int(tab.page.url.rsplit("/", 1)[1])
    mine = site.tasks_as(site.alice).ListTasks(tpb.ListTasksRequest(limit=1000), timeout=10)
    made = [t.task_id for t in mine.tasks if list(t.arguments) == ["answered-once"]]
    assert made == [task_id]


def test_a_list_the_host_refuses_shows_the_refusal_and_no_rows(site: Site) -> None:
    """A list asked again under a live task stream (here for a new filter) and refused by
    the Host showed the refusal above the rows listed before, which the Host may no longer
    show the user. The rows go with the refusal; a list answered again brings them back.
    The refusal is the Host's own: the request is sent as alice asking for bob's tasks."""
    request = tpb.SubmitTaskRequest(command="sh", arguments=["-c", "echo refused-list"])
    [task] = site.tasks_as(site.alice).SubmitTask(request, timeout=10).tasks
    tab = site.tab(site.alice)
    tab.goto("/tasks")
    row = tab.page.get_by_test_id(f"task-row-{task.task_id}")
    expect(row).to_be_visible()
    others = tpb.ListTasksRequest(owner="bob").SerializeToString()

    def as_bobs(route: Route) -> None:
        route.fulfill(response=route.fetch(post_data=others))

    listing = "**/hakuriver.v1.TaskService/ListTasks"
    tab.page.route(listing, as_bobs)
    tab.page.get_by_test_id("filter-kind").select_option(label="command")
    expect(tab.page.get_by_test_id("tasks-error")).to_have_text(
        "owner: users list only their own tasks; leave it empty"
    )
    expect(row).to_have_count(0)
    tab.page.unroute(listing)
    tab.page.get_by_test_id("filter-kind").select_option(label="all")
    expect(row).to_be_visible()
    expect(tab.page.get_by_test_id("tasks-error")).to_have_count(0)


def test_a_number_field_the_browser_cannot_read_is_refused_not_defaulted(
    site: Site,
) -> None:
    """A number input holding text it cannot parse ("2e") has the value "": submitting it
    must not quietly ask for the default (1 core) but say which field is wrong."""
    tab = site.tab(site.alice)
    tab.goto("/tasks")
    tab.page.get_by_test_id("submit-command").fill("true")
    tab.page.get_by_test_id("submit-cores").press_sequentially("2e")
    tab.page.get_by_test_id("submit-task").click()
    expect(tab.page.get_by_test_id("error-cores")).to_have_text("cores: not a number")
    assert tab.page.url.endswith("/tasks")
    no_problems(tab)


def test_users_see_only_their_own_tasks(site: Site) -> None:
    bobs = site.tasks_as(site.bob).SubmitTask(
        tpb.SubmitTaskRequest(command="sh", arguments=["-c", "echo bob"]), timeout=10
    )
    bob_task = bobs.tasks[0].task_id
    alices = site.tasks_as(site.alice).SubmitTask(
        tpb.SubmitTaskRequest(command="sh", arguments=["-c", "echo alice"]), timeout=10
    )
    alice_task = alices.tasks[0].task_id
    tab = site.tab(site.alice)
    tab.goto("/tasks")
    expect(tab.page.get_by_test_id(f"task-row-{alice_task}")).to_be_visible()
    expect(tab.page.get_by_test_id(f"task-row-{bob_task}")).to_have_count(0)
    tab.goto(f"/tasks/{bob_task}")
    expect(tab.page.get_by_test_id("task-error")).to_contain_text(str(bob_task))
    expect(tab.page.get_by_test_id("stdout")).to_have_count(0)
    operator = site.tab(site.operator)
    operator.goto("/tasks")
    expect(operator.page.get_by_test_id(f"task-row-{bob_task}")).to_be_visible()


def test_what_a_role_may_not_do_is_not_offered(site: Site) -> None:
    node = site.cluster.runner_names[0]
    user = site.tab(site.alice)
    user.goto(f"/nodes/{node}")
    expect(user.page.get_by_test_id("node-detail")).to_be_visible()
    expect(user.page.get_by_test_id("drain")).to_have_count(0)
    operator = site.tab(site.operator)
    operator.goto(f"/nodes/{node}")
    expect(operator.page.get_by_test_id("drain")).to_be_visible()


@pytest.fixture
def environment(site: Site) -> Iterator[str]:
    """A Host environment container for the terminal, removed after the test."""
    stub = environment_service_pb2_grpc.EnvironmentServiceStub(site.cluster.channel)
    name = f"dash-{site.cluster.tag}"
    stub.CreateContainer(
        epb.CreateContainerRequest(name=name, image=f"hakuriver/{BASE_ENV}:base"), timeout=60
    )
    try:
        yield name
    finally:
        stub.DeleteContainer(epb.DeleteContainerRequest(name=name), timeout=60)


def _processes(site: Site, environment: str) -> int:
    container = site.cluster.docker.containers.get(f"hakuriver-env-{environment}")
    return len(container.top()["Processes"])


def test_the_terminal_runs_a_command(site: Site, environment: str) -> None:
    before = _processes(site, environment)
    tab = site.tab(site.cluster.admin_token)
    tab.goto("/docker")
    tab.page.get_by_test_id(f"env-terminal-{environment}").click()
    terminal = tab.page.get_by_test_id("terminal")
    expect(terminal).to_be_visible()
    wait_for(lambda: "#" in terminal.inner_text() or "$" in terminal.inner_text(), what="prompt")
    terminal.click()
    tab.page.keyboard.type("echo $((6*7))")
    tab.page.keyboard.press("Enter")
    expect(terminal).to_contain_text("42")
    tab.shot("docker-terminal")
    no_problems(tab)
    assert _processes(site, environment) > before
    tab.page.close()  # the shell ends with the page (Docker would keep an exec running)
    wait_for(lambda: _processes(site, environment) == before, what="the shell to end")
    # A shell that exits ends the session as such, with its code (not as a lost link).
    tab = site.tab(site.cluster.admin_token)
    tab.goto("/docker")
    tab.page.get_by_test_id(f"env-terminal-{environment}").click()
    terminal = tab.page.get_by_test_id("terminal")
    wait_for(lambda: "#" in terminal.inner_text() or "$" in terminal.inner_text(), what="prompt")
    terminal.click()
    tab.page.keyboard.type("exit 3")
    tab.page.keyboard.press("Enter")
    expect(tab.page.get_by_test_id("terminal-status")).to_have_text("Exited with 3")
    no_problems(tab)
    user = site.tab(site.alice)
    user.goto("/docker")
    expect(user.page.get_by_test_id(f"env-row-{environment}")).to_be_visible()
    expect(user.page.get_by_test_id(f"env-terminal-{environment}")).to_have_count(0)


def test_a_terminal_ended_by_a_change_of_role_updates_the_bar_at_once(
    site: Site, environment: str
) -> None:
    """The Host ends an operator's terminal when they are made a user: the terminal said
    so, but the bar named the old role (and the page offered the terminal) until the
    Docker page read its lists again, 15 s later. The tab now asks who it is as the
    terminal ends (the page's clock is stopped here, so no refresh comes)."""
    access = site.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="ivan", role=Role.OPERATOR.pb), timeout=10)
    token = access.CreateToken(apb.CreateTokenRequest(user="ivan"), timeout=10).secret
    tab = site.tab(token)
    tab.page.clock.install()
    tab.goto("/docker")
    tab.page.get_by_test_id(f"env-terminal-{environment}").click()
    expect(tab.page.get_by_test_id("terminal-status")).to_have_text("Connected")
    expect(tab.page.get_by_test_id("who")).to_have_text("ivan · operator")
    tab.page.clock.pause_at(datetime.now() + timedelta(seconds=1))
    access.SetUserRole(apb.SetUserRoleRequest(name="ivan", role=Role.USER.pb), timeout=10)
    expect(tab.page.get_by_test_id("terminal-status")).to_have_text(
        "/hakuriver.v1.ShellService/Shell needs the operator role; ivan is user"
    )
    expect(tab.page.get_by_test_id("who")).to_have_text("ivan · user")
    expect(tab.page.get_by_test_id(f"env-terminal-{environment}")).to_have_count(0)
    no_problems(tab)


def test_a_token_revoked_while_signed_in_brings_back_the_sign_in_page(site: Site) -> None:
    """Open pages do not go on retrying with a dead token: the tab signs out, says why, and
    a valid token brings the user back to the page they were on."""
    access = site.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="dora", role=Role.USER.pb), timeout=10)
    made = access.CreateToken(apb.CreateTokenRequest(user="dora"), timeout=10)
    tab = site.tab(made.secret)
    tab.goto("/nodes")
    expect(tab.page.get_by_test_id(f"node-row-{site.cluster.runner_names[0]}")).to_be_visible()
    access.RevokeToken(apb.RevokeTokenRequest(token_id=made.token.token_id), timeout=10)
    expect(tab.page.get_by_test_id("signin-ended")).to_contain_text(
        f"API token {made.token.token_id} was revoked"
    )
    assert tab.page.evaluate("sessionStorage.getItem('hakuriver.token')") is None
    tab.page.get_by_test_id("token").fill(site.alice)
    tab.page.get_by_test_id("signin").click()
    tab.page.wait_for_url(re.compile(r"/nodes$"))
    expect(tab.page.get_by_test_id("who")).to_contain_text("alice")


def test_an_open_host_asks_nobody_to_sign_in(browser: Browser, tmp_path: Path) -> None:
    """A Host with auth.authentication = false asks nobody who they are: its pages open
    without signing in (the sign-in page leads straight on), the bar says the Host is open
    instead of offering Sign out, and the pages' calls are answered; the Tokens page says
    that its tokens are for the Host's users once authentication is on (its caller, no
    stored user, has none, and making one for them was refused as a user not found)."""
    cluster = ProcessCluster(
        tmp_path, runner_count=0, extra_sections={"auth": "authentication = false"}
    )
    cluster.host = cluster.spawn_host()

    def serving() -> bool:
        try:
            with urllib.request.urlopen(cluster.dashboard_url + "/", timeout=2) as answer:
                return bool(answer.status == 200)
        except OSError:
            return False

    tabs = Tabs(browser, cluster.dashboard_url)
    try:
        wait_for(serving, what="the open Host's dashboard")
        tab = tabs.open(None)
        tab.goto("/tasks")
        expect(tab.page.get_by_role("heading", name="Tasks", exact=True)).to_be_visible()
        expect(tab.page.get_by_test_id("who")).to_have_text(
            "open Host · no sign-in, everyone is admin"
        )
        expect(tab.page.get_by_test_id("sign-out")).to_have_count(0)
        tab.goto("/signin?next=/")
        tab.page.wait_for_url(re.compile(re.escape(cluster.dashboard_url) + r"/$"))
        expect(tab.page.get_by_test_id("nodes-online")).to_have_text("0")
        expect(tab.page.get_by_test_id("task-count-pending")).to_have_text("0")
        # Its callers are no stored user: the Tokens page says what tokens are for here.
        tab.goto("/tokens")
        expect(tab.page.get_by_test_id("token-open-host")).to_contain_text("This Host is open")
        no_problems(tab)
    finally:
        tabs.close()
        cluster.stop()


def test_a_role_changed_while_signed_in_is_followed_by_the_open_pages(site: Site) -> None:
    """An admin makes a signed-in user an operator, then a user again: their open page
    (whose streams the Host ends as the role changes) asks again who they are, and offers
    what the new role may do, without a reload or signing in again."""
    access = site.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="erin", role=Role.USER.pb), timeout=10)
    token = access.CreateToken(apb.CreateTokenRequest(user="erin"), timeout=10).secret
    tab = site.tab(token)
    tab.goto(f"/nodes/{site.cluster.runner_names[0]}")
    expect(tab.page.get_by_test_id("node-detail")).to_be_visible()
    expect(tab.page.get_by_test_id("who")).to_have_text("erin · user")
    expect(tab.page.get_by_test_id("drain")).to_have_count(0)
    for role, drain in ((Role.OPERATOR, 1), (Role.USER, 0)):
        access.SetUserRole(apb.SetUserRoleRequest(name="erin", role=role.pb), timeout=10)
        expect(tab.page.get_by_test_id("who")).to_have_text(f"erin · {role.value}")
        expect(tab.page.get_by_test_id("drain")).to_have_count(drain)
        # Its streams, ended by the change, are open again (under the new role).
        expect(tab.page.get_by_test_id("reconnecting")).to_have_count(0)
    no_problems(tab)


def test_a_tab_hidden_while_its_role_changes_follows_it_when_shown(site: Site) -> None:
    """A hidden tab has closed its streams, so the Host's ending them at a change of role
    does not reach it: shown again, it asks who it is and offers what the new role may do;
    and a token revoked meanwhile signs it out."""
    access = site.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="fred", role=Role.OPERATOR.pb), timeout=10)
    made = access.CreateToken(apb.CreateTokenRequest(user="fred"), timeout=10)
    tab = site.tab(made.secret)
    tab.goto(f"/nodes/{site.cluster.runner_names[0]}")
    expect(tab.page.get_by_test_id("drain")).to_be_visible()
    tab.show(False)
    access.SetUserRole(apb.SetUserRoleRequest(name="fred", role=Role.USER.pb), timeout=10)
    tab.show(True)
    expect(tab.page.get_by_test_id("who")).to_have_text("fred · user")
    expect(tab.page.get_by_test_id("drain")).to_have_count(0)
    no_problems(tab)  # the refusals of the revoked token below are logged
    tab.show(False)
    access.RevokeToken(apb.RevokeTokenRequest(token_id=made.token.token_id), timeout=10)
    tab.show(True)
    expect(tab.page.get_by_test_id("signin-ended")).to_contain_text(
        f"API token {made.token.token_id} was revoked"
    )


def test_an_operator_made_a_user_while_the_tab_is_hidden_lists_their_own_tasks(
    site: Site,
) -> None:
    """Shown again, the Tasks page filtered on another user's tasks (operators only) lists
    the user's own, and is not refused on the way."""
    request = tpb.SubmitTaskRequest(command="sh", arguments=["-c", "echo bob"])
    [bobs] = site.tasks_as(site.bob).SubmitTask(request, timeout=10).tasks
    access = site.cluster.access
    access.CreateUser(apb.CreateUserRequest(name="lena", role=Role.OPERATOR.pb), timeout=10)
    token = access.CreateToken(apb.CreateTokenRequest(user="lena"), timeout=10).secret
    tab = site.tab(token)
    tab.goto("/tasks?owner=bob")
    expect(tab.page.get_by_test_id(f"task-row-{bobs.task_id}")).to_be_visible()
    tab.show(False)
    access.SetUserRole(apb.SetUserRoleRequest(name="lena", role=Role.USER.pb), timeout=10)
    tab.show(True)
    expect(tab.page.get_by_test_id("who")).to_have_text("lena · user")
    expect(tab.page.get_by_test_id("filter-owner")).to_have_count(0)
    expect(tab.page.get_by_test_id(f"task-row-{bobs.task_id}")).to_have_count(0)
    expect(tab.page.get_by_test_id("reconnecting")).to_have_count(0)
    no_problems(tab)  # nothing refused: the streams reopened under the new role


def test_a_blank_token_is_refused_without_asking_the_host(site: Site) -> None:
    """Blanks pass the field's required check; the Host's answer to no token at all tells
    a command-line user where the CLI reads one, which means nothing on this page."""
    tab = site.tab(None)
    tab.goto("/signin")
    tab.page.get_by_test_id("token").fill("   ")
    tab.page.get_by_test_id("signin").click()
    expect(tab.page.get_by_test_id("signin-error")).to_have_text(
        "API token: only blanks; paste the token itself"
    )
    no_problems(tab)  # no call was made (a refused one logs its 401)


def test_a_narrow_window_keeps_the_menu_and_sign_out_in_view(site: Site) -> None:
    """On a phone-sized window the top bar wraps: every page link and Sign out stay on
    screen (wide tables scroll inside their card instead)."""
    tab = site.tab(site.alice)
    width = 390
    tab.page.set_viewport_size({"width": width, "height": 800})
    tab.goto("/tasks")
    bar = tab.page.locator("header.bar")
    items = [
        bar.get_by_role("link", name=name, exact=True)
        for name in ("Home", "Nodes", "GPUs", "Tasks", "VPS", "Docker", "Tokens")
    ]
    for item in [*items, tab.page.get_by_test_id("sign-out")]:
        box = item.bounding_box()
        assert box is not None and box["x"] + box["width"] <= width, (item, box)
    assert tab.page.evaluate("document.documentElement.scrollWidth") <= width
    no_problems(tab)


def test_a_gpu_not_read_is_shown_so_and_counted_free_nowhere(site: Site) -> None:
    """GPU 1 of the GPU node falls off the bus: the GPUs page shows it not read (live), and
    the nodes page, the node's page and the overview do not count it free; the node's page
    counts it free again, live, once it is read again."""
    cluster, hostname = site.cluster, site.gpu_node

    def unread() -> list[int]:
        nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=10).nodes
        return next(list(n.unread_gpus) for n in nodes if n.hostname == hostname)

    tab = site.tab(cluster.admin_token)
    tab.goto("/gpus")
    card = tab.page.locator(f'[data-testid="gpu-card"][data-node="{hostname}"][data-index="1"]')
    expect(card.get_by_test_id("gpu-state")).to_have_text("free")
    site.lost_gpus.write_text("1")
    try:
        wait_for(lambda: unread() == [1], what="GPU 1 unread")
        expect(card.get_by_test_id("gpu-unread")).to_have_text("not read")
        expect(card.get_by_test_id("gpu-state")).to_have_count(0)
        tab.goto("/nodes")
        row = tab.page.get_by_test_id(f"node-row-{hostname}")
        expect(row.get_by_test_id("gpus-free")).to_have_text("1 / 2")
        expect(row.get_by_test_id("gpus-unread")).to_have_text("GPU 1 not read")
        nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=10).nodes
        free = sum(
            len(n.gpus) - len(set(n.allocated_gpus) | set(n.unread_gpus))
            for n in nodes
            if n.status == node_pb2.NODE_STATUS_ONLINE
        )
        tab.goto("/")
        expect(tab.page.get_by_test_id("gpus-free")).to_have_text(f"{free} free")
        tab.goto(f"/nodes/{hostname}")
        expect(tab.page.get_by_test_id("node-gpus-free")).to_have_text("1 free")
        expect(tab.page.get_by_test_id("node-gpus-unread")).to_contain_text("GPU 1 not read")
    finally:
        site.lost_gpus.unlink()
    expect(tab.page.get_by_test_id("node-gpus-free")).to_have_text("2 free", timeout=15_000)
    expect(tab.page.get_by_test_id("node-gpus-unread")).to_have_count(0)
    no_problems(tab)


def test_the_forms_offer_what_changed_since_their_page_opened(site: Site) -> None:
    """The task and VPS forms ask for their nodes and environments again each time they are
    entered (the focus comes into them, or the pointer over them): a GPU that is read again
    and an environment put on shared storage after the page opened are offered without
    reloading it; what was chosen stays chosen, even once it is no longer listed."""
    cluster, hostname = site.cluster, site.gpu_node

    def unread() -> list[int]:
        nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=10).nodes
        return next(list(n.unread_gpus) for n in nodes if n.hostname == hostname)

    name = f"late-{cluster.tag}"
    tarball = cluster.shared_dir / "hakuriver-containers" / f"{name}-1.tar"
    tasks_tab, vps_tab = site.tab(site.alice), site.tab(site.alice)
    site.lost_gpus.write_text("1")
    try:
        wait_for(lambda: unread() == [1], what="GPU 1 unread")
        forms = [(tasks_tab, "/tasks", "submit"), (vps_tab, "/vps", "vps")]
        for tab, path, prefix in forms:
            tab.goto(path)
            target = tab.page.get_by_test_id(f"{prefix}-target")
            expect(target.locator(f'option[value="{hostname}"]')).to_contain_text(
                "1 of 2 GPUs free"
            )
            target.select_option(hostname)
            expect(tab.page.locator(f'option[value="{name}"]')).to_have_count(0)
    finally:
        site.lost_gpus.unlink()
    wait_for(lambda: unread() == [], what="GPU 1 read again")
    tarball.parent.mkdir(parents=True, exist_ok=True)
    tarball.write_bytes(b"not loaded by this test")
    environments = environment_service_pb2_grpc.EnvironmentServiceStub(cluster.channel)
    try:
        tasks_tab.page.get_by_test_id("submit-command").focus()
        vps_tab.page.get_by_test_id("vps-key").hover()
        for tab, _, prefix in forms:
            target = tab.page.get_by_test_id(f"{prefix}-target")
            expect(target.locator(f'option[value="{hostname}"]')).to_contain_text(
                "2 of 2 GPUs free"
            )
            expect(target).to_have_value(hostname)
            environment = tab.page.get_by_test_id(f"{prefix}-environment")
            expect(environment.locator(f'option[value="{name}"]')).to_have_count(1)
            no_problems(tab)
        # Chosen, then gone: still shown as what the form would send.
        page = tasks_tab.page
        page.get_by_test_id("submit-environment").select_option(name)
        environments.DeleteTar(epb.DeleteTarRequest(name=name), timeout=30)
        page.get_by_role("heading", name="Tasks", exact=True).click()
        page.get_by_test_id("submit-command").focus()
        gone = page.get_by_test_id("submit-environment").locator(f'option[value="{name}"]')
        expect(gone).to_have_text(f"{name} (not listed now)")
        expect(page.get_by_test_id("submit-environment")).to_have_value(name)
        no_problems(tasks_tab)
    finally:
        with contextlib.suppress(grpc.RpcError):  # deleted above
            environments.DeleteTar(epb.DeleteTarRequest(name=name), timeout=30)


def test_killing_a_task_asks_first_naming_it(site: Site) -> None:
    """One misclick on Kill must not end a long run: the page asks, naming the task and its
    command; Cancel (or Escape) leaves it running, the dialog's Kill task kills it."""
    tasks = site.tasks_as(site.alice)
    request = tpb.SubmitTaskRequest(command="sleep", arguments=["300"], container_name=BASE_ENV)
    [task] = tasks.SubmitTask(request, timeout=10).tasks
    site.cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
    tab = site.tab(site.alice)
    page = tab.page
    tab.goto(f"/tasks/{task.task_id}")
    expect(page.get_by_test_id("task-status")).to_have_text("running")
    dialog = page.get_by_test_id("confirm-dialog")
    for cancel in (
        lambda: page.get_by_test_id("confirm-cancel").click(),
        lambda: page.keyboard.press("Escape"),
    ):
        page.get_by_test_id("kill").click()
        expect(dialog).to_be_visible()
        expect(page.get_by_test_id("confirm-title")).to_have_text(f"Kill task {task.task_id}?")
        expect(page.get_by_test_id("confirm-detail")).to_contain_text("sleep 300")
        expect(page.get_by_test_id("confirm-cancel")).to_be_focused()
        cancel()
        expect(dialog).to_be_hidden()
        got = tasks.GetTask(tpb.GetTaskRequest(task_id=task.task_id), timeout=10).task
        assert got.status == task_pb2.TASK_STATUS_RUNNING
    expect(page.get_by_test_id("task-status")).to_have_text("running")
    page.get_by_test_id("kill").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("task-status")).to_have_text("killed")
    assert site.cluster.wait_final(task.task_id).status == task_pb2.TASK_STATUS_KILLED
    no_problems(tab)


@contextlib.contextmanager
def _gpu_node_drained(site: Site) -> Iterator[list[int]]:
    """The GPU node drained, so that tasks aimed at it wait; after, the tasks whose ids were
    put in the list yielded are killed (those not ended) and the node undrained."""
    nodes = node_service_pb2_grpc.NodeServiceStub(site.cluster.user_channel(site.operator))
    nodes.DrainNode(npb.DrainNodeRequest(hostname=site.gpu_node), timeout=10)
    started: list[int] = []
    try:
        yield started
    finally:
        for task_id in started:
            with contextlib.suppress(grpc.RpcError):  # it has ended
                site.cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=task_id), timeout=10)
        nodes.UndrainNode(npb.UndrainNodeRequest(hostname=site.gpu_node), timeout=10)


def _vps_on_gpu_node(site: Site) -> tpb.SubmitTaskRequest:
    """A VPS aimed at the GPU node: it waits there while the node is drained."""
    return tpb.SubmitTaskRequest(
        kind=task_pb2.TASK_KIND_VPS,
        ssh_public_key=SSH_KEY,
        container_name=BASE_ENV,
        targets=[task_pb2.Target(hostname=site.gpu_node)],
    )


def test_stopping_a_vps_asks_first(site: Site) -> None:
    """The VPS list's Stop asks before it ends the VPS (its container and all in it)."""
    tasks = site.tasks_as(site.alice)
    with _gpu_node_drained(site) as started:
        [vps] = tasks.SubmitTask(_vps_on_gpu_node(site), timeout=10).tasks
        started.append(vps.task_id)
        tab = site.tab(site.alice)
        page = tab.page
        tab.goto("/vps")
        page.get_by_test_id(f"vps-stop-{vps.task_id}").click()
        expect(page.get_by_test_id("confirm-title")).to_have_text(f"Stop VPS {vps.task_id}?")
        page.get_by_test_id("confirm-cancel").click()
        got = tasks.GetTask(tpb.GetTaskRequest(task_id=vps.task_id), timeout=10).task
        assert got.status == task_pb2.TASK_STATUS_PENDING
        page.get_by_test_id(f"vps-stop-{vps.task_id}").click()
        page.get_by_test_id("confirm-ok").click()
        row = page.get_by_test_id(f"vps-row-{vps.task_id}")
        expect(row).to_contain_text("killed")
        no_problems(tab)
        # Its own page calls it Stop too, as the dialog does.
        [other] = tasks.SubmitTask(_vps_on_gpu_node(site), timeout=10).tasks
        started.append(other.task_id)
        tab.goto(f"/tasks/{other.task_id}")
        expect(page.get_by_test_id("kill")).to_have_text("Stop")
        page.get_by_test_id("kill").click()
        expect(page.get_by_test_id("confirm-title")).to_have_text(f"Stop VPS {other.task_id}?")
        page.get_by_test_id("confirm-ok").click()
        expect(page.get_by_test_id("task-status")).to_have_text("killed")


def test_deleting_an_environment_asks_first(site: Site) -> None:
    stub = environment_service_pb2_grpc.EnvironmentServiceStub(site.cluster.channel)
    name = f"gone-{site.cluster.tag}"
    stub.CreateContainer(
        epb.CreateContainerRequest(name=name, image=f"hakuriver/{BASE_ENV}:base"), timeout=60
    )
    try:
        tab = site.tab(site.cluster.admin_token)
        page = tab.page
        tab.goto("/docker")
        page.get_by_test_id(f"env-delete-{name}").click()
        expect(page.get_by_test_id("confirm-title")).to_have_text(
            f"Delete the environment container {name}?"
        )
        expect(page.get_by_test_id("confirm-detail")).to_contain_text(f"hakuriver-env-{name}")
        page.get_by_test_id("confirm-cancel").click()
        names = [c.name for c in stub.ListContainers(epb.ListContainersRequest()).containers]
        assert name in names
        page.get_by_test_id(f"env-delete-{name}").click()
        page.get_by_test_id("confirm-ok").click()
        expect(page.get_by_test_id(f"env-row-{name}")).to_have_count(0)
        names = [c.name for c in stub.ListContainers(epb.ListContainersRequest()).containers]
        assert name not in names
        no_problems(tab)
    finally:
        with contextlib.suppress(grpc.RpcError):
            stub.DeleteContainer(epb.DeleteContainerRequest(name=name), timeout=60)


def test_each_page_names_itself_in_the_tab_title(site: Site) -> None:
    request = tpb.SubmitTaskRequest(command="true", container_name=BASE_ENV)
    [task] = site.tasks_as(site.alice).SubmitTask(request, timeout=10).tasks
    tab = site.tab(site.alice)
    node = site.cluster.runner_names[0]
    titles = {
        "/": "Home",
        "/nodes": "Nodes",
        f"/nodes/{node}": f"Node {node}",
        "/gpus": "GPUs",
        "/tasks": "Tasks",
        f"/tasks/{task.task_id}": f"Task {task.task_id}",
        "/vps": "VPS",
        "/docker": "Docker",
        "/tokens": "Tokens",
        "/users": "Users",
    }
    for path, title in titles.items():
        tab.goto(path)
        expect(tab.page).to_have_title(f"{title} · HakuRiver")
    # Moving within the app (not loading a page) names the new one too.
    tab.page.locator("header.bar").get_by_role("link", name="Nodes", exact=True).click()
    expect(tab.page).to_have_title("Nodes · HakuRiver")


def test_a_vps_page_is_named_a_vps_in_the_tab_title(site: Site) -> None:
    """A VPS has a task's address (/tasks/ID); its tab says VPS, as its heading does, both
    when the page is loaded and when it is reached from the VPS list."""
    with _gpu_node_drained(site) as started:
        [vps] = site.tasks_as(site.alice).SubmitTask(_vps_on_gpu_node(site), timeout=10).tasks
        started.append(vps.task_id)
        tab = site.tab(site.alice)
        tab.goto(f"/tasks/{vps.task_id}")
        expect(tab.page).to_have_title(f"VPS {vps.task_id} · HakuRiver")
        tab.goto("/vps")
        tab.page.get_by_test_id(f"vps-row-{vps.task_id}").get_by_role("link").click()
        expect(tab.page.get_by_test_id("task-status")).to_have_text("pending")
        expect(tab.page).to_have_title(f"VPS {vps.task_id} · HakuRiver")
        no_problems(tab)


def test_a_vps_page_leads_back_to_the_vps_list(site: Site) -> None:
    """A VPS's page opened from the VPS list (or afresh) leads back to it, "← VPS"; opened
    from the task list, back to that list as it was left."""
    with _gpu_node_drained(site) as started:
        [vps] = site.tasks_as(site.alice).SubmitTask(_vps_on_gpu_node(site), timeout=10).tasks
        started.append(vps.task_id)
        tab = site.tab(site.alice)
        page = tab.page
        tab.goto("/vps")
        page.get_by_test_id(f"vps-row-{vps.task_id}").get_by_role("link").click()
        expect(page.get_by_test_id("back-to-tasks")).to_have_text("← VPS")
        page.get_by_test_id("back-to-tasks").click()
        page.wait_for_url(re.compile(r"/vps$"))
        tab.goto(f"/tasks/{vps.task_id}")
        expect(page.get_by_test_id("back-to-tasks")).to_have_text("← VPS")
        tab.goto("/tasks?kind=vps")
        page.get_by_role("link", name=str(vps.task_id), exact=True).click()
        expect(page.get_by_test_id("task-status")).to_have_text("pending")
        expect(page.get_by_test_id("back-to-tasks")).to_have_text("← Tasks")
        page.get_by_test_id("back-to-tasks").click()
        page.wait_for_url(re.compile(r"/tasks\?kind=vps$"))
        no_problems(tab)


def test_a_vps_waiting_for_any_gpu_says_so_in_the_vps_list(site: Site) -> None:
    """A VPS that asks for a number of GPUs without naming them holds none until it is
    placed: the VPS list says how many it asks for ("1" and the times sign), as the task
    list does, not the dash of no GPU."""
    with _gpu_node_drained(site) as started:
        request = _vps_on_gpu_node(site)
        request.gpus = 1
        [vps] = site.tasks_as(site.alice).SubmitTask(request, timeout=10).tasks
        started.append(vps.task_id)
        tab = site.tab(site.alice)
        tab.goto("/vps")
        none, times = "\N{EN DASH}", "\N{MULTIPLICATION SIGN}"
        expect(tab.page.get_by_test_id(f"vps-resources-{vps.task_id}")).to_have_text(
            f"any / {none} / 1{times}"
        )
        tab.goto("/tasks?kind=vps")
        row = tab.page.get_by_test_id(f"task-row-{vps.task_id}")
        # Nor does it reserve cores: "any" there too, as in the VPS list, not "0".
        expect(row).to_contain_text(f"any / {none} / 1{times}")
        no_problems(tab)


def _vps_created_from_the_form(site: Site, tab: Dashboard, started: list[int]) -> str:
    """A VPS created on the VPS page (aimed at the drained GPU node: it waits there); its
    id as the Connect card shows it."""
    tab.goto("/vps")
    tab.page.get_by_test_id("vps-key").fill(SSH_KEY)
    tab.page.get_by_test_id("vps-target").select_option(site.gpu_node)
    tab.page.get_by_test_id("vps-environment").select_option(BASE_ENV)
    tab.page.get_by_test_id("vps-create").click()
    command = tab.page.get_by_test_id("ssh-command")
    expect(command).to_have_text(re.compile(r"hakuriver\.ssh \d+$"))
    task_id = command.inner_text().split()[-1]
    started.append(int(task_id))
    return task_id


def test_a_vps_from_the_form_takes_variables_for_its_sessions(site: Site) -> None:
    """The VPS form had no variables, which the task form and hakuriver.vps submit --env
    take; a line that is not KEY=VALUE, or one the Host refuses, is named under the field."""
    tab = site.tab(site.alice)
    page = tab.page
    with _gpu_node_drained(site) as started:
        tab.goto("/vps")
        page.get_by_test_id("vps-key").fill(SSH_KEY)
        page.get_by_test_id("vps-target").select_option(site.gpu_node)
        page.get_by_test_id("vps-environment").select_option(BASE_ENV)
        page.get_by_test_id("vps-env").fill("GREETING=hello world\nno value")
        page.get_by_test_id("vps-create").click()
        expect(page.get_by_test_id("error-env")).to_have_text(
            'env: line 2: expected KEY=VALUE, got "no value"'
        )
        page.get_by_test_id("vps-env").fill("GREETING=hello world\n1X=y")
        page.get_by_test_id("vps-create").click()
        expect(page.get_by_test_id("error-env")).to_have_text("env: invalid variable name '1X'")
        page.get_by_test_id("vps-env").fill('GREETING=hello world\nODD=it\'s "$HOME"')
        page.get_by_test_id("vps-create").click()
        command = page.get_by_test_id("ssh-command")
        expect(command).to_have_text(re.compile(r"hakuriver\.ssh \d+$"))
        task_id = int(command.inner_text().split()[-1])
        started.append(task_id)
        got = site.tasks_as(site.alice).GetTask(tpb.GetTaskRequest(task_id=task_id), timeout=10)
        assert dict(got.task.env) == {"GREETING": "hello world", "ODD": 'it\'s "$HOME"'}


def test_the_ssh_hint_names_the_hosts_proxy_port(site: Site) -> None:
    """For a machine without the CLI's config, the Connect card spells out the command with
    this Host's address and SSH proxy port (options before the task id: after it they
    would go to ssh)."""
    tab = site.tab(site.alice)
    with _gpu_node_drained(site) as started:
        task_id = _vps_created_from_the_form(site, tab, started)
        port = site.cluster.ssh_proxy_port
        expect(tab.page.get_by_test_id("ssh-explicit")).to_have_text(
            f"hakuriver.ssh --host 127.0.0.1 --proxy-port {port} {task_id}"
        )
        expect(tab.page.get_by_test_id("vps-connect")).not_to_contain_text("PORT")
        no_problems(tab)


def test_each_copy_button_copies_its_own_line_without_the_clipboard_api(site: Site) -> None:
    """Without navigator.clipboard a Copy button selects its line and has the browser copy
    it: the proxy command's button copies the proxy command (it selected the hakuriver.ssh
    line above it), the hakuriver.ssh line's button that line, and so does the one of the
    command with the Host's address and port (it had no Copy button)."""
    tab = site.tab(site.alice)
    tab.page.add_init_script(NO_CLIPBOARD)
    with _gpu_node_drained(site) as started:
        task_id = _vps_created_from_the_form(site, tab, started)
        proxy = f"ssh -o ProxyCommand='hakuriver.ssh --proxy-command %h' root@{task_id}"
        expect(tab.page.get_by_test_id("ssh-proxy-command")).to_have_text(proxy)
        tab.page.get_by_test_id("ssh-proxy-command-copy").click()
        expect(tab.page.get_by_test_id("ssh-proxy-command-copy")).to_have_text("Copied")
        tab.page.get_by_test_id("ssh-command-copy").click()
        expect(tab.page.get_by_test_id("ssh-command-copy")).to_have_text("Copied")
        # The command for a machine without the CLI's config has its own Copy too.
        tab.page.get_by_test_id("ssh-explicit-copy").click()
        expect(tab.page.get_by_test_id("ssh-explicit-copy")).to_have_text("Copied")
        explicit = tab.page.get_by_test_id("ssh-explicit").inner_text()
        assert explicit.startswith("hakuriver.ssh --host ")
        copied = tab.page.evaluate("window.copied")
        assert copied == [proxy, f"hakuriver.ssh {task_id}", explicit]
        # A browser that will not copy either: the line stays selected for Ctrl+C.
        tab.page.evaluate("document.execCommand = () => false")
        tab.page.get_by_test_id("ssh-proxy-command-copy").click()
        expect(tab.page.get_by_test_id("ssh-proxy-command-copy")).to_have_text("Press Ctrl+C")
        assert tab.page.evaluate("String(window.getSelection())") == proxy
        no_problems(tab)


def test_a_queued_tasks_place_follows_other_users_tasks(site: Site) -> None:
    """Alice is told only of her own tasks; when Bob's queued task ahead of hers leaves the
    queue, her task's page and the Tasks page still show her new place."""
    request = tpb.SubmitTaskRequest(
        command="true", container_name=BASE_ENV, targets=[task_pb2.Target(hostname=site.gpu_node)]
    )
    alice = site.tasks_as(site.alice)
    with _gpu_node_drained(site) as started:
        [bobs] = site.tasks_as(site.bob).SubmitTask(request, timeout=10).tasks
        [alices] = alice.SubmitTask(request, timeout=10).tasks
        started += [bobs.task_id, alices.task_id]
        got = alice.GetTask(tpb.GetTaskRequest(task_id=alices.task_id), timeout=10)
        place = got.task.queue_position
        assert place >= 2
        tab = site.tab(site.alice)
        tab.goto(f"/tasks/{alices.task_id}")
        expect(tab.page.get_by_test_id("task-queue")).to_have_text(f"#{place} in the queue")
        listing = site.tab(site.alice)
        listing.goto("/tasks")
        row = listing.page.get_by_test_id(f"task-row-{alices.task_id}")
        expect(row).to_contain_text(f"#{place}")
        site.tasks_as(site.bob).KillTask(tpb.KillTaskRequest(task_id=bobs.task_id), timeout=10)
        expect(tab.page.get_by_test_id("task-queue")).to_have_text(f"#{place - 1} in the queue")
        expect(row).to_contain_text(f"#{place - 1}")
        no_problems(tab)
        no_problems(listing)


def test_a_paused_tasks_clock_stops(site: Site) -> None:
    """A paused task does not run on: its page shows how long it ran until the pause and
    that does not grow, and the Tasks list says "paused" where a running task's time
    ticks."""
    tasks = site.tasks_as(site.alice)
    request = tpb.SubmitTaskRequest(command="sleep", arguments=["300"], container_name=BASE_ENV)
    [task] = tasks.SubmitTask(request, timeout=10).tasks
    try:
        site.cluster.wait_status(task.task_id, {task_pb2.TASK_STATUS_RUNNING})
        tasks.PauseTask(tpb.PauseTaskRequest(task_id=task.task_id), timeout=30)
        tab = site.tab(site.alice)
        page = tab.page
        page.clock.install()
        tab.goto(f"/tasks/{task.task_id}")
        expect(page.get_by_test_id("task-status")).to_have_text("paused")
        shown = page.get_by_test_id("task-duration")
        expect(shown).to_have_text(re.compile(r" until paused$"))
        before = shown.inner_text()
        page.clock.fast_forward("10:00")
        page.evaluate("() => new Promise((done) => requestAnimationFrame(() => done(null)))")
        expect(shown).to_have_text(before)
        tab.goto("/tasks")
        row = page.get_by_test_id(f"task-row-{task.task_id}")
        expect(row.get_by_test_id("task-duration")).to_have_text("paused")
        no_problems(tab)
    finally:
        tasks.KillTask(tpb.KillTaskRequest(task_id=task.task_id), timeout=30)


def test_a_task_id_too_large_for_the_api_is_refused_on_the_page(site: Site) -> None:
    """/tasks/<20 digits> (beyond int64) is no task id: said so, not the encoder's message
    retried every second as if the Host were away."""
    tab = site.tab(site.alice)
    too_large = "99999999999999999999"
    tab.goto(f"/tasks/{too_large}")
    expect(tab.page.get_by_test_id("task-error")).to_have_text(
        f'task_id: "{too_large}" is not a task id'
    )
    expect(tab.page.get_by_test_id("reconnecting")).to_have_count(0)
    expect(tab.page.get_by_text("(reconnecting…)")).to_have_count(0)
    no_problems(tab)


def test_an_old_vps_stays_listed_behind_a_hundred_newer_ended_ones(site: Site) -> None:
    """The VPS page lists the newest 100 VPS tasks: a VPS still up must stay on it however
    many newer ones have ended since (a lab's week of short sessions)."""
    tasks = site.tasks_as(site.bob)
    request = _vps_on_gpu_node(site)
    with _gpu_node_drained(site) as started:
        [old] = tasks.SubmitTask(request, timeout=10).tasks
        started.append(old.task_id)
        for _ in range(100):
            [newer] = tasks.SubmitTask(request, timeout=10).tasks
            tasks.KillTask(tpb.KillTaskRequest(task_id=newer.task_id), timeout=10)
        tab = site.tab(site.bob)
        tab.goto("/vps")
        expect(tab.page.get_by_test_id(f"vps-row-{newer.task_id}")).to_be_visible()
        expect(tab.page.get_by_test_id(f"vps-row-{old.task_id}")).to_contain_text("pending")
        no_problems(tab)


def test_the_environment_name_hint_says_what_the_host_takes(site: Site) -> None:
    """The form's hint said "Letters, digits, '.', '_' and '-'": a name it allows (Dev)
    the Host refuses, naming lowercase letters and digits."""
    tab = site.tab(site.cluster.admin_token)
    page = tab.page
    tab.goto("/docker")
    page.get_by_test_id("env-name").fill("Dev")
    page.get_by_test_id("env-create").click()
    expect(page.get_by_test_id("env-error")).to_contain_text("lowercase letters and digits")
    expect(page.get_by_test_id("env-name-hint")).to_contain_text(
        "Up to 64 lowercase letters and digits, with '.', '_' or '-' only between them"
    )


def test_an_empty_older_page_says_there_is_nothing_older(site: Site) -> None:
    """Exactly a page of tasks (50): Older is offered and finds nothing; that page must not
    say "No tasks yet." of a user who has 50."""
    carol = site.cluster.add_user("carol")
    request = tpb.SubmitTaskRequest(
        command="true",
        container_name=BASE_ENV,
        targets=[task_pb2.Target(hostname=site.gpu_node)],
        array=tpb.TaskArray(indices=list(range(50))),
    )
    with _gpu_node_drained(site):
        [first, *_] = site.tasks_as(carol).SubmitTask(request, timeout=30).tasks
        try:
            tab = site.tab(carol)
            tab.goto("/tasks")
            expect(tab.page.locator("[data-testid^=task-row-]")).to_have_count(50)
            tab.page.get_by_test_id("page-older").click()
            expect(tab.page.get_by_test_id("tasks-empty")).to_have_text("No older tasks.")
            no_problems(tab)
        finally:
            site.cluster.tasks.KillBatch(tpb.KillBatchRequest(batch_id=first.batch_id), timeout=30)


PRIVATE_KEY = """-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
-----END OPENSSH PRIVATE KEY-----"""


def test_a_private_key_pasted_for_a_vps_is_not_sent(site: Site) -> None:
    """Pasting ~/.ssh/id_ed25519 instead of its .pub is an easy slip: the page says so by
    the field and the key never goes to the Host."""
    tab = site.tab(site.alice)
    submits: list[str] = []
    tab.page.on("request", lambda r: "SubmitTask" in r.url and submits.append(r.url))
    tab.goto("/vps")
    tab.page.get_by_test_id("vps-key").fill(PRIVATE_KEY)
    tab.page.get_by_test_id("vps-create").click()
    expect(tab.page.get_by_test_id("error-ssh_public_key")).to_contain_text(
        "this is a private key, which must stay on your machine"
    )
    assert submits == []
    no_problems(tab)


def test_a_nodes_and_a_gpus_charts_draw_each_new_sample(site: Site) -> None:
    """The charts of a node's page and of a GPU's card go on drawing the samples the health
    stream brings: they stayed as when the page opened, while the Nodes page went on."""
    nodes = node_service_pb2_grpc.NodeServiceStub(site.cluster.channel)

    def newest() -> int:
        request = npb.GetHealthRequest(hostname=site.gpu_node)
        [node] = nodes.GetHealth(request, timeout=10).nodes
        return node.current.sampled_at.ToMilliseconds()

    def newer_than(before: int) -> int:
        return wait_for(lambda: (t := newest()) > before and t, what="a newer sample")

    tab = site.tab(site.alice)
    charts = {
        f"/nodes/{site.gpu_node}": tab.page.get_by_test_id("chart-node-cpu"),
        "/gpus": tab.page.locator(f'[data-testid="gpu-card"][data-node="{site.gpu_node}"]').first,
    }
    for path, chart in charts.items():
        tab.goto(path)
        expect(chart.locator("svg[data-newest]").first).to_be_visible()
        later = newer_than(newest())
        tab.page.wait_for_function(
            "([chart, later]) => +chart.querySelector('svg[data-newest]').dataset.newest >= later",
            arg=[chart.element_handle(), later],
        )
    no_problems(tab)


def test_every_page_loads_without_console_errors(site: Site) -> None:
    """Last in the module, so the pages show what the other tests left: tasks, nodes."""
    running = site.cluster.submit(["sh", "-c", LOOP])
    site.cluster.wait_status(running.task_id, {task_pb2.TASK_STATUS_RUNNING})
    signin = site.tab(None)
    signin.goto("/")
    expect(signin.page.get_by_test_id("token")).to_be_visible()
    signin.shot("signin")
    no_problems(signin)
    tab = site.tab(site.cluster.admin_token)
    node = site.cluster.runner_names[0]
    pages = {
        "home": ("/", "chart-cpu"),
        "nodes": ("/nodes", f"node-row-{node}"),
        "node-detail": (f"/nodes/{site.gpu_node}", "numa"),
        "gpus": ("/gpus", "gpu-card"),
        "tasks": ("/tasks", f"task-row-{running.task_id}"),
        "task-running": (f"/tasks/{running.task_id}", "stdout"),
        "vps": ("/vps", "vps-key"),
        "docker": ("/docker", "env-name"),
    }
    for name, (path, ready) in pages.items():
        tab.goto(path)
        expect(tab.page.get_by_test_id(ready).first).to_be_visible()
        tab.page.wait_for_timeout(700)  # let charts draw for the picture (open streams
        # keep the network busy, so there is no idle moment to wait for)
        tab.shot(name)
        no_problems(tab)
    site.cluster.tasks.KillTask(tpb.KillTaskRequest(task_id=running.task_id), timeout=30)


def test_a_gpu_in_mig_mode_shows_its_utilisation_unknown_not_0(site: Site) -> None:
    """NVML reads no utilisation for a GPU in MIG mode: its card showed 0 %, an idle GPU.
    (Last in the file: the Runner it starts stays listed, offline, once stopped.)"""
    cluster = site.cluster
    name = cluster.start_runner(
        f"{cluster.runner_names[0]}-mig",
        env={
            "PYTHONPATH": os.pathsep.join([FAKE_NVML, os.environ.get("PYTHONPATH", "")]),
            "HAKURIVER_FAKE_GPUS": "2",
            "HAKURIVER_FAKE_MIG": "1",
        },
    )
    try:
        tab = site.tab(cluster.admin_token)
        tab.goto("/gpus")
        cards = tab.page.locator(f'[data-testid="gpu-card"][data-node="{name}"]')
        unknown = "\N{EN DASH}"  # as for any reading the node cannot take
        expect(cards.nth(1).get_by_test_id("gpu-utilisation")).to_have_text(unknown)
        expect(cards.nth(0).get_by_test_id("gpu-utilisation")).not_to_have_text(unknown)
        expect(cards.nth(1).get_by_test_id("gpu-memory")).to_contain_text("/")
        no_problems(tab)
    finally:
        cluster.kill_runner(name)


def test_a_node_the_host_forgets_leaves_the_nodes_page_at_once(
    browser: Browser, tmp_path: Path
) -> None:
    """A node the Host forgot (offline for timing.forget_node_seconds, no task of it kept)
    stayed on the Nodes page until the page fetched the node list again (every 30 s): the
    health stream said nothing of it. It now says so, and the row goes at once, without a
    fetch (the page's clock is stopped here, so none comes)."""
    with running_cluster(
        tmp_path, runner_count=1, extra_sections={"timing": "forget_node_seconds = 1"}
    ) as cluster:
        spare = cluster.start_runner(f"{cluster.runner_names[0]}-spare")
        tabs = Tabs(browser, cluster.dashboard_url)
        try:
            tab = tabs.open(cluster.admin_token)
            tab.page.clock.install()
            tab.goto("/nodes")
            row = tab.page.get_by_test_id(f"node-row-{spare}")
            expect(row).to_be_visible()
            tab.page.clock.pause_at(datetime.now() + timedelta(seconds=1))
            cluster.kill_runner(spare, signal.SIGTERM)

            def forgotten() -> bool:
                nodes = cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=5).nodes
                return spare not in {n.hostname for n in nodes}

            wait_for(forgotten, timeout=60, what="the Host to forget the node")
            expect(row).to_have_count(0)
            expect(tab.page.get_by_test_id(f"node-row-{cluster.runner_names[0]}")).to_be_visible()
            no_problems(tab)
        finally:
            tabs.close()


def test_a_node_that_joins_is_offered_without_a_reload(site: Site) -> None:
    """The Tasks page's node filter and its form's target ask for the nodes again when they
    are entered (the pointer over them, the focus into them): a node that joined after the
    page opened is offered. (Last in the module: the node stays.)"""
    tab = site.tab(site.alice)
    tab.goto("/tasks")
    listed = tab.page.get_by_test_id("filter-node")
    targets = tab.page.get_by_test_id("submit-target")
    for select in (listed, targets):
        expect(select.locator(f'option[value="{site.gpu_node}"]')).to_have_count(1)
    late = site.cluster.start_runner(f"{site.cluster.runner_names[0]}-late")
    listed.hover()
    expect(listed.locator(f'option[value="{late}"]')).to_have_count(1)
    tab.page.get_by_test_id("submit-command").focus()
    expect(targets.locator(f'option[value="{late}"]')).to_contain_text(f"{late} (")
    no_problems(tab)
