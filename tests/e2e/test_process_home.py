"""A host-process task's HOME is its user's, whatever HOME the Runner was started with."""

from __future__ import annotations

import os
import pwd
from pathlib import Path

import pytest

from hakuriver_common.config import Config
from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.process_backend import ProcessBackend


def test_a_host_process_gets_its_users_home_not_the_runners(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A Runner's systemd unit pins HOME to the home of whoever wrote it (so its config's
    ~/ paths hold): its tasks get the home of the user they run as."""
    monkeypatch.setenv("HOME", str(tmp_path / "installer"))
    backend = ProcessBackend(
        Config(runner={"state_dir": tmp_path}, paths={"local_temp_dir": tmp_path / "work"})  # type: ignore[arg-type]
    )
    backend.cluster_id = "00c0ffee00c0ffee"
    dispatch = rpb.DispatchCommand(task_id=7, command="/bin/sh", arguments=["-c", 'echo "$HOME"'])
    task = backend.start(dispatch)
    assert task.popen is not None and task.popen.wait(10) == 0
    printed = (backend.root / "7" / "stdout").read_text().strip()
    assert printed == pwd.getpwuid(os.geteuid()).pw_dir != str(tmp_path / "installer")
