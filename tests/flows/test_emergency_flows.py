"""End to end: the emergency-* deployments served from prefect.yaml on a real Prefect server, a paper account in
STATE_DIR and a ledger on its own PostgreSQL database."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment

from tests.flows.conftest import set_variable
from tests.flows.test_trading_bot_flow import wait_for_state
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.emergency.procedures import exit_client_order_id
from trader.ledger import Ledger
from trader.market import ReplayMarketData

pytestmark = pytest.mark.e2e
BTC = "BTC-USD"
FINAL = {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED}


@pytest.fixture
def bot_env(bot_env: dict[str, str], fresh_pg_url: str) -> dict[str, str]:
    """The served flows' environment with a ledger of their own (the session database holds the bot tests' orders)."""
    return {**bot_env, "DATABASE_URL": fresh_pg_url}


EMERGENCY_DEPLOYMENTS = [
    f"emergency-{name}/on-demand" for name in ("kill-switch", "reduce-only", "cancel-all", "flatten")
]


@pytest.fixture
def served(served_deployments: dict[str, str]) -> dict[str, str]:
    """served_deployments, once serve_all has registered the emergency deployments too."""
    deadline = time.monotonic() + 60
    with get_client(sync_client=True) as client:
        for name in EMERGENCY_DEPLOYMENTS:
            while True:
                try:
                    client.read_deployment_by_name(name)
                    break
                except Exception:
                    assert time.monotonic() < deadline, f"{name} was never registered by serve_all"
                    time.sleep(0.5)
    return served_deployments


def paper_account(env: dict[str, str], *, read_only: bool = False) -> SimulatedExchange:
    return SimulatedExchange(
        ReplayMarketData(), state_path=Path(env["STATE_DIR"]) / "paper_exchange.json", read_only=read_only
    )


def send(exchange: SimulatedExchange, ledger: Ledger, request: OrderRequest) -> None:
    ledger.record_pending(request, None, exchange.now())
    ledger.apply_order(exchange.place_order(request))
    ledger.record_fills(exchange.list_fills())


def trade(env: dict[str, str], *, resting: int, holding: str | None = None) -> list[str]:
    """`resting` limit buys far below the market and, optionally, a position; returns the resting order ids."""
    exchange, ledger = paper_account(env), Ledger(env["DATABASE_URL"])
    if holding:
        send(exchange, ledger, OrderRequest(BTC, Side.BUY, OrderType.MARKET, Decimal(holding), "entry"))
    price = (exchange.best_bid_ask(BTC)[0] / 2).quantize(Decimal("0.01"))
    for n in range(resting):
        send(exchange, ledger, OrderRequest(BTC, Side.BUY, OrderType.LIMIT, Decimal("0.0001"), f"rest-{n}", price))
    ledger.dispose()
    return [o.order_id for o in exchange.list_open_orders()]


def run(name: str, **parameters: Any) -> UUID:
    flow_run = run_deployment(name, parameters=parameters, timeout=0)
    final = wait_for_state(flow_run.id, FINAL)
    assert final is StateType.COMPLETED, f"{name} ended {final}"
    return flow_run.id


def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: json.loads(a.data) if a.type == "table" and isinstance(a.data, str) else a.data for a in found}


def variable(name: str) -> object:
    with get_client(sync_client=True) as client:
        found = client.read_variable_by_name(name)
    return None if found is None else found.value


def open_incidents(env: dict[str, str]) -> dict[str, str]:
    ledger = Ledger(env["DATABASE_URL"])
    try:
        return {i.fingerprint: i.severity for i in ledger.open_incidents()}
    finally:
        ledger.dispose()


def test_kill_switch_deployment_sets_the_variable_and_flag_cancels_every_order_and_opens_a_sev1_incident(
    clean_variables: None, served: dict[str, str]
) -> None:
    env = served
    resting = trade(env, resting=3)

    on = run("emergency-kill-switch/on-demand", reason="test: exchange misbehaving")

    assert variable("kill_switch") is True
    assert (Path(env["STATE_DIR"]) / "KILL_SWITCH").exists()
    assert paper_account(env, read_only=True).list_open_orders() == []
    ledger = Ledger(env["DATABASE_URL"])
    assert {o.client_order_id: o.status for o in ledger.list_orders()} == {
        f"rest-{n}": OrderStatus.CANCELLED.value for n in range(3)
    }
    table = artifacts(on)["emergency-kill-switch"]
    assert [(r["step"], r["result"]) for r in table[:2]] == [("set kill_switch", "ON"), ("set kill_switch", "ON")]
    assert {r["id"].split(" ")[0] for r in table if r["step"] == "cancel"} == set(resting)
    assert open_incidents(env)["emergency:kill-switch"] == "SEV-1"

    again = run("emergency-kill-switch/on-demand")

    assert [r["result"] for r in artifacts(again)["emergency-kill-switch"]] == [
        "ON (unchanged)",
        "ON (unchanged)",
        "nothing to cancel",
    ]

    off = run("emergency-kill-switch/on-demand", enabled=False)

    assert variable("kill_switch") is False
    assert not (Path(env["STATE_DIR"]) / "KILL_SWITCH").exists()
    assert "emergency:kill-switch" not in open_incidents(env)
    assert "resolved: emergency:kill-switch" in artifacts(off)["emergency-kill-switch-summary"]


def test_cancel_all_and_flatten_deployments_close_exposure_once_under_reduce_only(
    clean_variables: None, served: dict[str, str]
) -> None:
    env = served
    trade(env, resting=2, holding="0.05")

    # The runbook's command line: `prefect deployment run`.
    cancel = subprocess.run(
        [sys.executable, "-m", "prefect", "deployment", "run", "emergency-cancel-all/on-demand", "--watch"],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert cancel.returncode == 0, cancel.stdout + cancel.stderr
    assert paper_account(env, read_only=True).list_open_orders() == []
    assert open_incidents(env)["emergency:cancel-all"] == "SEV-1"

    first = run("emergency-flatten/on-demand", request_id="flatten-test-1")
    second = run("emergency-flatten/on-demand", request_id="flatten-test-1")

    account = paper_account(env, read_only=True)
    sells = [f for f in account.list_fills() if f.side == Side.SELL]
    assert [(f.quantity, f.client_order_id) for f in sells] == [
        (Decimal("0.05"), exit_client_order_id("flatten-test-1", BTC))
    ]
    assert account.positions() == []
    assert variable("reduce_only") is True and (Path(env["STATE_DIR"]) / "REDUCE_ONLY").exists()
    exits = [r for r in artifacts(first)["emergency-flatten"] if r["step"] == "exit"]
    assert len(exits) == 1 and exits[0]["target"] == "BTC-USD sell 0.05 reduce-only market"
    assert exits[0]["result"] == "filled: sent"
    repeated = [r for r in artifacts(second)["emergency-flatten"] if r["step"] == "exit"]
    assert repeated[0]["result"] == "filled: already sent by an earlier attempt"
    assert open_incidents(env)["emergency:flatten"] == "SEV-1"

    run("emergency-reduce-only/on-demand", enabled=False)

    assert variable("reduce_only") is False
    assert "emergency:flatten" not in open_incidents(env)


def test_trading_bot_deployment_sends_no_order_while_the_kill_switch_variable_is_on(
    clean_variables: None, served: dict[str, str]
) -> None:
    env = served
    set_variable("kill_switch", True)

    run("trading-bot/paper", profile="dev", max_cycles=60, cycle_interval_seconds=0)

    ledger = Ledger(env["DATABASE_URL"])
    assert ledger.list_orders() == []
    heartbeat = json.loads((Path(env["STATE_DIR"]) / "heartbeat.json").read_text())
    assert heartbeat["guard_counters"].get("kill_switch", 0) > 0
    assert "kill switch ON (Prefect Variable kill_switch)" in (Path(env["LOG_DIR"]) / "perps_bot.log").read_text()
