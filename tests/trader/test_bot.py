"""The bot cycle without Prefect: paper exchange in memory, ledger on SQLite."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from trader.bot import RunSummary, TradingBot
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderStatus
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.runtime import build_bot
from trader.settings import Settings


@pytest.fixture
def settings(paper_settings: Settings) -> Settings:
    return paper_settings


def run(
    settings: Settings, cycles: int, mode: str | None = None
) -> tuple[Ledger, SimulatedExchange, TradingBot, RunSummary]:
    exchange = SimulatedExchange(ReplayMarketData())
    ledger = Ledger(settings.database_url)
    bot = build_bot(settings, broker=exchange, ledger=ledger, mode=mode)
    bot.start()
    summary = bot.run(cycles, interval_seconds=0)
    bot.stop()
    return ledger, exchange, bot, summary


def test_cycles_send_orders_and_the_ledger_matches_the_broker(settings: Settings) -> None:
    ledger, exchange, bot, summary = run(settings, 80)

    assert summary.orders > 0 and summary.fills == len(exchange.list_fills()) == len(ledger.list_fills())
    assert {s: p.quantity for s, p in ledger.positions().items()} == {
        p.symbol: p.quantity for p in exchange.positions()
    }
    assert all(o.status == OrderStatus.FILLED for o in ledger.list_orders())
    session = ledger.list_sessions()[-1]
    assert session.cycles == 80 and session.status == "stopped" and session.last_heartbeat_at is not None


def test_kill_switch_file_stops_new_orders_and_is_counted(settings: Settings) -> None:
    settings.state_dir.mkdir(parents=True)
    (settings.state_dir / "KILL_SWITCH").touch()

    ledger, exchange, bot, summary = run(settings, 80)

    assert summary.orders == 0 and exchange.list_fills() == [] and ledger.list_orders() == []
    assert bot.risk.counters["kill_switch"] > 0


def test_dry_run_sends_and_writes_nothing(settings: Settings) -> None:
    ledger, exchange, bot, summary = run(settings, 80, mode="dry_run")

    assert summary.orders == 0 and exchange.list_fills() == [] and exchange.list_open_orders() == []
    assert ledger.list_orders() == [] and ledger.list_sessions() == []


def test_reduce_only_never_opens_a_position(settings: Settings) -> None:
    reduce_only = settings.model_copy(update={"risk_reduce_only_mode": True})

    ledger, exchange, bot, summary = run(reduce_only, 80)

    assert exchange.positions() == [] and summary.orders == 0
    assert bot.risk.counters["reduce_only"] > 0


def test_daily_loss_beyond_the_limit_blocks_new_buys(settings: Settings, tmp_path: Path) -> None:
    tight = settings.model_copy(update={"risk_daily_loss_limit_pct": Decimal("0.000001")})
    baseline = settings.model_copy(
        update={"state_dir": tmp_path / "baseline", "database_url": f"sqlite:///{tmp_path / 'baseline.db'}"}
    )

    ledger, _, bot, _ = run(tight, 200)
    unguarded, _, _, _ = run(baseline, 200)

    buys = [o for o in ledger.list_orders() if o.side == "buy"]
    assert bot.risk.counters["daily_loss_trip"] >= 1 and bot.risk.counters["daily_loss"] >= 1
    assert len(buys) < len([o for o in unguarded.list_orders() if o.side == "buy"])


def test_the_bot_publishes_positions_and_counters_through_the_tiered_state(settings: Settings) -> None:
    from trader.state.manager import StateManager

    ledger, exchange, bot, summary = run(settings, 80)

    assert summary.orders > 0 and bot.state is not None
    expected = {p.symbol: str(p.quantity) for p in exchange.positions()}
    assert {s: q for s, q in bot.state.get("bot:positions").items() if q not in ("0", "0E-8")} == expected
    reopened = StateManager.from_settings(settings)  # a new process reads what storage holds
    assert reopened.get("bot:positions") == bot.state.get("bot:positions")
    assert reopened.get("bot:session")["id"] == bot.last_session_id
    assert bot.state.verify_coherence().match  # the bot's cache equals storage, byte for byte
