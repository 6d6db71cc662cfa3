"""The metered broker times every exchange call of the Broker interface; the guard windows are kept incrementally
and read the same as recomputing them from every sample in the window."""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trader.brokers.base import Broker
from trader.brokers.simulated import SimulatedExchange
from trader.domain import OrderRequest, OrderType, Side
from trader.errors import OrderNotFound
from trader.market import ReplayMarketData
from trader.risk.telemetry import UNMETERED_METHODS, MeteredBroker, OperationStats, SortedWindow


def broker_methods() -> set[str]:
    """Every public method of the Broker interface, inherited ones included."""
    return {name for name, member in inspect.getmembers(Broker, inspect.isfunction) if not name.startswith("_")}


def test_the_metered_broker_implements_every_broker_method_itself() -> None:
    # A method added to Broker but not here would run Broker's default (or stay abstract) instead of the inner
    # broker's: the bot would silently skip the exchange.
    missing = {name for name in broker_methods() if name not in vars(MeteredBroker)}

    assert missing == set()
    assert UNMETERED_METHODS.issubset(broker_methods())


def test_every_exchange_call_is_timed_and_the_local_ones_are_not() -> None:
    exchange = SimulatedExchange(ReplayMarketData())
    stats = OperationStats(window_seconds=3600, min_samples=1)
    heard: list[str] = []
    stats.listeners.append(lambda method, seconds, ok: heard.append(method))
    broker = MeteredBroker(exchange, stats)
    low = (broker.best_bid_ask("BTC-USD")[0] * Decimal("0.9")).quantize(Decimal("0.01"))
    resting = OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.001"), "metered-1", limit_price=low)
    state: dict[str, Any] = {}
    calls: dict[str, Callable[[], object]] = {
        "get_product": lambda: broker.get_product("BTC-USD"),
        "fresh_product": lambda: broker.fresh_product("BTC-USD"),
        "list_products": broker.list_products,
        "best_bid_ask": lambda: broker.best_bid_ask("BTC-USD"),
        "candles": lambda: broker.candles("BTC-USD", 5),
        "restart_market_data": broker.restart_market_data,
        "now": broker.now,
        "validate": lambda: broker.validate(resting),
        "preview_order": lambda: broker.preview_order(resting),
        "place_order": lambda: state.setdefault("order", broker.place_order(resting)),
        "preview_edit": lambda: state.setdefault(
            "edit", broker.preview_edit(state["order"].order_id, Decimal("0.002"), low)
        ),
        "apply_edit": lambda: broker.apply_edit(state["order"].order_id, state["edit"].preview_id),
        "get_order": lambda: broker.get_order(state["order"].order_id),
        "find_order": lambda: broker.find_order("metered-1"),
        "list_open_orders": broker.list_open_orders,
        "cancel_orders": lambda: broker.cancel_orders([state["order"].order_id]),
        "list_fills": broker.list_fills,
        "balances": broker.balances,
        "positions": broker.positions,
        "account_snapshot": broker.account_snapshot,
        "advance": broker.advance,
    }
    assert set(calls) == broker_methods(), "a Broker method is missing from this table"
    heard.clear()

    for name, call in calls.items():
        before = stats.calls
        call()
        moved = stats.calls - before
        assert moved == (0 if name in UNMETERED_METHODS else 1), name

    assert heard == [name for name in calls if name not in UNMETERED_METHODS]
    assert "list_open_orders" in heard and broker.name == exchange.name == "simulated"


def test_a_failed_exchange_call_counts_as_an_error_and_a_refusal_does_not() -> None:
    stats = OperationStats(window_seconds=3600, min_samples=2)
    broker = MeteredBroker(SimulatedExchange(ReplayMarketData()), stats)
    broker.list_open_orders()

    with pytest.raises(OrderNotFound):  # an answer from the exchange, not an outage
        broker.get_order("no-such-order")

    assert stats.calls == 2 and stats.error_rate_pct() == 0.0


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.booleans(), st.floats(0, 5000, allow_nan=False), st.integers(0, 50))))
def test_sorted_window_ranks_match_sorting_everything(operations: list[tuple[bool, float, int]]) -> None:
    window, reference = SortedWindow(), []
    SortedWindow.BLOCK = 4  # small blocks: the splits and emptied blocks happen within a short example
    try:
        for add, value, pick in operations:
            if add or not reference:
                window.add(value)
                reference.append(value)
            else:
                gone = reference.pop(pick % len(reference))
                window.remove(gone)
            reference.sort()
            assert len(window) == len(reference) and list(window) == reference
            for rank in {0, len(reference) // 2, len(reference) - 1} if reference else ():
                assert window[rank] == reference[rank]
    finally:
        SortedWindow.BLOCK = 256


def test_removing_a_value_the_window_does_not_hold_raises() -> None:
    window = SortedWindow()
    window.add(1.0)

    with pytest.raises(ValueError, match="2.0 is not in the window"):
        window.remove(2.0)


@settings(max_examples=150, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["call", "order", "tick"]),
            st.booleans(),
            st.sampled_from([1.0, 5.0, 12.5, 80.0, 400.0, 999.0, 2000.0]),
        ),
        max_size=120,
    )
)
def test_incremental_readings_equal_recomputing_the_window(events: list[tuple[str, bool, float]]) -> None:
    clock = Clock()
    stats = OperationStats(window_seconds=10, min_samples=3, clock=clock)
    calls: list[tuple[float, bool, float]] = []
    orders: list[tuple[float, bool]] = []
    for kind, ok, latency in events:
        if kind == "tick":
            clock.now += latency / 200  # up to 10 s: samples age out of the window
        elif kind == "call":
            stats.record_call("candles", latency, ok)
            calls.append((clock.now, ok, latency))
        else:
            stats.record_order(ok)
            orders.append((clock.now, ok))
        horizon = clock.now - 10
        live_calls = [c for c in calls if c[0] >= horizon]
        live_orders = [o for o in orders if o[0] >= horizon]
        if len(live_calls) < 3:
            assert stats.error_rate_pct() is None and stats.latency_p95_ms() is None
        else:
            ordered = sorted(c[2] for c in live_calls)
            expected_p95 = ordered[max(0, math.ceil(0.95 * len(ordered)) - 1)]
            assert stats.error_rate_pct() == pytest.approx(100 * sum(not c[1] for c in live_calls) / len(live_calls))
            assert stats.latency_p95_ms() == expected_p95
        if len(live_orders) < 3:
            assert stats.order_success_pct() is None
        else:
            assert stats.order_success_pct() == pytest.approx(100 * sum(o[1] for o in live_orders) / len(live_orders))
