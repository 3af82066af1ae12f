"""A Host restarted on the same database and shared folder carries on where it stopped:
queued tasks stay queued, running ones are adopted from their reconnecting Runner and end
with their own exit code and every byte of output; drain is kept."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from hakuriver_common.config import WebhookConfig
from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb, task_pb2
from hakuriver_common.statuses import NodeStatus, TaskStatus
from tests.fake_runner import HOLD, eventually
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import TIMING, LocalCluster, status_of
from tests.webhook_receiver import Flaky


async def test_pending_and_running_tasks_survive_a_restart(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", cores=1, answer=HOLD)
    [running] = await local_cluster.submit_running()
    runner.write(running.task_id, b"before\n")
    await eventually(lambda: local_cluster.read_log(running.task_id), what="output to land")
    queued = await local_cluster.submit("next", priority=1)
    later = await local_cluster.submit("later")

    await local_cluster.restart_host()

    assert runner.registrations == 2
    assert [a.task_id for a in runner.ack.adopt] == [running.task_id]  # type: ignore[union-attr]
    assert status_of(await local_cluster.get(running.task_id)) is TaskStatus.RUNNING
    assert await local_cluster.queue_positions([queued.task_id, later.task_id]) == [1, 2]
    assert runner.dispatched == [running.task_id]

    runner.finish(running.task_id, 5, stdout=b"after\n")
    ended = await local_cluster.wait_status(running.task_id)
    assert status_of(ended) is TaskStatus.FAILED and ended.exit_code == 5
    assert await local_cluster.read_log(running.task_id) == b"before\nafter\n"

    # The queue carries on in the order it had before the restart.
    await local_cluster.wait_status(queued.task_id, TaskStatus.RUNNING)
    runner.finish(queued.task_id, 0)
    assert status_of(await local_cluster.wait_status(queued.task_id)) is TaskStatus.COMPLETED
    await local_cluster.wait_status(later.task_id, TaskStatus.RUNNING)
    assert runner.dispatched == [running.task_id, queued.task_id, later.task_id]


async def test_task_that_ends_while_the_host_is_down_is_final_after_restart(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    ok, bad = await local_cluster.submit_running(2)

    await local_cluster.stop_host()
    runner.finish(ok.task_id, 0, stdout=b"finished alone\n")
    runner.finish(bad.task_id, 9)
    await local_cluster.start_host()
    await eventually(lambda: runner.registrations == 2, what="the runner to register again")

    done = await local_cluster.wait_status(ok.task_id)
    assert status_of(done) is TaskStatus.COMPLETED and done.exit_code == 0
    assert await local_cluster.read_log(ok.task_id) == b"finished alone\n"
    failed = await local_cluster.wait_status(bad.task_id)
    assert status_of(failed) is TaskStatus.FAILED and failed.exit_code == 9
    await eventually(
        lambda: sorted(runner.released) == sorted([ok.task_id, bad.task_id]),
        what="both tasks released",
    )


async def test_drain_survives_a_restart(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("a", answer=HOLD)
    await local_cluster.nodes.DrainNode(npb.DrainNodeRequest(hostname="a"), timeout=5)

    await local_cluster.restart_host()

    node = await local_cluster.wait_node("a", NodeStatus.ONLINE)
    assert node.draining
    task = await local_cluster.submit("job", targets=[task_pb2.Target(hostname="a")])
    assert status_of(await local_cluster.get(task.task_id)) is TaskStatus.PENDING


async def test_node_webhooks_stay_true_across_a_restart(make_local_cluster: MakeCluster) -> None:
    """A node online before the restart whose Runner reconnects never went offline: no
    ``node.online``; one whose Runner stopped while the Host was down gets its
    ``node.offline`` once its timeout passes, and shows online but disconnected until then.
    The timeout is 3 s: at 1 s, a loaded machine's restart outlasted it (CI)."""
    local_cluster = await make_local_cluster(timing={**TIMING, "heartbeat_timeout_factor": 15})
    back = await local_cluster.add_runner("back")
    gone = await local_cluster.add_runner("gone")
    await local_cluster.stop_host()
    await gone.stop()
    receiver = Flaky({})
    try:
        local_cluster.config.webhooks = [
            WebhookConfig(
                url=receiver.url("/hooks"),
                events=["node.online", "node.offline"],
                retry_base_seconds=0.05,
            )
        ]
        await local_cluster.start_host()
        meanwhile = await local_cluster.node("gone")
        assert NodeStatus.from_pb(meanwhile.status) is NodeStatus.ONLINE and meanwhile.disconnected
        await eventually(lambda: back.registrations == 2, what="the runner to register again")
        await eventually(lambda: receiver.bodies, what="a node webhook")
        await asyncio.sleep(0.3)  # for any event wrongly sent after it
        assert [(b["event"], b["node"]) for b in receiver.bodies] == [("node.offline", "gone")]
        assert NodeStatus.from_pb((await local_cluster.node("gone")).status) is NodeStatus.OFFLINE
    finally:
        receiver.close()


async def test_environments_of_runners_are_known_before_they_reconnect(
    local_cluster: LocalCluster,
) -> None:
    runner = await local_cluster.add_runner("a", environments=["only-on-runners"])
    runner.environments = ["only-on-runners", "loaded-later"]

    async def reported() -> bool:
        return "loaded-later" in (await local_cluster.node("a")).environments

    await eventually(reported, what="a heartbeat with the new environment")
    await runner.stop()
    await local_cluster.restart_host(wait_runners=False)
    for environment in ("only-on-runners", "loaded-later"):
        task = await local_cluster.submit("job", container_name=environment)
        assert status_of(task) is TaskStatus.PENDING, environment


async def test_a_restarted_host_shows_when_a_runner_was_last_heard_from(
    local_cluster: LocalCluster,
) -> None:
    """Not when it registered: the row kept that heartbeat only, so after a restart (or a
    Host SIGKILL) a Runner heard from a moment before showed as silent for as long as it
    had been registered, and a node that did not come back kept that time for good."""
    runner = await local_cluster.add_runner("a")
    registered = (await local_cluster.node("a")).last_heartbeat.ToDatetime()
    timeout = timedelta(seconds=local_cluster.config.timing.runner_timeout)

    async def heard_long_after_registering() -> bool:
        heard = (await local_cluster.node("a")).last_heartbeat.ToDatetime()
        return heard - registered > 3 * timeout

    await eventually(heard_long_after_registering, what="heartbeats for three timeouts")
    await runner.stop()
    await local_cluster.restart_host(wait_runners=False)
    shown = (await local_cluster.node("a")).last_heartbeat.ToDatetime()
    assert shown - registered > timeout
