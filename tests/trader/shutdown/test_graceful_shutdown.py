"""The graceful shutdown's procedure on the paper exchange and a SQLite ledger: what the CLI and flow tests do not
reach (a futures short, a retried wait and the lease it holds)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.settings import Settings
from trader.shutdown.procedure import GracefulShutdown
from trader.shutdown.results import STEPS

BIP = "BIP-20DEC30-CDE"  # the paper exchange's perpetual-style future: 0.01 BTC a contract


def futures_settings(paper_settings: Settings, tmp_path: Path) -> Settings:
    return paper_settings.model_copy(
        update={
            "coinbase_enable_derivatives": True,
            "trading_symbols": f"BTC-USD,{BIP}",
            "database_url": f"sqlite:///{tmp_path / 'ledger.db'}",
        }
    )


def paper(settings: Settings, *, read_only: bool = True) -> SimulatedExchange:
    return SimulatedExchange(
        ReplayMarketData(),
        state_path=settings.state_dir / "paper_exchange.json",
        read_only=read_only,
        derivatives=True,
    )


def test_a_short_futures_position_is_bought_back_reduce_only(paper_settings: Settings, tmp_path: Path) -> None:
    settings = futures_settings(paper_settings, tmp_path)
    exchange, ledger = paper(settings, read_only=False), Ledger(settings.database_url, account=settings.account)
    short = OrderRequest(BIP, Side.SELL, OrderType.MARKET, Decimal(3), "short", leverage=Decimal(2))
    ledger.record_pending(short, None, exchange.now())
    ledger.apply_order(exchange.place_order(short))
    ledger.record_fills(exchange.list_fills())

    with GracefulShutdown(settings, 5, request_id="test-short") as shutdown:
        result = shutdown.run()

    assert result.ok, result.rows()
    assert "1 reduce-only exit(s)" in result.steps[1].detail
    assert paper(settings).positions() == []
    exit_order = next(o for o in ledger.list_orders() if o.client_order_id.startswith("flatten-"))
    assert (exit_order.side, exit_order.quantity, exit_order.reduce_only) == ("buy", Decimal(3), True)
    ledger.dispose()


def test_a_retried_wait_holds_the_same_lease_and_sends_no_second_exit(paper_settings: Settings, tmp_path: Path) -> None:
    settings = futures_settings(paper_settings, tmp_path)
    exchange, ledger = paper(settings, read_only=False), Ledger(settings.database_url, account=settings.account)
    entry = OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "entry")
    ledger.record_pending(entry, None, exchange.now())
    ledger.apply_order(exchange.place_order(entry))
    ledger.record_fills(exchange.list_fills())

    with GracefulShutdown(settings, 5, request_id="test-retry") as shutdown:
        first = shutdown.perform(STEPS[1])
        again = shutdown.perform(STEPS[1])  # what a task retry does

    assert "1 reduce-only exit(s)" in first and "0 reduce-only exit(s)" in again
    assert "the account was already taken" in again
    sells = [o for o in ledger.list_orders() if o.side == "sell"]
    assert len(sells) == 1
    events = [(e.event, e.token) for e in ledger.lease_history(settings.account)]
    assert events == [("acquired", 1), ("released", 1)]  # taken once for the shutdown, released when it closed
    ledger.dispose()
