"""The morning checklist's checks: thresholds, evidence, and that a broken check is a fail, not a crash."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from trader.brokers.coinbase import CoinbaseBroker
from trader.brokers.simulated import SimulatedExchange
from trader.checklists import daily
from trader.domain import Balance, OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.settings import load_settings
from trader.state.cold import LocalFolderStore
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey

NOW = datetime(2026, 11, 21, 7, 0, tzinfo=UTC)
MARKET_TIME = datetime(2024, 3, 1, 12, 0, tzinfo=UTC)  # a replay's clock: years behind the wall clock


def test_log_scan_counts_only_errors_since_the_last_run(tmp_path: Path) -> None:
    log = tmp_path / "perps_bot.log"
    lines = [
        "2026-11-21 05:00:00,001 ERROR trader.bot old error",
        "2026-11-21 06:30:00,001 INFO trader.bot fine",
        "2026-11-21 06:31:00,001 ERROR trader.bot order rejected: INSUFFICIENT_FUND",
        "2026-11-21 06:32:00,001 CRITICAL trader.bot kill switch",
    ]
    log.write_text("\n".join(lines) + "\n")
    since = datetime.strptime("2026-11-21 06:00:00", "%Y-%m-%d %H:%M:%S").astimezone(UTC)  # local, like the log

    result = daily.log_scan(log, since)

    assert result.status == "warn" and result.evidence.startswith("2 lines since")
    assert "kill switch" in result.evidence
    assert daily.log_scan(log, None).evidence.startswith("3 lines")
    many = "\n".join(["2026-11-21 06:40:00,000 ERROR x boom"] * daily.LOG_ERRORS_FAIL)
    log.write_text(many + "\n")
    assert daily.log_scan(log, since).status == "fail"


def test_telemetry_freshness_ages_the_wall_clock_heartbeat_and_shows_market_time_as_evidence(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    old = ledger.start_session("dev", "simulated", "paper", at=NOW - timedelta(days=2))
    ledger.heartbeat(old, 99, MARKET_TIME, at=NOW - timedelta(days=1))
    ledger.end_session(old, "stopped", at=NOW - timedelta(days=1))
    live = ledger.start_session("dev", "simulated", "paper", at=NOW - timedelta(hours=1))
    ledger.heartbeat(live, 1234, MARKET_TIME, at=NOW - timedelta(seconds=4))

    result = daily.telemetry_freshness(ledger, NOW)

    assert result.status == "pass"
    assert result.evidence == "heartbeat 4 s ago (market time 2024-03-01 12:00 UTC), 1234 cycles"
    assert live in result.detail


def test_telemetry_freshness_of_a_stopped_bot_fails_and_names_the_session_state(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    session = ledger.start_session("dev", "simulated", "paper", at=NOW - timedelta(hours=5))
    ledger.heartbeat(session, 7, MARKET_TIME, at=NOW - timedelta(hours=3))
    ledger.end_session(session, "stopped", "SIGTERM from the runner", at=NOW - timedelta(hours=3))

    result = daily.telemetry_freshness(ledger, NOW)

    assert result.status == "fail"
    assert result.evidence == (
        "heartbeat 3.0 h ago (market time 2024-03-01 12:00 UTC), 7 cycles, session stopped (SIGTERM from the runner)"
    )


@pytest.mark.parametrize(
    ("age", "status"),
    [(timedelta(seconds=30), "pass"), (timedelta(minutes=6), "warn"), (timedelta(minutes=20), "fail")],
)
def test_heartbeat_age_thresholds(tmp_path: Path, sqlite_url: str, age: timedelta, status: str) -> None:
    ledger = Ledger(sqlite_url)
    session = ledger.start_session("dev", "simulated", "paper", at=NOW - timedelta(hours=1))
    ledger.heartbeat(session, 10, MARKET_TIME, at=NOW - age)
    beat = tmp_path / "heartbeat.json"
    beat.write_text(
        json.dumps(
            {
                "cycles": 10,
                "market_time": "x",
                "wall_time": (NOW - age).timestamp(),
                "guard_counters": {"kill_switch": 2, "max_position": 0},
            }
        )
    )

    assert daily.telemetry_freshness(ledger, NOW).status == status
    assert daily.heartbeat_metrics(beat, NOW).status == status
    counters = daily.guard_counters(beat)
    assert counters.status == "warn" and counters.evidence == "kill_switch=2"


@pytest.mark.parametrize(
    ("levels", "counters", "status", "evidence"),
    [
        ({"error_rate": "ok"}, {"max_position": 0}, "pass", "no guard trips"),
        ({"error_rate": "ok"}, {"volatility_warning": 1}, "warn", "volatility_warning=1"),
        ({"drawdown": "warning"}, {"drawdown_warning": 1}, "warn", "warning now: drawdown; drawdown_warning=1"),
        ({"error_rate": "critical", "exposure": "ok"}, {"error_rate_trip": 1}, "fail", "critical now: error_rate"),
    ],
)
def test_guard_counters_report_trips_and_each_guards_level_now(
    tmp_path: Path, levels: dict[str, str], counters: dict[str, int], status: str, evidence: str
) -> None:
    beat = tmp_path / "heartbeat.json"
    guards = {name: {"level": level, "value": 1.0, "action": "halt"} for name, level in levels.items()}
    beat.write_text(json.dumps({"guard_counters": counters, "guards": guards}))

    result = daily.guard_counters(beat)

    assert result.status == status and result.evidence.startswith(evidence)


def test_backup_age_reads_only_verified_manifests(tmp_path: Path) -> None:
    cold = LocalFolderStore(tmp_path / "cold")
    assert daily.backup_age(cold, NOW).status == "warn"
    cold.put("backups/daily/a.manifest.json", json.dumps({"verified": False, "created_at": NOW.isoformat()}).encode())
    assert daily.backup_age(cold, NOW).status == "warn"  # an unverified backup does not count
    old = (NOW - timedelta(hours=30)).isoformat()
    cold.put("backups/daily/b.manifest.json", json.dumps({"verified": True, "created_at": old}).encode())
    assert daily.backup_age(cold, NOW).status == "warn"
    fresh = (NOW - timedelta(hours=2)).isoformat()
    cold.put("backups/daily/c.manifest.json", json.dumps({"verified": True, "created_at": fresh}).encode())
    result = daily.backup_age(cold, NOW)
    assert result.status == "pass" and fresh in result.evidence


def test_pnl_and_positions_with_pandas(sqlite_url: str) -> None:
    exchange = SimulatedExchange(ReplayMarketData())
    ledger = Ledger(sqlite_url)
    exchange.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.1"), "c-1"))
    ledger.record_fills(exchange.list_fills())
    now = exchange.now()

    result = daily.overnight_pnl_and_positions(ledger, exchange, now)

    assert result.status == "pass"
    assert "1 fills" in result.evidence and "positions: BTC-USD 0.1" in result.evidence


def test_pnl_window_and_day_follow_the_brokers_replay_clock_not_the_wall_clock(sqlite_url: str) -> None:
    exchange = SimulatedExchange(ReplayMarketData())
    ledger = Ledger(sqlite_url)
    exchange.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.1"), "c-1"))
    ledger.record_fills(exchange.list_fills())
    replay_now = exchange.now()
    equity = sum((b.total for b in exchange.balances() if b.currency == "USD"), Decimal(0))
    equity += sum(p.quantity for p in exchange.positions()) * exchange.best_bid_ask("BTC-USD")[0]
    # The replay day began 3 % richer than now: the runbook's daily loss beyond -2 % is a fail.
    start = replay_now.replace(hour=0, minute=0, second=0, microsecond=0)
    usd = Balance("USD", (equity * Decimal("1.03")).quantize(Decimal("0.01")), Decimal(0))
    ledger.record_balance_snapshot(None, [usd], {"USD": Decimal(1)}, start)
    wall_now = datetime.now(UTC)
    assert wall_now - replay_now > timedelta(days=30)

    result = daily.overnight_pnl_and_positions(ledger, exchange, wall_now)

    assert result.status == "fail", result.evidence
    assert result.evidence.startswith("day PnL -2.9")
    assert f"24h (market time {replay_now:%Y-%m-%d %H:%M} UTC) 1 fills" in result.evidence


def test_database_and_disk(sqlite_url: str, tmp_path: Path) -> None:
    assert daily.database(Ledger(sqlite_url)).status == "pass"
    assert daily.disk_space(tmp_path).status in ("pass", "warn", "fail")
    assert "GiB free" in daily.disk_space(tmp_path).evidence


def test_a_check_that_cannot_run_is_a_fail_naming_why() -> None:
    def broken() -> daily.CheckResult:
        raise ConnectionError("connection refused\nsecond line")

    result = daily.guarded("preflight", broken)

    assert (result.status, result.evidence) == ("fail", "ConnectionError: connection refused")


def test_preflight_on_coinbase_warns_when_the_trading_key_can_transfer(
    tmp_path: Path, cdp_key: CdpKey, start_exchange: object
) -> None:
    assert callable(start_exchange)
    server: AdvancedTradeServer = start_exchange(
        permissions={"can_view": True, "can_trade": True, "can_transfer": True, "portfolio_type": "DEFAULT"}
    )
    key_file = tmp_path / "key.json"
    cdp_key.write_key_file(key_file)
    settings = load_settings(
        profile="spot",
        coinbase_key_file=key_file,
        coinbase_api_base=server.base_url,
        coinbase_ca_file=server.ca_file,
        order_updates="poll",
        market_data="coinbase",
    )
    started = time.monotonic()

    result = daily.preflight(settings, CoinbaseBroker.from_settings(settings))

    assert result.status == "warn" and "can also transfer" in result.evidence
    assert "clock skew" in result.evidence and "coinbase reachable" in result.evidence
    assert time.monotonic() - started < 30
    paper = daily.preflight(load_settings(profile="dev"), SimulatedExchange(ReplayMarketData()))
    assert paper.status == "pass" and "paper trading" in paper.evidence
