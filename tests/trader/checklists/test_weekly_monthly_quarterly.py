"""The end-of-day report and the weekly, monthly and quarterly checks on real SQLite and PostgreSQL ledgers and a
folder cold tier: PnL arithmetic, log archive read-back, VACUUM, key file modes, lock drift, capacity figures."""

from __future__ import annotations

import gzip
import json
import os
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from trader.checklists import monthly, quarterly, report, weekly
from trader.domain import Balance, Fill, Liquidity, Order, OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger
from trader.settings import load_settings
from trader.state.cold import LocalFolderStore
from trader.state.hot import MemoryCache
from trader.state.journal import WriteJournal
from trader.state.manager import StateManager
from trader.state.warm import SqlWarmStore

NOW = datetime(2026, 11, 21, 22, 0, tzinfo=UTC)


def fill(n: int, side: Side, qty: str, price: str, fee: str, at: datetime, symbol: str = "BTC-USD") -> Fill:
    return Fill(
        f"t-{n}", f"o-{n}", f"c-{n}", symbol, side, Decimal(qty), Decimal(price), Decimal(fee), Liquidity.TAKER, at
    )


def trade_history(ledger: Ledger) -> None:
    """BTC: buy 1 @100, sell 0.5 @110 (+5), sell 0.5 @90 (-5); ETH: buy 2 @10, sell 2 @12 (+4). Fees 1 each."""
    day = NOW.replace(hour=10)
    ledger.record_fills(
        [
            fill(1, Side.BUY, "1", "100", "1", day - timedelta(days=2)),
            fill(2, Side.SELL, "0.5", "110", "1", day),
            fill(3, Side.SELL, "0.5", "90", "1", day + timedelta(hours=1)),
            fill(4, Side.BUY, "2", "10", "1", day, "ETH-USD"),
            fill(5, Side.SELL, "2", "12", "1", day + timedelta(hours=2), "ETH-USD"),
        ]
    )
    for hours, usd in ((1, "1000"), (5, "1100"), (9, "990"), (11, "1050")):
        ledger.record_balance_snapshot(
            None, [Balance("USD", Decimal(usd), Decimal(0))], {"USD": Decimal(1)}, day.replace(hour=hours)
        )


def test_replayed_trades_realize_pnl_like_the_ledger(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    trade_history(ledger)

    trades = report.replay_trades(ledger.list_fills())

    assert trades["gross"].tolist() == [0.0, 5.0, 0.0, -5.0, 4.0]  # execution order
    for symbol in ("BTC-USD", "ETH-USD"):  # net of fees, same as the positions table
        assert trades[trades["symbol"] == symbol]["net"].sum() == pytest.approx(float(ledger.realized_pnl(symbol)))


def test_daily_report_totals_positions_equity_and_guards(sqlite_url: str, tmp_path: Path) -> None:
    ledger = Ledger(sqlite_url)
    trade_history(ledger)
    ledger.record_fills([fill(6, Side.BUY, "0.2", "95", "0.5", NOW.replace(hour=12))])
    beat = tmp_path / "heartbeat.json"
    beat.write_text(json.dumps({"guard_counters": {"max_position": 3, "kill_switch": 0}}))

    daily = report.daily_report(ledger, NOW.date(), beat)

    summary = daily.summary()
    assert (summary["fills"], summary["fees"], summary["gross_pnl"], summary["net_pnl"]) == (5, 4.5, 4.0, -0.5)
    assert (summary["equity_start"], summary["equity_end"], summary["equity_change"]) == (1000.0, 1050.0, 50.0)
    assert summary["guard_trips"] == 3
    rows = {r["symbol"]: r for r in daily.table()}
    assert rows["BTC-USD"]["gross"] == 0.0 and rows["ETH-USD"]["net"] == 2.0 and rows["TOTAL"]["fills"] == 5
    assert daily.positions == [
        {"symbol": "BTC-USD", "quantity": "0.2", "entry": "95", "realized_total": str(ledger.realized_pnl("BTC-USD"))}
    ]
    markdown = daily.markdown("dev")
    assert "# Daily report 2026-11-21" in markdown and "max_position=3" in markdown and "(+50.00, +5.00%)" in markdown


def test_performance_review_reports_win_rate_and_drawdown(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    trade_history(ledger)

    result = weekly.performance_review(ledger, NOW)

    # equity 1000 -> 1100 -> 990: a 10% drawdown from the peak (warn above 5%, fail above 10%)
    assert result.status == "warn"
    assert "3 closing trades, win rate 67%" in result.evidence and "max drawdown 10.00%" in result.evidence
    assert "BTC-USD: net -3.00 (2 trades, win 50%" in result.evidence


def test_strategy_with_negative_expectancy_or_no_fills_warns(sqlite_url: str, tmp_path: Path) -> None:
    ledger = Ledger(sqlite_url)
    trade_history(ledger)
    at = NOW - timedelta(days=1)
    for n, (symbol, status) in enumerate([("BTC-USD", "filled"), ("ETH-USD", "filled"), ("SOL-USD", "rejected")]):
        request = OrderRequest(symbol, Side.BUY, OrderType.MARKET, Decimal(1), f"bot-{n}")
        ledger.record_pending(request, None, at)
        filled = Decimal(1) if status == "filled" else Decimal(0)
        ledger.apply_order(
            Order(
                f"x-{n}",
                f"bot-{n}",
                symbol,
                Side.BUY,
                OrderType.MARKET,
                Decimal(1),
                OrderStatus(status),
                at,
                filled_quantity=filled,
            )
        )
    beat = tmp_path / "heartbeat.json"
    beat.write_text(json.dumps({"guard_counters": {"max_position": 2, "reduce_only": 1, "daily_loss_trip": 1}}))

    result = weekly.strategy_effectiveness(ledger, beat, NOW)

    assert result.status == "warn"
    assert "BTC-USD: 1 sent, 1 filled, 0 rejected [negative expectancy -1.50/trade]" in result.evidence
    assert "ETH-USD: 1 sent, 1 filled, 0 rejected, expectancy +2.00/trade" in result.evidence
    assert "SOL-USD: 1 sent, 0 filled, 1 rejected [zero fills]" in result.evidence
    assert "3 refused by risk" in result.evidence


def test_rotated_logs_are_archived_verified_and_removed(tmp_path: Path) -> None:
    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "perps_bot.log").write_text("live\n")
    contents = {f"perps_bot.log.{n}": f"2026-11-0{n} 00:00:00,000 INFO x rotated {n}\n" * 100 for n in (1, 2)}
    for name, body in contents.items():
        (logs / name).write_text(body)
    cold = LocalFolderStore(tmp_path / "cold")

    result = weekly.archive_logs(logs, cold)

    assert result.status == "pass"
    size = sum(len(b) for b in contents.values())
    assert result.evidence.startswith(f"2 files, {size} bytes") and "verified by sha256" in result.evidence
    assert sorted(p.name for p in logs.iterdir()) == ["perps_bot.log"]  # the live log is the bot's
    names = cold.list("logs/")
    assert len(names) == 2
    assert sorted(gzip.decompress(cold.get(n)).decode() for n in names) == sorted(contents.values())
    assert weekly.archive_logs(logs, cold).evidence.startswith("no rotated logs")


def test_a_log_whose_read_back_differs_is_kept(tmp_path: Path) -> None:
    class Corrupting(LocalFolderStore):
        def get(self, name: str) -> bytes:
            return super().get(name) + b"x"

    logs = tmp_path / "logs"
    logs.mkdir()
    (logs / "perps_bot.log.1").write_text("rotated\n")

    result = weekly.archive_logs(logs, Corrupting(tmp_path / "cold"))

    assert result.status == "fail" and "read-back sha256 differs" in result.evidence
    assert (logs / "perps_bot.log.1").exists()


def test_vacuum_runs_on_postgresql(fresh_pg_url: str) -> None:
    ledger = Ledger(fresh_pg_url)
    trade_history(ledger)

    result = weekly.database_maintenance(ledger)

    assert result.status == "pass" and result.evidence.startswith("postgresql: VACUUM (ANALYZE) in ")
    assert "MiB ->" in result.evidence
    ledger.dispose()


def test_vacuum_and_analyze_run_on_sqlite(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    trade_history(ledger)

    result = weekly.database_maintenance(ledger)

    assert result.status == "pass" and result.evidence.startswith("sqlite: VACUUM + ANALYZE in ")


def test_cache_cleanup_recovers_a_stale_hot_tier(sqlite_url: str, tmp_path: Path) -> None:
    warm = SqlWarmStore(sqlite_url)
    warm.ensure_schema()
    state = StateManager(MemoryCache(), warm, journal=WriteJournal(tmp_path / "journal.jsonl"))
    state.batch_set({"a": 1, "b": 2})
    assert weekly.cache_cleanup(state).evidence.endswith("match, nothing to recover")
    state.hot.delete_many(["a"])  # the cache lost a key behind the manager's back

    result = weekly.cache_cleanup(state)

    assert result.status == "pass"
    assert "2 keys compared, 0 mismatched, 1 missing from hot" in result.evidence
    assert "recovered 2 keys; afterwards match" in result.evidence
    state.close()


@pytest.mark.parametrize(("mode", "status"), [(0o644, "fail"), (0o600, "pass")])
def test_key_file_mode(tmp_path: Path, mode: int, status: str) -> None:
    key = tmp_path / "key.json"
    key.write_text("{}")
    key.chmod(mode)
    settings = load_settings(profile="dev", coinbase_key_file=key, broker="simulated")

    result = monthly.security_review(settings, None, datetime.now(UTC), tmp_path)

    assert result.status == status and f"mode {mode:04o}" in result.evidence


def test_key_age_and_env_file(tmp_path: Path) -> None:
    key = tmp_path / "key.json"
    key.write_text("{}")
    key.chmod(0o600)
    old = (NOW - timedelta(days=100)).timestamp()
    os.utime(key, (old, old))
    (tmp_path / ".env").write_text("SECRET=1\n")
    (tmp_path / ".env").chmod(0o640)
    settings = load_settings(profile="dev", coinbase_key_file=key, broker="simulated")

    result = monthly.security_review(settings, None, NOW, tmp_path)

    assert result.status == "fail" and "100 days old" in result.evidence and ".env mode 0640" in result.evidence
    (tmp_path / ".env").chmod(0o600)
    assert monthly.security_review(settings, None, NOW, tmp_path).status == "warn"  # > 90 days
    os.utime(key, (NOW.timestamp() - 200 * 86400,) * 2)
    assert monthly.security_review(settings, None, NOW, tmp_path).status == "fail"  # > 180 days


def test_lock_drift_is_detected(tmp_path: Path) -> None:
    lock = tmp_path / "requirements.lock"
    lock.write_text("# pip freeze\nPandas==3.1.1\nsome_pkg==1.0\n-e file:///x\ngone==2.0\n")

    drift = monthly.dependency_audit(lock, {"pandas": "3.1.1", "some-pkg": "1.1", "new-one": "0.1"})

    assert drift.status == "warn"
    assert "3 packages drift" in drift.evidence
    assert "changed: some-pkg 1.0->1.1" in drift.evidence and "missing: gone 2.0" in drift.evidence
    assert "not in lock: new-one 0.1" in drift.evidence
    assert monthly.dependency_audit(lock, {"pandas": "3.1.1", "some-pkg": "1.0", "gone": "2.0"}).status == "pass"
    assert monthly.dependency_audit(tmp_path / "none.lock").status == "warn"


def test_cost_vs_returns_warns_when_fees_eat_the_gross(sqlite_url: str) -> None:
    ledger = Ledger(sqlite_url)
    assert monthly.cost_vs_returns(ledger, NOW).evidence == "30d: no fills"
    trade_history(ledger)

    result = monthly.cost_vs_returns(ledger, NOW)

    # gross +4 (5 - 5 + 4), fees 5: 125% of gross and a negative net
    assert result.status == "warn"
    assert "fees 5.00 (125% of gross)" in result.evidence and "-1.00 net" in result.evidence


def test_quarterly_sections(fresh_pg_url: str, tmp_path: Path) -> None:
    ledger = Ledger(fresh_pg_url)
    trade_history(ledger)
    start = NOW - timedelta(days=90)
    ledger.open_incident("f-1", "SEV-2", "x", "d", "test", NOW - timedelta(days=3))
    ledger.resolve_incident("f-1", NOW - timedelta(days=3) + timedelta(hours=2))
    ledger.open_incident("f-2", "SEV-1", "y", "d", "test", NOW - timedelta(days=1))
    for status in ("pass", "pass", "fail"):
        ledger.record_checklist_run("quarterly-test", status, [], NOW - timedelta(days=2), None)

    performance = quarterly.performance(ledger, NOW)
    capacity = quarterly.capacity_planning(ledger, tmp_path, NOW)
    incidents = quarterly.incidents_by_severity(ledger, start, NOW)
    rates = quarterly.checklist_pass_rates(ledger, start, NOW)

    assert performance.result.status == "warn" and "net realized -1.00" in performance.result.evidence
    assert {r["symbol"] for r in performance.rows} >= {"BTC-USD", "ETH-USD"}
    assert {"table": "fills", "month": "2026-11", "rows_added": 5} in capacity.rows
    # The database and the disk are every account's: another account's rows count in its growth too.
    trade_history(Ledger(fresh_pg_url, account="beta", migrate=False))
    both = quarterly.capacity_planning(ledger, tmp_path, NOW)
    assert {"table": "fills", "month": "2026-11", "rows_added": 10} in both.rows
    assert "GiB free" in capacity.result.evidence and "rows/month" in capacity.result.evidence
    by_severity = {r["severity"]: r for r in incidents.rows}
    assert by_severity["SEV-2"]["median_hours_to_resolve"] == 2.0 and by_severity["SEV-1"]["still_open"] == 1
    assert incidents.result.status == "warn"
    row = next(r for r in rates.rows if r["checklist"] == "quarterly-test")
    assert (row["runs"], row["pass"], row["fail"], row["pass_rate"]) == (3, 2, 1, 0.667)
    assert rates.result.status == "warn"
