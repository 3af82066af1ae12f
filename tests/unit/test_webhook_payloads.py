"""What a task's webhook says about it, on a real in-process Host with a FakeRunner and a
receiver on loopback."""

from __future__ import annotations

import base64
import re

from hakuriver_common.config import WebhookConfig
from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb, task_pb2
from hakuriver_common.roles import Role
from hakuriver_common.statuses import TaskStatus
from tests.fake_runner import HOLD, eventually
from tests.unit.local_cluster import LocalCluster
from tests.unit.test_authorization import SSH_KEY
from tests.webhook_receiver import Flaky


async def test_a_vps_event_names_no_command(local_cluster: LocalCluster) -> None:
    """A VPS runs no command: its events said `"command": "''"`, the shell quoting of an
    empty one, which a chat alert showed as the command that ran."""
    receiver = Flaky({})
    try:
        local_cluster.config.webhooks = [
            WebhookConfig(url=receiver.url("/hooks"), events=["task.killed"])
        ]
        await local_cluster.restart_host()
        await local_cluster.add_runner("a", answer=HOLD)
        vps = await local_cluster.submit("", kind=task_pb2.TASK_KIND_VPS, ssh_public_key=SSH_KEY)
        await local_cluster.wait_status(vps.task_id, TaskStatus.RUNNING)
        job = await local_cluster.submit("sleep", "9")
        await local_cluster.wait_status(job.task_id, TaskStatus.RUNNING)
        for task in (vps, job):
            await local_cluster.kill(task.task_id)
        await eventually(lambda: len(receiver.bodies) == 2, what="both task.killed webhooks")
        sent = {body["task"]["task_id"]: body["task"] for body in receiver.bodies}
        assert sent[str(vps.task_id)]["kind"] == "vps"
        assert sent[str(vps.task_id)]["command"] == ""
        assert sent[str(job.task_id)]["command"] == "sleep 9"
    finally:
        receiver.close()


async def test_a_user_and_password_in_the_url_are_sent_as_basic_authentication(
    local_cluster: LocalCluster,
) -> None:
    """`http://user:pass@host/...` passed the config's checks, then every delivery failed
    ("Name or service not known": urllib took `user:pass@host` for the host's name)."""
    receiver = Flaky({})
    try:
        url = receiver.url("/hooks").replace("http://", "http://alert%40lab:p%3Ass@")
        local_cluster.config.webhooks = [WebhookConfig(url=url, events=["task.completed"])]
        await local_cluster.restart_host()
        await local_cluster.add_runner("a")
        task = await local_cluster.submit("true")
        await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
        await eventually(lambda: receiver.bodies, what="the task.completed webhook")
        assert receiver.at("/hooks")
        credentials = base64.b64encode(b"alert@lab:p:ss").decode()
        assert receiver.authorizations == [f"Basic {credentials}"]
    finally:
        receiver.close()


async def test_a_node_event_says_whether_the_node_is_drained(local_cluster: LocalCluster) -> None:
    """An operator drains a node, then shuts it down for maintenance: its `node.offline`
    could not be told from a node that failed, and a receiver paging on it paged for
    planned work."""
    receiver = Flaky({})
    try:
        local_cluster.config.webhooks = [
            WebhookConfig(url=receiver.url("/hooks"), events=["node.offline"])
        ]
        await local_cluster.restart_host()
        drained = await local_cluster.add_runner("a")
        failed = await local_cluster.add_runner("b")
        await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
        for runner in (drained, failed):
            runner.go_silent()
        await eventually(lambda: len(receiver.bodies) == 2, what="both node.offline webhooks")
        assert {body["node"]: body["draining"] for body in receiver.bodies} == {
            "a": True,
            "b": False,
        }
    finally:
        receiver.close()


async def test_an_event_is_dated_to_the_millisecond_as_documented(
    local_cluster: LocalCluster,
) -> None:
    """`at` had microseconds, and no fraction on a whole second: a receiver parsing the
    documented `2026-11-22T10:15:03.120+00:00` layout refused it."""
    receiver = Flaky({})
    try:
        local_cluster.config.webhooks = [
            WebhookConfig(url=receiver.url("/hooks"), events=["task.completed"])
        ]
        await local_cluster.restart_host()
        await local_cluster.add_runner("a")
        task = await local_cluster.submit("true")
        await local_cluster.wait_status(task.task_id, TaskStatus.COMPLETED)
        await eventually(lambda: receiver.bodies, what="the task.completed webhook")
        [body] = receiver.bodies
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}\+00:00", body["at"]), body
    finally:
        receiver.close()


async def test_an_operator_draining_and_undraining_a_node_is_sent(
    local_cluster: LocalCluster,
) -> None:
    """A node taken out of service by hand was told to nobody on call: only the audit log
    had it. A repeated drain changes nothing and sends nothing."""
    receiver = Flaky({})
    try:
        local_cluster.config.webhooks = [
            WebhookConfig(url=receiver.url("/hooks"), events=["node.drained", "node.undrained"])
        ]
        await local_cluster.restart_host()
        await local_cluster.add_runner("a")
        operator = await local_cluster.add_user("oncall", Role.OPERATOR)
        await operator.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
        await operator.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)
        await operator.nodes.UndrainNode(npb.UndrainNodeRequest(hostname="a"), timeout=5)
        await eventually(lambda: len(receiver.bodies) == 2, what="the drain and undrain webhooks")
        assert [
            (body["event"], body["node"], body["draining"], body["by"]) for body in receiver.bodies
        ] == [("node.drained", "a", True, "oncall"), ("node.undrained", "a", False, "oncall")]
    finally:
        receiver.close()
