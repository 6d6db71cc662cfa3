from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from trader.domain import Candle, Product, Side
from trader.strategy import MovingAverageCrossover

BTC = Product("BTC-USD", "BTC", "USD", Decimal("0.00000001"), Decimal("0.01"), Decimal("0.00001"), Decimal("3400"))
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def candles(closes: list[str]) -> list[Candle]:
    out = []
    for i, close in enumerate(closes):
        price = Decimal(close)
        out.append(Candle(T0 + timedelta(minutes=i), price, price, price, price, Decimal(1)))
    return out


def test_golden_cross_buys_position_size_in_quote_rounded_down_to_the_increment() -> None:
    strategy = MovingAverageCrossover(2, 3, Decimal("1000"))

    intents = strategy.decide(BTC, candles(["110", "100", "90", "120"]), Decimal(0))

    assert [i.side for i in intents] == [Side.BUY]
    assert intents[0].quantity == (Decimal("1000") / Decimal("120")).quantize(Decimal("0.00000001"), "ROUND_DOWN")
    assert intents[0].quantity * 120 <= 1000


def test_death_cross_sells_the_whole_position_reduce_only() -> None:
    strategy = MovingAverageCrossover(2, 3, Decimal("1000"))

    intents = strategy.decide(BTC, candles(["90", "100", "110", "80"]), Decimal("0.5"))

    assert len(intents) == 1
    assert intents[0].side is Side.SELL and intents[0].quantity == Decimal("0.5") and intents[0].reduce_only


def test_no_signal_without_enough_history_or_without_a_cross() -> None:
    strategy = MovingAverageCrossover(2, 3, Decimal("1000"))

    assert strategy.decide(BTC, candles(["100", "101", "102"]), Decimal(0)) == []
    assert strategy.decide(BTC, candles(["100", "101", "102", "103"]), Decimal(0)) == []


def test_golden_cross_while_holding_does_not_buy_again() -> None:
    strategy = MovingAverageCrossover(2, 3, Decimal("1000"))

    assert strategy.decide(BTC, candles(["110", "100", "90", "120"]), Decimal("1")) == []


@given(st.lists(st.decimals(min_value=1, max_value=100_000, places=2), min_size=4, max_size=40))
def test_buys_never_exceed_the_position_size(closes: list[Decimal]) -> None:
    strategy = MovingAverageCrossover(2, 3, Decimal("500"))

    for intent in strategy.decide(BTC, candles([str(c) for c in closes]), Decimal(0)):
        assert intent.quantity * closes[-1] <= Decimal("500")
        assert intent.quantity >= BTC.base_min_size
