"""``~`` in paths.shared_dir means the home folder, as in every other path of the config: the
Host made a folder named "~" in its working directory and wrote task output there (and the
systemd unit, which expands it, let it write only the real one)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.unit.conftest import MakeCluster


async def test_task_output_goes_under_the_home_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, make_local_cluster: MakeCluster
) -> None:
    home = tmp_path / "home"
    monkeypatch.setenv("HOME", str(home))
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    cluster = await make_local_cluster(paths={"shared_dir": Path("~/share")})
    await cluster.add_runner("a")
    task = await cluster.submit("job")
    assert task.stdout_path == str(home / "share" / "task_outputs" / f"{task.task_id}.out")
    assert (home / "share" / "task_outputs").is_dir()
    assert list(work.iterdir()) == []
