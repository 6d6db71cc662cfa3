"""Property: whatever fills and order updates the ledger missed, one audit brings it to the broker's truth and a
second audit finds nothing, without an order sent."""

from __future__ import annotations

import tempfile
from decimal import Decimal
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderType, Side
from trader.ledger import Ledger
from trader.market import ReplayMarketData
from trader.reconcile.audit import audit

trades = st.lists(
    st.tuples(st.sampled_from([Side.BUY, Side.SELL]), st.sampled_from(["BTC-USD", "ETH-USD"]), st.booleans()),
    min_size=1,
    max_size=8,
)


@settings(max_examples=25, deadline=None)
@given(trades=trades)
def test_one_audit_repairs_whatever_the_ledger_missed_and_a_second_finds_nothing(
    trades: list[tuple[Side, str, bool]],
) -> None:
    exchange = SimulatedExchange(ReplayMarketData())
    with tempfile.TemporaryDirectory() as folder:
        ledger = Ledger(f"sqlite:///{Path(folder) / 'ledger.db'}")
        for number, (side, symbol, recorded) in enumerate(trades):
            held = {p.symbol: p.quantity for p in exchange.positions()}.get(symbol, Decimal(0))
            quantity = Decimal("0.01") if side == Side.BUY or held < Decimal("0.01") else held
            order = exchange.place_order(
                OrderRequest(symbol, Side.BUY if quantity != held else side, OrderType.MARKET, quantity, f"c-{number}")
            )
            if recorded:  # the bot saw this one through; the others happened while it was down
                ledger.apply_order(order)
                ledger.record_fills([f for f in exchange.list_fills() if f.order_id == order.order_id])
            exchange.advance()
        sent = len(exchange.list_fills())

        first = audit(exchange, ledger, exchange.now())
        second = audit(exchange, ledger, exchange.now())

        assert len(exchange.list_fills()) == sent  # nothing placed
        assert second.differences == [], second.summary()
        assert len(first.differences) >= sum(not recorded for *_, recorded in trades)
        assert {s: p.quantity for s, p in ledger.positions().items()} == {
            p.symbol: p.quantity for p in exchange.positions()
        }
        assert {o.client_order_id for o in ledger.list_orders()} == {f"c-{n}" for n in range(len(trades))}
        ledger.dispose()
