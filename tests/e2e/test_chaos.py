"""The chaos suite, short version: each fault against a real Host, Runner and containers
with a stream of numbered tasks through it (tests/chaos/scenarios.py; ``make chaos`` runs
the full version). A scenario passes when every guarantee of docs/reliability.md held:
every task final within a bound in a status it may have, run once, byte-exact output (a
prefix for a task the fault ended), resources released.

Timings are scaled down: heartbeats every 0.5 s; the 5 s cut against a 10 s grace period,
the "60 s" cut and the Runner's absence 6 s against a 2 s grace period (longer than the
grace is what matters). The Docker daemon is taken away from the suite's Runner alone
(docker-away, through a proxy); a real restart of the daemon runs last, only with
HAKURIVER_CHAOS_DOCKERD=1: it stops every container on the daemon (anyone's), and returns
only once the daemon is healthy again.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from pathlib import Path

import pytest

from tests.chaos.proxy import chaos_proxy
from tests.chaos.scenarios import SHORT, Scenario, scenarios
from tests.chaos.system import dockerd_restart_problem, tmpfs_problem
from tests.e2e.harness import required


def _needs(scenario: Scenario) -> None:
    problem = {
        "root-tmpfs": tmpfs_problem,
        "dockerd": dockerd_restart_problem,
    }.get(scenario.needs, lambda: None)()
    if problem is not None:
        required(f"the {scenario.needs} scenario", problem)


@pytest.mark.docker
@pytest.mark.parametrize("scenario", scenarios(SHORT), ids=lambda s: s.id)
def test_fault(scenario: Scenario, docker_ready: None, tmp_path: Path) -> None:
    _needs(scenario)
    outcome = scenario.run(tmp_path, SHORT)
    print(outcome.report())
    assert outcome.ok, outcome.report()


def test_proxy_passes_drops_and_stalls() -> None:
    """The proxy itself (no Docker): bytes pass; drop resets open connections and refuses
    new ones; stall holds bytes, which flow on once it passes again."""
    with socket.create_server(("127.0.0.1", 0)) as server:
        echo = threading.Thread(target=_echo_forever, args=(server,), daemon=True)
        echo.start()
        with chaos_proxy("127.0.0.1", server.getsockname()[1]) as proxy:
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
                conn.sendall(b"ping")
                assert conn.recv(16) == b"ping"
                proxy.set_mode("stall")
                conn.sendall(b"held")
                conn.settimeout(0.5)
                with pytest.raises(TimeoutError):
                    conn.recv(16)
                proxy.set_mode("pass")
                conn.settimeout(5)
                assert conn.recv(16) == b"held"
                proxy.set_mode("drop")
                with pytest.raises(ConnectionResetError):
                    conn.recv(16)
            with pytest.raises(ConnectionRefusedError):
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5)
            proxy.set_mode("pass")
            with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as conn:
                conn.sendall(b"again")
                assert conn.recv(16) == b"again"


def _echo_forever(server: socket.socket) -> None:
    while True:
        try:
            conn, _ = server.accept()
        except OSError:
            return
        threading.Thread(target=_echo, args=(conn,), daemon=True).start()


def _echo(conn: socket.socket) -> None:
    with conn, contextlib.suppress(OSError):
        while data := conn.recv(4096):
            conn.sendall(data)
