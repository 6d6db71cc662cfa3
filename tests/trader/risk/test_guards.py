from __future__ import annotations

from decimal import Decimal

import pytest

from trader.domain import Side
from trader.risk import RiskControls, RiskManager
from trader.strategy import OrderIntent

OPEN = RiskControls(kill_switch=False, reduce_only=False)
BUY = OrderIntent("BTC-USD", Side.BUY, Decimal("0.01"), "test")
SELL = OrderIntent("BTC-USD", Side.SELL, Decimal("0.01"), "test", reduce_only=True)


@pytest.fixture
def risk() -> RiskManager:
    return RiskManager(max_position_usd=Decimal("1000"), daily_loss_limit_pct=Decimal("2"))


def test_kill_switch_refuses_every_order_and_counts(risk: RiskManager) -> None:
    controls = RiskControls(kill_switch=True, reduce_only=False)

    assert not risk.check(BUY, Decimal(0), Decimal("50000"), controls).approved
    assert not risk.check(SELL, Decimal("1"), Decimal("50000"), controls).approved
    assert risk.counters["kill_switch"] == 2


def test_reduce_only_allows_sells_within_the_position_only(risk: RiskManager) -> None:
    controls = RiskControls(kill_switch=False, reduce_only=True)

    assert risk.check(SELL, Decimal("0.01"), Decimal("50000"), controls).approved
    assert not risk.check(SELL, Decimal("0.005"), Decimal("50000"), controls).approved
    assert not risk.check(BUY, Decimal(0), Decimal("50000"), controls).approved
    assert risk.counters["reduce_only"] == 2


def test_max_position_refuses_a_buy_that_would_exceed_the_limit(risk: RiskManager) -> None:
    decision = risk.check(BUY, Decimal("0.015"), Decimal("50000"), OPEN)

    assert not decision.approved and decision.guard == "max_position"
    assert "RISK_MAX_POSITION_USD 1000" in decision.reason
    assert risk.check(BUY, Decimal(0), Decimal("50000"), OPEN).approved


def test_daily_loss_beyond_limit_forces_reduce_only_until_it_recovers(risk: RiskManager) -> None:
    pnl = risk.update_daily_loss(Decimal("97900"), Decimal("100000"))

    assert pnl == Decimal("-2.1")
    assert not risk.check(BUY, Decimal(0), Decimal("100"), OPEN).approved
    assert risk.check(SELL, Decimal("1"), Decimal("100"), OPEN).approved
    assert risk.counters["daily_loss_trip"] == 1
    assert risk.counters["daily_loss"] == 1  # the refused buy

    risk.update_daily_loss(Decimal("99000"), Decimal("100000"))

    assert risk.check(BUY, Decimal(0), Decimal("100"), OPEN).approved


def test_daily_loss_above_limit_does_not_trip(risk: RiskManager) -> None:
    risk.update_daily_loss(Decimal("98100"), Decimal("100000"))

    assert risk.check(BUY, Decimal(0), Decimal("100"), OPEN).approved
    assert risk.counters["daily_loss_trip"] == 0
