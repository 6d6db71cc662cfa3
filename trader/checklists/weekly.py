"""The runbook's weekly maintenance as checks: performance review, strategy effectiveness, log archive,
database maintenance, cache cleanup. Each returns pass, warn or fail with its evidence (see daily.py).

Thresholds stated here: a week whose equity fell more than 5% from a peak warns, more than 10% fails; a
strategy (per symbol) that sent orders but got no fill, or whose closing trades lose on average, warns.
"""

from __future__ import annotations

import gzip
import hashlib
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

from trader.checklists.daily import CheckResult, Status
from trader.checklists.report import equity_series, max_drawdown, per_symbol, read_guard_counters, trades_between
from trader.ledger import Ledger
from trader.state.base import ObjectStore
from trader.state.manager import StateManager

DRAWDOWN_WARN = 0.05
DRAWDOWN_FAIL = 0.10
NOT_REFUSALS = ("daily_loss_trip",)  # guard counters that count trips, not refused orders
ROTATED_LOG = re.compile(r"^perps_bot\.log\.(?P<n>\d+)$")
LOG_PREFIX = "logs/"


# --- performance review -------------------------------------------------------------------------------------------


def performance_review(ledger: Ledger, now: datetime, days: int = 7) -> CheckResult:
    """PnL per symbol, win rate, average trade of the window, and the max drawdown of the equity snapshots."""
    start = now - timedelta(days=days)
    trades = trades_between(ledger, start, now)
    table = per_symbol(trades)
    equity = equity_series(ledger, start, now)
    drawdown = max_drawdown(equity)
    closes = trades[trades["closing"]]
    wins = int((closes["net"] > 0).sum())
    win_rate = wins / len(closes) if len(closes) else 0.0
    net = float(table["net"].sum()) if len(table) else 0.0
    average = net / len(closes) if len(closes) else 0.0
    status: Status = "fail" if drawdown > DRAWDOWN_FAIL else "warn" if drawdown > DRAWDOWN_WARN else "pass"
    symbols = (
        "; ".join(
            f"{s}: net {r.net:+.2f} ({int(r.trades)} trades, win {r.win_rate:.0%}, avg {r.avg_trade:+.2f})"
            for s, r in table.iterrows()
        )
        or "no fills"
    )
    snapshots = f"max drawdown {drawdown:.2%} over {len(equity)} equity snapshots" if len(equity) else "no snapshots"
    return CheckResult(
        "performance review",
        status,
        f"{days}d: net PnL {net:+.2f}, {len(trades)} fills, "
        f"{len(closes)} closing trades, win rate {win_rate:.0%}, average trade {average:+.2f}; {snapshots}; {symbols}",
    )


# --- strategy effectiveness ---------------------------------------------------------------------------------------


def strategy_effectiveness(ledger: Ledger, heartbeat_file: Path, now: datetime, days: int = 7) -> CheckResult:
    """Orders sent vs filled vs rejected (ledger) vs refused by risk (the bot's guard counters), per symbol."""
    import pandas as pd

    start = now - timedelta(days=days)
    orders = pd.DataFrame(
        [
            {"symbol": o.symbol, "status": o.status, "filled": float(o.filled_quantity)}
            for o in ledger.orders_created_between(start, now)
        ],
        columns=["symbol", "status", "filled"],
    )
    performance = per_symbol(trades_between(ledger, start, now))
    counters = read_guard_counters(heartbeat_file)
    refused = sum(v for k, v in (counters or {}).items() if k not in NOT_REFUSALS)
    refused_text = "refused by risk unknown (no heartbeat file)" if counters is None else f"{refused} refused by risk"
    if orders.empty:
        return CheckResult(
            "strategy effectiveness", "pass", f"{days}d: no orders sent; {refused_text} (since the bot started)"
        )
    by_symbol = orders.groupby("symbol").agg(
        sent=("status", "size"),
        filled=("filled", lambda q: int((q > 0).sum())),
        rejected=("status", lambda s: int(s.isin(["rejected", "failed"]).sum())),
    )
    status: Status = "pass"
    notes: list[str] = []
    for symbol, row in by_symbol.iterrows():
        expectancy = float(performance.loc[symbol, "avg_trade"]) if symbol in performance.index else 0.0
        closing = int(performance.loc[symbol, "trades"]) if symbol in performance.index else 0
        flags = []
        if row.filled == 0:
            flags.append("zero fills")
        if closing and expectancy < 0:
            flags.append(f"negative expectancy {expectancy:+.2f}/trade")
        if flags:
            status = "warn"
        notes.append(
            f"{symbol}: {int(row.sent)} sent, {int(row.filled)} filled, {int(row.rejected)} rejected"
            + (f" [{', '.join(flags)}]" if flags else f", expectancy {expectancy:+.2f}/trade")
        )
    return CheckResult(
        "strategy effectiveness", status, f"{days}d: " + "; ".join(notes) + f"; {refused_text} (since the bot started)"
    )


# --- log rotation and archive -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ArchivedLog:
    path: Path
    name: str  # the object name in the cold tier
    size: int
    compressed: int
    sha256: str


def archive_logs(log_dir: Path, cold: ObjectStore) -> CheckResult:
    """Rotated perps_bot.log.N files: gzip, upload under logs/, read back and compare sha256, then delete locally.

    The live perps_bot.log is the bot's RotatingFileHandler's to rotate; a rotated file that changes while it is
    archived (the bot rotated again) is left for the next run.
    """
    rotated = sorted(
        (p for p in log_dir.glob("perps_bot.log.*") if ROTATED_LOG.match(p.name)), key=lambda p: p.stat().st_mtime
    )
    if not rotated:
        return CheckResult("log rotation and archive", "pass", f"no rotated logs in {log_dir}")
    archived: list[ArchivedLog] = []
    problems: list[str] = []
    for path in rotated:
        before = path.stat()
        data = path.read_bytes()
        packed = gzip.compress(data, mtime=int(before.st_mtime))
        digest = hashlib.sha256(packed).hexdigest()
        stamp = datetime.fromtimestamp(before.st_mtime, tz=UTC)
        name = f"{LOG_PREFIX}{stamp:%Y/%m}/perps_bot-{stamp:%Y%m%dT%H%M%S}-{digest[:12]}.log.gz"
        cold.put(name, packed)
        if hashlib.sha256(cold.get(name)).hexdigest() != digest:
            problems.append(f"{path.name}: read-back sha256 differs, kept locally")
            continue
        after = path.stat()
        if (after.st_ino, after.st_size, after.st_mtime_ns) != (before.st_ino, before.st_size, before.st_mtime_ns):
            problems.append(f"{path.name}: changed while archiving, kept for the next run")
            continue
        path.unlink()
        archived.append(ArchivedLog(path, name, len(data), len(packed), digest))
    size = sum(a.size for a in archived)
    packed_size = sum(a.compressed for a in archived)
    evidence = (
        f"{len(archived)} files, {size} bytes ({packed_size} gzip'd) archived to {LOG_PREFIX} and verified by sha256: "
        + ", ".join(f"{a.path.name}->{a.name}" for a in archived)
    )
    if problems:
        return CheckResult("log rotation and archive", "fail", evidence + "; " + "; ".join(problems))
    return CheckResult("log rotation and archive", "pass", evidence)


# --- database maintenance -----------------------------------------------------------------------------------------


def database_maintenance(ledger: Ledger) -> CheckResult:
    """PostgreSQL VACUUM (ANALYZE) on an autocommit connection (it cannot run in a transaction); SQLite VACUUM
    and ANALYZE. Evidence: duration and size before/after."""
    before = ledger.database_size()
    started = time.perf_counter()
    statements = ledger.vacuum()
    seconds = time.perf_counter() - started
    after = ledger.database_size()
    return CheckResult(
        "database maintenance",
        "pass",
        f"{ledger.backend}: {' + '.join(statements)} in {seconds:.2f} s; "
        f"size {before / 2**20:.2f} MiB -> {after / 2**20:.2f} MiB",
    )


# --- cache cleanup ------------------------------------------------------------------------------------------------


def cache_cleanup(state: StateManager) -> CheckResult:
    """verify_coherence() of the hot tier against the warm tier; recover_hot() when they do not match."""
    report = state.verify_coherence()
    counts = (
        f"hot {state.hot.name}: {report.compared} keys compared, {len(report.mismatched)} mismatched, "
        f"{len(report.missing_from_hot)} missing from hot, {len(report.extra_in_hot)} extra in hot"
    )
    if report.match:
        return CheckResult("cache cleanup", "pass", f"{counts}; match, nothing to recover")
    recovered = state.recover_hot()
    if recovered is None:
        return CheckResult("cache cleanup", "fail", f"{counts}; recover_hot could not run (a tier is down)")
    after = state.verify_coherence()
    status: Status = "pass" if after.match else "fail"
    return CheckResult(
        "cache cleanup",
        status,
        f"{counts}; recovered {recovered} keys; afterwards {'match' if after.match else 'still no match'}",
    )
