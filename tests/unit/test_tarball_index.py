"""The Host knows which environments have a tarball without touching the shared folder on
its event loop: a tarball copied there is accepted within seconds, and a shared folder that
hangs (a dead NFS server) does not stall submissions or any other call."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path, PosixPath

import grpc
import pytest

from hakuriver_common.proto.hakuriver.v1 import node_service_pb2 as npb
from hakuriver_host import tarball_index
from tests.unit.conftest import MakeCluster
from tests.unit.local_cluster import LocalCluster


def _index(cluster: LocalCluster):  # type: ignore[no-untyped-def]
    assert cluster.server is not None
    return cluster.server.cluster.tarballs


async def _accepted(cluster: LocalCluster, environment: str) -> bool:
    try:
        await cluster.submit("true", container_name=environment)
    except grpc.aio.AioRpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc.details()
        return False
    return True


async def test_a_tarball_copied_into_the_folder_is_accepted(local_cluster: LocalCluster) -> None:
    await local_cluster.add_runner("n1")
    assert not await _accepted(local_cluster, "copied")
    folder = _index(local_cluster).directory
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "copied-1796410133.tar").write_bytes(b"")
    assert await _accepted(local_cluster, "copied")  # an unknown name reads the folder again


class _Hung(PosixPath):
    """A folder on a mount whose server stopped answering: listing it blocks."""

    entered = threading.Event()
    release = threading.Event()

    def glob(self, pattern: str, **_: object) -> Iterator[Path]:  # type: ignore[override]
        _Hung.entered.set()
        _Hung.release.wait(30)
        return iter(())


async def test_a_hung_shared_folder_does_not_stall_the_host(
    make_local_cluster: MakeCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The folder read every 0.1 s, and a submission waiting 0.3 s for a reading (not 2 s
    each): the hung reading takes 30 s."""
    monkeypatch.setattr(tarball_index, "REFRESH_SECONDS", 0.1)
    monkeypatch.setattr(tarball_index, "MISS_SECONDS", 0.3)
    local_cluster = await make_local_cluster()
    await local_cluster.add_runner("n1")
    index = _index(local_cluster)
    index.directory = _Hung(index.directory)
    try:
        await asyncio.to_thread(_Hung.entered.wait, 10)
        assert _Hung.entered.is_set(), "the index never read the folder again"
        task = await local_cluster.submit("true")  # the default environment: on n1
        assert task.task_id
        nodes = await local_cluster.nodes.ListNodes(npb.ListNodesRequest(), timeout=2)
        assert [n.hostname for n in nodes.nodes] == ["n1"]
        # A name it does not know waits for a new reading, but not for the hung one.
        assert not await _accepted(local_cluster, "elsewhere")
        await local_cluster.wait_status(task.task_id, within=5)
    finally:
        _Hung.release.set()
