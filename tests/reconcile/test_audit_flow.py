"""The reconcile flow in-process under prefect_test_harness: the paper account and a SQLite ledger from the
profile's settings, the differences published as a table artifact, the drift incident opened then resolved."""

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId
from prefect.states import Failed
from sqlalchemy.exc import OperationalError

from flows.reconcile import reconcile
from tasks.policies import is_transient
from tasks.reconcile import DIFFERENCES_ARTIFACT, SUMMARY_ARTIFACT, audit_ledger
from trader.brokers.simulated import SimulatedExchange
from trader.domain import Balance, OrderRequest, OrderType, Side
from trader.errors import AuthenticationFailed, BrokerUnavailable
from trader.ledger import Ledger
from trader.reconcile.audit import DRIFT_INCIDENT
from trader.runtime import build_broker
from trader.settings import Settings, load_settings


@pytest.fixture
def paper_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str) -> Settings:
    """The dev profile on the paper exchange, its account and ledger in this test's folder."""
    for name in ("PERPS_PROFILE", "COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE", "MARKET_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER", "simulated")
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    return load_settings(profile="dev")


def artifacts(flow_run_id: UUID) -> dict[str, Any]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a.data for a in found}


def table(flow_run_id: UUID) -> list[dict[str, str]]:
    data = artifacts(flow_run_id)[DIFFERENCES_ARTIFACT]
    return json.loads(data) if isinstance(data, str) else data


def baseline(ledger: Ledger, paper: SimulatedExchange, ago: timedelta, usd: str) -> None:
    balances = [Balance("USD", Decimal(usd), Decimal(0))]
    ledger.record_balance_snapshot(None, balances, {"USD": Decimal(1)}, paper.now() - ago)


def test_reconcile_flow_publishes_differences_opens_the_drift_incident_and_a_clean_run_resolves_it(
    prefect_harness: None, paper_profile: Settings
) -> None:
    paper = build_broker(paper_profile)
    assert isinstance(paper, SimulatedExchange)
    paper.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "manual-1"))
    account = paper_profile.state_dir / "paper_exchange.json"
    saved = account.read_bytes()
    ledger = Ledger(paper_profile.database_url)
    baseline(ledger, paper, timedelta(hours=25), usd="99000")  # 1,000 USD more on the exchange than explained

    state = reconcile(profile="dev", balance_tolerance_quote=Decimal("1"), return_state=True)

    result = state.result()
    assert result["drift_beyond_tolerance"] is True and result["incident_id"] is not None
    assert result["by_kind"] == {"missing_locally": 2, "balance_drift": 1}
    rows = table(state.state_details.flow_run_id)
    assert sorted((r["kind"], r["entity"], r["id"]) for r in rows if r["entity"] != "fill") == [
        ("balance_drift", "balance", "USD"),
        ("missing_locally", "order", "manual-1"),
    ]
    assert "Reconciliation audit" in str(artifacts(state.state_details.flow_run_id)[SUMMARY_ARTIFACT])
    [incident] = ledger.open_incidents()
    assert (incident.id, incident.fingerprint, incident.severity) == (result["incident_id"], DRIFT_INCIDENT, "SEV-2")
    assert ledger.get_order("manual-1") is not None and ledger.positions()["BTC-USD"].quantity == Decimal("0.01")
    assert account.read_bytes() == saved  # the paper account is the bot's: read, never written

    baseline(ledger, paper, timedelta(hours=24, minutes=30), usd="100000")  # the operator's corrected baseline
    clean = reconcile(profile="dev", return_state=True)

    assert clean.result()["differences"] == 0 and clean.result()["incident_id"] is None
    assert [r["action"] for r in table(clean.state_details.flow_run_id)] == ["no differences"]
    assert ledger.open_incidents() == []
    assert paper.list_open_orders() == [] and [f.client_order_id for f in paper.list_fills()] == ["manual-1"]
    ledger.dispose()


@pytest.mark.parametrize(
    ("error", "retried"),
    [
        (BrokerUnavailable("Coinbase answered 503"), True),
        (OperationalError("SELECT 1", {}, Exception("connection refused")), True),
        (AuthenticationFailed("401 UNAUTHENTICATED"), False),
        (ValueError("a bug"), False),
    ],
)
def test_only_errors_that_may_pass_on_their_own_are_retried(error: Exception, retried: bool) -> None:
    assert is_transient(audit_ledger, None, Failed(data=error)) is retried  # type: ignore[arg-type]
