"""Trading engine recovery: a new bot finds the previous session still running (its engine died), cancels what
that engine left working in one batch, drops corrupt positions, restores from a checkpoint, marks it recovered."""

from __future__ import annotations

import logging
from decimal import Decimal
from pathlib import Path

import pytest

from trader.bot import TradingBot
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger
from trader.ledger.lease import LeaseHeld
from trader.market import ReplayMarketData
from trader.runtime import build_bot
from trader.settings import Settings, load_settings


@pytest.fixture(params=["sqlite", "postgresql"])
def settings(request: pytest.FixtureRequest, tmp_path: Path) -> Settings:
    url = request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "fresh_pg_url")
    return load_settings(
        profile="dev", broker="simulated", database_url=url, state_dir=tmp_path / "state", log_dir=tmp_path / "logs"
    )


def crashed_engine(settings: Settings, resting: int) -> tuple[SimulatedExchange, Ledger, str]:
    """A bot that left `resting` limit orders working and died without closing its session."""
    exchange = SimulatedExchange(ReplayMarketData())
    ledger = Ledger(settings.database_url)
    bot = build_bot(settings, broker=exchange, ledger=ledger)
    bot.start()
    for i in range(resting):
        request = resting_buy(exchange, f"rest-{i}")
        ledger.record_pending(request, bot.session_id, exchange.now())
        ledger.apply_order(exchange.place_order(request))
    assert bot.session_id is not None
    die(bot)
    return exchange, ledger, bot.session_id  # no bot.stop(): the engine is gone


def resting_buy(exchange: SimulatedExchange, client_order_id: str) -> OrderRequest:
    """A limit buy 10% under the bid: it rests."""
    bid, _ = exchange.best_bid_ask("BTC-USD")
    price = (bid * Decimal("0.9")).quantize(Decimal("0.01"))
    return OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.001"), client_order_id, limit_price=price)


def die(bot: TradingBot) -> None:
    """What a SIGKILL leaves behind: no more renewals, and the lease lapses (expired at once here, not after its
    TTL); the session stays 'running' and its orders stay working."""
    bot._stop_renewer()  # the process is gone, and its renewal thread with it
    assert bot.lease is not None
    bot.ledger.break_lease(bot.settings.account, bot.lease.token, "test: the engine died")


def test_a_live_engine_is_never_recovered_a_second_start_is_refused_and_cancels_nothing(settings: Settings) -> None:
    exchange = SimulatedExchange(ReplayMarketData())
    ledger = Ledger(settings.database_url)
    live = build_bot(settings, broker=exchange, ledger=ledger)
    live.start()
    live.orders.send(resting_buy(exchange, "live-1"), position=Decimal(0))

    second = build_bot(settings, broker=exchange, ledger=ledger)
    with pytest.raises(LeaseHeld):
        second.start()

    assert second.recovery is None and len(exchange.list_open_orders()) == 1
    assert [(s.id, s.status) for s in ledger.list_sessions()] == [(live.session_id, "running")]
    live.stop()


def test_a_new_engine_cancels_the_dead_ones_orders_in_a_batch_and_marks_it_recovered(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    exchange, ledger, dead = crashed_engine(settings, 200)
    caplog.set_level(logging.INFO)

    bot = build_bot(settings, broker=exchange, ledger=ledger)
    bot.start()

    report = bot.recovery
    assert report is not None and report.crashed_sessions == [dead]
    assert report.orders_cancelled == 200 and report.orders_not_cancelled == 0
    assert exchange.list_open_orders() == []
    assert {o.status for o in ledger.list_orders()} == {OrderStatus.CANCELLED}
    sessions = {s.id: s.status for s in ledger.list_sessions()}
    assert sessions[dead] == "recovered" and sessions[bot.session_id or ""] == "running"
    for phrase in ("Trading engine recovery", "Cancelled 200 pending orders", "position validation"):
        assert phrase in caplog.text
    bot.stop()


def test_corrupt_or_disagreeing_positions_are_dropped_for_the_brokers_truth(settings: Settings) -> None:
    exchange, ledger, _ = crashed_engine(settings, 0)
    exchange.place_order(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "held"))
    ledger.record_fills(exchange.list_fills())
    now = exchange.now()
    ledger.set_position("ETH-USD", Decimal("-3"), Decimal("2000"), now)  # spot cannot be short: corrupt
    ledger.set_position("BTC-USD", Decimal("0.01"), Decimal("0"), now)  # held at price 0: corrupt

    bot = build_bot(settings, broker=exchange, ledger=ledger)
    bot.start()

    assert bot.recovery is not None and sorted(bot.recovery.positions_dropped) == ["BTC-USD", "ETH-USD"]
    [btc] = exchange.positions()
    assert {s: (p.quantity, p.average_entry_price) for s, p in ledger.positions().items()} == {
        "BTC-USD": (btc.quantity, btc.average_entry_price)
    }
    bot.stop()


def test_a_fill_the_dead_engine_never_recorded_is_imported_and_its_position_is_not_dropped(settings: Settings) -> None:
    exchange, ledger, _ = crashed_engine(settings, 0)
    held = OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "filled-then-killed")
    ledger.record_pending(held, None, exchange.now())
    exchange.place_order(held)  # filled on the exchange; the engine died before it recorded the answer or the fill

    bot = build_bot(settings, broker=exchange, ledger=ledger)
    bot.start()

    assert bot.recovery is not None and bot.recovery.fills_imported == 1 and bot.recovery.positions_dropped == []
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.01")
    bot.stop()


def test_portfolio_state_comes_from_the_latest_checkpoint(settings: Settings, caplog: pytest.LogCaptureFixture) -> None:
    exchange, ledger, _ = crashed_engine(settings, 3)
    caplog.set_level(logging.INFO)
    snapshot = {"strategy_state": {"BTC-USD": {"last_spread": "1.5"}}, "guard_counters": {"kill_switch": 2}}

    bot = build_bot(settings, broker=exchange, ledger=ledger)
    bot.checkpoint_source = lambda: ("ckpt-20261121-0001", snapshot)
    bot.start()

    assert bot.recovery is not None and bot.recovery.checkpoint_id == "ckpt-20261121-0001"
    assert bot.recovery.snapshot == snapshot
    assert "Restored from checkpoint ckpt-20261121-0001" in caplog.text
    bot.stop()


def test_a_clean_previous_stop_needs_no_recovery(settings: Settings) -> None:
    exchange, ledger, dead = crashed_engine(settings, 2)
    ledger.end_session(dead, "stopped")

    bot = build_bot(settings, broker=exchange, ledger=ledger)
    bot.start()

    assert bot.recovery is None
    assert len(exchange.list_open_orders()) == 2  # a clean stop leaves resting orders alone
    bot.stop()


def test_the_bot_checkpoints_as_it_runs_and_a_recovery_restores_its_guard_counters(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    fast = settings.model_copy(update={"checkpoint_interval_seconds": 0.001, "risk_kill_switch_enabled": True})
    exchange = SimulatedExchange(ReplayMarketData())
    ledger = Ledger(fast.database_url)
    first = build_bot(fast, broker=exchange, ledger=ledger)
    first.start()
    first.run(30, interval_seconds=0)  # the kill switch refuses every entry: counted
    refused = dict(first.risk.counters)
    assert refused and first.checkpoints is not None
    newest = first.checkpoints.list()[0]
    assert newest.reason == "periodic"
    caplog.set_level(logging.INFO)

    die(first)  # the first engine died without stop()
    second = build_bot(fast, broker=exchange, ledger=ledger)
    second.start()

    assert second.recovery is not None and second.recovery.checkpoint_id == newest.id
    assert {k: v for k, v in second.risk.counters.items() if k in refused} == refused
    assert f"Restored from checkpoint {newest.id}" in caplog.text
    second.stop()
    assert second.checkpoints is not None and second.checkpoints.list()[0].reason == "stopped"
