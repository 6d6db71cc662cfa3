"""security-audit runs in-process against the session's Prefect server and the local Advanced Trade server: an order
placed behind the platform's back (another client on the same key) is in the artifact with a SEV-1 incident open; a
window with only the platform's own orders opens none."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from flows.security import security_audit
from tests.deployments.test_cli_coinbase import env_for, live_settings
from tests.flows.test_maintenance_flows import artifacts
from trader.brokers.coinbase import CoinbaseBroker
from trader.domain import OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.runtime import build_bot
from trader.settings import Settings
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

NOT_INHERITED = (
    "DATABASE_URL",
    "COINBASE_API_KEY",
    "COINBASE_API_SECRET",
    "COINBASE_BACKUP_KEY_FILE",
    "COINBASE_BACKUP_API_KEY",
    "COINBASE_BACKUP_API_SECRET",
    "BROKER",
    "PERPS_PROFILE",
    "ACCOUNT",
    "ACCOUNTS_FILE",
    "REDIS_URL",
    "COLD_STORAGE_URL",
)


@pytest.fixture
def settings(
    prefect_server: dict[str, str],
    exchange: AdvancedTradeServer,
    cdp_key: CdpKey,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Settings:
    """The spot profile on the local exchange, its ledger and state in the test's folder (the flow reads the same from
    the environment); the platform has placed one order of its own."""
    for name in NOT_INHERITED:
        monkeypatch.delenv(name, raising=False)
    env = {**env_for(exchange, cdp_key, tmp_path), "STATE_DIR": str(tmp_path / "var/state")}
    for name, value in {**env, "LOG_DIR": str(tmp_path / "var/logs")}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(tmp_path)
    settings = live_settings(exchange, tmp_path)
    bot = build_bot(settings)
    bot.start()
    try:
        ours = OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "ours-1")
        bot.orders.send(ours, position=Decimal(0))
    finally:
        bot.stop()
    return settings


def ledger(settings: Settings) -> Ledger:
    return Ledger(settings.database_url)


def test_an_order_placed_behind_the_platforms_back_is_listed_and_opens_a_sev1(settings: Settings) -> None:
    intruder = CoinbaseBroker.from_settings(settings)  # the same key, used elsewhere
    theirs = intruder.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.02"), "theirs-1"))

    state = security_audit(profile="spot", return_state=True)

    assert state.is_completed()  # the SEV-1 is the alert, not a failed run
    result = state.result()
    assert (result["status"], result["orders"], result["unauthorized"], result["fills"]) == (
        "unauthorized orders",
        2,
        1,
        1,
    )
    [row] = artifacts(state.state_details.flow_run_id, "security-audit")["security-audit"]
    assert (row["order_id"], row["client_order_id"], row["symbol"], row["fills"]) == (
        theirs.order_id,
        "theirs-1",
        "BTC-USD",
        "1",
    )
    [incident] = ledger(settings).open_incidents()
    assert (incident.fingerprint, incident.severity, incident.id) == (
        "security:unauthorized-orders",
        "SEV-1",
        result["incident_id"],
    )
    assert theirs.order_id in incident.detail


def test_a_window_with_only_the_platforms_orders_opens_no_incident(settings: Settings) -> None:
    state = security_audit(profile="spot", return_state=True)

    assert state.is_completed()
    assert state.result()["status"] == "clean" and state.result()["orders"] == 1
    [row] = artifacts(state.state_details.flow_run_id, "security-audit")["security-audit"]
    assert (row["order_id"], row["status"]) == ("none", "no unauthorized orders")
    assert ledger(settings).open_incidents() == []


def test_a_paper_account_is_not_audited_and_says_so(
    prefect_server: dict[str, str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in (*NOT_INHERITED, "COINBASE_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("STATE_DIR", str(tmp_path / "var/state"))
    monkeypatch.setenv("LOG_DIR", str(tmp_path / "var/logs"))
    monkeypatch.chdir(tmp_path)

    state = security_audit(profile="dev", return_state=True)

    assert state.is_completed() and state.result()["status"] == "not audited"
    [row] = artifacts(state.state_details.flow_run_id, "security-audit")["security-audit"]
    assert row["status"] == "not audited: account default trades on the simulated exchange: no Coinbase key to audit"
