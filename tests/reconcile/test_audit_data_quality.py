"""The audit with broker answers that fail their data-quality suite: nothing repaired, the report says why, a
DATA_QUALITY incident opens; plausible answers again repair and resolve it. Paper exchange, real ledger, real gx."""

from __future__ import annotations

import json
from dataclasses import replace
from decimal import Decimal
from pathlib import Path
from typing import Any
from uuid import UUID

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from flows.reconcile import reconcile
from tasks.reconcile import DIFFERENCES_ARTIFACT, SUMMARY_ARTIFACT
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.reconcile.audit import DATA_QUALITY_INCIDENT, AuditReport, audit, record_data_quality_incident
from trader.runtime import build_broker
from trader.settings import Settings, load_settings


def buy(client_order_id: str) -> OrderRequest:
    return OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), client_order_id)


def run(exchange: SimulatedExchange, ledger: Ledger) -> AuditReport:
    mutations: list[str] = exchange.mutations  # type: ignore[attr-defined]  # the RecordingExchange fixture
    mutations.clear()
    report = audit(exchange, ledger, exchange.now())
    assert mutations == [], "the audit must never create, edit or cancel an order"
    return report


def tampered(exchange: SimulatedExchange, monkeypatch: pytest.MonkeyPatch, change: Any) -> None:
    """The broker now answers list_fills with `change` applied to its fills."""
    genuine = exchange.list_fills
    monkeypatch.setattr(exchange, "list_fills", lambda since=None: change(genuine(since)))


@pytest.mark.parametrize(
    ("change", "failure"),
    [
        (lambda fills: [replace(f, price=-f.price) for f in fills], "non-positive fill price"),
        (lambda fills: fills + fills[:1], "duplicate trade id"),
    ],
    ids=["negative-fill-price", "duplicate-trade-id"],
)
def test_broker_answers_that_fail_their_checks_repair_nothing_and_open_an_incident(
    exchange: SimulatedExchange,
    ledger: Ledger,
    monkeypatch: pytest.MonkeyPatch,
    change: Any,
    failure: str,
) -> None:
    exchange.place_order(buy("manual-1"))  # the ledger missed it: order, fill and position would be repaired
    tampered(exchange, monkeypatch, change)

    report = run(exchange, ledger)

    assert report.repair_blocked and not report.repair
    assert ledger.get_order("manual-1") is None and ledger.list_fills() == [] and ledger.positions() == {}
    assert report.inputs is not None and any(failure in line for line in report.inputs.failures)
    first = report.rows()[0]
    assert (first["kind"], first["action"]) == ("data_quality", "repair skipped") and failure in first["broker"]
    assert "none (repair off): would be imported from the broker" in {d.action for d in report.differences}
    assert "failed their data-quality checks" in report.markdown() and "repair skipped" in report.summary()

    incident_id = record_data_quality_incident(ledger, report, exchange.now())

    [incident] = ledger.open_incidents()
    assert (incident.id, incident.fingerprint, incident.severity) == (incident_id, DATA_QUALITY_INCIDENT, "SEV-2")
    assert incident.title.startswith("Reconciliation skipped its repairs") and failure in incident.detail


def test_plausible_answers_again_repair_and_resolve_the_incident(
    exchange: SimulatedExchange, ledger: Ledger, monkeypatch: pytest.MonkeyPatch
) -> None:
    exchange.place_order(buy("manual-1"))
    with monkeypatch.context() as patch:
        tampered(exchange, patch, lambda fills: [replace(f, fee=Decimal("-1")) for f in fills])
        record_data_quality_incident(ledger, run(exchange, ledger), exchange.now())
    assert [i.fingerprint for i in ledger.open_incidents()] == [DATA_QUALITY_INCIDENT]

    report = run(exchange, ledger)

    assert not report.repair_blocked and report.repair and report.inputs is not None and report.inputs.passed
    assert ledger.get_order("manual-1") is not None and ledger.positions()["BTC-USD"].quantity == Decimal("0.01")
    assert record_data_quality_incident(ledger, report, exchange.now()) is None
    assert ledger.open_incidents() == []


# --- the reconcile flow ------------------------------------------------------------------------------------------


@pytest.fixture
def paper_profile(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, sqlite_url: str) -> Settings:
    for name in ("PERPS_PROFILE", "COINBASE_API_KEY", "COINBASE_API_SECRET", "COINBASE_KEY_FILE", "MARKET_DATA"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("BROKER", "simulated")
    monkeypatch.setenv("DATABASE_URL", sqlite_url)
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "state"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "logs"))
    return load_settings(profile="dev")


def published(flow_run_id: UUID | None) -> dict[str, Any]:
    assert flow_run_id is not None
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {str(a.key): json.loads(a.data) if a.type == "table" and isinstance(a.data, str) else a.data for a in found}


def test_reconcile_flow_with_a_negative_fill_price_on_the_paper_account_repairs_nothing_and_says_why(
    prefect_harness: None, paper_profile: Settings
) -> None:
    paper = build_broker(paper_profile)
    assert isinstance(paper, SimulatedExchange)
    paper.place_order(buy("manual-1"))
    account = paper_profile.state_dir / "paper_exchange.json"
    genuine = account.read_bytes()
    state = json.loads(genuine)
    state["fills"][0]["price"] = "-" + state["fills"][0]["price"]
    account.write_text(json.dumps(state))

    blocked = reconcile(profile="dev", return_state=True)

    result = blocked.result()
    assert result["repair_blocked"] is True and result["data_quality_incident_id"] is not None
    assert [line.split(":")[0] for line in result["input_failures"]] == [f"fill {_trade_id(state)} (BTC-USD)"]
    artifacts = published(blocked.state_details.flow_run_id)
    rows = artifacts[DIFFERENCES_ARTIFACT]
    assert rows[0]["kind"] == "data_quality" and "non-positive fill price" in rows[0]["broker"]
    assert "failed their data-quality checks" in artifacts[SUMMARY_ARTIFACT]
    ledger = Ledger(paper_profile.database_url)
    assert ledger.get_order("manual-1") is None and ledger.list_fills() == []
    [incident] = ledger.open_incidents()
    assert (incident.fingerprint, incident.severity) == (DATA_QUALITY_INCIDENT, "SEV-2")
    assert incident.source.startswith("data_quality")

    account.write_bytes(genuine)
    clean = reconcile(profile="dev", return_state=True)

    assert clean.result()["repair_blocked"] is False and clean.result()["data_quality_incident_id"] is None
    assert ledger.get_order("manual-1") is not None and ledger.open_incidents() == []
    ledger.dispose()


def _trade_id(state: dict[str, Any]) -> str:
    fill: dict[str, Any] = state["fills"][0]
    return str(fill["trade_id"])
