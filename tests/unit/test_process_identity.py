"""A host process is known by its PID and its start since boot (psutil): a stepped clock
does not make the Runner lose its own process, and a PID that was reused is not taken for
it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import psutil
import pytest

from hakuriver_common.config import Config
from hakuriver_runner.process_backend import ProcessBackend, started_since_boot

CLUSTER = "00c0ffee00c0ffee"


def _backend(tmp_path: Path) -> ProcessBackend:
    backend = ProcessBackend(Config(runner={"state_dir": tmp_path}))  # type: ignore[arg-type]
    backend.cluster_id = CLUSTER
    return backend


def _record(backend: ProcessBackend, task_id: int, meta: dict[str, object]) -> None:
    spool = backend.root / str(task_id)
    spool.mkdir(parents=True)
    meta = {"started_at": "2026-12-04T10:00:00+00:00", "cluster": CLUSTER, **meta}
    (spool / "process.json").write_text(json.dumps(meta))


def test_a_process_is_still_itself_after_the_clock_is_stepped(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    backend = _backend(tmp_path)
    me = os.getpid()
    _record(backend, 1, {"pid": me, "started_since_boot": started_since_boot(me)})
    [mine] = backend.tasks().values()
    assert mine.alive()
    # NTP steps the wall clock by an hour: boot and start times on it move together.
    stepped = psutil.boot_time() + 3600
    monkeypatch.setattr(psutil._pslinux, "boot_time", lambda: stepped)  # type: ignore[attr-defined]
    assert psutil.Process(me).create_time() > stepped
    assert mine.alive()


def test_a_reused_pid_is_not_the_recorded_process(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    me = os.getpid()
    began = started_since_boot(me)
    assert began is not None
    _record(backend, 1, {"pid": me, "started_since_boot": began - 0.01})  # a tick earlier
    _record(backend, 2, {"pid": 2**23, "started_since_boot": began})  # beyond pid_max
    tasks = backend.tasks()
    assert not tasks[1].alive()
    assert not tasks[2].alive()
    assert started_since_boot(2**23) is None


def test_a_record_of_an_older_runner_in_clock_ticks_is_understood(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    me = os.getpid()
    ticks = Path(f"/proc/{me}/stat").read_text().rsplit(")", 1)[1].split()[19]
    _record(backend, 1, {"pid": me, "start_time": ticks})
    _record(backend, 2, {"pid": me, "start_time": str(int(ticks) + 1)})
    tasks = backend.tasks()
    assert tasks[1].alive()
    assert not tasks[2].alive()


def test_a_record_of_another_cluster_is_not_ours(tmp_path: Path) -> None:
    backend = _backend(tmp_path)
    me = os.getpid()
    _record(backend, 1, {"pid": me, "started_since_boot": started_since_boot(me)})
    backend.cluster_id = "another"
    assert backend.tasks() == {}
