"""Forgetting old tasks end to end: ``hakuriver.admin task prune`` against a real Host
removes the output files a real Runner's task left in the shared folder, with its row."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
from contextlib import closing
from datetime import UTC, datetime, timedelta

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import task_pb2, task_service_pb2 as tpb
from hakuriver_common.roles import Role
from tests.e2e.harness import ProcessCluster

pytestmark = pytest.mark.docker


def _admin(cluster: ProcessCluster, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k != "HAKURIVER_TOKEN"}
    return subprocess.run(
        [*ProcessCluster.cli_argv("admin"), "task", "prune", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**base, "HAKURIVER_CONFIG": str(cluster.config_path), **env},
    )


def _age(cluster: ProcessCluster, task_id: int, days: float) -> None:
    ended = datetime.now(UTC) - timedelta(days=days)
    with closing(sqlite3.connect(cluster.root / "host.db")) as db, db:
        db.execute(
            "UPDATE tasks SET completed_at = ? WHERE task_id = ?",
            (f"{ended:%Y-%m-%d %H:%M:%S.%f}", task_id),
        )


def test_prune_removes_an_old_tasks_output_files(cluster: ProcessCluster) -> None:
    old = cluster.submit(["sh", "-c", "echo old; echo warn >&2"])
    recent = cluster.submit(["sh", "-c", "echo recent"])
    old, recent = cluster.wait_final(old.task_id), cluster.wait_final(recent.task_id)
    assert old.status == recent.status == task_pb2.TASK_STATUS_COMPLETED
    out = cluster.shared_dir / "task_outputs" / f"{old.task_id}.out"
    err = cluster.shared_dir / "task_errors" / f"{old.task_id}.err"
    assert (out.read_bytes(), err.read_bytes()) == (b"old\n", b"warn\n")
    _age(cluster, old.task_id, 40)

    dry = _admin(cluster, "--older-than", "30", "--dry-run", "--json")
    assert dry.returncode == 0, dry.stderr
    counted = json.loads(dry.stdout)
    assert (counted["tasks"], counted["output_files"], counted["output_bytes"]) == (1, 2, 9)
    assert out.exists() and err.exists()

    token = cluster.add_user("retention-user", Role.OPERATOR)
    refused = _admin(cluster, "--older-than", "30", HAKURIVER_TOKEN=token)
    assert refused.returncode != 0
    [line] = refused.stderr.splitlines()
    assert "PruneTasks needs the admin role" in line, line
    assert out.exists()

    done = _admin(cluster, "--older-than", "30")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("forgot 1 task(s) (0 batch(es)), "), done.stdout
    assert not out.exists() and not err.exists()
    with pytest.raises(grpc.RpcError) as gone:
        cluster.tasks.GetTask(tpb.GetTaskRequest(task_id=old.task_id), timeout=10)
    assert gone.value.code() == grpc.StatusCode.NOT_FOUND
    assert cluster.read_log(recent.task_id) == b"recent\n"

    bad = _admin(cluster, "--older-than", "0")
    assert bad.returncode != 0
    assert bad.stderr.splitlines() == [
        "error: older_than_days: must be more than 0 and at most 36,500 (100 years), got 0 "
        "(INVALID_ARGUMENT)"
    ]
