"""The failover-drill flow on the session's Prefect server (tests/conftest.py) and
`perps-bot drill` (deployments.cli.drill.drill_command) on the same live profile: artifacts, incidents, exit codes."""

from __future__ import annotations

import io
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId
from rich.console import Console

from deployments.cli.drill import drill_command
from flows.drills import failover_drill
from tests.drills.state.conftest import LiveProfile
from trader.alerts import IncidentDesk, LogNotifier
from trader.drills.base import DrillResult
from trader.drills.report import report_incident
from trader.drills.runner import scenario_names
from trader.ledger import Ledger
from trader.ledger.models import Incident

METRICS = {
    "detection",
    "recovery",
    "total downtime",
    "keys recovered",
    "orders recovered",
    "data_loss_estimate",
    "coherence",
}


@pytest.fixture
def harness(prefect_server: dict[str, str]) -> None:
    """The session's Prefect server (tests/conftest.py): flows run in-process against it; a test reads only the
    artifacts of its own flow run."""


@pytest.fixture
def live_env(live: LiveProfile, monkeypatch: pytest.MonkeyPatch) -> LiveProfile:
    """The live profile's settings as the environment the flow loads them from."""
    settings = live.settings
    assert settings.redis_url is not None
    for name, value in {
        "REDIS_URL": settings.redis_url,
        "DATABASE_URL": settings.database_url,
        "STATE_DIR": str(settings.state_dir),
        "COLD_STORAGE_URL": settings.cold_storage_url,
        "BROKER": "simulated",
    }.items():
        monkeypatch.setenv(name, value)
    for name in ("SLACK_BOT_TOKEN", "SLACK_WEBHOOK_URL", "SLACK_CHANNEL", "PERPS_PROFILE", "COLD_STORAGE_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)
    return live


def artifacts(flow_run_id: Any, *keys: str) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    return {a.key: json.loads(a.data) if isinstance(a.data, str) and a.type == "table" else a.data for a in found}


def open_incidents(database_url: str) -> dict[str, Incident]:
    ledger = Ledger(database_url)
    try:
        return {row.fingerprint: row for row in ledger.open_incidents()}
    finally:
        ledger.dispose()


def test_the_flow_publishes_the_table_and_the_report_beside_the_runbook(harness: None, live_env: LiveProfile) -> None:
    before = live_env.snapshot()

    state = failover_drill(scenario="redis-outage", keys=350, return_state=True)

    assert state.is_completed()
    summary = state.result()
    assert set(summary["scenarios"]) == {"redis-outage"} and summary["match"] is True
    published = artifacts(state.state_details.flow_run_id, "failover-drill", "failover-drill-report")
    rows = published["failover-drill"]
    assert {row["metric"] for row in rows} == METRICS and {row["scenario"] for row in rows} == {"redis-outage"}
    by_metric = {row["metric"]: row for row in rows}
    assert by_metric["coherence"]["measured"] == "Match: True" and by_metric["coherence"]["status"] == "ok"
    assert by_metric["keys recovered"]["measured"] == by_metric["keys recovered"]["expected"] == "350"
    assert by_metric["detection"]["expected"] == "<= 2000 ms" and by_metric["recovery"]["expected"] == "<= 20 ms"
    report = published["failover-drill-report"]
    assert "## redis-outage" in report and "Match: True" in report
    assert "~8-20 ms for 350-1000 keys" in report and "1-2 s (connection timeout)" in report
    live_env.assert_untouched(before)


def test_a_mismatch_opens_a_drill_incident_and_the_run_still_completes(harness: None, live_env: LiveProfile) -> None:
    state = failover_drill(
        scenario="postgres-outage", keys=350, options={"corrupt_before_verify": True}, return_state=True
    )

    assert state.is_completed()  # a failed drill is an incident, not a crashed run
    assert state.result()["match"] is False
    incident = open_incidents(live_env.settings.database_url)["drill:postgres-outage"]
    assert incident.severity == "SEV-2" and "Match: False" in incident.detail
    rows = artifacts(state.state_details.flow_run_id, "failover-drill")["failover-drill"]
    assert {row["status"] for row in rows if row["metric"] == "coherence"} == {"MISS"}


def test_a_scenario_that_cannot_run_fails_the_flow(harness: None, live_env: LiveProfile) -> None:
    state = failover_drill(scenario="s3-outage", keys=10, return_state=True)

    assert state.is_failed()
    assert "COLD_STORAGE_URL=s3://" in str(state.message)
    report = artifacts(state.state_details.flow_run_id, "failover-drill-report")["failover-drill-report"]
    assert "## s3-outage: could not run" in report
    assert "flow:failover-drill" in open_incidents(live_env.settings.database_url)


def test_an_unknown_scenario_fails_with_the_valid_names(harness: None, live_env: LiveProfile) -> None:
    state = failover_drill(scenario="meteor-strike", return_state=True)

    assert state.is_failed()
    assert "unknown drill scenario 'meteor-strike'" in str(state.message)
    assert all(name in str(state.message) for name in ("redis-outage", "postgres-outage", "s3-outage"))


def test_a_passing_drill_resolves_its_incident(live_env: LiveProfile) -> None:
    desk = IncidentDesk(Ledger(live_env.settings.database_url), LogNotifier())
    failed = DrillResult("redis-outage", "drill-x", datetime.now(UTC), coherence_match=False)
    passed = DrillResult("redis-outage", "drill-y", datetime.now(UTC), coherence_match=True)

    assert report_incident(desk, failed) is not None
    assert "drill:redis-outage" in open_incidents(live_env.settings.database_url)
    assert report_incident(desk, passed) is None
    assert "drill:redis-outage" not in open_incidents(live_env.settings.database_url)
    desk.ledger.dispose()


def test_all_runs_the_registered_scenarios_in_the_runbook_order() -> None:
    names = scenario_names("all")

    mine = [name for name in names if name in ("redis-outage", "postgres-outage", "s3-outage")]
    assert mine == ["redis-outage", "postgres-outage", "s3-outage"]


# --- perps-bot drill -----------------------------------------------------------------------------------------------


def run_cli(live: LiveProfile, scenario: str, keys: int = 350, **options: Any) -> tuple[int, str]:
    buffer = io.StringIO()
    console = Console(file=buffer, width=160, force_terminal=False, highlight=False)
    code = drill_command(live.settings, scenario, keys, options=options or None, console=console)
    return code, buffer.getvalue()


def test_drill_command_prints_the_table_and_match_true(live: LiveProfile) -> None:
    code, output = run_cli(live, "redis-outage")

    assert output.rstrip().splitlines()[-1] == "Match: True"
    assert "keys recovered" in output and "~8-20 ms for 350-1000 keys" in output
    assert code == (1 if "MISS" in output else 0)  # a timing missed on a loaded machine is exit 1, never 0


def test_drill_command_exits_1_with_match_false_and_an_incident(live: LiveProfile) -> None:
    code, output = run_cli(live, "redis-outage", corrupt_before_verify=True)

    assert code == 1
    assert output.rstrip().splitlines()[-1] == "Match: False"
    assert "incident #" in output
    assert "drill:redis-outage" in open_incidents(live.settings.database_url)


def test_drill_command_exits_2_on_bad_input(live: LiveProfile, monkeypatch: pytest.MonkeyPatch) -> None:
    unknown, unknown_output = run_cli(live, "meteor-strike")
    no_keys, _ = run_cli(live, "redis-outage", keys=0)
    not_here, not_here_output = run_cli(live, "s3-outage")
    monkeypatch.setenv("DRILL_REDIS_PREFIX", "state:")
    refused, refused_output = run_cli(live, "redis-outage")

    assert (unknown, no_keys, not_here, refused) == (2, 2, 2, 2)
    assert len(unknown_output.strip().splitlines()) == 1
    assert all(name in unknown_output for name in ("all", "redis-outage", "postgres-outage", "s3-outage"))
    assert "COLD_STORAGE_URL=s3://" in not_here_output
    assert "drill refused" in refused_output and "DRILL_REDIS_PREFIX" in refused_output


def test_prefect_yaml_serves_the_weekly_and_on_demand_drills() -> None:
    from deployments.serve_all import runner_deployments

    drills = {d.name: d for d in runner_deployments() if d.flow_name == "failover-drill"}

    assert set(drills) == {"weekly", "on-demand"}
    assert [s.schedule.cron for s in drills["weekly"].schedules] == ["0 4 * * 0"]  # type: ignore[union-attr]
    assert drills["weekly"].parameters["scenario"] == "all"
    assert not drills["on-demand"].schedules and "scenario" in drills["on-demand"].parameters
