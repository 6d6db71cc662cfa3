"""The bot and its account lease, in one process: renewed while it works, given back when it cannot start, stood
down when an operator takes the account."""

from __future__ import annotations

import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.trader.brokers.test_coinbase_broker import settings_for
from trader.brokers.coinbase import CoinbaseBroker
from trader.brokers.simulated import SimulatedExchange
from trader.errors import BrokerUnavailable
from trader.ledger import Ledger
from trader.ledger.lease import Holder, LeaseHeld
from trader.market import ReplayMarketData
from trader.runtime import build_bot
from trader.settings import Settings
from trader.testing.advanced_trade import AdvancedTradeServer, CdpKey


@pytest.fixture
def settings(paper_settings: Settings) -> Settings:
    return paper_settings


def test_the_background_renewal_keeps_the_lease_through_a_pause_longer_than_its_ttl(settings: Settings) -> None:
    short = settings.model_copy(update={"lease_ttl_seconds": 0.6})
    ledger = Ledger(short.database_url)
    bot = build_bot(short, broker=SimulatedExchange(ReplayMarketData()), ledger=ledger)
    bot.start()

    time.sleep(1.5)  # no cycle runs: only the renewal thread can keep the lease alive this long

    with pytest.raises(LeaseHeld):
        ledger.acquire_lease(short.account, Holder.this_process("bot"), 30)
    bot.stop()
    assert ledger.acquire_lease(short.account, Holder.this_process("bot"), 30).token == 2  # released on stop


def test_an_operator_override_makes_the_running_bot_stand_down_before_its_next_order(settings: Settings) -> None:
    exchange = SimulatedExchange(ReplayMarketData())
    ledger = Ledger(settings.database_url)
    bot = build_bot(settings, broker=exchange, ledger=ledger)
    bot.start()
    bot.run(60, interval_seconds=0)
    assert bot.orders_sent > 0 and bot.checkpoints is not None
    sent_before = len(ledger.list_orders())
    heartbeats_before = ledger.get_session(bot.last_session_id or "").cycles
    checkpoints_before = len(bot.checkpoints.list())

    ledger.override_lease(settings.account, Holder.this_process("operator"), 30, "perps-bot cancel-all")
    summary = bot.run(200, interval_seconds=0)
    bot.stop()

    assert summary.stopped_by.startswith("lease lost") and summary.cycles <= 1
    assert len(ledger.list_orders()) == sent_before and len(exchange.list_fills()) == len(ledger.list_fills())
    session = ledger.get_session(bot.last_session_id or "")
    assert session.status == "stood_down" and "operator" in (session.note or "")
    # nothing more of its own: no heartbeat, no checkpoint over the new holder's state
    assert session.cycles == heartbeats_before and len(bot.checkpoints.list()) == checkpoints_before


def test_a_start_that_fails_before_its_session_opens_gives_the_lease_back_at_once(
    start_exchange: Callable[..., AdvancedTradeServer], cdp_key: CdpKey, tmp_path: Path, settings: Settings
) -> None:
    server = start_exchange()
    broker = CoinbaseBroker.from_settings(settings_for(server, cdp_key, tmp_path, coinbase_max_retries=0))
    server.stop()  # the exchange is unreachable: the products cannot be loaded
    ledger = Ledger(settings.database_url)
    bot = build_bot(settings, broker=broker, ledger=ledger)

    with pytest.raises(BrokerUnavailable):
        bot.start()

    assert ledger.list_sessions() == []
    lease = ledger.acquire_lease(settings.account, Holder.this_process("bot"), 30)  # no TTL to wait out
    assert lease.token == 2


def test_the_bots_own_ledger_caps_a_stalled_transaction_at_its_lease_ttl(settings: Settings, pg_url: str) -> None:
    on_pg = settings.model_copy(update={"database_url": pg_url, "lease_ttl_seconds": 12.5})
    bot = build_bot(on_pg, broker=SimulatedExchange(ReplayMarketData()), mode="dry_run")
    try:
        with bot.ledger.engine.connect() as connection:
            cap = connection.exec_driver_sql("SHOW idle_in_transaction_session_timeout").scalar()
    finally:
        bot.ledger.dispose()
    assert cap == "12500ms"  # a machine lost mid-transaction holds the lease row no longer than the lease itself
