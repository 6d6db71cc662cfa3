"""The morning checklist's "market data quality" item: the market-data suite (real gx) over a day of candles on the
paper exchange, and the bot's live gate counters from its heartbeat."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from trader.brokers.simulated import SimulatedExchange
from trader.checklists import daily
from trader.domain import Candle
from trader.market import ReplayMarketData

START = datetime(2026, 11, 20, 7, 0, tzinfo=UTC)
BARS = 1440
SYMBOLS = ["BTC-USD", "ETH-USD"]


def day(base: str) -> list[Candle]:
    price = Decimal(base)
    return [
        Candle(START + timedelta(minutes=i), price, price + 2, price - 1, price + 1, Decimal("1.5"))
        for i in range(BARS)
    ]


def paper(candles: dict[str, list[Candle]]) -> SimulatedExchange:
    """The paper exchange with the replay at its last bar: broker.candles(symbol, 1440) is the whole day."""
    return SimulatedExchange(ReplayMarketData.from_candles(candles, start=BARS - 1))


def clean() -> dict[str, list[Candle]]:
    return {"BTC-USD": day("64000"), "ETH-USD": day("3000")}


def heartbeat(tmp_path: Path, data_gate: dict[str, Any] | None) -> Path:
    beat = tmp_path / "heartbeat.json"
    beat.write_text(json.dumps({"cycles": 5, **({"data_gate": data_gate} if data_gate is not None else {})}))
    return beat


def run(broker: SimulatedExchange, beat: Path, previous: int | None = None) -> daily.DataQualityReport:
    return daily.market_data_quality(broker, SYMBOLS, beat, previous_gate_failed=previous, max_age_seconds=180)


def test_a_clean_day_without_gate_counters_passes(tmp_path: Path) -> None:
    report = run(paper(clean()), heartbeat(tmp_path, None))

    assert report.result.status == "pass"
    assert report.result.evidence == (
        "24 h suite: 2 symbols, 2880 bars, 7/7 expectations pass; bot gate: no gate counters yet"
    )
    assert [r["expectation"] for r in report.rows] == [
        "bar_spacing",
        "positive_prices",
        "volume_non_negative",
        "high_consistent",
        "low_consistent",
        "complete_bars",
        "freshness",
    ]
    assert all(r["success"] and r["unexpected_count"] == 0 and r["symbols"] == "BTC-USD, ETH-USD" for r in report.rows)


def test_a_gap_in_the_day_fails_and_names_the_symbol(tmp_path: Path) -> None:
    candles = clean()
    shifted = [replace(c, start=c.start + timedelta(minutes=1)) for c in candles["ETH-USD"][700:-1]]
    candles["ETH-USD"] = candles["ETH-USD"][:700] + shifted + candles["ETH-USD"][-1:]  # 18:40 missing, 06:59 twice

    report = run(paper(candles), heartbeat(tmp_path, None))

    assert report.result.status == "fail" and "FAILED: ETH-USD: gap/out-of-order bars" in report.result.evidence
    spacing = report.rows[0]
    assert (spacing["expectation"], spacing["symbols"], spacing["success"]) == ("bar_spacing", "ETH-USD", False)
    assert spacing["unexpected_count"] == 2 and spacing["unexpected_percent"] == round(100 * 2 / 2880, 3)
    assert spacing["observed_value"].startswith("ETH-USD: gap (step 120 s) at 2026-11-20T18:41:00+00:00")


def test_gate_failures_since_the_previous_checklist_warn(tmp_path: Path) -> None:
    beat = heartbeat(tmp_path, {"checked": 500, "failed": 3, "last_failures": ["BTC-USD: stale data (...)"]})

    report = run(paper(clean()), beat, previous=1)

    assert report.result.status == "warn"
    assert "bot gate: 3 of 500 cycles failed, 2 since the previous checklist" in report.result.evidence
    assert "BTC-USD: stale data" in report.result.evidence
    live = report.rows[-1]
    assert (live["expectation"], live["success"], live["unexpected_count"]) == ("bot gate (live cycles)", False, 2)
    assert report.result.detail == "bot gate: checked=500 failed=3"


@pytest.mark.parametrize(("previous", "status"), [(3, "pass"), (7, "warn"), (None, "warn")])
def test_only_new_gate_failures_count(tmp_path: Path, previous: int | None, status: str) -> None:
    """Unchanged since the last checklist: pass; fewer than before (the bot restarted) or no previous: all new."""
    beat = heartbeat(tmp_path, {"checked": 40, "failed": 3, "last_failures": []})

    assert run(paper(clean()), beat, previous=previous).result.status == status


def test_the_previous_checklists_count_is_read_back_from_its_results() -> None:
    results = [
        {"item": "disk space", "status": "pass", "evidence": "x", "detail": ""},
        daily.CheckResult("market data quality", "warn", "...", "bot gate: checked=500 failed=3").row(),
    ]

    assert daily.previous_gate_failed(json.dumps(results)) == 3
    assert daily.previous_gate_failed(json.dumps(results[:1])) is None
    assert daily.previous_gate_failed(None) is None
