"""One set of order rules, two scopes: startup reconciliation and the audit judge an order the same way, and
differ only in which orders they look at and whether a young pending order may still be in flight."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import replace
from datetime import timedelta
from decimal import Decimal

import pytest

from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderStatus, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.reconcile import reconcile_on_start
from trader.reconcile.orders import Verdict, audit_scope, check_orders, startup_scope


def limit(client_order_id: str, price: str = "1000.00") -> OrderRequest:
    return OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), client_order_id, Decimal(price))


@pytest.fixture
def exchange() -> SimulatedExchange:
    return SimulatedExchange(ReplayMarketData())


@pytest.fixture
def ledger(sqlite_url: str) -> Iterator[Ledger]:
    with Ledger(sqlite_url) as built:
        yield built


def test_a_young_pending_order_is_in_flight_for_the_audit_and_never_sent_at_startup(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    at = exchange.now()
    ledger.record_pending(limit("young-1"), None, at - timedelta(seconds=30))

    [audited] = check_orders(exchange, ledger, audit_scope(at - timedelta(days=1), timedelta(minutes=2)), at, [])
    [started] = check_orders(exchange, ledger, startup_scope(), at, [])

    assert (audited.verdict, started.verdict) == (Verdict.IN_FLIGHT, Verdict.NEVER_SENT)


def test_startup_takes_the_brokers_order_when_the_ledger_closed_one_the_broker_still_rests(
    exchange: SimulatedExchange, ledger: Ledger
) -> None:
    resting = exchange.place_order(limit("resting-1"))
    ledger.apply_order(replace(resting, status=OrderStatus.CANCELLED))  # the ledger's record went wrong

    report = reconcile_on_start(exchange, ledger, exchange.now())

    assert (report.orders_updated, report.orders_imported) == (1, 0)
    assert ledger.get_order("resting-1").status == OrderStatus.OPEN  # type: ignore[union-attr]
