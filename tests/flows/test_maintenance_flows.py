"""daily-report, weekly-maintenance, monthly-maintenance and quarterly-review run in-process against the session's
Prefect server on a SQLite ledger, a temporary state/log folder and a folder cold tier."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterId

from flows.maintenance import daily_report_flow, monthly_maintenance, quarterly_review, weekly_maintenance
from trader.domain import Balance, Fill, Liquidity, Side
from trader.ledger import Ledger
from trader.state.cold import LocalFolderStore


@pytest.fixture
def harness(prefect_server: dict[str, str]) -> None:
    """The session's Prefect server (tests/conftest.py): flows run in-process against it; a test reads only the
    artifacts of its own flow run."""


@pytest.fixture
def env(harness: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path | str]:
    """A paper profile whose ledger, state, logs and cold tier live in the test's folder; some trades today."""
    state, logs = tmp_path / "state", tmp_path / "logs"
    url = f"sqlite:///{(tmp_path / 'ledger.db').as_posix()}"
    for name, value in {"STATE_DIR": str(state), "LOG_DIR": str(logs), "DATABASE_URL": url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BROKER", "simulated")
    for name in ("COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE", "PERPS_PROFILE", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.delenv("COLD_STORAGE_URL", raising=False)
    monkeypatch.chdir(tmp_path)
    ledger = Ledger(url)
    now = datetime.now(UTC).replace(microsecond=0)
    day = now.replace(hour=0, minute=0, second=0)
    ledger.record_fills(
        [
            Fill("t-1", "o-1", "c-1", "BTC-USD", Side.BUY, Decimal(1), Decimal(100), Decimal(1), Liquidity.TAKER, day),
            Fill("t-2", "o-2", "c-2", "BTC-USD", Side.SELL, Decimal(1), Decimal(110), Decimal(1), Liquidity.TAKER, now),
        ]
    )
    for at, usd in ((day, "1000"), (now, "1008")):
        ledger.record_balance_snapshot(None, [Balance("USD", Decimal(usd), Decimal(0))], {"USD": Decimal(1)}, at)
    ledger.dispose()
    state.mkdir(parents=True)
    (state / "heartbeat.json").write_text(json.dumps({"guard_counters": {"max_position": 2}}))
    logs.mkdir()
    (logs / "perps_bot.log").write_text("live\n")
    (logs / "perps_bot.log.1").write_text("rotated\n" * 50)
    return {"url": url, "state": state, "logs": logs}


def artifacts(flow_run_id: Any, *keys: str) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    return {a.key: json.loads(a.data) if isinstance(a.data, str) and a.type == "table" else a.data for a in found}


def test_daily_report_publishes_the_day(env: dict[str, Any]) -> None:
    state = daily_report_flow(return_state=True)

    assert state.is_completed()
    summary = state.result()
    assert (summary["fills"], summary["gross_pnl"], summary["net_pnl"], summary["equity_change"]) == (2, 10.0, 8.0, 8.0)
    published = artifacts(state.state_details.flow_run_id, "daily-report", "daily-report-pnl")
    assert "# Daily report" in published["daily-report"] and "max_position=2" in published["daily-report"]
    assert {r["symbol"] for r in published["daily-report-pnl"]} == {"BTC-USD", "TOTAL"}


def test_weekly_maintenance_archives_logs_and_records_the_run(env: dict[str, Any]) -> None:
    state = weekly_maintenance(return_state=True)

    assert state.is_completed()
    statuses = state.result()
    assert set(statuses) == {
        "performance review",
        "strategy effectiveness",
        "log rotation and archive",
        "cache cleanup",
        "database maintenance",
    }
    assert statuses["log rotation and archive"] == "pass" and statuses["database maintenance"] == "pass"
    assert not (env["logs"] / "perps_bot.log.1").exists()
    assert len(LocalFolderStore(env["state"] / "cold").list("logs/")) == 1
    published = artifacts(state.state_details.flow_run_id, "weekly-maintenance", "weekly-maintenance-summary")
    assert {r["item"] for r in published["weekly-maintenance"]} == set(statuses)
    assert "# Weekly maintenance" in published["weekly-maintenance-summary"]
    runs = Ledger(env["url"], migrate=False).checklist_runs("weekly")
    assert len(runs) == 1 and runs[0].flow_run_id == str(state.state_details.flow_run_id)


def test_monthly_maintenance_opens_an_incident_for_an_open_env_file(env: dict[str, Any], tmp_path: Path) -> None:
    (tmp_path / ".env").write_text("SLACK_BOT_TOKEN=x\n")
    (tmp_path / ".env").chmod(0o644)

    state = monthly_maintenance(return_state=True)

    assert state.is_completed()
    statuses = state.result()
    assert statuses["security review"] == "fail" and set(statuses) == {
        "security review",
        "dependency audit",
        "cost vs returns",
    }
    published = artifacts(state.state_details.flow_run_id, "monthly-maintenance", "monthly-maintenance-summary")
    assert {r["item"] for r in published["monthly-maintenance"]} == set(statuses)
    ledger = Ledger(env["url"], migrate=False)
    assert [i.fingerprint for i in ledger.open_incidents()] == ["checklist:monthly:security review"]
    (tmp_path / ".env").chmod(0o600)
    assert monthly_maintenance(return_state=True).result()["security review"] == "pass"
    assert ledger.open_incidents() == []


def test_quarterly_review_publishes_its_report(env: dict[str, Any]) -> None:
    ledger = Ledger(env["url"], migrate=False)
    ledger.record_checklist_run("daily", "pass", [], datetime.now(UTC) - timedelta(days=1), None)

    state = quarterly_review(return_state=True)

    assert state.is_completed()
    assert set(state.result()) == {"performance", "capacity planning", "incidents", "checklist pass rates"}
    published = artifacts(state.state_details.flow_run_id, "quarterly-review", "quarterly-review-report")
    report = published["quarterly-review-report"]
    assert "# Quarterly review" in report and " capacity planning" in report and "| fills |" in report
    assert {r["item"] for r in published["quarterly-review"]} == set(state.result())
