"""The start gate's pieces that need no Docker: the release log a restarted Runner reads,
how a container's process list shows its gate waiting, and what its attachment tells."""

from __future__ import annotations

import socket
from datetime import UTC, datetime, timedelta
from pathlib import Path

from hakuriver_runner.start_gate import Gate, ReleaseLog, waiting

AT = datetime(2026, 12, 5, 6, 30, tzinfo=UTC)


def test_releases_are_read_back_and_pruned_to_the_containers_still_there(tmp_path: Path) -> None:
    log = ReleaseLog(tmp_path / "state" / "released-gates")
    assert log.read() == {}
    log.keep_only({"a"})  # no file yet: nothing to do
    log.record("a", AT)
    log.record("b", AT + timedelta(seconds=1))
    assert log.read() == {"a": AT, "b": AT + timedelta(seconds=1)}
    log.keep_only({"b", "c"})
    assert log.read() == {"b": AT + timedelta(seconds=1)}


def test_the_log_is_pruned_as_it_grows_keeping_what_is_released_while_listing(
    tmp_path: Path,
) -> None:
    """A Runner that stays connected prunes its log every so many releases to the
    containers that exist; one released while those are being listed is kept."""
    log = ReleaseLog(tmp_path / "released-gates")
    listings: list[int] = []

    def existing() -> set[str]:
        listings.append(1)
        log.record("released-meanwhile", AT)
        return {"c0", "c3"}

    for i in range(4):
        log.record(f"c{i}", AT)
        log.prune(existing, every=5)
    assert not listings and len(log.read()) == 4
    log.record("c4", AT)
    log.prune(existing, every=5)
    assert len(listings) == 1
    assert log.read() == {"c0": AT, "c3": AT, "released-meanwhile": AT}
    log.prune(existing, every=5)  # one line since: not yet again
    assert len(listings) == 1


def test_a_line_cut_short_does_not_swallow_the_next(tmp_path: Path) -> None:
    """A crash or a full disk in the middle of a line: the next release is still read."""
    path = tmp_path / "released-gates"
    path.write_text(f"a {AT.isoformat()}\nb 2026-12")
    log = ReleaseLog(path)
    log.record("c", AT)
    assert log.read() == {"a": AT, "c": AT}


def test_the_gate_shows_waiting_until_it_becomes_the_command() -> None:
    titles = ["UID", "PID", "PPID", "C", "STIME", "TTY", "TIME", "CMD"]
    init = ["root", "1", "0", "0", "06:00", "?", "00:00:00", "/sbin/docker-init -- /bin/sh -c"]
    gate = ["root", "7", "1", "0", "06:00", "?", "00:00:00", '/bin/sh -c read -r _ || { echo "']
    task = ["root", "7", "1", "0", "06:00", "?", "00:00:00", "sleep 60"]
    assert waiting({"Titles": titles, "Processes": [init, gate]})
    assert not waiting({"Titles": titles, "Processes": [init, task]})
    assert not waiting({"Titles": titles, "Processes": []})


class _Peeked(Gate):
    """A gate over one end of a socket pair (the daemon's end is the other)."""

    def __init__(self, raw: socket.socket) -> None:
        self._raw = raw
        self._socket = raw


def test_a_gates_attachment_tells_alive_from_ended_and_leaves_the_rest_to_the_daemon() -> None:
    """Nothing to read: the gate waits. The daemon's end closed: the container is gone.
    Something written before the release (a shell's locale warning): not known here, the
    Runner asks the daemon; and the bytes stay for the task's output."""
    ours, daemons = socket.socketpair()
    gate = _Peeked(ours)
    assert gate.ended() is False
    daemons.sendall(b"\x02\x00\x00\x00\x00\x00\x00\x05warn\n")
    assert gate.ended() is None
    assert ours.recv(64) == b"\x02\x00\x00\x00\x00\x00\x00\x05warn\n"
    daemons.close()
    assert gate.ended() is True
    ours.close()
