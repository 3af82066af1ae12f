"""The start gate's pieces that need no Docker: the release log a restarted Runner reads,
and how a container's process list shows its gate waiting."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

from hakuriver_runner.start_gate import ReleaseLog, waiting

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
