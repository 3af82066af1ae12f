"""docs/security.md keeps the authorisation table: it must say exactly what the code does."""

from __future__ import annotations

import re
from pathlib import Path

from hakuriver_host.authorization import DASHBOARD_PATHS, PORTS, RIGHTS

ROOT = Path(__file__).resolve().parents[2]
DOC = ROOT / "docs" / "security.md"
ROUTER = ROOT / "hakuriver_host" / "dashboard" / "src" / "router.ts"
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


PAGE_ROW = re.compile(r"^\| `(/[^`]*)` \| (`[^|]+`) \| [^|]+ \|$")


def test_every_page_of_the_dashboard_is_in_the_pages_table() -> None:
    """Every route of the dashboard's router (but the catch-all) has its row, and the calls
    a row names are the table's methods (or the terminal's WebSocket)."""
    routes = set(re.findall(r'path: "(/[^"]*)"', ROUTER.read_text())) - {"/:rest(.*)*"}
    rows = {
        match[1]: re.findall(r"`([^`]+)`", match[2])
        for line in DOC.read_text().splitlines()
        if (match := PAGE_ROW.match(line))
    }
    assert set(rows) == routes
    methods = {path.rsplit("/", 1)[1] for path in RIGHTS} | set(DASHBOARD_PATHS)
    assert {call for calls in rows.values() for call in calls} <= methods
