"""`hakuriver.task stdout --max-lag`: a skip never glues a cut line onto the next one, also
when it comes right after the follower rode out a Host restart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from hakuriver_cli import reconnect, task
from hakuriver_cli.call_error import CallError, Status
from hakuriver_common.proto.hakuriver.v1 import log_service_pb2 as lpb


class _Logs:
    """What the Host sends: ``pieces`` of (offset, data), as ReadLog streams them."""

    def __init__(self, pieces: list[tuple[int, bytes]]) -> None:
        self.pieces = pieces

    def stub(self, service: str) -> Any:
        assert service == "LogService"
        return self

    def close(self) -> None:
        pass

    def ReadLog(self, request: lpb.ReadLogRequest) -> Iterator[lpb.ReadLogResponse]:
        for offset, data in self.pieces:
            yield lpb.ReadLogResponse(offset=offset, data=data)


def test_a_skip_after_part_of_a_line_starts_the_next_piece_on_a_line_of_its_own(
    capfdbinary: pytest.CaptureFixture[bytes],
) -> None:
    # The reader printed "step 1\nste" when it fell behind; the Host skipped to "step 9".
    link = _Logs([(0, b"step 1\nste"), (70, b"step 9\nstep 10\n")])
    task._copy_log(link, lpb.ReadLogRequest(task_id=5), "1K")
    out, err = capfdbinary.readouterr()
    assert out.splitlines() == [b"step 1", b"ste", b"step 9", b"step 10"]
    assert err == b"hakuriver: 60 bytes of output skipped (--max-lag 1K)\n"


def test_a_skip_at_a_line_end_adds_nothing(capfdbinary: pytest.CaptureFixture[bytes]) -> None:
    link = _Logs([(100, b"step 9\n"), (200, b"step 20\n")])
    task._copy_log(link, lpb.ReadLogRequest(task_id=5), "1K")
    assert capfdbinary.readouterr().out == b"step 9\nstep 20\n"


class _RestartingHost(_Logs):
    """A Host that sends the first piece, goes away, and once back sends the rest (a
    follower asks it for the task in between, as reconnect.riding_out does)."""

    def stub(self, service: str) -> Any:
        return self

    def GetTask(self, request: object, timeout: float) -> object:
        return object()

    def ReadLog(self, request: lpb.ReadLogRequest) -> Iterator[lpb.ReadLogResponse]:
        offset, data = self.pieces.pop(0)
        yield lpb.ReadLogResponse(offset=offset, data=data)
        if self.pieces:
            raise CallError(Status.UNAVAILABLE, "the host went away")


def test_a_skip_after_a_host_restart_still_starts_on_a_line_of_its_own(
    capfdbinary: pytest.CaptureFixture[bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reconnect.time, "sleep", lambda seconds: None)
    link = _RestartingHost([(0, b"step 1\nste"), (70, b"step 9\n")])
    task._follow_log(link, "host:1", lpb.ReadLogRequest(task_id=5, follow=True), "1K")
    assert capfdbinary.readouterr().out.splitlines() == [b"step 1", b"ste", b"step 9"]
