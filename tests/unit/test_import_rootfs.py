"""ImportRootfs keeps nothing of an upload that did not arrive whole: a caller gone
mid-upload, or shared storage full, leaves no hidden partial file (possibly gigabytes),
and a full disk is a clear FAILED_PRECONDITION, not an internal error."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any, cast

import pytest

from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb
from hakuriver_host.cluster import Cluster
from hakuriver_host.environment_services import EnvironmentService
from hakuriver_host.environments import EnvironmentManager
from hakuriver_host.errors import FailedPrecondition


class _Manager:
    def __init__(self, upload: Path) -> None:
        self.upload = upload

    def upload_path(self, name: str) -> Path:
        return self.upload

    def import_rootfs(self, *args: Any) -> None:
        raise AssertionError("nothing is imported from an upload that did not arrive")


def _service(upload: Path) -> EnvironmentService:
    cluster = type("C", (), {"audit": type("A", (), {"record": lambda *a, **k: None})()})()
    return EnvironmentService(cast(EnvironmentManager, _Manager(upload)), cast(Cluster, cluster))


async def _upload(then: BaseException | None) -> AsyncIterator[epb.ImportRootfsRequest]:
    yield epb.ImportRootfsRequest(name="myenv")
    yield epb.ImportRootfsRequest(chunk=b"x" * 65536)
    if then is not None:
        raise then


async def test_a_caller_gone_mid_upload_leaves_no_partial_file(tmp_path: Path) -> None:
    upload = tmp_path / ".import-myenv.partial"
    with pytest.raises(asyncio.CancelledError):
        await _service(upload).ImportRootfs(_upload(asyncio.CancelledError()), cast(Any, None))
    assert not upload.exists()


async def test_a_full_disk_is_a_clear_failed_precondition_and_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    upload = tmp_path / ".import-myenv.partial"
    real_open = Path.open

    def full(path: Path, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        if path == upload:
            upload.touch()
            return real_open(Path("/dev/full"), mode, *args, **kwargs)  # ENOSPC on write
        return real_open(path, mode, *args, **kwargs)

    monkeypatch.setattr(Path, "open", full)
    with pytest.raises(FailedPrecondition) as refused:
        await _service(upload).ImportRootfs(_upload(None), cast(Any, None))
    assert refused.value.message.startswith(
        f"shared storage: cannot write the upload to {tmp_path}"
    )
    assert not upload.exists()
