"""docs/security.md keeps the authorisation table: it must say exactly what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from hakuriver_host.authorization import DASHBOARD_PATHS, PORTS, RIGHTS

DOC = Path(__file__).resolve().parents[2] / "docs" / "security.md"
ROW = re.compile(r"^\| `(/[^`]+)` \| (\w+) \|$")
PORT_ROW = re.compile(r"^\| `([a-z_]+\.[a-z_]+)` \| (.+) \|$")


def test_the_documented_table_is_the_table_the_interceptor_reads() -> None:
    documented = {
        match[1]: match[2] for line in DOC.read_text().splitlines() if (match := ROW.match(line))
    }
    expected = {**RIGHTS, **DASHBOARD_PATHS}
    assert documented == {method: right.value for method, right in expected.items()}


def test_the_documented_ports_are_the_ports_of_the_table() -> None:
    section = DOC.read_text().partition("\n### Ports\n")[2].partition("\n#")[0]
    documented = {
        match[1]: match[2] for line in section.splitlines() if (match := PORT_ROW.match(line))
    }
    assert documented == PORTS
