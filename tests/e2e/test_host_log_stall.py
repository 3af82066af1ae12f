"""A Host whose console nobody reads, or whose log file takes nothing, keeps serving and stops
when told. It logs a line per audited call (here a token made, then revoked), and those
lines fill the console's pipe within a few hundred calls; a write to a full pipe waits until
someone reads it. The lines are written on the log's own thread, so that wait is the
thread's, not the event loop's: the calls go on being answered, the lines the writer cannot
keep up with are dropped and counted (logging_setup), and the Host still stops when told.

Observed in a real Host process whose standard output and error are one pipe nobody reads
(a ``python -c`` wrapper around the Host's entry, ``hakuriver_host.main.run``).
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from hakuriver_common.proto.hakuriver.v1 import access_service_pb2 as apb
from tests.e2e.harness import ProcessCluster

pytestmark = pytest.mark.docker

STALLED_CONSOLE = """
import os, sys
unread, console = os.pipe()  # the read end stays open, never read: a full pipe blocks writes
os.dup2(console, 1)
os.dup2(console, 2)
sys.argv = ["hakuriver.host", *sys.argv[1:]]
from hakuriver_host.main import run
run()
"""
# Tokens made and revoked: each call logs a line of ~250 bytes, so these write ~8 times what
# a pipe holds (64 KiB).
TOKENS = 1000


def _serves_then_stops(cluster: ProcessCluster) -> None:
    """Tokens made and revoked, all answered; then the Host stops when told."""
    cluster.add_user("alice")
    for _ in range(TOKENS):
        made = cluster.access.CreateToken(apb.CreateTokenRequest(user="alice"), timeout=10)
        revoke = apb.RevokeTokenRequest(token_id=made.token.token_id)
        cluster.access.RevokeToken(revoke, timeout=10)
    request = apb.ListTokensRequest(user="alice", include_inactive=True)
    listed = cluster.access.ListTokens(request, timeout=10)
    assert len(listed.tokens) == TOKENS + 1  # and add_user's
    cluster.kill_host(signal.SIGTERM)  # SIGKILL after 10 s
    assert cluster.host is not None and cluster.host.returncode == 0, cluster.log("host.log")


def test_a_host_whose_console_nobody_reads_keeps_serving(
    docker_ready: None, tmp_path: Path
) -> None:
    cluster = ProcessCluster(tmp_path, runner_count=0)
    try:
        cluster.start_host(python_args=("-c", STALLED_CONSOLE))
        _serves_then_stops(cluster)
    finally:
        cluster.stop()


def test_a_host_whose_log_file_takes_nothing_keeps_serving_and_stops(
    docker_ready: None, tmp_path: Path
) -> None:
    """A log file whose writes wait (a stalled disk or network mount; here a FIFO opened by
    a reader that never reads) held the Host's exit: logging's shutdown waited for the
    file handler's lock, held by the writer inside its stalled flush."""
    log_file = tmp_path / "host-log.fifo"
    os.mkfifo(log_file)
    unread = os.open(log_file, os.O_RDONLY | os.O_NONBLOCK)  # the Host's open then succeeds
    cluster = ProcessCluster(
        tmp_path, runner_count=0, extra_sections={"paths": f'host_log_file = "{log_file}"'}
    )
    try:
        cluster.start_host()
        _serves_then_stops(cluster)
    finally:
        cluster.stop()
        os.close(unread)
