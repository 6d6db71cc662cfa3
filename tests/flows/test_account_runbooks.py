"""Runbook flows over the declared accounts, in-process on the session's Prefect server: one task run and one result
per account, one summary table (read back from the API), and an undeclared account refused before anything is
written."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterId,
    TaskRunFilter,
    TaskRunFilterName,
)
from sqlalchemy import create_engine, inspect, text

from flows.bot import trading_bot
from flows.checklists import daily_checklist
from flows.emergency import emergency_cancel_all, emergency_kill_switch
from flows.reconcile import reconcile
from tests.paper_accounts import paper_accounts_yaml

ACCOUNTS = ("alpha", "beta", "gamma")
ACCOUNTS_YAML = paper_accounts_yaml(beta={"strategy": {"position_size_usd": 250}})


@pytest.fixture
def env(prefect_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Three paper accounts declared in accounts.yaml; ledger (SQLite), state and logs in the test's folder."""
    state, logs = tmp_path / "state", tmp_path / "logs"
    url = f"sqlite:///{(tmp_path / 'ledger.db').as_posix()}"
    for name, value in {"STATE_DIR": str(state), "LOG_DIR": str(logs), "DATABASE_URL": url}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("BROKER", "simulated")
    monkeypatch.setenv("ACCOUNTS_FILE", str(tmp_path / "accounts.yaml"))
    for name in ("COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE", "PERPS_PROFILE", "REDIS_URL"):
        monkeypatch.delenv(name, raising=False)
    for name in ("COLD_STORAGE_URL", "MARKET_DATA", "MARKET_DATA_FILE", "MARKET_DATA_START", "ACCOUNT"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "accounts.yaml").write_text(ACCOUNTS_YAML)
    return {"url": url, "state": state, "tmp": tmp_path}


def artifact_tables(flow_run_id: Any, *keys: str) -> dict[str, list[dict[str, Any]]]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=list(keys))),
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
        )
    return {a.key: json.loads(a.data) if isinstance(a.data, str) else a.data for a in found}  # type: ignore[misc]


def account_task_runs(flow_run_id: Any, runbook: str, expected: int, timeout: float = 30) -> list[str]:
    """The flow run's completed per-account task runs; the server records task runs in the background, so this
    waits (up to timeout) for `expected` of them rather than reading once right after the flow returns."""
    deadline = time.monotonic() + timeout
    while True:
        with get_client(sync_client=True) as client:
            runs = client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])),
                task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=f"{runbook}: ")),
            )
        done = sorted(run.name for run in runs if run.state is not None and run.state.is_completed())
        if len(done) >= expected or time.monotonic() > deadline:
            return done
        time.sleep(0.2)


def test_daily_checklist_without_an_account_runs_every_declared_account_and_one_summary(env: dict[str, Any]) -> None:
    state = daily_checklist(profile="dev", return_state=True)

    assert state.is_completed(), state.message
    results = state.result()
    assert set(results) == set(ACCOUNTS)
    assert all("preflight" in statuses and "backup age" in statuses for statuses in results.values())
    run_id = state.state_details.flow_run_id
    expected = [f"daily-checklist: {name}" for name in ACCOUNTS]
    assert account_task_runs(run_id, "daily-checklist", len(ACCOUNTS)) == expected
    keys = ["daily-checklist-accounts", *(f"daily-checklist-{name}" for name in ACCOUNTS)]
    tables = artifact_tables(run_id, *keys)
    summary = tables["daily-checklist-accounts"]
    assert [row["account"] for row in summary] == list(ACCOUNTS)
    assert all(row["status"] in ("pass", "warn", "fail") and row["items"] == 11 for row in summary)
    for name in ACCOUNTS:
        assert {row["item"] for row in tables[f"daily-checklist-{name}"]} == set(results[name])
    # each account's checklist run recorded once, in its own account
    with create_engine(env["url"]).connect() as connection:
        recorded = connection.execute(text("SELECT account FROM checklist_runs ORDER BY account")).scalars().all()
    assert recorded == list(ACCOUNTS)


def test_reconcile_without_an_account_reconciles_each_one_and_publishes_one_summary(env: dict[str, Any]) -> None:
    state = reconcile(profile="dev", return_state=True)

    assert state.is_completed(), state.message
    results = state.result()
    assert set(results) == set(ACCOUNTS) and all(r["differences"] == 0 for r in results.values())
    run_id = state.state_details.flow_run_id
    assert account_task_runs(run_id, "reconcile", len(ACCOUNTS)) == [f"reconcile: {name}" for name in ACCOUNTS]
    tables = artifact_tables(run_id, "reconcile-accounts", *(f"reconcile-differences-{name}" for name in ACCOUNTS))
    assert [(row["account"], row["status"]) for row in tables["reconcile-accounts"]] == [
        (name, "clean") for name in ACCOUNTS
    ]
    assert all(f"reconcile-differences-{name}" in tables for name in ACCOUNTS)


def test_one_named_account_runs_only_that_account(env: dict[str, Any]) -> None:
    state = reconcile(profile="dev", account="beta", return_state=True)

    assert state.is_completed(), state.message
    assert set(state.result()) == {"beta"}
    summary = artifact_tables(state.state_details.flow_run_id, "reconcile-accounts")["reconcile-accounts"]
    assert [row["account"] for row in summary] == ["beta"]


@pytest.mark.parametrize("flow", [daily_checklist, reconcile])
def test_an_undeclared_account_fails_the_run_with_one_line_and_writes_nothing(env: dict[str, Any], flow: Any) -> None:
    state = flow(profile="dev", account="nope", return_state=True)

    assert state.is_failed()
    assert state.message == (
        f"account 'nope' is not declared in {env['tmp'] / 'accounts.yaml'} (declared: alpha, beta, gamma); add it there"
    )
    assert (
        not Path(env["url"].removeprefix("sqlite:///")).exists()
        or not inspect(create_engine(env["url"])).get_table_names()
    )
    assert not env["state"].exists()


def test_cancel_all_with_declared_accounts_never_guesses_which(env: dict[str, Any]) -> None:
    state = emergency_cancel_all(profile="dev", return_state=True)

    assert state.is_failed()
    assert state.message == (
        f"emergency-cancel-all: account: required with {env['tmp'] / 'accounts.yaml'} (declared: alpha, beta, gamma); "
        "name one, or all"
    )
    assert not env["state"].exists()


def test_the_kill_switch_is_every_accounts_and_refuses_one_name(env: dict[str, Any], clean_variables: None) -> None:
    refused = emergency_kill_switch(account="alpha", return_state=True)
    assert refused.is_failed() and "the kill-switch switch is every account's" in str(refused.message)
    assert not env["state"].exists()

    state = emergency_kill_switch(reason="test", return_state=True)

    assert state.is_completed(), state.message
    assert all((env["state"] / "accounts" / name / "KILL_SWITCH").exists() for name in ACCOUNTS)
    summary = artifact_tables(state.state_details.flow_run_id, "emergency-kill-switch-accounts")
    assert [row["account"] for row in summary["emergency-kill-switch-accounts"]] == list(ACCOUNTS)
    cleared = emergency_kill_switch(enabled=False, return_state=True)
    assert cleared.is_completed(), cleared.message
    assert not any((env["state"] / "accounts" / name / "KILL_SWITCH").exists() for name in ACCOUNTS)


def test_a_declared_accounts_bot_keeps_its_files_in_its_own_folder(env: dict[str, Any]) -> None:
    refused = trading_bot(profile="dev", account="nope", max_cycles=1, return_state=True)
    assert refused.is_failed() and str(refused.message).startswith("account 'nope' is not declared in")

    state = trading_bot(profile="dev", account="beta", max_cycles=3, cycle_interval_seconds=0, return_state=True)

    assert state.is_completed(), state.message
    assert state.result()["cycles"] == 3
    assert (env["state"] / "accounts" / "beta" / "heartbeat.json").exists()
    assert not (env["state"] / "heartbeat.json").exists()
    assert not (env["state"] / "accounts" / "alpha").exists()
