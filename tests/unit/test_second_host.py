"""A second Host on a database another Host is using (the same config, other ports) stops
at start with one line naming the database and the Host that has it, and changes nothing;
it started, loaded the same tasks and nodes, and its monitor marked the first Host's
Runners offline and their tasks unknown in the shared database."""

from __future__ import annotations

import os

import pytest

from hakuriver_common.statuses import NodeStatus, TaskStatus
from hakuriver_host.server import HostServer
from hakuriver_host.store import DatabaseError
from tests.fake_runner import HOLD
from tests.unit.local_cluster import LocalCluster, status_of


async def test_a_second_host_on_the_same_database_is_refused(local_cluster: LocalCluster) -> None:
    runner = await local_cluster.add_runner("a", answer=HOLD)
    [running] = await local_cluster.submit_running()
    config = local_cluster.config.model_copy(deep=True)
    config.network.host_port = 0  # the first Host's ports are taken: other ones
    second = HostServer(config, prepare_default_environment=False)
    with pytest.raises(DatabaseError) as refused:
        await second.start()
    await second.stop()
    assert str(refused.value) == (
        f"another Host (pid {os.getpid()}) is using the database {config.database.db_file} "
        "(database.db_file): stop it first, or give this Host a database of its own"
    )

    # The first Host carries on, and once it stops, the database is free for the next one.
    assert (await local_cluster.node("a")).status == NodeStatus.ONLINE.pb
    await local_cluster.restart_host()
    assert status_of(await local_cluster.get(running.task_id)) is TaskStatus.RUNNING
    runner.finish(running.task_id, 0)
    assert status_of(await local_cluster.wait_status(running.task_id)) is TaskStatus.COMPLETED
