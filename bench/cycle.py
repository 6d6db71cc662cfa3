"""Benchmark: 10,000 paper cycles of the bot core (simulated exchange in memory, ledger on SQLite).

Prints cycles per second, p50/p99 cycle time, peak RSS after 1,000 and 10,000 cycles (memory must stay
flat), and as its last line one JSON object. Run: .venv/bin/python bench/cycle.py [--cycles N]
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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--cycles", type=int, default=10_000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        settings = load_settings(
            profile="dev",
            state_dir=Path(tmp),
            log_dir=Path(tmp) / "logs",
            broker="simulated",
            cycle_interval_seconds=0,
        )
        exchange = SimulatedExchange(ReplayMarketData(wrap=True))
        bot = build_bot(settings, broker=exchange, ledger=Ledger(settings.database_url))
        bot.start()
        durations: list[float] = []
        marks: dict[int, tuple[float, float]] = {}

        def record(report: CycleReport) -> None:
            durations.append(report.duration_ms)
            if report.cycle in (1_000, args.cycles):
                marks[report.cycle] = (peak_rss_mb(), rss_mb())

        started = time.perf_counter()
        summary = bot.run(args.cycles, interval_seconds=0, on_cycle=record)
        elapsed = time.perf_counter() - started
        bot.stop()
    ordered = sorted(durations)
    p50 = statistics.median(ordered)
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    rss_1k = marks.get(1_000, (peak_rss_mb(), rss_mb()))
    rss_end = marks.get(args.cycles, (peak_rss_mb(), rss_mb()))
    print(
        f"workload: {summary.cycles} paper cycles, 1 symbol, {summary.orders} orders, {summary.fills} fills, "
        "ledger on SQLite (WAL), simulated exchange in memory"
    )
    print(f"cycles per second: {summary.cycles / elapsed:,.0f} ({elapsed:.2f} s wall for {summary.cycles} cycles)")
    print(f"cycle time: p50 {p50:.3f} ms, p99 {p99:.3f} ms, max {ordered[-1]:.3f} ms over {len(ordered)} cycles")
    print(f"peak RSS after 1,000 cycles: {rss_1k[0]:.1f} MB (current {rss_1k[1]:.1f} MB)")
    print(
        f"peak RSS after {summary.cycles:,} cycles: {rss_end[0]:.1f} MB (current {rss_end[1]:.1f} MB); "
        f"growth {rss_end[0] - rss_1k[0]:+.1f} MB over {summary.cycles - 1_000:,} cycles"
    )
    print(
        json.dumps(
            {
                "cycles_per_s": round(summary.cycles / elapsed, 1),
                "p50_ms": round(p50, 3),
                "p99_ms": round(p99, 3),
                "rss_mb_1k": round(rss_1k[0], 1),
                "rss_mb_10k": round(rss_end[0], 1),
            }
        )
    )


if __name__ == "__main__":
    main()
