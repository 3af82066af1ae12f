"""`hakuriver.docker create-tar` stopped with Ctrl-C says that the Host may finish the
tarball all the same: the Host goes on with a save its caller left (it had already committed
the container), so a silent exit 130 let an admin believe nothing had changed."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hakuriver_cli import docker as docker_cli
from hakuriver_common import commands as cli
from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb
from tests.fake_runner import eventually
from tests.unit.cli_threads import exit_code
from tests.unit.local_cluster import LocalCluster


class _Image:
    """An environment's image whose save waits, after its first chunk, for ``release``."""

    id = "sha256:feed"
    attrs: dict[str, Any] = {"Config": {"Cmd": ["/bin/sh"]}}

    def __init__(self, release: threading.Event) -> None:
        self.release = release

    def save(self, named: str) -> Iterator[bytes]:
        yield b"x" * 4096
        assert self.release.wait(30)
        yield b"y" * 4096


class _Container:
    status = "running"

    def __init__(self, image: _Image) -> None:
        self.image = image

    def commit(self, **_: object) -> _Image:
        return self.image


class _CtrlC:
    """The progress bar, at whose first update Ctrl-C is pressed."""

    def __enter__(self) -> _CtrlC:
        return self

    def __exit__(self, *_: object) -> None:
        return None

    def add_task(self, description: str, total: None) -> int:
        return 0

    def update(self, bar: int, completed: int) -> None:
        raise KeyboardInterrupt


async def test_create_tar_stopped_says_the_host_may_finish_it(
    local_cluster: LocalCluster,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    release = threading.Event()
    image = _Image(release)
    assert local_cluster.server is not None
    local_cluster.server.environments._client = SimpleNamespace(
        containers=SimpleNamespace(get=lambda name: _Container(image)),
        images=SimpleNamespace(get=lambda ref: image),
    )
    monkeypatch.setattr(docker_cli, "_progress", _CtrlC)
    config = local_cluster.cli_config(tmp_path / "client.toml")

    def create_tar() -> int | str:
        try:
            return exit_code(docker_cli.create_tar, "myenv", config, False)
        except KeyboardInterrupt:
            return "a KeyboardInterrupt traceback"

    try:
        assert await asyncio.to_thread(create_tar) == cli.INTERRUPTED
    finally:
        release.set()
    assert capsys.readouterr().err == (
        "error: stopped: the Host may finish saving myenv all the same, older tarballs of it "
        "removed (hakuriver.docker list-tars shows it once written)\n"
    )

    async def listed() -> list[str]:
        reply = await local_cluster.environments.ListTars(epb.ListTarsRequest(), timeout=5)
        return [tarball.name for tarball in reply.tarballs]

    assert await eventually(listed, 10, what="the tarball the Host finished") == ["myenv"]
