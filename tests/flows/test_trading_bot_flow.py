"""End to end: trading-bot served from prefect.yaml on a real Prefect server, ledger on real PostgreSQL."""

from __future__ import annotations

import json
import socket
import time
import urllib.request
from pathlib import Path
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.client.schemas.objects import StateType
from prefect.deployments import run_deployment
from prefect.states import Cancelling

from trader.domain import OrderStatus
from trader.ledger import Ledger

pytestmark = pytest.mark.e2e


@pytest.fixture
def bot_env(bot_env: dict[str, str]) -> dict[str, str]:
    """The served bot with its exporter on a free port and the data gate on, as `perps-bot up` runs it."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return {**bot_env, "METRICS_ENABLED": "1", "METRICS_PORT": str(port), "DATA_GATE_ENABLED": "1"}


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def wait_for_state(run_id: UUID, final: set[StateType], timeout: float = 180) -> StateType:
    deadline = time.monotonic() + timeout
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            if state is not None and state.type in final:
                return state.type
            time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} did not reach {final} in {timeout} s (last: {state})")


def test_trading_bot_runs_cycles_and_records_orders_and_fills_in_the_ledger(
    served_deployments: dict[str, str], pg_url: str
) -> None:
    cycles = 60

    run = run_deployment(
        "trading-bot/paper",
        parameters={"profile": "dev", "max_cycles": cycles, "cycle_interval_seconds": 0},
        timeout=0,
    )
    final = wait_for_state(run.id, {StateType.COMPLETED, StateType.FAILED, StateType.CRASHED})

    assert final is StateType.COMPLETED
    ledger = Ledger(pg_url)
    orders, fills = ledger.list_orders(), ledger.list_fills()
    assert orders and fills
    assert {f.client_order_id for f in fills} <= {o.client_order_id for o in orders}
    assert not [o for o in orders if o.status == OrderStatus.PENDING_SUBMIT]
    sessions = {o.session_id for o in orders}
    assert len(sessions) == 1
    session = ledger.get_session(sessions.pop())
    assert session.status == "stopped" and session.cycles == cycles and session.flow_run_id == str(run.id)
    exchange = json.loads((Path(served_deployments["STATE_DIR"]) / "paper_exchange.json").read_text())
    assert len(exchange["fills"]) == len(fills)
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[run.id]))
        )
    assert any(a.key == "trading-bot-session" and f"| cycles | {cycles} |" in str(a.data) for a in artifacts)
    [validation] = [a for a in artifacts if a.key == "post-startup-validation"]  # the runbook's post-startup table
    for check in ("authenticated", "market channel", "user channel", "risk limits", "positions synchronized"):
        assert f"| {check} | ok |" in str(validation.data), validation.data


def test_cancelling_in_the_ui_stops_the_bot_cleanly_between_cycles(
    served_deployments: dict[str, str], pg_url: str
) -> None:
    run = run_deployment("trading-bot/paper", parameters={"profile": "dev", "cycle_interval_seconds": 0.2}, timeout=0)
    ledger = Ledger(pg_url)
    deadline = time.monotonic() + 120
    while not (session := _session_of(ledger, str(run.id))) or session.cycles < 2:
        assert time.monotonic() < deadline, "bot never reported a heartbeat"
        time.sleep(0.5)
    base = f"http://127.0.0.1:{served_deployments['METRICS_PORT']}"
    health = get_json(f"{base}/health")
    assert health["status"] == "healthy" and health["balance"] > 0 and health["last_data_update"], health
    with urllib.request.urlopen(f"{base}/metrics", timeout=5) as response:
        scrape = response.read().decode()
    assert "perps_bot_cycles_total" in scrape and "perps_bot_data_gate_checks_total" in scrape

    with get_client(sync_client=True) as client:
        client.set_flow_run_state(run.id, Cancelling(), force=True)
    final = wait_for_state(run.id, {StateType.CANCELLED, StateType.CRASHED, StateType.FAILED, StateType.COMPLETED})

    assert final is StateType.CANCELLED
    session = _session_of(ledger, str(run.id))
    assert session is not None and session.status == "stopped", "the bot was killed mid-cycle instead of stopping"
    assert session.ended_at is not None
    assert not [o for o in ledger.open_orders() if o.status == OrderStatus.PENDING_SUBMIT]


def _session_of(ledger: Ledger, flow_run_id: str):
    return ledger.find_session_by_flow_run(flow_run_id)
