"""The Runner reads the output of a command container it starts from an attachment made
before the start (hakuriver_runner/docker_logs.py), against a real daemon: the output comes
whole and in order, stdout and stderr apart; an attachment cut while the container runs is
continued from the container's log with nothing lost or repeated (a last line without a
newline included); an attachment nobody reads
(the stream to the Host went away before its follow began) is closed, so the daemon does not
hold the container's writes."""

from __future__ import annotations

import threading
import time

import pytest

from hakuriver_common.proto.hakuriver.v1 import runner_service_pb2 as rpb
from hakuriver_runner.backend import LogFollow
from hakuriver_runner.docker_backend import DockerBackend
from tests.e2e.harness import command_dispatch

pytestmark = pytest.mark.docker


def _dispatch(script: str, task_id: int = 11) -> rpb.DispatchCommand:
    return command_dispatch(["sh", "-c", script], task_id)


class Emitted:
    """What a follow emitted, per output, checked to continue exactly where it left off."""

    def __init__(self) -> None:
        self.data = [bytearray(), bytearray()]
        self.lock = threading.Lock()

    def emit(self, index: int) -> object:
        def emit(offset: int, data: bytes) -> None:
            with self.lock:
                assert offset == len(self.data[index]), "a gap or a repeat"
                self.data[index] += data

        return emit

    def emits(self) -> tuple:  # type: ignore[type-arg]
        return (self.emit(0), self.emit(1))


def lines(prefix: str, count: int) -> bytes:
    return b"".join(f"{prefix}-{i}\n".encode() for i in range(count))


def test_the_output_comes_whole_from_the_attachment(backend: DockerBackend) -> None:
    script = "i=0; while [ $i -lt 3000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done"
    handle = backend.start(_dispatch(script))
    assert handle.id in backend._attached  # started attached: its follow reads from that
    emitted = Emitted()
    totals = backend.follow(handle, (0, 0), emitted.emits(), LogFollow())
    assert bytes(emitted.data[0]) == lines("out", 3000)
    assert bytes(emitted.data[1]) == lines("err", 3000)
    assert totals == (len(emitted.data[0]), len(emitted.data[1]))
    assert backend._attached == {}


def test_an_attachment_cut_while_the_container_runs_goes_on_from_its_log(
    backend: DockerBackend,
) -> None:
    script = "i=0; while [ $i -lt 300 ]; do echo line-$i; i=$((i+1)); usleep 10000; done"
    handle = backend.start(_dispatch(script))
    _, attached = backend._attached[handle.id]
    emitted = Emitted()
    done: list[tuple[int, int]] = []
    follower = threading.Thread(
        target=lambda: done.append(backend.follow(handle, (0, 0), emitted.emits(), LogFollow()))
    )
    follower.start()
    deadline = time.monotonic() + 30
    while len(emitted.data[0]) < len(lines("line", 20)) and time.monotonic() < deadline:
        time.sleep(0.01)
    attached.close()  # as when the daemon drops the connection, the container still running
    follower.join(60)
    assert bytes(emitted.data[0]) == lines("line", 300)
    assert done == [(len(lines("line", 300)), 0)]


def test_an_attachment_nobody_reads_does_not_hold_its_container(backend: DockerBackend) -> None:
    """Unread, the daemon would hold the container's writes once 1 MB is buffered."""
    handle = backend.start(
        _dispatch("yes 0123456789012345678901234567890123456789 | head -c 8000000")
    )
    backend.detach_unread()  # the stream to the Host went away before the follow began
    assert backend.client.api.wait(handle.id, timeout=60)["StatusCode"] == 0
    emitted = Emitted()
    backend.follow(handle, (0, 0), emitted.emits(), LogFollow())  # from the log, afterwards
    assert len(emitted.data[0]) == 8_000_000


def test_a_held_containers_output_comes_whole_from_its_one_attachment(
    backend: DockerBackend,
) -> None:
    """A container prepared ahead and held at its gate (start_gate) is attached once, for its
    stdin and its output: after the release, its output comes whole from that attachment,
    none of it the gate's."""
    script = "i=0; while [ $i -lt 2000 ]; do echo out-$i; echo err-$i >&2; i=$((i+1)); done"
    dispatch = _dispatch(script, task_id=12)
    assert backend.prepare(dispatch) is True
    held = backend.prepared[12]
    assert held.gate is not None
    handle = backend.start(dispatch)
    assert handle.id == held.container.id
    assert backend._attached[handle.id][1] is held.gate  # its output read from the gate's
    emitted = Emitted()
    backend.follow(handle, (0, 0), emitted.emits(), LogFollow())
    assert bytes(emitted.data[0]) == lines("out", 2000)
    assert bytes(emitted.data[1]) == lines("err", 2000)
    assert backend.wait(handle).exit_code == 0


def test_a_last_unterminated_line_is_not_lost_when_following_the_log(
    backend: DockerBackend,
) -> None:
    """The daemon's log follow usually ends at the container's exit without its last line
    when that has no newline (the case of a task adopted again after a Host restart)."""
    for task_id in (21, 22, 23):
        handle = backend.start(_dispatch("echo first; sleep 0.5; printf last", task_id))
        backend.detach_unread()  # followed from its log, as a Runner that reconnected does
        emitted = Emitted()
        backend.follow(handle, (0, 0), emitted.emits(), LogFollow())
        assert bytes(emitted.data[0]) == b"first\nlast"
