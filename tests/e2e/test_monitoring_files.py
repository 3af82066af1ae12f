"""The monitoring files users load as they are: the alert rules pass ``promtool check rules``
and fire on made-up series when, and only when, their condition has held for their ``for:``
(``promtool test rules`` with tests/monitoring/prometheus-alerts.test.yml); the Grafana
dashboard asks for its Prometheus data source on import (``__inputs``) and every panel uses
it. (That every expression names a metric a live Host exports: test_monitoring.py.)"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.e2e.harness import required

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "docs" / "monitoring" / "prometheus-alerts.yml"
RULE_TESTS = ROOT / "tests" / "monitoring" / "prometheus-alerts.test.yml"
DASHBOARD = ROOT / "docs" / "monitoring" / "grafana-dashboard.json"


@pytest.fixture(scope="module")
def promtool() -> str:
    """scripts/test.sh passes the one scripts/ensure-promtool.sh provides."""
    found = os.environ.get("HAKURIVER_TEST_PROMTOOL") or shutil.which("promtool")
    if not found:
        required("promtool", "not found: scripts/test.sh gets it with scripts/ensure-promtool.sh")
    return found


def _promtool(promtool: str, *args: str) -> str:
    done = subprocess.run([promtool, *args], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_the_alert_rules_pass_promtools_check(promtool: str) -> None:
    assert "SUCCESS: 6 rules found" in _promtool(promtool, "check", "rules", str(RULES))


def test_each_alert_fires_only_once_its_condition_held(promtool: str) -> None:
    assert "SUCCESS" in _promtool(promtool, "test", "rules", str(RULE_TESTS))


def test_the_dashboard_asks_for_its_data_source_on_import() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    [source] = dashboard["__inputs"]
    assert (source["type"], source["pluginId"]) == ("datasource", "prometheus")
    wanted = {"type": "prometheus", "uid": "${" + source["name"] + "}"}
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"] == wanted, panel["title"]
    required = {(r["type"], r["id"]) for r in dashboard["__requires"]}
    assert ("datasource", "prometheus") in required
    assert {("panel", p["type"]) for p in dashboard["panels"]} <= required
    assert "${datasource}" not in DASHBOARD.read_text()
