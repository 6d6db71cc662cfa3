"""What the market data gate adds to a bot cycle: the Great Expectations suite on a sliding 300-candle window.

    .venv/bin/python bench/data_gate.py [--cycles 200] [--window 300]

Workload: the window each symbol's strategy reads (default 300 one-minute candles), sliding by one bar per cycle as
in the paper bot (every cycle brings one new bar per symbol), for 1 and 2 symbols. Two gates on the same cycles, in
the same run, interleaved so both see the same machine load:
- old: the whole window validated every cycle with GX's public path (a batch of the ephemeral context's pandas data
  source, BOOLEAN_ONLY), as the gate did before it kept a warm suite;
- new: MarketDataGate.check() as the bot calls it (only bars not yet known good plus each symbol's newest bar, on a
  warm suite).
Each cycle's verdicts are compared (they must be equal); then one bad bar is put into the window and both must fail
it. Figures: p50 and p95 wall time per cycle in ms, and the p50 of the thread's CPU time (on a shared, loaded
machine wall time mostly measures waiting for a core), with the workload printed beside each. The last line is one
JSON object (gate_ms_p50_<n>sym for the new gate, old_ms_p50_<n>sym for the old way). Goal: new p50 <= 5 ms.
Last, GX's own floor (gx_floor_ms_p50): the warm suite on a frame of a single bar, the least a cycle validated by
GX can cost whatever the gate does around it.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trader.domain import Candle  # noqa: E402
from trader.quality import gx_runtime  # noqa: E402
from trader.quality.market_data import ASSET, MarketDataGate, market_data_frame  # noqa: E402

START = datetime(2026, 11, 21, tzinfo=UTC)
SYMBOLS = ("BTC-USD", "ETH-USD")


def bars(count: int, base: Decimal) -> list[Candle]:
    """A clean one-minute series: low <= open/close <= high, positive volume."""
    series = []
    for i in range(count):
        open_, close = base + i % 17, base + (i + 1) % 17
        series.append(
            Candle(
                start=START + timedelta(minutes=i),
                open=open_,
                high=max(open_, close) + 3,
                low=min(open_, close) - 2,
                close=close,
                volume=Decimal("1.25") + i % 5,
            )
        )
    return series


def old_check(gate: MarketDataGate, candles: dict[str, list[Candle]], now: datetime) -> bool:
    """The gate before: the whole window through GX's public path, every cycle."""
    frame = market_data_frame(candles, now, gate.interval_seconds)
    return all(o.success for o in gx_runtime.validate(ASSET, frame, gate.suite, parameters=gate.parameters))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def run(symbols: int, window: int, cycles: int) -> dict[str, float]:
    series = {s: bars(window + cycles + 1, Decimal(100 * (i + 1))) for i, s in enumerate(SYMBOLS[:symbols])}
    gate = MarketDataGate(interval_seconds=60, max_age_seconds=180)
    gate.warm_up()
    new_ms: list[float] = []
    old_ms: list[float] = []
    new_cpu_ms: list[float] = []
    old_cpu_ms: list[float] = []
    rows: list[int] = []
    for cycle in range(cycles + 1):
        candles = {s: series[s][cycle : cycle + window] for s in series}
        now = candles[SYMBOLS[0]][-1].start + timedelta(seconds=60)
        started, cpu = time.perf_counter(), time.thread_time()
        result = gate.check(candles, now)
        new, new_cpu = (time.perf_counter() - started) * 1000, (time.thread_time() - cpu) * 1000
        started, cpu = time.perf_counter(), time.thread_time()
        old = old_check(gate, candles, now)
        old_took, old_cpu = (time.perf_counter() - started) * 1000, (time.thread_time() - cpu) * 1000
        if not old or result.passed != old:
            raise AssertionError(f"cycle {cycle}: the gate says {result.passed}, the old way {old} (want True)")
        if cycle:  # cycle 0 validates the whole window once: the start-up cost, not a cycle's
            new_ms.append(new)
            old_ms.append(old_took)
            new_cpu_ms.append(new_cpu)
            old_cpu_ms.append(old_cpu)
            rows.append(result.validated_rows)
    # One bad bar in the middle of the window: both ways must fail it, with the same failure line.
    candles = {s: series[s][cycles : cycles + window] for s in series}
    broken = list(candles[SYMBOLS[0]])
    broken[window // 2] = replace(broken[window // 2], volume=Decimal("-1"))
    candles[SYMBOLS[0]] = broken
    now = broken[-1].start + timedelta(seconds=60)
    result = gate.check(candles, now)
    fresh = MarketDataGate(interval_seconds=60, max_age_seconds=180).check(candles, now)
    if result.passed or old_check(gate, candles, now) or result.failures != fresh.failures:
        raise AssertionError(f"a negative volume passed or was worded differently: {result} vs {fresh}")
    workload = f"{window}-candle window x {symbols} symbol(s), one new bar per symbol per cycle, {cycles} cycles"
    new_p50, old_p50 = statistics.median(new_ms), statistics.median(old_ms)
    print(
        f"{workload}: gate p50 {new_p50:.2f} ms, p95 {pct(new_ms, 0.95):.2f} ms "
        f"({statistics.median(rows):.0f} rows to GX per cycle) vs old way (whole window, every cycle) "
        f"p50 {old_p50:.2f} ms, p95 {pct(old_ms, 0.95):.2f} ms: {old_p50 / new_p50:.1f}x; CPU time p50 "
        f"{statistics.median(new_cpu_ms):.2f} ms vs {statistics.median(old_cpu_ms):.2f} ms; "
        f"goal <= 5 ms: {'met' if new_p50 <= 5 else 'MISSED'}",
        flush=True,
    )
    return {
        f"gate_ms_p50_{symbols}sym": round(new_p50, 2),
        f"gate_ms_p95_{symbols}sym": round(pct(new_ms, 0.95), 2),
        f"old_ms_p50_{symbols}sym": round(old_p50, 2),
        f"old_ms_p95_{symbols}sym": round(pct(old_ms, 0.95), 2),
        f"gate_cpu_ms_p50_{symbols}sym": round(statistics.median(new_cpu_ms), 2),
        f"old_cpu_ms_p50_{symbols}sym": round(statistics.median(old_cpu_ms), 2),
    }


def gx_floor(cycles: int) -> float:
    """GX's own floor: the same suite, warm, on a frame of one bar (the least any validation by GX can cost)."""
    gate = MarketDataGate(interval_seconds=60, max_age_seconds=180)
    window = bars(2, Decimal(100))
    frame = market_data_frame(
        {SYMBOLS[0]: window}, window[-1].start + timedelta(seconds=60), 60, rows={SYMBOLS[0]: [1]}
    )
    warm = gx_runtime.WarmSuite(gate.suite, gate.parameters)
    took = []
    for _ in range(cycles):
        started = time.perf_counter()
        if not all(o.success for o in warm.validate(frame)):
            raise AssertionError("a clean bar failed the warm suite")
        took.append((time.perf_counter() - started) * 1000)
    floor = statistics.median(took)
    expectations = len(gate.checks)
    print(
        f"GX floor: the warm suite ({expectations} expectations) on a 1-bar frame, {cycles} times: p50 {floor:.2f} ms"
    )
    return round(floor, 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--cycles", type=int, default=200)
    parser.add_argument("--window", type=int, default=300)
    args = parser.parse_args()
    print(f"{os.cpu_count()} cores, load {os.getloadavg()[0]:.1f}; importing Great Expectations", flush=True)
    started = time.perf_counter()
    MarketDataGate().warm_up()
    print(f"warm-up (import, context, suites): {time.perf_counter() - started:.1f} s", flush=True)
    figures: dict[str, float] = {"window": args.window, "cycles": args.cycles}
    for symbols in (1, 2):
        figures.update(run(symbols, args.window, args.cycles))
    figures["gx_floor_ms_p50"] = gx_floor(args.cycles)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
