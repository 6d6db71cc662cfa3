"""The guards inside the running bot: real exchange calls (paper exchange, and Coinbase's SDK against the local
Advanced Trade server with injected 500s), the ledger's incidents, the heartbeat the daily checklist reads."""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from trader.bot import CycleReport, TradingBot
from trader.brokers.coinbase import CoinbaseBroker
from trader.brokers.simulated import SimulatedExchange
from trader.domain import Candle, OrderType, Product, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.runtime import build_bot
from trader.settings import Settings, load_settings
from trader.strategy import OrderIntent, Strategy
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey, Fault

CANDLES = "/api/v3/brokerage/products/BTC-USD/candles"


def paper_settings(tmp_path: Path, **overrides: object) -> Settings:
    values: dict[str, object] = {
        "profile": "dev",
        "state_dir": tmp_path / "state",
        "log_dir": tmp_path / "logs",
        "broker": "simulated",
        "strategy_fast_window": 2,
        "strategy_slow_window": 4,
        "heartbeat_interval_seconds": 0,
        "data_gate_enabled": False,
        **overrides,
    }
    return load_settings(**values)


def paper_bot(settings: Settings, market: ReplayMarketData | None = None) -> TradingBot:
    bot = build_bot(
        settings, broker=SimulatedExchange(market or ReplayMarketData()), ledger=Ledger(settings.database_url)
    )
    bot.start()
    return bot


def open_incidents(bot: TradingBot) -> dict[str, str]:
    assert bot.incidents is not None
    bot.incidents.flush()
    return {row.fingerprint: row.severity for row in bot.ledger.open_incidents()}


def test_stale_market_data_forces_reduce_only_opens_an_incident_and_clears(tmp_path: Path) -> None:
    bot = paper_bot(paper_settings(tmp_path, risk_max_data_age_seconds=30))  # replay bars are 60 s old

    summary = bot.run(60, interval_seconds=0)

    assert summary.orders == 0 and bot.risk.counters["market_data_staleness"] > 0
    assert bot.risk.counters["market_data_staleness_trip"] == 1
    assert open_incidents(bot) == {"guard:market_data_staleness:critical": "SEV-2"}
    beat = json.loads((tmp_path / "state" / "heartbeat.json").read_text())
    assert beat["guards"]["market_data_staleness"]["level"] == "critical" and beat["trading_state"] == "reduce_only"

    rule = bot.risk.monitor.rules["market_data_staleness"]
    bot.risk.monitor.rules["market_data_staleness"] = replace(rule, critical=120.0)  # the operator raises the limit
    summary = bot.run(60, interval_seconds=0)

    assert summary.orders > 0 and bot.risk.monitor.levels["market_data_staleness"] == "ok"
    assert open_incidents(bot) == {}
    bot.stop()


def test_critical_exposure_sells_the_position_down_to_the_warning_level(tmp_path: Path) -> None:
    bot = paper_bot(paper_settings(tmp_path))
    while not any(bot.positions.values()):
        bot.run(1, interval_seconds=0)
    [(symbol, quantity)] = [(s, q) for s, q in bot.positions.items() if q]
    price = bot.broker.candles(symbol, 1)[-1].close
    bot.risk.max_position_usd = (quantity * price / Decimal("0.95")).quantize(Decimal("0.01"))

    report = bot.run_cycle()

    [exit_order] = [o for o in report.orders if "guard exposure" in o.reason]
    assert exit_order.request.side is Side.SELL and exit_order.request.order_type is OrderType.MARKET
    assert exit_order.request.reduce_only and exit_order.request.quantity < quantity
    left = bot.positions[symbol] * report.prices[symbol]
    assert left <= bot.risk.max_position_usd * Decimal("0.75") + bot.products[symbol].base_increment * price
    assert bot.risk.counters["exposure_trip"] == 1
    bot.stop()


@pytest.mark.parametrize(("limit", "level"), [("50", "warning"), ("0.002", "critical")])
def test_daily_loss_trips_from_real_paper_trading(tmp_path: Path, limit: str, level: str) -> None:
    # Thresholds small enough that the replay's own fees and moves cross them.
    settings = paper_settings(tmp_path, risk_daily_loss_warn_pct="0.001", risk_daily_loss_limit_pct=limit)
    bot = paper_bot(settings)

    bot.run(400, interval_seconds=0)

    counters = bot.risk.counters
    if level == "warning":  # an alert only: nothing refused
        assert counters["daily_loss_warning"] >= 1 and counters["daily_loss_trip"] == 0 and counters["daily_loss"] == 0
    else:  # reduce-only: buys refused while it lasts
        assert counters["daily_loss_trip"] >= 1 and counters["daily_loss"] > 0
    now = bot.risk.monitor.levels["daily_loss"]
    expected = {} if now == "ok" else {f"guard:daily_loss:{now}": "SEV-3" if now == "warning" else "SEV-2"}
    assert open_incidents(bot) == expected
    bot.stop()


def gapped_replay(gap_at: int) -> ReplayMarketData:
    """The bundled replay with the bars after `gap_at` shifted five minutes later: a hole in the data."""
    full = ReplayMarketData()
    rows = full._candles["BTC-USD"][:400]
    shifted = [c if i < gap_at else replace(c, start=c.start + timedelta(minutes=5)) for i, c in enumerate(rows)]
    return ReplayMarketData.from_candles({"BTC-USD": shifted})


def test_a_gap_in_market_data_fails_the_gate_and_blocks_new_exposure_until_it_leaves_the_window(
    tmp_path: Path,
) -> None:
    settings = paper_settings(tmp_path, data_gate_enabled=True, risk_max_data_age_seconds=600)
    bot = paper_bot(settings, gapped_replay(gap_at=150))  # the replay starts trading at bar 100
    reports = []

    bot.run(120, interval_seconds=0, on_cycle=reports.append)

    failed = [r.cycle for r in reports if r.gate_failures]
    assert failed and len(failed) == bot.strategy.warmup - 1  # every window holding the hole, and no other
    assert all("BTC-USD" in line for r in reports for line in r.gate_failures)
    assert bot.risk.counters["data_gate_failed"] == len(failed) and not bot.risk.gate_blocked
    beat = json.loads((tmp_path / "state" / "heartbeat.json").read_text())
    assert beat["data_gate"]["failed"] == len(failed) and beat["data_gate"]["last_failures"]
    bot.stop()


def coinbase_settings(server: AdvancedTradeServer, key: CdpKey, tmp_path: Path, **overrides: object) -> Settings:
    key_file = tmp_path / "cdp_api_key.json"
    key.write_key_file(key_file)
    return load_settings(
        profile="dev",
        broker="coinbase",
        coinbase_key_file=key_file,
        coinbase_api_base=server.base_url,
        coinbase_ca_file=server.ca_file,
        coinbase_timeout_seconds=1.0,
        coinbase_max_retries=0,
        state_dir=tmp_path / "state",
        log_dir=tmp_path / "logs",
        heartbeat_interval_seconds=0,
        data_gate_enabled=False,
        **overrides,
    )


class ShiftedClock:
    """time.monotonic() plus an offset the test moves forward: the guard window passes without waiting."""

    def __init__(self) -> None:
        self.offset = 0.0

    def __call__(self) -> float:
        return time.monotonic() + self.offset


@pytest.mark.parametrize("fault", ["500", "timeout"])
def test_exchange_errors_halt_trading_then_clear_when_the_exchange_recovers(
    exchange: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path, fault: str
) -> None:
    settings = coinbase_settings(exchange, cdp_key, tmp_path, risk_guard_window_seconds=60, risk_guard_min_samples=6)
    bot = build_bot(settings, broker=CoinbaseBroker.from_settings(settings))
    bot.stats.clock = clock = ShiftedClock()
    bot.start()
    exchange.inject(Fault(kind=fault, method="GET", path=CANDLES, times=4, delay=1.5))  # type: ignore[arg-type]

    for _ in range(4):
        bot.run_cycle()

    assert bot.risk.monitor.levels["error_rate"] == "critical" and bot.risk.counters["error_rate_trip"] == 1
    assert bot.risk.monitor.forced()["error_rate"] == "halt" and bot._trading_state == "halted"
    assert open_incidents(bot)["guard:error_rate:critical"] == "SEV-2"  # no exposure open: not SEV-1
    if fault == "timeout":
        assert bot.risk.monitor.levels["api_latency"] == "critical" and bot.risk.counters["api_latency_trip"] == 1

    clock.offset += 61  # the failures age out of the window
    for _ in range(8):
        bot.run_cycle()

    assert bot.risk.monitor.levels["error_rate"] == "ok" and bot.risk.monitor.levels["api_latency"] == "ok"
    assert not any(fp.startswith(("guard:error_rate", "guard:api_latency")) for fp in open_incidents(bot))
    bot.stop()


def test_an_unreachable_fills_and_accounts_api_is_survived_and_counted(
    exchange: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path
) -> None:
    settings = coinbase_settings(exchange, cdp_key, tmp_path, risk_guard_min_samples=6)
    bot = build_bot(settings, broker=CoinbaseBroker.from_settings(settings))
    bot.start()
    exchange.inject(Fault(kind="503", method="GET", path="/api/v3/brokerage/orders/historical/fills", times=3))
    exchange.inject(Fault(kind="503", method="GET", path="/api/v3/brokerage/accounts", times=3))

    reports = [bot.run_cycle() for _ in range(4)]  # none of them raises

    assert [r.cycle for r in reports] == [1, 2, 3, 4]
    assert bot.risk.monitor.levels["error_rate"] == "critical"  # 2 of 3 calls failing in the first cycles
    assert bot.stats.error_rate_pct() is not None and bot.stats.error_rate_pct() > 25
    bot.stop()


def test_a_feed_down_past_its_critical_threshold_is_restarted_once_and_clears_when_data_returns(
    exchange: AdvancedTradeServer, cdp_key: CdpKey, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = coinbase_settings(
        exchange, cdp_key, tmp_path, risk_feed_down_warn_seconds=0.2, risk_feed_down_critical_seconds=0.6
    )
    bot = build_bot(settings, broker=CoinbaseBroker.from_settings(settings))
    bot.start()
    exchange.inject(Fault(kind="503", method="GET", path=CANDLES, times=6))
    levels = []

    for _ in range(8):
        report = bot.run_cycle()
        levels.append(bot.risk.monitor.levels["market_data_feed"])
        if report.prices:
            break
        time.sleep(0.25)

    assert levels[0] == "ok" and "warning" in levels and "critical" in levels and levels[-1] == "ok"
    assert caplog.text.count("restarting the feed") == 1
    assert bot.risk.counters["market_data_feed_trip"] == 1
    assert not any(fp.startswith("guard:market_data_feed") for fp in open_incidents(bot))
    bot.stop()


class Burst(Strategy):
    """Runaway: `orders` tiny market buys in each of its first `cycles` cycles, then nothing."""

    warmup = 1

    def __init__(self, orders: int, cycles: int = 1) -> None:
        self.orders, self.cycles = orders, cycles

    def decide(self, product: Product, candles: Sequence[Candle], position: Decimal) -> list[OrderIntent]:
        if self.cycles <= 0:
            return []
        self.cycles -= 1
        return [OrderIntent(product.symbol, Side.BUY, Decimal("0.0001"), "burst", OrderType.MARKET)] * self.orders


def test_runaway_trading_halts_pages_sev1_and_clears_when_the_minute_has_passed(tmp_path: Path) -> None:
    bot = paper_bot(paper_settings(tmp_path))
    bot.strategy = Burst(orders=25)

    first = bot.run_cycle()
    assert len(first.orders) == 25 and bot.risk.monitor.levels["orders_per_minute"] == "ok"  # read before sending
    bot.broker.advance()
    second = bot.run_cycle()  # one replay minute later: 25 orders within the last minute

    assert second.readings["orders_per_minute"] == 25 and second.readings["orders_per_hour"] == 25
    assert bot.risk.monitor.levels["orders_per_minute"] == "critical" and bot._trading_state == "halted"
    assert open_incidents(bot)["guard:orders_per_minute:critical"] == "SEV-1"  # pages, exposure or not
    bot.broker.advance()
    bot.run_cycle()
    assert bot.risk.monitor.levels["orders_per_minute"] == "ok" and bot._trading_state == "trading"
    assert bot.risk.monitor.levels["orders_per_hour"] == "ok"  # 25 an hour is under the warning's 60
    bot.stop()


def test_the_hour_drawdown_reads_from_the_last_hours_high_and_no_trades_counts_from_the_last_fill(
    tmp_path: Path,
) -> None:
    bot = paper_bot(paper_settings(tmp_path))
    t0 = bot.broker.now()

    def reading(minutes: float, equity: str) -> dict[str, float | None]:
        report = CycleReport(1, t0 + timedelta(minutes=minutes), equity=Decimal(equity))
        return bot._activity_readings(report)

    assert reading(0, "10000")["drawdown_1h"] == 0.0
    assert reading(30, "11000")["drawdown_1h"] == 0.0
    assert reading(50, "8800")["drawdown_1h"] == pytest.approx(20.0)  # 20 % under the hour's high of 11,000
    assert reading(95, "8800")["drawdown_1h"] == 0.0  # an hour after the high: 8,800 is the window's high
    assert reading(24 * 60, "8800")["no_trades"] == pytest.approx(24.0)  # no fill since trading started
    bot._fill_cursor = t0 + timedelta(hours=23)
    assert reading(24 * 60, "8800")["no_trades"] == pytest.approx(1.0)
    bot.stop()
