"""`hakuriver.docker import-rootfs` sends what it can open, pipes included
(`import-rootfs <(docker export X) NAME`); what it cannot open or read is one line naming
the file and why (exit 2), not "no such file" for a directory nor gRPC's "Exception
iterating requests!"."""

from __future__ import annotations

import contextlib
import io
import os
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from hakuriver_cli import docker
from hakuriver_cli.call_error import CallError, Status
from hakuriver_cli.connection import fail
from hakuriver_common import commands as cli
from hakuriver_common.proto.hakuriver.v1 import environment_service_pb2 as epb


class _Stub:
    """The Host's side: reads the stream as gRPC does (an exception raised while iterating
    cancels the call, which the link reports as UNKNOWN)."""

    def __init__(self) -> None:
        self.received = b""

    def ImportRootfs(self, requests: Iterator[epb.ImportRootfsRequest], timeout: float) -> Any:
        try:
            for request in requests:
                self.received += request.chunk
        except Exception:
            raise CallError(Status.UNKNOWN, "Exception iterating requests!") from None
        tarball = epb.Tarball(path="/shared/myenv-1.tar", size_bytes=len(self.received))
        return epb.ImportRootfsResponse(tarball=tarball)


@pytest.fixture
def stub(monkeypatch: pytest.MonkeyPatch) -> _Stub:
    made = _Stub()

    @contextlib.contextmanager
    def link(config: object) -> Iterator[None]:
        try:
            yield None
        except CallError as exc:
            fail(str(exc))

    monkeypatch.setattr(docker, "config_or_fail", lambda path: None)
    monkeypatch.setattr(docker, "host_link", link)
    monkeypatch.setattr(docker, "environment_stub", lambda link: made)
    return made


def test_a_pipe_is_sent(tmp_path: Path, stub: _Stub, capsys: pytest.CaptureFixture[str]) -> None:
    fifo = tmp_path / "rootfs"
    os.mkfifo(fifo)

    def write() -> None:
        with fifo.open("wb") as out:
            out.write(b"rootfs" * 1000)

    writer = threading.Thread(target=write)
    writer.start()
    try:
        docker.import_rootfs(str(fifo), "myenv")
    finally:
        # A reader that does not wait for a writer lets one still waiting (the pipe never
        # read) go on; a blocking open here waited for ever when the writer, its data read,
        # was only finishing (is_alive() still true): it failed once in CI.
        release = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
        writer.join()
        os.close(release)
    assert stub.received == b"rootfs" * 1000
    assert capsys.readouterr().out.startswith("wrote /shared/myenv-1.tar")


def _refused(source: str, capsys: pytest.CaptureFixture[str]) -> str:
    with pytest.raises(cli.Exit) as ended:
        docker.import_rootfs(source, "myenv")
    assert ended.value.exit_code == 2
    return capsys.readouterr().err


def test_what_cannot_be_opened_is_named(
    tmp_path: Path, stub: _Stub, capsys: pytest.CaptureFixture[str]
) -> None:
    assert _refused(str(tmp_path), capsys) == f"error: {tmp_path}: Is a directory\n"
    missing = tmp_path / "missing.tar"
    assert _refused(str(missing), capsys) == f"error: {missing}: no such file\n"


class _Failing(io.RawIOBase):
    def readable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        raise OSError(5, "Input/output error")


def test_a_read_error_is_named_and_nothing_is_imported(
    stub: _Stub, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(docker, "_source", lambda source: _Failing())
    assert _refused("rootfs.tar", capsys) == (
        "error: rootfs.tar: cannot read it: Input/output error; nothing was imported\n"
    )
