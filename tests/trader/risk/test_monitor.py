"""Every runbook guard trips at its warning and critical thresholds, forces its action, and clears."""

from __future__ import annotations

from decimal import Decimal

import pytest

from trader.domain import Side
from trader.risk import RiskControls, RiskManager
from trader.risk.monitor import GuardMonitor, GuardRule, exposure_pct, rules_from_settings, volatility_pct
from trader.risk.telemetry import OperationStats
from trader.settings import load_settings
from trader.strategy import OrderIntent

OPEN = RiskControls(kill_switch=False, reduce_only=False)
BUY = OrderIntent("BTC-USD", Side.BUY, Decimal("0.01"), "test")
SELL = OrderIntent("BTC-USD", Side.SELL, Decimal("0.01"), "test", reduce_only=True)

# guard: (a healthy reading, the runbook's warning, the runbook's critical, the action at critical)
RUNBOOK = {
    "daily_loss": (0.5, 1.0, 2.0, "reduce_only"),
    "error_rate": (5.0, 10.0, 25.0, "halt"),
    "market_data_staleness": (60.0, None, 180.0, "reduce_only"),
    "market_data_feed": (10.0, 300.0, 900.0, "restart_feed"),
    "websocket_disconnects": (1.0, 3.0, 10.0, "alert"),
    "position_count": (3.0, 10.0, 20.0, "block_new_positions"),
    "exposure": (50.0, 75.0, 90.0, "reduce_exposure"),
    "drawdown": (5.0, 15.0, 20.0, "reduce_only"),
    "volatility": (0.1, 1.5, 3.0, "reduce_only"),
    "api_latency": (120.0, 500.0, 1000.0, "reduce_only"),
    "order_success": (99.0, 95.0, 90.0, "reduce_only"),
    # runaway trading and a massive drawdown within the hour (AI-bot runbook, emergency scenarios 2 and 3)
    "orders_per_minute": (2.0, 10.0, 20.0, "halt"),
    "orders_per_hour": (5.0, 60.0, 120.0, "halt"),
    "drawdown_1h": (2.0, 10.0, 20.0, "halt"),
    # derivatives: the futures account's liquidation buffer (lower is worse)
    "liquidation_buffer": (50.0, 30.0, 15.0, "reduce_only"),
}
INFORMATIONAL = {  # warn only: "No Trades 24h" (severity Low), funding_rate_spike (alert the trader)
    "no_trades": (3.0, 24.0, None, "alert"),
    "funding_rate": (0.0001, 0.001, None, "alert"),
}


@pytest.fixture
def risk() -> RiskManager:
    settings = load_settings(profile="dev")
    return RiskManager(Decimal("1000"), Decimal("2"), monitor=GuardMonitor(rules_from_settings(settings)))


def test_the_defaults_are_the_runbooks_thresholds() -> None:
    rules = rules_from_settings(load_settings(profile="dev"))

    assert set(rules) == set(RUNBOOK) | set(INFORMATIONAL)
    for name, (_, warning, critical, action) in {**RUNBOOK, **INFORMATIONAL}.items():
        assert (rules[name].warning, rules[name].critical, rules[name].action) == (warning, critical, action), name


@pytest.mark.parametrize("guard", sorted(RUNBOOK))
def test_each_guard_trips_warning_then_critical_then_clears(risk: RiskManager, guard: str) -> None:
    healthy, warning, critical, action = RUNBOOK[guard]

    assert risk.observe({guard: healthy}) == []
    if warning is not None:
        [event] = risk.observe({guard: warning})
        assert (event.previous, event.level) == ("ok", "warning") and risk.counters[f"{guard}_warning"] == 1
        assert risk.monitor.forced() == {}
    [event] = risk.observe({guard: critical})
    assert event.level == "critical" and risk.counters[f"{guard}_trip"] == 1
    assert risk.monitor.forced() == {guard: action}
    assert "critical" in event.describe() and f"{critical:g}" in event.describe()

    assert risk.observe({guard: critical}) == []  # staying critical is not a second trip
    [event] = risk.observe({guard: healthy})
    assert event.level == "ok" and "cleared" in event.describe()
    assert risk.monitor.forced() == {} and risk.counters[f"{guard}_trip"] == 1


def test_no_trades_only_ever_warns_and_clears_after_a_fill(risk: RiskManager) -> None:
    assert risk.observe({"no_trades": 23.9}) == []
    [event] = risk.observe({"no_trades": 24.0})
    assert event.level == "warning" and risk.monitor.forced() == {}
    assert risk.observe({"no_trades": 1000.0}) == []  # days without a fill: still a warning, never critical
    [event] = risk.observe({"no_trades": 0.1})
    assert event.level == "ok"


def test_a_missing_reading_keeps_the_guard_where_it_was(risk: RiskManager) -> None:
    risk.observe({"error_rate": 30.0})

    assert risk.observe({"error_rate": None}) == []
    assert risk.monitor.levels["error_rate"] == "critical"


def test_critical_error_rate_halts_even_reducing_orders(risk: RiskManager) -> None:
    risk.observe({"error_rate": 25.0})

    decision = risk.check(SELL, Decimal("1"), Decimal("100"), OPEN)
    assert not decision.approved and decision.guard == "error_rate" and "halted" in decision.reason
    assert risk.counters["error_rate"] == 1


@pytest.mark.parametrize("guard", ["daily_loss", "market_data_staleness", "drawdown", "volatility", "exposure"])
def test_reduce_only_guards_refuse_new_exposure_but_allow_exits(risk: RiskManager, guard: str) -> None:
    risk.observe({guard: RUNBOOK[guard][2]})

    assert not risk.check(BUY, Decimal(0), Decimal("100"), OPEN).approved
    assert risk.check(SELL, Decimal("0.01"), Decimal("100"), OPEN).approved
    assert risk.counters[guard] == 1


def test_position_count_critical_refuses_only_new_positions(risk: RiskManager) -> None:
    risk.observe({"position_count": 20.0})

    assert not risk.check(BUY, Decimal(0), Decimal("100"), OPEN).approved
    assert risk.check(BUY, Decimal("0.01"), Decimal("100"), OPEN).approved  # adds to an open position


def test_a_failed_data_gate_blocks_new_exposure_for_the_cycle(risk: RiskManager) -> None:
    risk.gate_blocked = True
    assert risk.check(BUY, Decimal(0), Decimal("100"), OPEN).guard == "data_gate"
    assert risk.check(SELL, Decimal("0.01"), Decimal("100"), OPEN).approved

    risk.gate_blocked = False
    assert risk.check(BUY, Decimal(0), Decimal("100"), OPEN).approved


def test_order_success_is_worse_below_its_thresholds() -> None:
    rule = GuardRule("order_success", "orders accepted", "%", 95, 90, "reduce_only", below_is_worse=True)

    assert [rule.level(v) for v in (100, 95.5, 95, 91, 90, 10)] == [
        "ok",
        "ok",
        "warning",
        "warning",
        "critical",
        "critical",
    ]


def test_thresholds_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RISK_ERROR_RATE_HALT_PCT", "50")
    monkeypatch.setenv("RISK_POSITION_COUNT_WARN", "3")

    rules = rules_from_settings(load_settings(profile="dev"))

    assert rules["error_rate"].level(30) == "warning" and rules["error_rate"].level(50) == "critical"
    assert rules["position_count"].level(3) == "warning"


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_operation_stats_need_enough_samples_and_forget_old_ones() -> None:
    clock = Clock()
    stats = OperationStats(window_seconds=60, min_samples=10, clock=clock)
    for i in range(9):
        stats.record_call("candles", latency_ms=10.0 * (i + 1), ok=i % 3 != 0)
    assert stats.error_rate_pct() is None and stats.latency_p95_ms() is None

    stats.record_call("candles", latency_ms=2000.0, ok=True)
    assert stats.error_rate_pct() == pytest.approx(30.0)
    assert stats.latency_p95_ms() == 2000.0  # nearest rank: the 10th of 10

    clock.now += 61
    assert stats.error_rate_pct() is None  # the window moved past every sample


def test_order_success_rate_counts_rejections() -> None:
    stats = OperationStats(window_seconds=60, min_samples=20, clock=Clock())
    for i in range(20):
        stats.record_order(accepted=i >= 3)

    assert stats.order_success_pct() == pytest.approx(85.0)


def test_exposure_and_volatility_readings() -> None:
    assert (
        exposure_pct({"BTC-USD": Decimal("0.02"), "ETH-USD": Decimal("1")}, {"BTC-USD": Decimal(40000)}, Decimal(1000))
        == 80.0
    )
    assert volatility_pct([]) is None
