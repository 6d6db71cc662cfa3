"""End to end: graceful-shutdown/on-demand served from prefect.yaml on the session's Prefect server, against a
trading-bot/paper run that trades with a position, a paper account in STATE_DIR and a ledger on its own PostgreSQL
database."""

from __future__ import annotations

import json
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    DeploymentFilter,
    DeploymentFilterName,
)
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment

from tests.flows.test_trading_bot_flow import wait_for_state
from tests.processes import wait_for
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData

pytestmark = pytest.mark.e2e
BTC = "BTC-USD"
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}
SHUTDOWN = "graceful-shutdown/on-demand"


@pytest.fixture
def bot_env(bot_env: dict[str, str], fresh_pg_url: str) -> dict[str, str]:
    """The served flows' environment: a ledger of their own, and a crossover (7/79) that buys on its first cycle of
    the replay and holds for two minutes of bars."""
    Ledger(fresh_pg_url).dispose()
    return {**bot_env, "DATABASE_URL": fresh_pg_url, "STRATEGY_FAST_WINDOW": "7", "STRATEGY_SLOW_WINDOW": "79"}


@pytest.fixture
def served(served_deployments: dict[str, str]) -> dict[str, str]:
    """served_deployments, once serve_all has registered the graceful-shutdown deployment too."""
    with get_client(sync_client=True) as client:
        wait_for(lambda: _registered(client, SHUTDOWN), 60, f"{SHUTDOWN} to be registered by serve_all")
    return served_deployments


def _registered(client: Any, name: str) -> bool:
    try:
        client.read_deployment_by_name(name)
    except Exception:
        return False
    return True


def paper(env: dict[str, str]) -> SimulatedExchange:
    return SimulatedExchange(
        ReplayMarketData(), state_path=Path(env["STATE_DIR"]) / "paper_exchange.json", read_only=True
    )


def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: json.loads(a.data) if a.type == "table" and isinstance(a.data, str) else a.data for a in found}


def bot_runs(since: Any) -> list[Any]:
    """The trading-bot/paper runs created since `since` (the server is the session's: earlier tests' runs are there)."""
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["paper"])))
    return [run for run in runs if run.created is not None and run.created >= since]


def held(env: dict[str, str]) -> dict[str, str]:
    try:
        return dict(json.loads((Path(env["STATE_DIR"]) / "heartbeat.json").read_text())["positions"])
    except (OSError, ValueError, KeyError):
        return {}


def test_the_deployment_stops_a_trading_bot_run_flat_without_orders_checkpointed_and_never_restarted(
    clean_variables: None, served: dict[str, str]
) -> None:
    env = served
    bot = run_deployment("trading-bot/paper", parameters={"profile": "dev", "cycle_interval_seconds": 0.5}, timeout=0)
    wait_for(lambda: held(env).get(BTC), 90, "the bot run to hold a position")

    shutdown = run_deployment(SHUTDOWN, parameters={"timeout_seconds": 60, "reason": "test: maintenance"}, timeout=0)

    assert wait_for_state(shutdown.id, FINAL) is StateType.COMPLETED
    assert wait_for_state(bot.id, FINAL, timeout=60) in (StateType.COMPLETED, StateType.CANCELLED)
    table = artifacts(shutdown.id)["graceful-shutdown"]
    assert [(r["step"], r["result"]) for r in table] == [
        ("1. reduce-only on", "ok"),
        ("2. wait for flat", "ok"),
        ("3. cancel all working orders", "ok"),
        ("4. verify no open orders", "ok"),
        ("5. record final positions", "ok"),
        ("6. checkpoint", "ok"),
        ("7. stop the bot", "ok"),
    ]
    assert "stood down" in table[1]["detail"] and "1 reduce-only exit(s)" in table[1]["detail"]
    assert f"run {bot.id}" in table[6]["detail"]
    progress = artifacts(shutdown.id)["graceful-shutdown-progress"]
    assert progress == 100.0
    account = paper(env)
    assert account.positions() == [] and account.list_open_orders() == []
    assert (Path(env["STATE_DIR"]) / "REDUCE_ONLY").exists() and (Path(env["STATE_DIR"]) / "STOP").exists()
    ledger = Ledger(env["DATABASE_URL"], migrate=False)
    try:
        assert [s.status for s in ledger.list_sessions()] == ["stood_down"]
        assert "graceful shutdown" in [c.reason for c in ledger.checkpoints()]
        assert ledger.open_incidents() == []
    finally:
        ledger.dispose()
    # The restart automation answers only Crashed (deployments/automations.py): the run did not crash, and no
    # other trading-bot run was started after it.
    assert [str(run.id) for run in bot_runs(since=bot.created)] == [str(bot.id)]


def test_a_step_that_fails_ends_the_run_failed_with_one_sev2_incident(
    clean_variables: None, served: dict[str, str]
) -> None:
    env = served
    exchange = SimulatedExchange(ReplayMarketData(), state_path=Path(env["STATE_DIR"]) / "paper_exchange.json")
    ledger = Ledger(env["DATABASE_URL"], migrate=False)
    for request in (  # 0.000005 BTC left: below base_min_size, no exit can sell it
        OrderRequest(BTC, Side.BUY, OrderType.MARKET, Decimal("0.00005"), "entry"),
        OrderRequest(BTC, Side.SELL, OrderType.MARKET, Decimal("0.000045"), "most-of-it"),
    ):
        ledger.record_pending(request, None, exchange.now())
        ledger.apply_order(exchange.place_order(request))
    ledger.record_fills(exchange.list_fills())

    shutdown = run_deployment(SHUTDOWN, parameters={"timeout_seconds": 1}, timeout=0)

    assert wait_for_state(shutdown.id, FINAL) is StateType.FAILED
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(shutdown.id).state
    assert state is not None and state.name == "IncidentOpened" and "wait for flat" in (state.message or "")
    table = artifacts(shutdown.id)["graceful-shutdown"]
    assert [r["result"] for r in table] == ["ok", "failed"] + ["not run"] * 5
    try:
        assert {i.fingerprint: i.severity for i in ledger.open_incidents()} == {"graceful-shutdown": "SEV-2"}
    finally:
        ledger.dispose()
    assert not (Path(env["STATE_DIR"]) / "STOP").exists()


def test_a_timeout_not_above_zero_is_bad_input_and_nothing_is_written(
    prefect_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from flows.shutdown import graceful_shutdown

    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path / 'ledger.db'}")

    state = graceful_shutdown(timeout_seconds=0, return_state=True)

    assert state.is_failed() and state.name == "BadInput"
    assert "timeout_seconds must be more than 0 (got 0)" in (state.message or "")
    assert not (tmp_path / "state").exists() and not (tmp_path / "ledger.db").exists()
