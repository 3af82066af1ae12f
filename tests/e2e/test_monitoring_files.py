"""The monitoring files users load as they are: the alert rules pass ``promtool check rules``
and fire on made-up series when, and only when, their condition has held for their ``for:``
(``promtool test rules`` with tests/monitoring/prometheus-alerts.test.yml); the Grafana
dashboard asks for its Prometheus data source on import (``__inputs``) and every panel uses
it, every query keeps to the Host its ``instance`` variable picks, and its counts answer 0
rather than no data (``promtool test rules``, its ``promql_expr_test``). (That every
expression names a metric a live Host exports: test_monitoring.py.)"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

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
    assert "SUCCESS: 7 rules found" in _promtool(promtool, "check", "rules", str(RULES))


def test_each_alert_fires_only_once_its_condition_held(promtool: str) -> None:
    assert "SUCCESS" in _promtool(promtool, "test", "rules", str(RULE_TESTS))
    # Every alert is tested both ways (HakuRiverSlowDispatch was not tested at all).
    rules = yaml.safe_load(RULES.read_text())
    alerts = {rule["alert"] for group in rules["groups"] for rule in group["rules"]}
    checks = [
        (check["alertname"], bool(check["exp_alerts"]))
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for check in test.get("alert_rule_test", [])
    ]
    assert {(alert, fires) for alert in alerts for fires in (False, True)} == set(checks)


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


def test_every_query_keeps_to_the_host_the_instance_variable_picks() -> None:
    """A lab's one Prometheus scraping two Hosts: every panel summed (or mixed) both."""
    dashboard = json.loads(DASHBOARD.read_text())
    [variable] = dashboard["templating"]["list"]
    assert (variable["name"], variable["type"]) == ("instance", "query")
    assert variable["datasource"] == dashboard["panels"][0]["datasource"]
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            selectors = re.findall(r"\bhakuriver_[a-z0-9_]+(\{[^}]*\})?", target["expr"])
            assert selectors, target["expr"]
            for labels in selectors:
                assert 'instance="$instance"' in labels, (panel["title"], target["expr"])


# Series as a Host exports them with one node, online, and nothing queued (their names and
# labels are checked against a live Host's by test_monitoring.py), and those of a second
# Host the same Prometheus scrapes, which the dashboard must not add to the first's.
HOST = "river-a:8001"
HEALTHY_CLUSTER = {
    'hakuriver_node_up{node="gpu1"}': 1,
    'hakuriver_nodes{status="online"}': 1,
    'hakuriver_nodes{status="offline"}': 0,
    "hakuriver_queue_depth": 0,
}
OTHER_HOST = {
    'hakuriver_node_up{node="cpu9"}': 0,
    'hakuriver_nodes{status="online"}': 4,
    'hakuriver_nodes{status="offline"}': 1,
    "hakuriver_queue_depth": 7,
}
STAT_VALUES = {"online": 1, "offline": 0, "pending": 0}


def _of(series: str, instance: str) -> str:
    """``series`` with the ``instance`` label Prometheus adds to each target's."""
    name, _, labels = series.partition("{")
    return f'{name}{{instance="{instance}"{"," if labels else "}"}{labels}'


def test_the_dashboards_counts_show_zero_not_no_data(promtool: str, tmp_path: Path) -> None:
    """Each stat panel's count answers a number on a healthy cluster: "offline" counted
    the series equal to 0, none of them, so it said "No data" when no node was offline.
    The second Host's counts are not added to them."""
    stats = [
        (target["legendFormat"], target["expr"].replace("$instance", HOST))
        for panel in json.loads(DASHBOARD.read_text())["panels"]
        if panel["type"] == "stat"
        for target in panel["targets"]
    ]
    assert {legend for legend, _ in stats} == set(STAT_VALUES)
    checks = {
        "tests": [
            {
                "interval": "1m",
                "input_series": [
                    {"series": _of(series, instance), "values": f"{value}x5"}
                    for instance, cluster in ((HOST, HEALTHY_CLUSTER), ("river-b:8001", OTHER_HOST))
                    for series, value in cluster.items()
                ],
                "promql_expr_test": [
                    {
                        "expr": f"sum({expr})",  # no labels, whichever the panel keeps
                        "eval_time": "2m",
                        "exp_samples": [{"labels": "{}", "value": STAT_VALUES[legend]}],
                    }
                    for legend, expr in stats
                ],
            }
        ]
    }
    path = tmp_path / "stats.test.yml"
    path.write_text(json.dumps(checks))  # JSON is YAML
    assert "SUCCESS" in _promtool(promtool, "test", "rules", str(path))
