"""Benchmark: paper cycles of the bot core (simulated exchange in memory, ledger on SQLite), every guard on.

Prints cycles per second, p50/p99 cycle time (wall, and the process's CPU time per cycle, which another
process on the machine does not inflate), the p50 of the first and of the last 1,000 cycles (cycle cost must
not grow with how long the bot has run: target last/first <= 1.2), peak RSS after 1,000 cycles and at the end;
then the same bot on a 300-candle window with the Great Expectations data gate off and on, in the same run;
as its last line one JSON object.
Run: .venv/bin/python bench/cycle.py [--cycles N] [--gate-cycles N] [--window 300] [--no-gate]
  10,000 cycles (the default): targets p50 <= 0.5 ms, p99 <= 5 ms. 100,000 cycles: --cycles 100000 --no-gate.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trader.bot import CycleReport  # noqa: E402
from trader.brokers.simulated import SimulatedExchange  # noqa: E402
from trader.ledger import Ledger  # noqa: E402
from trader.market import ReplayMarketData  # noqa: E402
from trader.runtime import build_bot  # noqa: E402
from trader.settings import load_settings  # noqa: E402


def rss_mb() -> float:
    """Current resident set size in MB (VmRSS)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def gate_run(window: int, cycles: int, *, gate: bool, symbols: str) -> tuple[list[float], list[float]]:
    """Cycle times and the gate's own times (ms) of one bot whose strategy reads `window` candles per symbol."""
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            profile="dev",
            state_dir=Path(tmp),
            log_dir=Path(tmp) / "logs",
            broker="simulated",
            cycle_interval_seconds=0,
            trading_symbols=symbols,
            strategy_fast_window=20,
            strategy_slow_window=window - 1,  # the crossover reads slow_window + 1 candles
            data_gate_enabled=gate,
            risk_max_data_age_seconds=600,
        )
        exchange = SimulatedExchange(ReplayMarketData(start=window + 1, wrap=True))
        bot = build_bot(settings, broker=exchange, ledger=Ledger(settings.database_url, account=settings.account))
        if bot.gate is not None:
            bot.gate.warm_up()  # the import happens beside start-up (see TradingBot.start), not in a cycle
        bot.start()
        assert bot.strategy.warmup == window, bot.strategy.warmup
        cycle_ms: list[float] = []
        gate_ms: list[float] = []

        def record(report: CycleReport) -> None:
            cycle_ms.append(report.duration_ms)
            gate_ms.append(report.gate_ms)

        bot.run(cycles, interval_seconds=0, on_cycle=record)
        bot.stop()
    return cycle_ms, gate_ms


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=10_000)
    parser.add_argument("--gate-cycles", type=int, default=300)
    parser.add_argument("--window", type=int, default=300)
    parser.add_argument("--no-gate", action="store_true", help="skip the data-gate runs")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            profile="dev",
            state_dir=Path(tmp),
            log_dir=Path(tmp) / "logs",
            broker="simulated",
            cycle_interval_seconds=0,
            data_gate_enabled=False,
        )
        exchange = SimulatedExchange(ReplayMarketData(wrap=True))
        bot = build_bot(settings, broker=exchange, ledger=Ledger(settings.database_url, account=settings.account))
        guards = sorted(bot.risk.monitor.rules)
        bot.start()
        durations: list[float] = []
        cpu: list[float] = []
        marks: dict[int, tuple[float, float]] = {}
        cpu_mark = [time.process_time()]

        def record(report: CycleReport) -> None:
            durations.append(report.duration_ms)
            now = time.process_time()  # from one callback to the next: the cycle plus stepping the market
            cpu.append((now - cpu_mark[0]) * 1000)
            cpu_mark[0] = now
            if report.cycle in (1_000, args.cycles):
                marks[report.cycle] = (peak_rss_mb(), rss_mb())

        started = time.perf_counter()
        summary = bot.run(args.cycles, interval_seconds=0, on_cycle=record)
        elapsed = time.perf_counter() - started
        bot.stop()
    n = len(durations)
    ordered = sorted(durations)
    p50 = statistics.median(ordered)
    p99 = ordered[min(n - 1, int(n * 0.99))]
    cpu_p50 = statistics.median(cpu)
    cpu_p99 = pct(cpu, 0.99)
    head, tail = durations[:1_000], durations[-1_000:]
    first_1k, last_1k = statistics.median(head), statistics.median(tail)
    cpu_first_1k, cpu_last_1k = statistics.median(cpu[:1_000]), statistics.median(cpu[-1_000:])
    ratio = last_1k / first_1k
    rss_1k = marks.get(1_000, (peak_rss_mb(), rss_mb()))
    rss_end = marks.get(args.cycles, (peak_rss_mb(), rss_mb()))
    print(
        f"workload: {summary.cycles:,} paper cycles, 1 symbol, {summary.orders} orders, {summary.fills} fills, "
        f"{len(guards)} guards on ({', '.join(guards)}), ledger on SQLite (WAL), simulated exchange in memory"
    )
    print(f"cycles per second: {summary.cycles / elapsed:,.0f} ({elapsed:.2f} s wall for {summary.cycles:,} cycles)")
    print(
        f"cycle time over {n:,} cycles: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {ordered[-1]:.3f} ms "
        f"(targets p50 <= 0.5 ms, p99 <= 5 ms: {'met' if p50 <= 0.5 and p99 <= 5 else 'MISSED'}); "
        f"CPU time per cycle p50 {cpu_p50:.3f} ms, p99 {cpu_p99:.3f} ms"
    )
    print(
        f"growth: p50 of cycles 1-{len(head):,} {first_1k:.3f} ms vs cycles {n - len(tail) + 1:,}-{n:,} "
        f"{last_1k:.3f} ms, ratio {ratio:.2f} (target <= 1.2: {'met' if ratio <= 1.2 else 'MISSED'}); "
        f"CPU p50 {cpu_first_1k:.3f} ms vs {cpu_last_1k:.3f} ms"
    )
    print(f"peak RSS after 1,000 cycles: {rss_1k[0]:.1f} MB (current {rss_1k[1]:.1f} MB)")
    print(
        f"peak RSS after {summary.cycles:,} cycles: {rss_end[0]:.1f} MB (current {rss_end[1]:.1f} MB); "
        f"growth {rss_end[0] - rss_1k[0]:+.1f} MB over {summary.cycles - 1_000:,} cycles"
    )
    figures: dict[str, float] = {
        "cycles": summary.cycles,
        "cycles_per_s": round(summary.cycles / elapsed, 1),
        "p50_ms": round(p50, 3),
        "p99_ms": round(p99, 3),
        "cpu_p50_ms": round(cpu_p50, 3),
        "cpu_p99_ms": round(cpu_p99, 3),
        "p50_ms_first_1k": round(first_1k, 3),
        "p50_ms_last_1k": round(last_1k, 3),
        "p50_last_over_first": round(ratio, 2),
        "cpu_p50_ms_first_1k": round(cpu_first_1k, 3),
        "cpu_p50_ms_last_1k": round(cpu_last_1k, 3),
        "rss_mb_1k": round(rss_1k[0], 1),
        "rss_mb_end": round(rss_end[0], 1),
    }
    if args.no_gate:
        print(json.dumps(figures))
        return
    for symbols in ("BTC-USD", "BTC-USD,ETH-USD"):
        count = len(symbols.split(","))
        off, _ = gate_run(args.window, args.gate_cycles, gate=False, symbols=symbols)
        on, gate_only = gate_run(args.window, args.gate_cycles, gate=True, symbols=symbols)
        added = statistics.median(on) - statistics.median(off)
        print(
            f"data gate, {args.gate_cycles} cycles on a {args.window}-candle window x {count} symbol(s): "
            f"cycle p50 {statistics.median(off):.2f} ms gate off vs {statistics.median(on):.2f} ms gate on "
            f"(+{added:.2f} ms; the gate itself p50 {statistics.median(gate_only):.2f} ms, "
            f"p95 {pct(gate_only, 0.95):.2f} ms); target <= 5 ms added (issue 13): {'met' if added <= 5 else 'MISSED'}"
        )
        figures[f"gate_off_p50_ms_{count}sym"] = round(statistics.median(off), 2)
        figures[f"gate_on_p50_ms_{count}sym"] = round(statistics.median(on), 2)
        figures[f"gate_added_ms_{count}sym"] = round(added, 2)
    print(json.dumps(figures))


if __name__ == "__main__":
    main()
