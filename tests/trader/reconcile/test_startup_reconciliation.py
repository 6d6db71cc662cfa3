"""Before it trades, the bot makes the ledger agree with the broker (paper exchange + real ledger)."""

from __future__ import annotations

from decimal import Decimal
from pathlib import Path

import pytest

from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.reconcile import reconcile_on_start


def request(
    client_order_id: str,
    side: Side = Side.BUY,
    order_type: OrderType = OrderType.MARKET,
    quantity: str = "0.01",
    price: str | None = None,
) -> OrderRequest:
    return OrderRequest(
        "BTC-USD", side, order_type, Decimal(quantity), client_order_id, limit_price=Decimal(price) if price else None
    )


@pytest.fixture
def exchange() -> SimulatedExchange:
    return SimulatedExchange(ReplayMarketData())


@pytest.fixture(params=["sqlite", "postgresql"])
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> Ledger:
    url = (
        f"sqlite:///{tmp_path / 'ledger.db'}" if request.param == "sqlite" else request.getfixturevalue("fresh_pg_url")
    )
    return Ledger(url)


def test_order_recorded_but_never_sent_is_marked_failed(exchange: SimulatedExchange, ledger: Ledger) -> None:
    ledger.record_pending(request("lost-1"), None, exchange.now())

    report = reconcile_on_start(exchange, ledger, exchange.now())

    assert report.orders_never_sent == 1
    assert ledger.get_order("lost-1").status == OrderStatus.FAILED
    assert ledger.open_orders() == []


def test_order_sent_before_a_crash_is_found_by_client_order_id_with_its_fill(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    ledger.record_pending(request("sent-1"), None, exchange.now())
    order = exchange.place_order(request("sent-1"))  # the crash: sent, never written back

    report = reconcile_on_start(exchange, ledger, exchange.now())

    assert report.orders_updated == 1 and report.fills_imported == 1
    recorded = ledger.get_order("sent-1")
    assert recorded.status == OrderStatus.FILLED and recorded.exchange_order_id == order.order_id
    assert ledger.positions()["BTC-USD"].quantity == Decimal("0.01")


def test_resting_order_unknown_to_the_ledger_is_imported(exchange: SimulatedExchange, ledger: Ledger) -> None:
    exchange.place_order(request("manual-1", order_type=OrderType.LIMIT, price="1000.00"))

    report = reconcile_on_start(exchange, ledger, exchange.now())

    assert report.orders_imported == 1
    assert ledger.get_order("manual-1").status == OrderStatus.OPEN


def test_open_order_that_vanished_from_the_broker_is_closed(exchange: SimulatedExchange, ledger: Ledger) -> None:
    other = SimulatedExchange(ReplayMarketData())
    ledger.record_pending(request("ghost-1", order_type=OrderType.LIMIT, price="1000.00"), None, exchange.now())
    ledger.apply_order(other.place_order(request("ghost-1", order_type=OrderType.LIMIT, price="1000.00")))

    report = reconcile_on_start(exchange, ledger, exchange.now())

    assert report.orders_vanished == 1
    assert ledger.get_order("ghost-1").status == OrderStatus.CANCELLED


def test_positions_end_equal_to_the_broker_and_reconciling_twice_changes_nothing(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    exchange.place_order(request("b-1", quantity="0.03"))
    ledger.set_position("ETH-USD", Decimal("2"), Decimal("3000"), exchange.now())

    first = reconcile_on_start(exchange, ledger, exchange.now())
    second = reconcile_on_start(exchange, ledger, exchange.now())

    assert first.fills_imported == 1  # BTC-USD comes in through its fill
    assert first.positions_corrected == ["ETH-USD"]  # held by the ledger only
    assert {s: p.quantity for s, p in ledger.positions().items()} == {"BTC-USD": Decimal("0.03")}
    assert second.fills_imported == 0 and second.positions_corrected == []
    assert len(ledger.list_fills()) == 1
