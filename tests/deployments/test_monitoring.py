"""deployments/monitoring/alerts.rules.yml with the real promtool (Debian package `prometheus`, installed by
scripts/test): the rules load, their unit tests pass and would fail if a threshold moved, every rule carries the
labels and annotations Alertmanager routes on, is tested firing and silent, and names only metrics the bot's
exporter serves."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.trader.metrics.conftest import telemetry
from trader.alerts.severity import IncidentKind, severity_for
from trader.coinbase.ws import Subscription, WsFeed
from trader.metrics import BotMetrics
from trader.risk.monitor import rules_from_settings
from trader.settings import load_settings

MONITORING = Path(__file__).resolve().parents[2] / "deployments" / "monitoring"
RULES = MONITORING / "alerts.rules.yml"
UNIT_TESTS = MONITORING / "tests" / "alerts.test.yml"
DASHBOARD = MONITORING / "grafana" / "dashboards" / "perps-bot.json"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "monitoring.md"
# Named by a rule before the exporter serves it (none now: the funding rate is exported with derivatives on).
NOT_YET_EXPORTED: set[str] = set()
NOT_GUARDS = {"engine_down", "no_trades", "checkpoint", "disk", "runbook_flow", "funding_rate"}


def promtool() -> str:
    found = shutil.which("promtool")
    assert found, "promtool is missing: apt-get install -y prometheus (scripts/test installs it)"
    return found


def rules() -> list[dict[str, Any]]:
    return [rule for group in yaml.safe_load(RULES.read_text())["groups"] for rule in group["rules"]]


def test_promtool_loads_the_rules_and_their_unit_tests_pass() -> None:
    checked = subprocess.run([promtool(), "check", "rules", str(RULES)], capture_output=True, text=True)
    assert checked.returncode == 0, checked.stdout + checked.stderr
    assert f"SUCCESS: {len(rules())} rules found" in checked.stdout

    tested = subprocess.run([promtool(), "test", "rules", UNIT_TESTS.name], cwd=UNIT_TESTS.parent, capture_output=True)
    assert tested.returncode == 0, (tested.stdout + tested.stderr).decode()


def test_the_unit_tests_catch_a_threshold_moved(tmp_path: Path) -> None:
    """The daily-loss limit moved from 2% to 3% in a copy of the rules: promtool's unit tests fail on it."""
    moved = RULES.read_text().replace("-perps_bot_daily_pnl_pct >= 2\n", "-perps_bot_daily_pnl_pct >= 3\n")
    assert moved != RULES.read_text()
    (tmp_path / "alerts.rules.yml").write_text(moved)
    (tmp_path / "tests").mkdir()
    shutil.copy(UNIT_TESTS, tmp_path / "tests" / UNIT_TESTS.name)

    tested = subprocess.run(
        [promtool(), "test", "rules", UNIT_TESTS.name], cwd=tmp_path / "tests", capture_output=True, text=True
    )

    assert tested.returncode != 0 and "PerpsBotDailyLossCritical" in tested.stdout + tested.stderr


def test_every_rule_carries_severity_guard_and_the_runbook_action_with_a_docs_anchor() -> None:
    anchors = {f"#{m.lower()}" for m in re.findall(r"^#{2,4} .*?\b(PerpsBot\w+)", DOCS.read_text(), re.M)}
    guards = set(rules_from_settings(load_settings()))
    for rule in rules():
        labels, notes = rule["labels"], rule["annotations"]
        assert labels["severity"] in ("SEV-1", "SEV-2", "SEV-3"), rule["alert"]
        assert labels["guard"] in guards | NOT_GUARDS, rule["alert"]
        assert set(notes) == {"summary", "value", "runbook_action", "runbook_url"}, rule["alert"]
        assert notes["runbook_url"].startswith("docs/monitoring.md#"), rule["alert"]
        assert "#" + notes["runbook_url"].split("#")[1] in anchors, f"{rule['alert']}: no such heading in docs"
        if rule["alert"].endswith(("Warning", "Critical")) and labels["guard"] in guards:
            kind = IncidentKind.GUARD_WARNING if rule["alert"].endswith("Warning") else IncidentKind.GUARD_CRITICAL
            assert labels["severity"] == severity_for(kind), f"{rule['alert']}: the runbooks' matrix says otherwise"
    assert {r["labels"]["severity"] for r in rules() if r["labels"]["guard"] == "engine_down"} == {"SEV-1"}


def test_every_rule_is_unit_tested_firing_and_silent() -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired: set[str] = set()
    silent: set[str] = set()
    for group in tests:
        series = len(group["input_series"])
        for case in group["alert_rule_test"]:
            alerts = case.get("exp_alerts") or []
            (fired if alerts else silent).add(case["alertname"])
            if alerts and len(alerts) < series:  # other series of the group stayed below the threshold
                silent.add(case["alertname"])
    names = {rule["alert"] for rule in rules()}
    assert names - fired == set() and names - silent == set()


def exported() -> dict[str, set[str]]:
    """Every series name a fully fed exporter serves, with the label names it carries."""
    metrics = BotMetrics(disk_path=Path("."), open_incidents=lambda: [("flow:backup", "SEV-2")])
    feed = WsFeed("ws://127.0.0.1:9", [Subscription("heartbeats")], lambda _: None)
    feed.stats.connected = True
    feed.stats.messages["heartbeats"] += 1
    feed.stats.gaps["heartbeats"] += 1
    feed.stats.observe_lag(0.01)
    metrics.attach_ws_feed(feed)
    metrics.record_cycle(
        telemetry(guard_readings={"exposure": 10.0, "drawdown": 1.0}, orders=1, fills=1, funding_rates={"BIP": 1e-4})
    )
    metrics.observe_api_call("get_order", 0.01, True)
    metrics.record_guard_trip("exposure", "warning")
    metrics.record_recovery("engine", 1.0)
    metrics.set_last_checkpoint(time.time())
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(metrics.render().decode()):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def undefined(expr: str, served: dict[str, set[str]]) -> list[str]:
    """What an expression names that the exporter does not serve: metrics, labels in selectors, labels in by()."""
    problems = []
    names = re.findall(r"\b(perps_bot_\w+)", expr)
    problems += [f"metric {name}" for name in names if name not in served]
    for name, inside in re.findall(r"\b(perps_bot_\w+)\{([^}]*)\}", expr):
        if name not in served:
            continue  # said once, above
        for label in re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", inside):
            if label not in served.get(name, set()):
                problems.append(f"label {label} of {name}")
    known = set().union(*(served.get(name, set()) for name in names)) if names else set()
    for group in re.findall(r"\b(?:by|without)\s*\(([^)]*)\)", expr):
        problems += [f"label {label} in by()" for label in re.findall(r"\w+", group) if label not in known]
    return problems


def test_every_metric_a_rule_names_is_one_the_exporter_serves() -> None:
    served = exported()
    problems = {problem for rule in rules() for problem in undefined(rule["expr"], served)}
    assert problems == {f"metric {name}" for name in NOT_YET_EXPORTED}


def test_every_dashboard_panel_names_only_exported_metrics_and_labels_and_follows_the_account_picker() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    served = exported()
    assert [v["name"] for v in dashboard["templating"]["list"]] == ["datasource", "account"]
    assert undefined(dashboard["templating"]["list"][1]["definition"], served) == []
    panels = [p for p in dashboard["panels"] if p["type"] != "row"]
    exprs = [(p["title"], t["expr"]) for p in panels for t in p["targets"]]
    assert len(exprs) >= 28
    for title, expr in exprs:
        assert undefined(expr, served) == [], f"{title}: {expr}"
        assert 'account=~"$account"' in expr, f"{title}: does not follow the account picker"
    covered = {name for _, expr in exprs for name in re.findall(r"\b(perps_bot_\w+)", expr)}
    wanted = {  # the list: equity and PnL, positions and exposure, guards, API, cycles, checkpoints,
        "perps_bot_balance",  # recoveries, WebSockets, runbook flows
        "perps_bot_daily_pnl_pct",
        "perps_bot_position_count",
        "perps_bot_guard_reading",
        "perps_bot_guard_level",
        "perps_bot_api_latency_seconds_bucket",
        "perps_bot_error_rate_pct",
        "perps_bot_cycle_duration_seconds_bucket",
        "perps_bot_last_checkpoint_age_seconds",
        "perps_bot_recovery_duration_seconds_count",
        "perps_bot_ws_connected",
        "perps_bot_flow_failing",
    }
    assert wanted <= covered, sorted(wanted - covered)


def test_the_panel_check_catches_a_metric_or_label_the_exporter_does_not_serve() -> None:
    served = exported()
    assert undefined('perps_bot_equity_usd{account=~"$account"}', served) == ["metric perps_bot_equity_usd"]
    assert undefined('perps_bot_balance{account=~"$account", symbol="BTC-USD"}', served) == [
        "label symbol of perps_bot_balance"
    ]
    assert undefined("sum by (channel) (perps_bot_balance)", served) == ["label channel in by()"]


def test_grafana_provisioning_points_at_the_dashboard_folder() -> None:
    provider = yaml.safe_load((MONITORING / "grafana/provisioning/dashboards/perps-bot.yml").read_text())
    assert provider["providers"][0]["type"] == "file" and provider["providers"][0]["options"]["path"]
    source = yaml.safe_load((MONITORING / "grafana/provisioning/datasources/prometheus.yml").read_text())
    assert source["datasources"][0]["type"] == "prometheus"


@pytest.mark.parametrize("alert", ["PerpsBotEngineDown", "PerpsBotWebSocketDownCritical"])
def test_the_engine_and_feed_rules_wait_before_paging(alert: str) -> None:
    """A blip must not page anyone: the engine down 5 minutes, the socket 15, as the runbooks say."""
    rule = next(r for r in rules() if r["alert"] == alert)
    assert rule["for"] == {"PerpsBotEngineDown": "5m", "PerpsBotWebSocketDownCritical": "15m"}[alert]
