"""The paper exchange: Coinbase's product rules, fills and fees against a replay, holds, edits, persistence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trader.brokers.simulated import DEFAULT_PRODUCTS, SimulatedExchange
from trader.domain import (
    Candle,
    Liquidity,
    OrderRequest,
    OrderStatus,
    OrderType,
    Side,
    TimeInForce,
)
from trader.errors import InsufficientFunds, OrderNotFound, OrderRejected, UnknownSymbol
from trader.market import ReplayMarketData

T0 = datetime(2025, 1, 1, tzinfo=UTC)
MINUTE = timedelta(minutes=1)
CENT = Decimal("0.01")
TAKER = Decimal("0.006")
MAKER = Decimal("0.004")
SLIPPAGE = Decimal("5") / Decimal("10000")
BTC_CLOSE = Decimal("65000.00")


def bars(*closes_or_ranges: str | tuple[str, str, str]) -> list[Candle]:
    """Candles one minute apart from T0: a close, or (low, high, close); each opens at the previous close."""
    out: list[Candle] = []
    previous = None
    for i, spec in enumerate(closes_or_ranges):
        low, high, close = (spec, spec, spec) if isinstance(spec, str) else spec
        open_ = previous if previous is not None else Decimal(close)
        out.append(Candle(T0 + MINUTE * i, open_, Decimal(high), Decimal(low), Decimal(close), Decimal("1")))
        previous = Decimal(close)
    return out


def replay(*btc: str | tuple[str, str, str], start: int = 0) -> ReplayMarketData:
    """BTC-USD bars as given; ETH-USD flat at 3200 over the same minutes."""
    candles = bars(*btc)
    eth = [replace(c, open=Decimal(3200), high=Decimal(3200), low=Decimal(3200), close=Decimal(3200)) for c in candles]
    return ReplayMarketData.from_candles({"BTC-USD": candles, "ETH-USD": eth}, start=start)


def exchange(*btc: str | tuple[str, str, str], **kwargs: object) -> SimulatedExchange:
    return SimulatedExchange(replay(*(btc or ("65000.00",) * 5)), **kwargs)  # type: ignore[arg-type]


def market(side: Side, quantity: str, client_order_id: str = "c-1", **fields: object) -> OrderRequest:
    return OrderRequest("BTC-USD", side, OrderType.MARKET, Decimal(quantity), client_order_id, **fields)  # type: ignore[arg-type]


def limit(side: Side, quantity: str, price: str, client_order_id: str = "c-1", **fields: object) -> OrderRequest:
    return OrderRequest(
        "BTC-USD",
        side,
        OrderType.LIMIT,
        Decimal(quantity),
        client_order_id,
        limit_price=Decimal(price),
        **fields,  # type: ignore[arg-type]
    )


def stop_limit(side: Side, quantity: str, stop: str, price: str, client_order_id: str = "c-1") -> OrderRequest:
    return OrderRequest(
        "BTC-USD",
        side,
        OrderType.STOP_LIMIT,
        Decimal(quantity),
        client_order_id,
        limit_price=Decimal(price),
        stop_price=Decimal(stop),
    )


def fee(quantity: Decimal, price: Decimal, rate: Decimal) -> Decimal:
    return (quantity * price * rate / CENT).to_integral_value(ROUND_HALF_UP) * CENT


def taker_buy_price(close: Decimal) -> Decimal:
    return (close * (1 + SLIPPAGE) / CENT).to_integral_value(ROUND_CEILING) * CENT


def taker_sell_price(close: Decimal) -> Decimal:
    return (close * (1 - SLIPPAGE) / CENT).to_integral_value(ROUND_FLOOR) * CENT


def balance(ex: SimulatedExchange, currency: str) -> tuple[Decimal, Decimal]:
    """(available, hold) of one currency."""
    found = {b.currency: b for b in ex.balances()}[currency]
    return found.available, found.hold


# --- validation: every product rule -------------------------------------------------------------------------


REJECTIONS = {
    "zero-size": (market(Side.BUY, "0"), "order size 0 BTC must be above 0 for BTC-USD"),
    "negative-size": (market(Side.BUY, "-1"), "order size -1 BTC must be above 0 for BTC-USD"),
    "off-base-increment": (
        market(Side.BUY, "0.000000001"),
        "order size 0.000000001 BTC is not a multiple of base_increment 0.00000001 for BTC-USD",
    ),
    "below-base-min-size": (
        market(Side.BUY, "0.000001"),
        "order size 0.000001 BTC is below base_min_size 0.00001 for BTC-USD",
    ),
    "above-base-max-size": (
        limit(Side.SELL, "3400.00000001", "65000.00"),
        "order size 3400.00000001 BTC is above base_max_size 3400 for BTC-USD",
    ),
    "limit-without-price": (
        OrderRequest("BTC-USD", Side.BUY, OrderType.LIMIT, Decimal("0.01"), "c-1"),
        "limit_price is missing: a limit order needs a limit price for BTC-USD",
    ),
    "stop-limit-without-limit-price": (
        OrderRequest("BTC-USD", Side.SELL, OrderType.STOP_LIMIT, Decimal("0.01"), "c-1", stop_price=Decimal("60000")),
        "limit_price is missing: a stop_limit order needs a limit price for BTC-USD",
    ),
    "stop-limit-without-stop-price": (
        OrderRequest("BTC-USD", Side.SELL, OrderType.STOP_LIMIT, Decimal("0.01"), "c-1", limit_price=Decimal("60000")),
        "stop_price is missing: a stop_limit order needs a stop price for BTC-USD",
    ),
    "limit-price-off-tick": (
        limit(Side.BUY, "0.01", "65000.005"),
        "limit price 65000.005 is not a multiple of quote_increment 0.01 for BTC-USD",
    ),
    "stop-price-off-tick": (
        stop_limit(Side.SELL, "0.01", "60000.001", "59000"),
        "stop price 60000.001 is not a multiple of quote_increment 0.01 for BTC-USD",
    ),
    "limit-price-zero": (limit(Side.BUY, "0.01", "0"), "limit price 0 must be above 0 for BTC-USD"),
    "limit-price-negative": (limit(Side.BUY, "0.01", "-5"), "limit price -5 must be above 0 for BTC-USD"),
    "market-with-limit-price": (
        market(Side.BUY, "0.01", limit_price=Decimal("65000")),
        "limit price 65000 is not allowed on a market order for BTC-USD; use a limit order",
    ),
    "limit-with-stop-price": (
        limit(Side.BUY, "0.01", "65000", stop_price=Decimal("64000")),
        "stop price 64000 is only for stop_limit orders, not limit, for BTC-USD",
    ),
    "gtd-without-expire-at": (
        limit(Side.BUY, "0.01", "60000", time_in_force=TimeInForce.GTD),
        "expire_at is missing: time_in_force GTD needs expire_at for BTC-USD",
    ),
    "gtd-expire-at-in-the-past": (
        limit(Side.BUY, "0.01", "60000", time_in_force=TimeInForce.GTD, expire_at=T0),
        "expire_at 2025-01-01T00:00:00+00:00 is not after the broker time 2025-01-01T00:01:00+00:00 (GTD) for BTC-USD",
    ),
    "gtd-on-market": (
        market(Side.BUY, "0.01", time_in_force=TimeInForce.GTD, expire_at=T0 + timedelta(days=1)),
        "time_in_force GTD is only for limit and stop_limit orders, not market, for BTC-USD",
    ),
    "ioc-on-market": (
        market(Side.BUY, "0.01", time_in_force=TimeInForce.IOC),
        "time_in_force IOC is only for limit orders, not market, for BTC-USD",
    ),
    "ioc-on-stop-limit": (
        replace(stop_limit(Side.SELL, "0.01", "60000", "59000"), time_in_force=TimeInForce.IOC),
        "time_in_force IOC is only for limit orders, not stop_limit, for BTC-USD",
    ),
    "post-only-on-market": (
        market(Side.BUY, "0.01", post_only=True),
        "post_only is only for limit orders, not market, for BTC-USD",
    ),
    "post-only-with-ioc": (
        limit(Side.BUY, "0.01", "60000", post_only=True, time_in_force=TimeInForce.IOC),
        "post_only cannot be combined with time_in_force IOC for BTC-USD",
    ),
    "below-quote-min-size": (
        limit(Side.BUY, "0.00001", "65000.00"),
        "order value 0.65 USD (0.00001 BTC x 65000.00) is below quote_min_size 1 for BTC-USD",
    ),
}


@pytest.mark.parametrize(("request_", "message"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_validate_rejects_a_request_breaking_a_product_rule_with_a_one_line_message(
    request_: OrderRequest, message: str
) -> None:
    ex = exchange()

    with pytest.raises(OrderRejected) as raised:
        ex.validate(request_)

    assert str(raised.value) == message


def test_validate_rejects_an_unknown_symbol_listing_the_available_ones() -> None:
    ex = exchange()

    with pytest.raises(UnknownSymbol, match=r"^unknown symbol DOGE-EUR; available: BTC-USD, ETH-USD$"):
        ex.validate(replace(market(Side.BUY, "1"), symbol="DOGE-EUR"))


def test_validate_rejects_every_order_on_a_product_with_trading_disabled() -> None:
    products = [replace(DEFAULT_PRODUCTS[0], trading_disabled=True)]
    ex = exchange(products=products)

    with pytest.raises(OrderRejected, match="trading is disabled for BTC-USD \\(trading_disabled\\)"):
        ex.validate(market(Side.BUY, "0.01"))


def test_validate_accepts_an_order_that_keeps_every_rule() -> None:
    ex = exchange()

    ex.validate(limit(Side.BUY, "0.00001539", "65000.00"))


@pytest.mark.parametrize(("request_", "message"), REJECTIONS.values(), ids=REJECTIONS.keys())
def test_a_rejected_order_records_nothing(request_: OrderRequest, message: str) -> None:
    ex = exchange()

    with pytest.raises(OrderRejected):
        ex.place_order(request_)

    assert ex.find_order("c-1") is None
    assert ex.list_open_orders() == [] and ex.list_fills() == []
    assert balance(ex, "USD") == (Decimal("100000"), Decimal(0))


@settings(max_examples=300, deadline=None)
@given(units=st.integers(min_value=-10, max_value=400_000_000_000), extra=st.sampled_from(["0", "0.000000001", "0.5"]))
def test_validate_accepts_exactly_the_sizes_on_base_increment_within_min_and_max(units: int, extra: str) -> None:
    ex = exchange()
    product = ex.get_product("BTC-USD")
    size = units * product.base_increment + Decimal(extra) * product.base_increment
    request = limit(Side.SELL, "1", "100000.00")
    on_increment = size % product.base_increment == 0

    try:
        ex.validate(replace(request, quantity=size))
        accepted = True
    except OrderRejected:
        accepted = False

    assert accepted == (on_increment and product.base_min_size <= size <= product.base_max_size)


@settings(max_examples=300, deadline=None)
@given(
    cents=st.integers(min_value=-1_000, max_value=100_000_000),
    extra=st.sampled_from(["0", "0.001", "0.5"]),
)
def test_validate_accepts_exactly_the_limit_prices_on_quote_increment_above_zero(cents: int, extra: str) -> None:
    ex = exchange()
    price = (cents + Decimal(extra)) * CENT
    request = limit(Side.SELL, "1", "1")
    on_tick = price % CENT == 0

    try:
        ex.validate(replace(request, limit_price=price))
        accepted = True
    except OrderRejected:
        accepted = False

    assert accepted == (on_tick and price >= Decimal(1))  # quote_min_size 1 for a size of 1 BTC


# --- market orders ----------------------------------------------------------------------------------------------


def test_market_buy_fills_at_once_as_taker_at_the_close_plus_slippage() -> None:
    ex = exchange()

    order = ex.place_order(market(Side.BUY, "0.1"))

    price = taker_buy_price(BTC_CLOSE)
    assert order.status == OrderStatus.FILLED
    assert (order.filled_quantity, order.average_fill_price) == (Decimal("0.1"), price)
    assert order.fees == fee(Decimal("0.1"), price, TAKER)
    [fill] = ex.list_fills()
    assert (fill.liquidity, fill.price, fill.fee, fill.filled_at) == (
        Liquidity.TAKER,
        price,
        fee(Decimal("0.1"), price, TAKER),
        ex.now(),
    )


def test_market_buy_pays_notional_plus_fee_in_quote_and_credits_the_base() -> None:
    ex = exchange()

    ex.place_order(market(Side.BUY, "0.1"))

    price = taker_buy_price(BTC_CLOSE)
    assert balance(ex, "USD") == (Decimal("100000") - Decimal("0.1") * price - fee(Decimal("0.1"), price, TAKER), 0)
    assert balance(ex, "BTC") == (Decimal("0.1"), 0)


def test_market_sell_fills_below_the_close_and_credits_notional_minus_fee() -> None:
    ex = exchange(balances={"USD": Decimal("0"), "BTC": Decimal("1")})

    order = ex.place_order(market(Side.SELL, "0.4"))

    price = taker_sell_price(BTC_CLOSE)
    assert order.average_fill_price == price
    assert balance(ex, "USD") == (Decimal("0.4") * price - fee(Decimal("0.4"), price, TAKER), 0)
    assert balance(ex, "BTC") == (Decimal("0.6"), 0)


def test_buying_twice_averages_the_entry_price_of_the_position() -> None:
    ex = exchange("65000.00", "66000.00")

    ex.place_order(market(Side.BUY, "0.1", "c-1"))
    ex.advance()
    ex.place_order(market(Side.BUY, "0.3", "c-2"))

    first, second = taker_buy_price(Decimal("65000.00")), taker_buy_price(Decimal("66000.00"))
    [position] = ex.positions()
    assert position.quantity == Decimal("0.4")
    assert position.average_entry_price == ((Decimal("0.1") * first + Decimal("0.3") * second) / Decimal("0.4"))


def test_selling_the_whole_position_leaves_no_position() -> None:
    ex = exchange()
    ex.place_order(market(Side.BUY, "0.1", "c-1"))

    ex.place_order(market(Side.SELL, "0.1", "c-2"))

    assert ex.positions() == []


def test_best_bid_and_ask_straddle_the_close_by_half_a_basis_point_on_the_tick() -> None:
    ex = exchange()

    bid, ask = ex.best_bid_ask("BTC-USD")

    assert (bid, ask) == (Decimal("64996.75"), Decimal("65003.25"))


# --- limit, IOC, post-only, GTD, stop-limit -----------------------------------------------------------------


def test_limit_buy_below_the_ask_rests_and_holds_its_value_plus_maker_fee() -> None:
    ex = exchange()

    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))

    hold = Decimal("0.1") * Decimal("64000.00") + fee(Decimal("0.1"), Decimal("64000.00"), MAKER)
    assert order.status == OrderStatus.OPEN
    assert balance(ex, "USD") == (Decimal("100000") - hold, hold)
    assert [o.order_id for o in ex.list_open_orders("BTC-USD")] == [order.order_id]


def test_resting_limit_buy_fills_as_maker_at_its_limit_when_a_later_candle_trades_down_to_it() -> None:
    ex = exchange("65000.00", ("64500.00", "65100.00", "64800.00"), ("63900.00", "64900.00", "64100.00"))
    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))
    ex.advance()
    assert ex.get_order(order.order_id).status == OrderStatus.OPEN

    ex.advance()

    filled = ex.get_order(order.order_id)
    [fill] = ex.list_fills()
    assert filled.status == OrderStatus.FILLED and filled.average_fill_price == Decimal("64000.00")
    assert (fill.liquidity, fill.fee) == (Liquidity.MAKER, fee(Decimal("0.1"), Decimal("64000.00"), MAKER))
    assert fill.filled_at == T0 + 3 * MINUTE  # close of the third bar
    assert balance(ex, "USD") == (Decimal("100000") - Decimal("6400.000") - fill.fee, 0)
    assert balance(ex, "BTC") == (Decimal("0.1"), 0)


def test_resting_limit_sell_fills_when_a_later_candle_high_reaches_it() -> None:
    ex = exchange("65000.00", ("64900.00", "66000.00", "65500.00"), balances={"BTC": Decimal("1")})
    order = ex.place_order(limit(Side.SELL, "0.5", "66000.00"))
    assert balance(ex, "BTC") == (Decimal("0.5"), Decimal("0.5"))

    ex.advance()

    assert ex.get_order(order.order_id).status == OrderStatus.FILLED
    proceeds = Decimal("0.5") * Decimal("66000.00") - fee(Decimal("0.5"), Decimal("66000.00"), MAKER)
    assert balance(ex, "USD") == (proceeds, 0) and balance(ex, "BTC") == (Decimal("0.5"), 0)


def test_bars_skipped_between_calls_are_each_matched_once() -> None:
    market_data = replay("65000.00", "65000.00", ("63000.00", "65000.00", "64000.00"), "65000.00", "65000.00")
    ex = SimulatedExchange(market_data)
    order = ex.place_order(limit(Side.BUY, "0.1", "63500.00"))

    market_data.advance()
    market_data.advance()
    market_data.advance()
    fills = ex.list_fills()

    assert ex.get_order(order.order_id).status == OrderStatus.FILLED
    assert [f.filled_at for f in fills] == [T0 + 3 * MINUTE]


def test_marketable_limit_buy_fills_at_once_as_taker_at_the_better_of_limit_and_market() -> None:
    ex = exchange()

    high_limit = ex.place_order(limit(Side.BUY, "0.1", "70000.00", "c-1"))
    tight_limit = ex.place_order(limit(Side.BUY, "0.1", "65010.00", "c-2"))

    assert high_limit.average_fill_price == taker_buy_price(BTC_CLOSE)  # the market is better than 70000
    assert tight_limit.average_fill_price == Decimal("65010.00")  # the limit is better than close + slippage
    assert {f.liquidity for f in ex.list_fills()} == {Liquidity.TAKER}


def test_ioc_limit_that_cannot_fill_at_once_is_cancelled_and_holds_nothing() -> None:
    ex = exchange()

    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00", time_in_force=TimeInForce.IOC))

    assert order.status == OrderStatus.CANCELLED
    assert ex.list_open_orders() == [] and ex.list_fills() == []
    assert balance(ex, "USD") == (Decimal("100000"), 0)


def test_ioc_limit_that_crosses_fills_at_once() -> None:
    ex = exchange()

    order = ex.place_order(limit(Side.BUY, "0.1", "66000.00", time_in_force=TimeInForce.IOC))

    assert order.status == OrderStatus.FILLED


def test_post_only_limit_that_would_cross_is_rejected_and_nothing_recorded() -> None:
    ex = exchange()

    with pytest.raises(OrderRejected, match="post_only limit buy at 66000.00 would cross the best ask 65003.25"):
        ex.place_order(limit(Side.BUY, "0.1", "66000.00", post_only=True))

    assert ex.find_order("c-1") is None


def test_post_only_limit_below_the_ask_rests() -> None:
    ex = exchange()

    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00", post_only=True))

    assert order.status == OrderStatus.OPEN


def test_gtd_order_expires_when_broker_time_reaches_expire_at_and_releases_its_hold() -> None:
    ex = exchange()
    expire_at = ex.now() + 2 * MINUTE
    order = ex.place_order(limit(Side.BUY, "0.1", "60000.00", time_in_force=TimeInForce.GTD, expire_at=expire_at))
    ex.advance()
    assert ex.get_order(order.order_id).status == OrderStatus.OPEN

    ex.advance()

    expired = ex.get_order(order.order_id)
    assert expired.status == OrderStatus.EXPIRED and expired.updated_at == expire_at
    assert balance(ex, "USD") == (Decimal("100000"), 0)


def test_stop_limit_buy_rests_untriggered_until_a_candle_high_reaches_the_stop_then_fills_as_taker() -> None:
    ex = exchange("65000.00", ("64900.00", "65900.00", "65500.00"), ("65400.00", "66200.00", "66100.00"), "66000.00")
    order = ex.place_order(stop_limit(Side.BUY, "0.1", "66000.00", "66500.00"))
    ex.advance()
    assert ex.get_order(order.order_id).status == OrderStatus.OPEN

    ex.advance()

    triggered = ex.get_order(order.order_id)
    assert triggered.status == OrderStatus.FILLED
    assert triggered.average_fill_price == taker_buy_price(Decimal("66000.00"))
    assert ex.list_fills()[0].liquidity == Liquidity.TAKER


def test_stop_limit_sell_triggers_on_a_candle_low_and_then_works_as_a_limit() -> None:
    ex = exchange(
        "65000.00",
        ("63900.00", "65000.00", "64000.00"),  # low reaches the stop: triggered, limit 64500 above the stop rests
        ("63800.00", "64600.00", "64200.00"),  # high reaches the limit: fills as maker
        balances={"BTC": Decimal("1")},
    )
    order = ex.place_order(stop_limit(Side.SELL, "0.5", "64000.00", "64500.00"))
    ex.advance()
    assert ex.get_order(order.order_id).status == OrderStatus.OPEN

    ex.advance()

    [fill] = ex.list_fills()
    assert (fill.price, fill.liquidity) == (Decimal("64500.00"), Liquidity.MAKER)


def test_stop_limit_holds_the_limit_value_plus_taker_fee_while_waiting() -> None:
    ex = exchange()

    ex.place_order(stop_limit(Side.BUY, "0.1", "66000.00", "66500.00"))

    assert balance(ex, "USD")[1] == Decimal("6650.000") + fee(Decimal("0.1"), Decimal("66500.00"), TAKER)


# --- reduce-only ----------------------------------------------------------------------------------------------


def test_reduce_only_sell_beyond_the_position_is_rejected() -> None:
    ex = exchange()
    ex.place_order(market(Side.BUY, "0.1", "c-1"))

    with pytest.raises(OrderRejected, match=r"^reduce-only sell of 0.2 BTC exceeds position 0.1 BTC for BTC-USD$"):
        ex.place_order(market(Side.SELL, "0.2", "c-2", reduce_only=True))

    assert ex.find_order("c-2") is None


def test_reduce_only_sell_within_the_position_fills() -> None:
    ex = exchange()
    ex.place_order(market(Side.BUY, "0.1", "c-1"))

    order = ex.place_order(market(Side.SELL, "0.1", "c-2", reduce_only=True))

    assert order.status == OrderStatus.FILLED and order.reduce_only


def test_reduce_only_buy_is_rejected_on_spot() -> None:
    ex = exchange()

    with pytest.raises(OrderRejected, match="reduce-only buy of 0.1 BTC is rejected for BTC-USD: spot has no short"):
        ex.place_order(market(Side.BUY, "0.1", reduce_only=True))


def test_preview_of_a_reduce_only_sell_without_a_position_raises() -> None:
    ex = exchange()

    with pytest.raises(OrderRejected, match="reduce-only sell of 0.01 BTC exceeds position 0 BTC"):
        ex.preview_order(replace(stop_limit(Side.SELL, "0.01", "59500", "60000"), reduce_only=True))


# --- idempotency and funds ------------------------------------------------------------------------------------


def test_placing_the_same_client_order_id_twice_returns_the_existing_order() -> None:
    ex = exchange()
    first = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))

    again = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))

    assert again.order_id == first.order_id
    assert len(ex.list_open_orders()) == 1
    assert balance(ex, "USD")[1] == Decimal("6400.000") + fee(Decimal("0.1"), Decimal("64000.00"), MAKER)


def test_reusing_a_client_order_id_for_a_different_request_is_rejected() -> None:
    ex = exchange()
    first = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))

    with pytest.raises(OrderRejected, match=f"client_order_id c-1 is already used by order {first.order_id}"):
        ex.place_order(limit(Side.BUY, "0.2", "64000.00"))


def test_buy_beyond_available_quote_raises_insufficient_funds_with_the_numbers_and_records_nothing() -> None:
    ex = exchange(balances={"USD": Decimal("1000")})

    with pytest.raises(InsufficientFunds) as raised:
        ex.place_order(market(Side.BUY, "0.1"))

    price = taker_buy_price(BTC_CLOSE)
    needs = Decimal("0.1") * price + fee(Decimal("0.1"), price, TAKER)
    assert str(raised.value) == (
        f"insufficient USD for buy 0.1 BTC-USD: needs {needs} USD (0.1 x {price} + fee "
        f"{fee(Decimal('0.1'), price, TAKER)}), available 1000 USD"
    )
    assert ex.find_order("c-1") is None and ex.list_fills() == []
    assert balance(ex, "USD") == (Decimal("1000"), 0)


def test_sell_beyond_available_base_raises_insufficient_funds() -> None:
    ex = exchange(balances={"BTC": Decimal("0.05")})

    with pytest.raises(InsufficientFunds, match="insufficient BTC for sell 0.1 BTC-USD: needs 0.1 BTC"):
        ex.place_order(market(Side.SELL, "0.1"))


def test_funds_held_by_a_resting_order_are_not_available_to_the_next() -> None:
    ex = exchange(balances={"USD": Decimal("10000")})
    ex.place_order(limit(Side.BUY, "0.1", "64000.00", "c-1"))

    with pytest.raises(InsufficientFunds):
        ex.place_order(limit(Side.BUY, "0.1", "64000.00", "c-2"))


# --- preview and edit -----------------------------------------------------------------------------------------


def test_preview_order_estimates_price_size_and_commission_without_recording() -> None:
    ex = exchange()

    preview = ex.preview_order(market(Side.BUY, "0.1"))

    price = taker_buy_price(BTC_CLOSE)
    assert preview.preview_id.startswith("preview-")
    assert (preview.estimated_price, preview.base_size, preview.quote_size) == (price, Decimal("0.1"), price / 10)
    assert preview.commission == fee(Decimal("0.1"), price, TAKER)
    assert preview.errors == ()
    assert ex.find_order("c-1") is None


def test_preview_order_reports_insufficient_funds_in_errors_instead_of_raising() -> None:
    ex = exchange(balances={"USD": Decimal("100")})

    preview = ex.preview_order(market(Side.BUY, "0.1"))

    [error] = preview.errors
    assert error.startswith("insufficient USD for buy 0.1 BTC-USD")


def test_preview_edit_then_apply_edit_changes_size_and_price_and_moves_the_hold() -> None:
    ex = exchange()
    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))

    preview = ex.preview_edit(order.order_id, Decimal("0.2"), Decimal("63000.00"))
    edited = ex.apply_edit(order.order_id, preview.preview_id)

    hold = Decimal("0.2") * Decimal("63000.00") + fee(Decimal("0.2"), Decimal("63000.00"), MAKER)
    assert preview.order_id == order.order_id and preview.errors == ()
    assert (edited.order_id, edited.quantity, edited.limit_price) == (order.order_id, Decimal("0.2"), Decimal("63000"))
    assert edited.status == OrderStatus.OPEN
    assert balance(ex, "USD") == (Decimal("100000") - hold, hold)


def test_apply_edit_with_an_already_used_preview_id_is_rejected() -> None:
    ex = exchange()
    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))
    preview = ex.preview_edit(order.order_id, Decimal("0.2"), Decimal("63000.00"))
    ex.apply_edit(order.order_id, preview.preview_id)

    with pytest.raises(OrderRejected, match="was not issued for order .* or was already used"):
        ex.apply_edit(order.order_id, preview.preview_id)


def test_apply_edit_with_a_preview_issued_for_another_order_is_rejected() -> None:
    ex = exchange()
    first = ex.place_order(limit(Side.BUY, "0.1", "64000.00", "c-1"))
    second = ex.place_order(limit(Side.BUY, "0.1", "64000.00", "c-2"))
    preview = ex.preview_edit(first.order_id, Decimal("0.2"), Decimal("63000.00"))

    with pytest.raises(OrderRejected, match=f"was not issued for order {second.order_id}"):
        ex.apply_edit(second.order_id, preview.preview_id)


def test_preview_edit_validates_the_new_values_against_the_product() -> None:
    ex = exchange()
    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))

    with pytest.raises(OrderRejected, match="limit price 63000.001 is not a multiple of quote_increment"):
        ex.preview_edit(order.order_id, Decimal("0.1"), Decimal("63000.001"))


def test_preview_edit_of_a_filled_order_is_rejected() -> None:
    ex = exchange()
    order = ex.place_order(market(Side.BUY, "0.1"))

    with pytest.raises(OrderRejected, match="is filled; only open limit orders can be edited"):
        ex.preview_edit(order.order_id, Decimal("0.1"), Decimal("63000.00"))


def test_apply_edit_beyond_available_funds_raises_and_keeps_the_order_as_it_was() -> None:
    ex = exchange(balances={"USD": Decimal("10000")})
    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))
    preview = ex.preview_edit(order.order_id, Decimal("1"), Decimal("64000.00"))
    assert preview.errors and preview.errors[0].startswith("insufficient USD")

    with pytest.raises(InsufficientFunds):
        ex.apply_edit(order.order_id, preview.preview_id)

    assert ex.get_order(order.order_id).quantity == Decimal("0.1")
    assert balance(ex, "USD")[1] == Decimal("6400.000") + fee(Decimal("0.1"), Decimal("64000.00"), MAKER)


# --- cancel and look-ups --------------------------------------------------------------------------------------


def test_cancel_orders_cancels_a_batch_and_releases_the_holds() -> None:
    ex = exchange()
    first = ex.place_order(limit(Side.BUY, "0.1", "64000.00", "c-1"))
    second = ex.place_order(limit(Side.BUY, "0.1", "63000.00", "c-2"))

    result = ex.cancel_orders([first.order_id, second.order_id])

    assert result == {first.order_id: True, second.order_id: True}
    assert ex.list_open_orders() == []
    assert ex.get_order(first.order_id).status == OrderStatus.CANCELLED
    assert balance(ex, "USD") == (Decimal("100000"), 0)


def test_cancelling_a_cancelled_or_unknown_order_returns_false() -> None:
    ex = exchange()
    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))
    ex.cancel_orders([order.order_id])

    result = ex.cancel_orders([order.order_id, "sim-order-404"])

    assert result == {order.order_id: False, "sim-order-404": False}


def test_get_order_of_an_unknown_id_raises_order_not_found() -> None:
    ex = exchange()

    with pytest.raises(OrderNotFound, match="order sim-order-404 not found"):
        ex.get_order("sim-order-404")


def test_find_order_looks_up_by_client_order_id() -> None:
    ex = exchange()
    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00", "mine"))

    found = ex.find_order("mine")

    assert found is not None and found.order_id == order.order_id


def test_returned_orders_are_copies_the_caller_cannot_change() -> None:
    ex = exchange()
    order = ex.place_order(limit(Side.BUY, "0.1", "64000.00"))

    order.status = OrderStatus.FILLED

    assert ex.get_order(order.order_id).status == OrderStatus.OPEN


def test_list_fills_since_returns_only_fills_after_that_time() -> None:
    ex = exchange()
    ex.place_order(market(Side.BUY, "0.1", "c-1"))
    first_time = ex.now()
    ex.advance()
    ex.place_order(market(Side.BUY, "0.1", "c-2"))

    later = ex.list_fills(since=first_time)

    assert [f.client_order_id for f in later] == ["c-2"]
    assert [f.trade_id for f in ex.list_fills()] == ["sim-1", "sim-2"]


def test_candles_come_from_the_market_and_unknown_symbols_are_refused() -> None:
    market_data = replay("65000.00", "65100.00", "65200.00", start=2)
    ex = SimulatedExchange(market_data)

    assert [c.close for c in ex.candles("BTC-USD", 2)] == [Decimal("65100.00"), Decimal("65200.00")]
    with pytest.raises(UnknownSymbol):
        ex.candles("DOGE-EUR", 2)


def test_account_snapshot_is_a_paper_portfolio_that_can_trade_but_not_transfer() -> None:
    ex = exchange()

    snapshot = ex.account_snapshot()

    p = snapshot.permissions
    assert (p.can_view, p.can_trade, p.can_transfer, p.portfolio_type) == (True, True, False, "PAPER")
    assert (snapshot.fee_tier.maker_fee_rate, snapshot.fee_tier.taker_fee_rate) == (MAKER, TAKER)
    assert {b.currency: b.total for b in snapshot.balances}["USD"] == Decimal("100000")


def test_advance_returns_false_when_the_replay_is_exhausted() -> None:
    ex = exchange("65000.00", "65000.00")

    assert ex.advance() is True
    assert ex.advance() is False


# --- persistence ---------------------------------------------------------------------------------------------


def test_a_new_exchange_on_the_same_state_file_sees_the_same_account(tmp_path: Path) -> None:
    state = tmp_path / "paper_exchange.json"
    first = SimulatedExchange(replay(*["65000.00"] * 10), state_path=state)
    first.place_order(market(Side.BUY, "0.1", "c-1"))
    resting = first.place_order(limit(Side.BUY, "0.1", "60000.00", "c-2"))
    preview = first.preview_edit(resting.order_id, Decimal("0.2"), Decimal("61000.00"))

    second = SimulatedExchange(replay(*["65000.00"] * 10), state_path=state)

    assert second.balances() == first.balances()
    assert second.positions() == first.positions()
    assert second.list_fills() == first.list_fills()
    assert second.get_order(resting.order_id) == first.get_order(resting.order_id)
    assert second.find_order("c-1") == first.find_order("c-1")
    edited = second.apply_edit(resting.order_id, preview.preview_id)
    assert edited.quantity == Decimal("0.2")
    assert second.place_order(market(Side.BUY, "0.1", "c-3")).order_id == "sim-order-3"
    assert second.list_fills()[-1].trade_id == "sim-2"


def test_reopening_a_saved_account_continues_at_the_saved_cursor(tmp_path: Path) -> None:
    state = tmp_path / "paper_exchange.json"
    first = SimulatedExchange(replay(*["65000.00"] * 10, start=3), state_path=state)
    first.advance()
    saved = json.loads(state.read_text())["market_cursor"]  # a new account: its first write is the account's

    second = SimulatedExchange(replay(*["65000.00"] * 10, start=3), state_path=state)

    assert saved == 4
    assert second.market.cursor == 4
    assert second.now() == T0 + 5 * MINUTE


def test_a_resting_order_saved_in_one_run_fills_in_the_next(tmp_path: Path) -> None:
    state = tmp_path / "paper_exchange.json"
    closes: list[str | tuple[str, str, str]] = ["65000.00", ("63000.00", "65000.00", "64000.00"), "65000.00"]
    first = SimulatedExchange(replay(*closes), state_path=state)
    order = first.place_order(limit(Side.BUY, "0.1", "63500.00"))

    second = SimulatedExchange(replay(*closes), state_path=state)
    second.advance()

    assert second.get_order(order.order_id).status == OrderStatus.FILLED
    assert json.loads(state.read_text())["orders"][0]["order"]["status"] == "filled"


def test_validate_never_writes_the_state_file(tmp_path: Path) -> None:
    state = tmp_path / "paper_exchange.json"
    ex = SimulatedExchange(replay("65000.00"), state_path=state)

    with pytest.raises(OrderRejected):
        ex.validate(market(Side.BUY, "0"))
    ex.validate(market(Side.BUY, "0.1"))

    assert not state.exists()


def test_state_file_is_replaced_whole_with_no_temp_files_left(tmp_path: Path) -> None:
    state = tmp_path / "paper_exchange.json"
    ex = SimulatedExchange(replay(*["65000.00"] * 5), state_path=state)

    ex.place_order(market(Side.BUY, "0.1"))
    ex.advance()

    assert sorted(p.name for p in tmp_path.iterdir()) == ["paper_exchange.clock.json", "paper_exchange.json"]
    saved = json.loads(state.read_text())
    assert saved["market_cursor"] == 0 and saved["balances"]["BTC"] == "0.1"  # the clock moved on alone
    assert json.loads((tmp_path / "paper_exchange.clock.json").read_text())["market_cursor"] == 1


def test_a_bar_with_no_account_change_writes_only_the_clock_without_fsync(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    state = tmp_path / "paper_exchange.json"
    ex = SimulatedExchange(replay(*["65000.00"] * 10), state_path=state)
    ex.place_order(market(Side.BUY, "0.1", "c-1"))
    account = state.read_bytes()
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd))[1])

    for _ in range(3):
        ex.advance()
        ex.candles("BTC-USD", 5)

    assert synced == [] and state.read_bytes() == account
    ex.place_order(market(Side.BUY, "0.1", "c-2"))  # an account change is written durably, clock and all
    assert len(synced) >= 2
    assert json.loads(state.read_text())["market_cursor"] == 3


def test_a_clock_from_before_the_latest_account_write_or_unreadable_is_ignored(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A power cut can bring back an older clock file (written without fsync) or leave it empty."""
    state, clock = tmp_path / "paper_exchange.json", tmp_path / "paper_exchange.clock.json"
    first = SimulatedExchange(replay(*["65000.00"] * 10), state_path=state)
    first.place_order(market(Side.BUY, "0.1", "c-1"))
    first.advance()
    first.advance()
    older = clock.read_bytes()  # cursor 2, after account write 1
    first.market.seek(1)  # back in time (as a replay may be told to), then an account write at cursor 1
    first.place_order(market(Side.BUY, "0.1", "c-2"))
    clock.write_bytes(older)

    assert SimulatedExchange(replay(*["65000.00"] * 10), state_path=state).market.cursor == 1
    clock.write_bytes(b"")
    assert SimulatedExchange(replay(*["65000.00"] * 10), state_path=state).market.cursor == 1
    assert "paper exchange clock" in caplog.text and "the account's own clock stands" in caplog.text


def test_a_process_killed_right_after_a_clock_move_loses_no_bar(tmp_path: Path) -> None:
    """SIGKILL after the clock-only write (no fsync): the page cache keeps it, the next process continues there."""
    state = tmp_path / "paper_exchange.json"
    child = f"""
import os, signal
from pathlib import Path
from trader.brokers.simulated import SimulatedExchange
from trader.market import ReplayMarketData
ex = SimulatedExchange(ReplayMarketData(), state_path=Path({str(state)!r}))
for _ in range(7):
    ex.advance()
print(ex.market.cursor, flush=True)
os.kill(os.getpid(), signal.SIGKILL)
"""
    result = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=60)

    assert result.returncode == -signal.SIGKILL, result.stderr
    reopened = SimulatedExchange(ReplayMarketData(), state_path=state)
    assert reopened.market.cursor == int(result.stdout) > ReplayMarketData().cursor


def test_without_a_state_path_nothing_touches_disk(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    ex = exchange()

    ex.place_order(market(Side.BUY, "0.1"))
    ex.advance()

    assert list(tmp_path.iterdir()) == []
