"""A VPS's sshd port: below the kernel's ephemeral range (an outgoing connection cannot take
it between its choice and sshd's bind), free, and never one another VPS container of the
Runner holds or one given moments ago."""

from __future__ import annotations

import random
import socket
from pathlib import Path

import pytest

from hakuriver_runner import ssh_ports
from hakuriver_runner.ssh_ports import RECENT_SECONDS, SshPorts, ephemeral_range, is_free

EPHEMERAL = range(32768, 61000)


def test_ports_come_from_below_the_ephemeral_range_and_differ_until_released() -> None:
    now = [0.0]
    ports = SshPorts(EPHEMERAL, clock=lambda: now[0], rng=random.Random(7))
    given = [ports.take() for _ in range(50)]
    assert all(port < EPHEMERAL.start and port >= 1024 for port in given)
    assert len(set(given)) == len(given), "a port was given twice while its sshd may not be up"


def test_a_port_in_use_or_held_by_another_vps_is_never_given() -> None:
    ports = SshPorts(EPHEMERAL, rng=random.Random(1))
    held, free = [p for p in range(24000, 25000) if is_free(p)][:2]
    with socket.socket() as listening:
        listening.bind(("127.0.0.1", 0))
        listening.listen()
        busy = listening.getsockname()[1]
        ports.pool = [busy, held, free]
        assert ports.take(in_use={held}) == free


def test_a_port_given_is_given_again_only_once_it_is_not_recent() -> None:
    now = [0.0]
    ports = SshPorts(EPHEMERAL, clock=lambda: now[0], rng=random.Random(3))
    ports.pool = [24000]
    first = ports.take()
    assert first == 24000
    assert ports.take() != 24000  # the kernel's pick, as nothing else is left
    now[0] = RECENT_SECONDS + 1
    assert ports.take() == 24000


def test_the_ephemeral_range_is_read_from_the_kernel(tmp_path: Path) -> None:
    path = tmp_path / "ip_local_port_range"
    path.write_text("10000\t20000\n")
    assert ephemeral_range(path) == range(10000, 20001)
    assert ephemeral_range(tmp_path / "missing") == range(32768, 61000)


def test_without_a_range_below_the_ephemeral_one_the_kernel_picks_but_never_a_held_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    ports = SshPorts(range(1024, 65536))
    assert ports.pool == []
    picks = iter([40001, 40002, 40002, 40003])
    monkeypatch.setattr(ssh_ports, "_kernel_pick", lambda: next(picks))
    assert ports.take(in_use={40001}) == 40002
    assert ports.take() == 40003  # 40002 was just given
