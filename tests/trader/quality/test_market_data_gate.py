"""The market data gate: Great Expectations (real, ephemeral context) on 300-candle windows, clean and broken."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from trader.domain import Candle
from trader.quality.market_data import MarketDataGate

ROOT = Path(__file__).resolve().parents[3]
START = datetime(2026, 11, 21, 5, 0, tzinfo=UTC)
BARS = 300
NOW = START + timedelta(minutes=BARS)  # the newest bar (index 299) closed just now: 60 s old


def window(bars: int = BARS, base: str = "100") -> list[Candle]:
    """A clean 1-minute window: rising prices, low <= open/close <= high, positive volume."""
    price = Decimal(base)
    return [
        Candle(
            start=START + timedelta(minutes=i),
            open=price + i,
            high=price + i + 2,
            low=price + i - 1,
            close=price + i + 1,
            volume=Decimal("3.5"),
        )
        for i in range(bars)
    ]


def at(i: int) -> str:
    return (START + timedelta(minutes=i)).isoformat()


@pytest.fixture(scope="module")
def gate() -> MarketDataGate:
    built = MarketDataGate(interval_seconds=60, max_age_seconds=180)
    built.warm_up()
    return built


def only_line(result_failures: tuple[str, ...]) -> str:
    assert len(result_failures) == 1, result_failures
    return result_failures[0]


def test_a_clean_300_candle_window_passes(gate: MarketDataGate) -> None:
    result = gate.check({"BTC-USD": window(), "ETH-USD": window(base="3000")}, NOW)

    assert result.passed and result.failures == () and result.failed_checks == ()
    assert result.checked_rows == 2 * BARS and result.duration_ms > 0


def test_a_gap_fails_naming_the_symbol_and_the_bar(gate: MarketDataGate) -> None:
    candles = window()
    del candles[150]  # 07:30 is missing: 07:31 comes 120 s after 07:29

    result = gate.check({"BTC-USD": candles, "ETH-USD": window()}, NOW)

    assert not result.passed and result.failed_checks == ("bar_spacing",)
    line = only_line(result.failures)
    assert line.startswith("BTC-USD: gap/out-of-order bars (step_seconds != 60)")
    assert f"gap (step 120 s) at {at(151)}" in line


def test_an_out_of_order_pair_fails(gate: MarketDataGate) -> None:
    candles = window()
    candles[100], candles[101] = candles[101], candles[100]

    result = gate.check({"ETH-USD": candles}, NOW)

    line = only_line(result.failures)
    assert not result.passed and line.startswith("ETH-USD: gap/out-of-order")
    assert f"out of order (step -60 s) at {at(100)}" in line


def test_a_duplicate_timestamp_fails(gate: MarketDataGate) -> None:
    candles = window()
    candles[200] = replace(candles[200], start=candles[199].start)

    result = gate.check({"BTC-USD": candles}, NOW)

    assert not result.passed
    assert f"duplicate timestamp at {at(199)}" in only_line(result.failures)


@pytest.mark.parametrize("price", ["0", "-5"])
def test_a_non_positive_price_fails(gate: MarketDataGate, price: str) -> None:
    candles = window()
    candles[42] = replace(candles[42], low=Decimal(price))

    result = gate.check({"BTC-USD": candles}, NOW)

    assert not result.passed and "positive_prices" in result.failed_checks
    assert f"BTC-USD: non-positive price (min(open, high, low, close) <= 0): price {price} at {at(42)}" in (
        result.failures
    )


def test_a_negative_volume_fails(gate: MarketDataGate) -> None:
    candles = window()
    candles[7] = replace(candles[7], volume=Decimal("-0.5"))

    result = gate.check({"BTC-USD": candles}, NOW)

    assert result.failed_checks == ("volume_non_negative",)
    assert only_line(result.failures) == f"BTC-USD: negative volume: volume -0.5 at {at(7)}"


def test_a_high_below_the_close_fails(gate: MarketDataGate) -> None:
    candles = window()
    candles[12] = replace(candles[12], high=candles[12].close - 1)  # high 112 < close 113

    result = gate.check({"ETH-USD": candles}, NOW)

    assert result.failed_checks == ("high_consistent",)
    assert only_line(result.failures) == f"ETH-USD: high below open/close: high 112 < max(open, close) 113 at {at(12)}"


def test_a_low_above_the_open_fails(gate: MarketDataGate) -> None:
    candles = window()
    candles[3] = replace(candles[3], low=candles[3].open + Decimal("0.5"))

    result = gate.check({"ETH-USD": candles}, NOW)

    assert result.failed_checks == ("low_consistent",)
    assert "ETH-USD: low above open/close: low 103.5 > min(open, close) 103" in only_line(result.failures)


def test_a_bar_missing_a_value_fails(gate: MarketDataGate) -> None:
    candles = window()
    candles[5] = replace(candles[5], close=Decimal("NaN"))

    result = gate.check({"BTC-USD": candles}, NOW)

    assert "complete_bars" in result.failed_checks
    assert any(line.startswith("BTC-USD: bar missing a value") for line in result.failures)


def test_stale_timestamps_fail_freshness_for_that_symbol_only(gate: MarketDataGate) -> None:
    stale = window()[:-10]  # the feed stopped 10 bars ago: the newest bar is 660 s old

    result = gate.check({"BTC-USD": window(), "ETH-USD": stale}, NOW)

    assert result.failed_checks == ("freshness",)
    assert only_line(result.failures) == (
        f"ETH-USD: stale data (newest bar older than 180 s, or in the future): newest bar 660 s old (max 180 s) "
        f"at {at(289)}"
    )


def test_a_bar_from_the_future_fails_freshness(gate: MarketDataGate) -> None:
    result = gate.check({"BTC-USD": window()}, START + timedelta(minutes=BARS - 2))

    assert result.failed_checks == ("freshness",)
    assert "newest bar starts 60 s in the future" in only_line(result.failures)


def test_an_empty_window_is_a_failure_not_an_exception(gate: MarketDataGate) -> None:
    result = gate.check({"BTC-USD": window(), "SOL-USD": []}, NOW)

    assert not result.passed and result.failures == ("SOL-USD: no candles",)
    assert result.failed_checks == ("no_candles",) and result.checked_rows == BARS


def test_counters_count_cycles_failures_and_each_failed_expectation() -> None:
    gate = MarketDataGate()
    stale_with_gap = window()[:-10]
    del stale_with_gap[5]

    gate.check({"BTC-USD": window()}, NOW)
    gate.check({"BTC-USD": stale_with_gap, "ETH-USD": []}, NOW)
    gate.check({"BTC-USD": window()[:-10]}, NOW)

    assert gate.counters == {
        "checked": 3,
        "failed": 2,
        "failed:bar_spacing": 1,
        "failed:freshness": 2,
        "failed:no_candles": 1,
    }


def test_detail_reports_every_expectation_with_counts(gate: MarketDataGate) -> None:
    candles = window()
    candles[7] = replace(candles[7], volume=Decimal("-1"))

    result = gate.check({"BTC-USD": candles, "ETH-USD": window()}, NOW, detail=True)

    outcomes = {o.check: o for o in result.outcomes}
    assert list(outcomes) == [c.name for c in gate.checks]
    assert [name for name, o in outcomes.items() if not o.success] == ["volume_non_negative"]
    volume = outcomes["volume_non_negative"]
    assert (volume.element_count, volume.unexpected_count) == (2 * BARS, 1)
    assert volume.unexpected_percent == pytest.approx(100 / 600)
    assert volume.unexpected_rows[0]["symbol"] == "BTC-USD"


def test_importing_the_gate_does_not_import_great_expectations_and_a_check_prints_no_progress() -> None:
    code = (
        "import logging, sys\n"
        "logging.basicConfig(level=logging.INFO)\n"
        "from trader.quality.market_data import MarketDataGate\n"
        "import trader.quality, trader.quality.reconciliation, trader.reconcile.audit\n"
        "gate = MarketDataGate()\n"
        "loaded = [m for m in ('great_expectations', 'pandas') if m in sys.modules]\n"
        "print(','.join(loaded) or 'none')\n"
        "from datetime import UTC, datetime, timedelta\n"
        "from decimal import Decimal as D\n"
        "from trader.domain import Candle\n"
        "t = datetime(2026, 1, 1, tzinfo=UTC)\n"
        "bars = [Candle(t + timedelta(minutes=i), D(2), D(3), D(1), D(2), D(-1)) for i in range(5)]\n"
        "result = gate.check({'BTC-USD': bars}, t + timedelta(minutes=5))\n"
        "print('great_expectations' in sys.modules, result.failed_checks)\n"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)

    assert run.returncode == 0, run.stderr
    assert run.stdout.splitlines() == ["none", "True ('volume_non_negative',)"]
    assert "Calculating Metrics" not in run.stderr and "docs site" not in run.stderr, run.stderr


def broken_windows() -> dict[str, list[Candle]]:
    """One 300-bar window per expectation, each broken for that expectation only (freshness: the caller's now)."""
    gap, negative, low_price, high_low, low_high, missing = (window() for _ in range(6))
    del gap[150]
    negative[7] = replace(negative[7], volume=Decimal("-0.5"))
    low_price[42] = replace(low_price[42], low=Decimal("0"))
    high_low[12] = replace(high_low[12], high=high_low[12].close - 1)
    low_high[3] = replace(low_high[3], low=low_high[3].open + Decimal("0.5"))
    missing[5] = replace(missing[5], close=Decimal("NaN"))
    return {
        "bar_spacing": gap,
        "volume_non_negative": negative,
        "positive_prices": low_price,
        "high_consistent": high_low,
        "low_consistent": low_high,
        "complete_bars": missing,
        "freshness": window()[:-10],
    }


def test_the_warm_suite_decides_like_great_expectations_public_validation(gate: MarketDataGate) -> None:
    from trader.quality import gx_runtime
    from trader.quality.market_data import ASSET, market_data_frame

    warm = gx_runtime.WarmSuite(gate.suite, gate.parameters)
    cases = {"clean": window(), **broken_windows()}

    for case, candles in cases.items():
        frame = market_data_frame({"BTC-USD": candles, "ETH-USD": window(base="3000")}, NOW, 60.0)
        public = gx_runtime.validate(ASSET, frame, gate.suite, parameters=gate.parameters)
        verdicts = [(o.check, o.success) for o in warm.validate(frame)]

        assert verdicts == [(o.check, o.success) for o in public], case
        assert [name for name, success in verdicts if not success] == ([] if case == "clean" else [case])


def test_each_cycle_validates_only_new_bars_and_a_bad_bar_fails_every_cycle_it_stays_in_the_window() -> None:
    gate = MarketDataGate(interval_seconds=60, max_age_seconds=180)
    series = window(BARS + 40)
    series[BARS + 5] = replace(series[BARS + 5], volume=Decimal("-2"))  # arrives at cycle 6, leaves at cycle 306

    results = [gate.check({"BTC-USD": series[i : i + BARS]}, START + timedelta(minutes=i + BARS)) for i in range(12)]

    assert [r.validated_rows for r in results[:3]] == [BARS, 2, 2]  # the new bar and the one that became first
    assert [r.passed for r in results] == [True] * 6 + [False] * 6
    expected = f"BTC-USD: negative volume: volume -2 at {at(BARS + 5)}"
    assert all(r.failures == (expected,) for r in results[6:])
    assert all(r.validated_rows == 3 for r in results[7:])  # the bad bar is never remembered as good


def test_a_bar_corrected_in_place_is_validated_again() -> None:
    gate = MarketDataGate(interval_seconds=60, max_age_seconds=180)
    candles = window()
    assert gate.check({"BTC-USD": candles}, NOW).passed

    candles[150] = replace(candles[150], low=candles[150].open + 5)  # same start, the exchange revised the bar
    result = gate.check({"BTC-USD": candles}, NOW)

    assert result.failed_checks == ("low_consistent",) and result.validated_rows == 2
    assert result.checked_rows == BARS
