"""The flow-state hooks file a run's incident under the account its `account` parameter names: a failed
trading-bot/<account> run is that account's incident, a run for every account (unset, "all") the environment's.
Real SQLite ledger; the real flow run's parameters on the session's Prefect server in the last test."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

import pytest
from prefect import flow

from flows.hooks import incident_on_crashed, incident_on_failure, resolve_on_completion
from tests.paper_accounts import paper_accounts_yaml
from trader.ledger import Ledger

ACCOUNTS_YAML = paper_accounts_yaml(("alpha", "beta"))
FAILED = SimpleNamespace(name="Failed", message="RuntimeError: exchange answered 503 for 5 minutes")


@pytest.fixture
def accounts_ledger(monkeypatch: pytest.MonkeyPatch, sqlite_url: str, tmp_path: Path) -> str:
    """Two declared paper accounts, the machine's ledger a SQLite file, no Slack (the log notifier)."""
    (tmp_path / "accounts.yaml").write_text(ACCOUNTS_YAML)
    for name in ("SLACK_BOT_TOKEN", "SLACK_CHANNEL", "SLACK_WEBHOOK_URL", "ACCOUNT", "PERPS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("ACCOUNTS_FILE", str(tmp_path / "accounts.yaml"))
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    return sqlite_url


def run(**parameters: Any) -> SimpleNamespace:
    return SimpleNamespace(id=uuid4(), name="brave-otter", parameters=parameters)


def open_titles(url: str, account: str) -> list[str]:
    ledger = Ledger(url, account=account, migrate=False)
    try:
        return [incident.title for incident in ledger.open_incidents()]
    finally:
        ledger.dispose()


def test_a_failed_bot_run_of_one_account_is_that_accounts_incident(accounts_ledger: str) -> None:
    incident_on_failure(SimpleNamespace(name="trading-bot"), run(profile="dev", account="beta"), FAILED)

    assert open_titles(accounts_ledger, "beta") == ["flow trading-bot failed"]
    assert open_titles(accounts_ledger, "alpha") == [] and open_titles(accounts_ledger, "default") == []


def test_a_crashed_runbook_run_for_one_account_is_that_accounts_and_resolves_there(accounts_ledger: str) -> None:
    crashed = SimpleNamespace(name="Crashed", message="Execution was aborted by an interrupt signal.")
    incident_on_crashed(SimpleNamespace(name="reconcile"), run(account="alpha"), crashed)
    incident_on_crashed(SimpleNamespace(name="reconcile"), run(account="beta"), crashed)

    resolve_on_completion(SimpleNamespace(name="reconcile"), run(account="alpha"), SimpleNamespace(name="Completed"))

    assert open_titles(accounts_ledger, "alpha") == []
    assert open_titles(accounts_ledger, "beta") == ["flow reconcile crashed"]


@pytest.mark.parametrize("parameters", [{}, {"account": None}, {"account": "all"}])
def test_a_run_for_every_account_is_the_environments_incident(accounts_ledger: str, parameters: dict) -> None:
    incident_on_failure(SimpleNamespace(name="daily-checklist"), run(**parameters), FAILED)

    assert open_titles(accounts_ledger, "default") == ["flow daily-checklist failed"]
    assert open_titles(accounts_ledger, "alpha") == [] and open_titles(accounts_ledger, "beta") == []


def test_an_undeclared_account_name_is_filed_under_the_environments_account(accounts_ledger: str) -> None:
    incident_on_failure(SimpleNamespace(name="reconcile"), run(account="nope"), FAILED)

    assert open_titles(accounts_ledger, "default") == ["flow reconcile failed"]
    assert open_titles(accounts_ledger, "nope") == []


@flow(name="trading-bot", on_failure=[incident_on_failure], persist_result=False)
def bot_stand_in(account: str | None = None) -> None:
    """Stands in for trading-bot/<account>: takes the account parameter and fails."""
    raise RuntimeError(f"exchange answered 503 on /orders for account {account}")


def test_a_real_failed_flow_run_files_under_its_account_parameter(
    accounts_ledger: str, prefect_server: dict[str, str]
) -> None:
    state = bot_stand_in(account="alpha", return_state=True)

    assert state.is_failed()
    assert open_titles(accounts_ledger, "alpha") == ["flow trading-bot failed"]
    assert open_titles(accounts_ledger, "default") == []
