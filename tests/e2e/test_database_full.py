"""The Host's SQLite database on a file system that fills up, or cannot be written, while
tasks run: what the Host changed meanwhile is written once it can be again."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path

import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2
from tests.chaos.system import Tmpfs, tmpfs_problem
from tests.e2e.harness import ProcessCluster, required, running_cluster, wait_for

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


def _stored_once_writable(
    cluster: ProcessCluster, refuse: Callable[[], Callable[[], None]], logged: str, said: str
) -> None:
    """A task ends while the database takes no writes (``refuse``, which returns what
    undoes it): shown running until its end is stored (a Host killed meanwhile would show it
    running again), a submission refused as ``said`` (the CLI sends it again a few times,
    then says how to send it once more without making it twice); then stored, also across
    a restart of the Host."""
    task, gate = cluster.gated_task("go")
    allow = refuse()
    gate.touch()
    log = cluster.root / "host.log"
    wait_for(lambda: logged in log.read_text(), timeout=60, what=f"{logged!r} in the Host's log")
    assert cluster.get(task.task_id).status == task_pb2.TASK_STATUS_RUNNING
    refused = cluster.cli("task", "submit", "--", "true")
    last = refused.stderr.splitlines()[-1]
    assert refused.returncode == 1, refused.stderr
    assert last.startswith(f"error: {said} (UNAVAILABLE), 4 times: "), refused.stderr
    assert last.endswith("creates none twice"), refused.stderr
    allow()
    final = cluster.wait_final(task.task_id)
    assert (final.status, final.exit_code) == (task_pb2.TASK_STATUS_COMPLETED, 0)
    cluster.kill_host()
    cluster.start_host()
    assert cluster.get(task.task_id).status == task_pb2.TASK_STATUS_COMPLETED
    assert cluster.read_log(task.task_id) == b"before\nafter\n"
    listed = cluster.cli("task", "list", "--json")
    assert [t["task_id"] for t in json.loads(listed.stdout)] == [str(task.task_id)]


def test_a_task_that_ends_while_the_database_disk_is_full_is_stored_once_there_is_room(
    docker_ready: None, small_disk: Tmpfs, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # SQLite's 'database or disk is full' was taken for a bug: the task's end was dropped
    # (running in the database, lost after a restart) and calls answered INTERNAL (QA).
    monkeypatch.setenv("HAKURIVER_DATABASE__DB_FILE", str(small_disk.path / "host.db"))
    with running_cluster(tmp_path) as cluster:
        _stored_once_writable(
            cluster,
            lambda: _fill(small_disk.path).unlink,
            "disk is full",
            "the Host's database disk is full: try again once it has room",
        )
    assert "Traceback" not in (tmp_path / "host.log").read_text()


def _immutable(paths: list[Path], on: bool) -> None:
    flag = "+i" if on else "-i"
    subprocess.run(["chattr", flag, *map(str, paths)], check=True, capture_output=True)


@pytest.fixture
def unwritable_files(tmp_path: Path) -> Iterator[list[Path]]:
    """The database's files, made immutable (``chattr +i``: no writes, also by root) by
    the test; writable again when it ends, whatever happened."""
    probe = tmp_path / "probe"
    probe.touch()
    if shutil.which("chattr") is None:
        required("chattr", "e2fsprogs is not installed")
    try:
        _immutable([probe], True)
    except subprocess.CalledProcessError as exc:
        required("an immutable file", exc.stderr.decode().strip())
    _immutable([probe], False)
    files = [tmp_path / "host.db", tmp_path / "host.db-wal"]
    try:
        yield files
    finally:
        _immutable([path for path in files if path.exists()], False)


def _made_immutable(files: list[Path]) -> Callable[[], None]:
    _immutable(files, True)
    return partial(_immutable, files, False)


def test_a_task_that_ends_while_the_database_cannot_be_written_is_stored_once_it_can(
    docker_ready: None, unwritable_files: list[Path], tmp_path: Path
) -> None:
    # SQLite's 'disk I/O error' (a read-only file system, a file made immutable) was taken
    # for a bug: the task's end was dropped from the database but not from the Host's
    # memory, which then had its Runner discard it: running for good, submissions INTERNAL.
    with running_cluster(tmp_path) as cluster:
        _stored_once_writable(
            cluster,
            partial(_made_immutable, unwritable_files),
            "disk I/O error",
            "the Host's database file cannot be written (read-only, or a disk I/O error): "
            "try again once it can",
        )
    assert "Traceback" not in (tmp_path / "host.log").read_text()
