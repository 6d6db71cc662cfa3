"""The paper exchange's perpetual-style futures: contracts, leverage, margins, mark price, hourly funding settled twice
a day, liquidation at a zero buffer, reduce-only; and the arithmetic behind them (trader/brokers/futures.py) as
properties."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trader.brokers import futures as fx
from trader.brokers.simulated import FUTURES_PRODUCTS, SimulatedExchange
from trader.domain import Candle, FuturesTerms, OrderRequest, OrderType, Side
from trader.errors import InsufficientFunds, OrderRejected, UnknownSymbol
from trader.market import ReplayMarketData

T0 = datetime(2025, 1, 1, tzinfo=UTC)  # a settlement instant (00:00 UTC)
HOUR = timedelta(hours=1)
FUTURE = FUTURES_PRODUCTS[0]
SYMBOL = FUTURE.symbol
TERMS = FUTURE.futures
assert TERMS is not None
TAKER = Decimal("0.006")


def hourly(closes: list[str]) -> list[Candle]:
    out, previous = [], None
    for i, close in enumerate(closes):
        price = Decimal(close)
        open_ = previous if previous is not None else price
        out.append(Candle(T0 + HOUR * i, open_, max(open_, price), min(open_, price), price, Decimal(1)))
        previous = price
    return out


def market(future: list[str], spot: list[str] | None = None) -> ReplayMarketData:
    """Hourly bars from 00:00: the future as given, BTC-USD (its index) flat at 65000 unless given."""
    spot = spot or ["65000"] * len(future)
    return ReplayMarketData.from_candles({"BTC-USD": hourly(spot), SYMBOL: hourly(future)}, start=0)


def paper(
    future: list[str], *, usd: str = "10000", index: list[str] | None = None, **kwargs: object
) -> SimulatedExchange:
    return SimulatedExchange(
        market(future, index), balances={"USD": Decimal(usd)}, slippage_bps=Decimal(0), derivatives=True, **kwargs
    )  # type: ignore[arg-type]


def order(
    side: Side, contracts: str, cid: str, *, leverage: str | None = None, reduce_only: bool = False
) -> OrderRequest:
    return OrderRequest(
        SYMBOL,
        side,
        OrderType.MARKET,
        Decimal(contracts),
        cid,
        reduce_only=reduce_only,
        leverage=Decimal(leverage) if leverage else None,
    )


def usd(exchange: SimulatedExchange) -> Decimal:
    return next(b.total for b in exchange.balances() if b.currency == "USD")


def test_futures_need_derivatives_enabled_and_leverage_stays_within_the_products_max() -> None:
    off = SimulatedExchange(market(["65000"] * 3))
    with pytest.raises(UnknownSymbol, match=SYMBOL):
        off.validate(order(Side.BUY, "1", "a"))

    on = paper(["65000"] * 3)
    with pytest.raises(OrderRejected, match="leverage 20 is above BIP-20DEC30-CDE's max_leverage 10"):
        on.place_order(order(Side.BUY, "1", "b", leverage="20"))
    with pytest.raises(OrderRejected, match="leverage is for futures only"):
        on.validate(OrderRequest("BTC-USD", Side.BUY, OrderType.MARKET, Decimal("0.01"), "c", leverage=Decimal(2)))
    with pytest.raises(OrderRejected, match="not a multiple of base_increment 1"):
        on.validate(order(Side.BUY, "1.5", "d"))
    assert on.positions() == [] and on.list_fills() == []


def test_a_long_opens_on_margin_marks_to_market_and_closes_reduce_only_realizing_its_pnl() -> None:
    exchange = paper(["65000", "65000", "66000"], index=["65000", "65000", "66000"])
    exchange.place_order(order(Side.BUY, "10", "open", leverage="5"))
    fee_open = Decimal("10") * Decimal("0.01") * Decimal("65000") * TAKER  # 39.00
    assert usd(exchange) == Decimal("10000") - fee_open  # no base bought: margin, not cash, backs the position

    account = exchange.futures_account()
    assert [(p.symbol, p.side, p.contracts, p.average_entry_price) for p in account.positions] == [
        (SYMBOL, "long", Decimal(10), Decimal(65000))
    ]
    assert account.initial_margin == Decimal("6500") / 5  # notional / leverage (above the 10 % floor)
    assert account.liquidation_threshold == Decimal("6500") * Decimal("0.05")

    exchange.advance()
    exchange.advance()  # the future at 66000: +1000 x 10 x 0.01
    account = exchange.futures_account()
    assert account.positions[0].current_price == Decimal(66000)
    assert account.unrealized_pnl == Decimal("100")
    with pytest.raises(OrderRejected, match="would not shrink the position 10 contracts"):
        exchange.place_order(order(Side.SELL, "11", "too-many", reduce_only=True))
    with pytest.raises(OrderRejected, match="would not shrink"):
        exchange.place_order(order(Side.BUY, "1", "wrong-side", reduce_only=True))

    before = usd(exchange)
    exchange.place_order(order(Side.SELL, "10", "close", reduce_only=True))
    fee_close = Decimal("10") * Decimal("0.01") * Decimal("66000") * TAKER
    assert exchange.positions() == []
    assert exchange.futures_account().daily_realized_pnl == Decimal("100")  # before fees, as Coinbase reports it
    assert usd(exchange) == before + Decimal("100") - fee_close - sum(
        (p.amount for p in exchange.funding_payments() if p.settled), Decimal(0)
    )


def test_an_order_needs_its_initial_margin_and_leverage_lowers_it_only_to_the_products_floor() -> None:
    exchange = paper(["65000"] * 3, usd="1000")
    # 2 contracts = 1300 notional: 1 x leverage needs 1300 + fee; 10 x needs 130 + fee
    with pytest.raises(InsufficientFunds, match="initial margin 1300"):
        exchange.place_order(order(Side.BUY, "2", "one-x", leverage="1"))
    exchange.place_order(order(Side.BUY, "2", "ten-x", leverage="10"))
    assert exchange.futures_account().initial_margin == Decimal("130")
    assert fx.initial_margin(Decimal(2), TERMS, Decimal(65000), Decimal(20)) == Decimal(130)  # the 10 % floor
    assert fx.initial_margin(Decimal(2), TERMS, Decimal(65000), None) == Decimal(1300)  # no leverage given: 1x


def test_funding_accrues_every_hour_and_settles_into_usd_at_noon() -> None:
    exchange = paper(["65065"] * 15)  # a premium of 0.1 % over the index: longs pay
    exchange.place_order(order(Side.BUY, "10", "open", leverage="2"))  # at 01:00, the first bar's close
    start = usd(exchange)
    for _ in range(12):  # to 13:00
        exchange.advance()

    payments = exchange.funding_payments()
    accruals = [p for p in payments if not p.settled]
    settlements = [p for p in payments if p.settled]
    assert [p.at.hour for p in accruals] == [2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13]
    rate = fx.paper_funding_rate(Decimal(65065), Decimal(65000))
    assert rate == Decimal("0.00004167")
    expected = -Decimal(10) * Decimal("0.01") * Decimal(65065) * rate
    assert all(p.rate == rate and p.amount == expected.quantize(fx.MONEY_STEP) for p in accruals)
    assert [(s.at.hour, s.amount) for s in settlements] == [(12, sum(p.amount for p in accruals[:11]))]
    assert usd(exchange) == start + settlements[0].amount  # settled into USD; the 13:00 accrual still pending
    assert exchange.futures_account().total_usd_balance == usd(exchange)
    assert len({p.payment_id for p in payments}) == len(payments)
    assert exchange.get_product(SYMBOL).funding_rate == rate
    assert exchange.get_product(SYMBOL).funding_time == T0 + HOUR * 14


def test_the_position_is_liquidated_at_the_mark_when_the_buffer_reaches_zero() -> None:
    closes = ["65000", "65000", "60000", "58000", "58000"]
    exchange = paper(closes, usd="1000", index=closes)  # no premium: no funding
    exchange.place_order(order(Side.BUY, "10", "open", leverage="10"))
    after_open = usd(exchange)
    exchange.advance()
    exchange.advance()  # 60000: hurt, not liquidated
    account = exchange.futures_account()
    assert account.positions and Decimal(0) < account.liquidation_buffer_pct < Decimal(100)
    predicted = fx.liquidation_price(Decimal(10), TERMS, Decimal(65000), after_open)
    assert predicted is not None and Decimal(58000) < predicted < Decimal(60000)

    exchange.advance()  # 58000: below the predicted price
    assert exchange.positions() == []
    liquidation = exchange.list_fills()[-1]
    assert (liquidation.client_order_id, liquidation.side, liquidation.price) == (
        "liquidation-1",
        Side.SELL,
        Decimal(58000),
    )
    fee = Decimal(10) * Decimal("0.01") * Decimal(58000) * TAKER
    assert usd(exchange) == after_open + (Decimal(58000) - Decimal(65000)) * Decimal("0.1") - fee


def test_the_futures_account_survives_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "paper.json"
    first = paper(["65065"] * 15, state_path=path)
    first.place_order(order(Side.BUY, "3", "open", leverage="4"))
    for _ in range(13):
        first.advance()
    again = SimulatedExchange(market(["65065"] * 15), state_path=path, derivatives=True)
    assert again.funding_payments() == first.funding_payments()
    assert again.futures_account() == first.futures_account()


# --- the arithmetic, as properties --------------------------------------------------------------------------------

prices = st.decimals(min_value=Decimal("100"), max_value=Decimal("200000"), places=2)
contracts = st.integers(min_value=-500, max_value=500).filter(bool).map(Decimal)
rates = st.decimals(min_value=Decimal("-0.005"), max_value=Decimal("0.005"), places=8)
terms = st.builds(
    FuturesTerms,
    contract_size=st.sampled_from([Decimal("0.01"), Decimal("0.1"), Decimal("1")]),
    max_leverage=st.just(Decimal(20)),
    initial_margin_rate=st.sampled_from([Decimal("0.05"), Decimal("0.1"), Decimal("0.2")]),
    maintenance_margin_rate=st.sampled_from([Decimal("0.02"), Decimal("0.03"), Decimal("0.05")]),
)


@settings(max_examples=200, deadline=None)
@given(contracts, terms, prices, rates)
def test_funding_moves_money_from_one_side_to_the_other(
    count: Decimal, t: FuturesTerms, mark: Decimal, rate: Decimal
) -> None:
    long, short = fx.funding_payment(abs(count), t, mark, rate), fx.funding_payment(-abs(count), t, mark, rate)
    assert long == -short
    assert long <= 0 if rate >= 0 else long > 0  # a positive rate: longs pay


@settings(max_examples=200, deadline=None)
@given(contracts, terms, prices, prices)
def test_closing_realizes_exactly_the_unrealized_pnl(
    count: Decimal, t: FuturesTerms, entry: Decimal, exit_: Decimal
) -> None:
    realized = fx.realized_pnl(count, entry, -count, exit_, t)
    assert realized == fx.unrealized_pnl(count, t, entry, exit_)
    assert fx.realized_pnl(count, entry, count, exit_, t) == 0  # adding to a position realizes nothing


@settings(max_examples=200, deadline=None)
@given(contracts, terms, prices, st.integers(min_value=1, max_value=20).map(Decimal))
def test_margins_are_ordered_and_leverage_only_lowers_to_the_floor(
    count: Decimal, t: FuturesTerms, price: Decimal, leverage: Decimal
) -> None:
    initial = fx.initial_margin(count, t, price, leverage)
    assert initial >= fx.notional(count, t, price) * t.initial_margin_rate  # never below the product's rate
    assert initial <= fx.initial_margin(count, t, price, None)  # no leverage given is 1x: the most margin
    assert initial >= fx.maintenance_margin(count, t, price)
    assert fx.initial_margin(count, t, price, Decimal(1)) == fx.notional(count, t, price)


@settings(max_examples=200, deadline=None)
@given(contracts, terms, prices, st.decimals(min_value=Decimal("0"), max_value=Decimal("100000"), places=2))
def test_the_buffer_is_zero_at_the_liquidation_price_and_positive_on_the_safe_side(
    count: Decimal, t: FuturesTerms, entry: Decimal, collateral: Decimal
) -> None:
    price = fx.liquidation_price(count, t, entry, collateral)
    if price is None:  # a long whose collateral covers a fall to zero
        assert count > 0
        return

    def buffer(mark: Decimal) -> Decimal:
        equity = collateral + fx.unrealized_pnl(count, t, entry, mark)
        return fx.liquidation_buffer(equity, fx.maintenance_margin(count, t, mark))[0]

    assert abs(buffer(price)) < Decimal("0.000001")
    safer = price * (Decimal("1.01") if count > 0 else Decimal("0.99"))
    assert buffer(safer) > 0


@settings(max_examples=100, deadline=None)
@given(st.integers(min_value=0, max_value=72 * 60), st.integers(min_value=1, max_value=72 * 60))
def test_funding_instants_are_the_whole_hours_crossed(start_minute: int, minutes: int) -> None:
    after = T0 + timedelta(minutes=start_minute)
    until = after + timedelta(minutes=minutes)
    instants = fx.funding_instants(after, until)
    assert all(after < i <= until and i.minute == 0 for i in instants)
    assert len(instants) == until.replace(minute=0).timestamp() // 3600 - after.replace(minute=0).timestamp() // 3600
    assert sum(1 for i in instants if fx.is_settlement(i)) == sum(1 for i in instants if i.hour in (0, 12))


def test_an_underwater_position_can_always_be_closed() -> None:
    closes = ["65000", "65000", "61000"]
    exchange = paper(closes, usd="800", index=closes)
    exchange.place_order(order(Side.BUY, "10", "open", leverage="10"))
    exchange.advance()
    exchange.advance()  # 61000: equity 761 - 400 = 361, below the 610 of initial margin; above the 305 maintenance
    account = exchange.futures_account()
    assert account.positions and account.available_margin == 0 and account.liquidation_buffer_usd > 0
    with pytest.raises(InsufficientFunds):
        exchange.place_order(order(Side.BUY, "1", "more"))
    exchange.place_order(order(Side.SELL, "10", "close", reduce_only=True))
    assert exchange.positions() == []


def test_a_resting_futures_limit_holds_its_opening_margin_and_a_closing_one_holds_nothing() -> None:
    exchange = paper(["65000"] * 3)
    exchange.place_order(order(Side.BUY, "10", "open", leverage="5"))
    usd_before = next(b for b in exchange.balances() if b.currency == "USD")

    def limit(side: Side, contracts: str, cid: str, price: str, reduce_only: bool = False) -> OrderRequest:
        return OrderRequest(
            SYMBOL, side, OrderType.LIMIT, Decimal(contracts), cid, limit_price=Decimal(price), reduce_only=reduce_only
        )

    exchange.place_order(limit(Side.SELL, "10", "take-profit", "70000", reduce_only=True))  # rests above the market
    assert next(b for b in exchange.balances() if b.currency == "USD") == usd_before  # closing: nothing held

    exchange.place_order(limit(Side.BUY, "2", "add", "60000"))  # rests below the market, opens 2 more at 1x
    usd = next(b for b in exchange.balances() if b.currency == "USD")
    fee = Decimal(2) * Decimal("0.01") * Decimal(60000) * Decimal("0.004")  # a resting limit pays the maker rate
    assert usd.hold == Decimal(2) * Decimal("0.01") * Decimal(60000) + fee
    assert usd.available == usd_before.available - usd.hold
