"""The reconciliation inputs' suite (real Great Expectations) on the broker's orders, fills, balances, positions."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime
from decimal import Decimal

from trader.domain import Balance, Fill, Liquidity, Order, OrderStatus, OrderType, Position, Side
from trader.quality.reconciliation import check_reconciliation_inputs

AT = datetime(2026, 11, 21, 8, 0, tzinfo=UTC)
SYMBOLS = {"BTC-USD", "ETH-USD"}


def fill(trade_id: str = "t-1", price: str = "64000", **changes: object) -> Fill:
    quantity, fee = Decimal("0.01"), Decimal("0.4")
    made = Fill(trade_id, "o-1", "c-1", "BTC-USD", Side.BUY, quantity, Decimal(price), fee, Liquidity.TAKER, AT)
    return replace(made, **changes)  # type: ignore[arg-type]


def order(**changes: object) -> Order:
    size, limit = Decimal(1), Decimal(3000)
    made = Order("o-9", "c-9", "ETH-USD", Side.BUY, OrderType.LIMIT, size, OrderStatus.OPEN, AT, limit_price=limit)
    return replace(made, **changes)  # type: ignore[arg-type]


BALANCES = [Balance("USD", Decimal("99000"), Decimal("3000")), Balance("BTC", Decimal("0.01"), Decimal(0))]
POSITIONS = [Position("BTC-USD", Decimal("0.01"), Decimal("64000"))]


def test_plausible_broker_answers_pass() -> None:
    result = check_reconciliation_inputs(
        [order(), order(order_id="o-10", client_order_id="c-10", order_type=OrderType.MARKET, limit_price=None)],
        [fill("t-1"), fill("t-2", fee=Decimal(0))],
        BALANCES,
        POSITIONS,
        known_symbols=SYMBOLS,
    )

    assert result.passed and result.failures == () and result.checked_rows == 7


def test_no_answers_at_all_pass() -> None:
    assert check_reconciliation_inputs([], [], [], []).passed


def test_a_fill_at_a_negative_price_fails() -> None:
    result = check_reconciliation_inputs([], [fill("t-1"), fill("t-2", price="-64000")], BALANCES, POSITIONS)

    assert not result.passed and result.failed_checks == ("fill_price_positive",)
    assert result.failures == ("fill t-2 (BTC-USD): non-positive fill price (price=-64000)",)


def test_a_duplicate_trade_id_fails() -> None:
    result = check_reconciliation_inputs([], [fill("t-1"), fill("t-1", symbol="ETH-USD")], BALANCES, POSITIONS)

    assert result.failed_checks == ("fill_trade_id_unique",)
    assert result.failures == (
        "fill t-1 (BTC-USD): duplicate trade id",
        "fill t-1 (ETH-USD): duplicate trade id",
    )


def test_fills_without_ids_negative_fees_or_size_fail() -> None:
    result = check_reconciliation_inputs(
        [],
        [fill("t-1", client_order_id=""), fill("t-2", fee=Decimal("-1")), fill("t-3", quantity=Decimal(0))],
        [],
        [],
    )

    assert result.failed_checks == ("fill_client_order_id_present", "fill_quantity_positive", "fill_fee_non_negative")
    assert "fill t-2 (BTC-USD): negative fee (fee=-1)" in result.failures


def test_an_open_order_without_a_client_id_or_overfilled_fails() -> None:
    result = check_reconciliation_inputs(
        [order(client_order_id=""), order(order_id="o-10", filled_quantity=Decimal(2))], [], [], []
    )

    assert result.failed_checks == ("order_client_order_id_present", "order_filled_within_size")
    assert result.failures[0] == "order o-9 (ETH-USD): open order without a client order id (client_order_id=missing)"


def test_a_product_the_broker_does_not_list_fails() -> None:
    result = check_reconciliation_inputs([order(symbol="DOGE-EUR")], [fill()], [], [], known_symbols=SYMBOLS)

    assert result.failed_checks == ("order_symbol_known",)
    assert result.failures == ("order o-9 (DOGE-EUR): product the broker does not list",)


def test_negative_balances_and_repeated_positions_fail() -> None:
    result = check_reconciliation_inputs(
        [], [], [Balance("USD", Decimal("-5"), Decimal(0)), Balance("USD", Decimal(1), Decimal(0))], POSITIONS * 2
    )

    assert result.failed_checks == (
        "balance_currency_unique",
        "balance_available_non_negative",
        "position_symbol_unique",
    )
    assert "balance USD: negative available balance (available=-5)" in result.failures
