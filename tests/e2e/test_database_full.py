"""The Host's SQLite database on a file system that fills up while tasks run: what the
Host changed meanwhile is written once there is room again."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.chaos.system import Tmpfs, tmpfs_problem
from tests.e2e.harness import required, running_cluster, wait_for

pytestmark = pytest.mark.docker


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Tmpfs]:
    problem = tmpfs_problem()
    if problem is not None:
        required("a tmpfs", problem)
    disk = Tmpfs(tmp_path / "db", "16m")
    try:
        yield disk
    finally:
        disk.unmount()


def _fill(folder: Path) -> Path:
    """A file taking every free byte of ``folder``'s file system."""
    filler = folder / "filler"
    descriptor = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        for size in (65536, 512):  # then the last bytes, in smaller pieces
            with contextlib.suppress(OSError):  # No space left on device
                while True:
                    os.write(descriptor, b"\0" * size)
    finally:
        os.close(descriptor)
    return filler


def test_a_task_that_ends_while_the_database_disk_is_full_is_stored_once_there_is_room(
    docker_ready: None, small_disk: Tmpfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite's 'database or disk is full' was taken for a bug: the task's end was dropped
    # (running in the database, lost after a restart) and calls answered INTERNAL (QA).
    monkeypatch.setenv("HAKURIVER_DATABASE__DB_FILE", str(small_disk.path / "host.db"))
    with running_cluster(tmp_path) as cluster:
        task, gate = cluster.gated_task("go")
        filler = _fill(small_disk.path)
        gate.touch()
        wait_for(
            lambda: "disk is full" in (tmp_path / "host.log").read_text(),
            timeout=60,
            what="the task's end refused for the full disk",
        )
        # Shown as stored: a Host killed now would show it running, so it is not shown
        # ended before its end is stored.
        assert cluster.get(task.task_id).status == task_pb2.TASK_STATUS_RUNNING
        refused = cluster.cli("task", "submit", "--", "true")
        # The CLI sends it again a few times (the disk may get room), then says how to
        # send it once more without making it twice.
        last = refused.stderr.splitlines()[-1]
        assert refused.returncode == 1, refused.stderr
        assert last.startswith(
            "error: the Host's database disk is full: try again once it has room "
            "(UNAVAILABLE), 4 times: "
        ), refused.stderr
        assert last.endswith("creates none twice"), refused.stderr
        filler.unlink()
        final = cluster.wait_final(task.task_id)
        assert (final.status, final.exit_code) == (task_pb2.TASK_STATUS_COMPLETED, 0)
        cluster.kill_host()
        cluster.start_host()
        assert cluster.get(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
        assert cluster.read_log(task.task_id) == b"before\nafter\n"
        listed = cluster.cli("task", "list", "--json")
        assert [t["task_id"] for t in json.loads(listed.stdout)] == [str(task.task_id)]
    assert "Traceback" not in (tmp_path / "host.log").read_text()
