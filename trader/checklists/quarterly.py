"""The runbook's quarterly review as report sections: 90-day performance, infrastructure capacity planning,
incidents by severity and checklist pass rates. Each section is a check (pass, warn, fail with evidence) and the
rows of its table.

Thresholds stated here: a quarter with a negative net realized PnL warns; a disk projected to reach 80% full
within 6 months warns, within 2 fails (already above 80% fails); any SEV-1 in the quarter warns; a checklist
that passed less than 80% of its runs warns.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from trader.checklists.daily import CheckResult, Status
from trader.checklists.report import equity_series, max_drawdown, per_symbol, records, trades_between
from trader.ledger import ChecklistRun, Ledger

DISK_TARGET = 0.80
DISK_MONTHS_WARN = 6.0
DISK_MONTHS_FAIL = 2.0
PASS_RATE_WARN = 0.80


@dataclass
class Section:
    """One part of the quarterly report: its check and its table."""

    title: str
    result: CheckResult
    rows: list[dict[str, Any]] = field(default_factory=list)


def performance(ledger: Ledger, now: datetime, days: int = 90) -> Section:
    """Realized PnL per symbol, win rate, average trade and the equity drawdown of the window."""
    start = now - timedelta(days=days)
    trades = trades_between(ledger, start, now)
    table = per_symbol(trades)
    drawdown = max_drawdown(equity_series(ledger, start, now))
    net = float(table["net"].sum()) if len(table) else 0.0
    closes = trades[trades["closing"]]
    win_rate = float((closes["net"] > 0).mean()) if len(closes) else 0.0
    status: Status = "warn" if net < 0 else "pass"
    evidence = (
        f"{days}d: {len(trades)} fills, {len(closes)} closing trades, net realized {net:+.2f}, "
        f"fees {float(trades['fee'].sum()):.2f}, win rate {win_rate:.0%}, max drawdown {drawdown:.2%}"
    )
    return Section("performance", CheckResult("performance", status, evidence), records(table))


def capacity_planning(ledger: Ledger, disk_path: Path, now: datetime, months: int = 3) -> Section:
    """Database size, rows added per table per month, disk free, and months until the disk is 80% full: the
    database's and the machine's, so the rows of every account in it count (each account's run shows the same)."""
    import pandas as pd

    start = now - timedelta(days=30 * months)
    dated = [{"table": table, "at": at} for table, at in ledger.rows_dated_between(start, now, every_account=True)]
    frame = pd.DataFrame(dated, columns=["table", "at"])
    rows: list[dict[str, Any]] = []
    if not frame.empty:
        frame["month"] = pd.to_datetime(frame["at"], utc=True).dt.strftime("%Y-%m")
        growth = frame.groupby(["table", "month"]).size().rename("rows_added")
        rows = [{"table": t, "month": m, "rows_added": int(n)} for (t, m), n in growth.items()]
    size = ledger.database_size()
    counts = ledger.counts(every_account=True)
    total_rows = sum(counts.values())
    added_per_month = len(frame) / months
    bytes_per_month = size / total_rows * added_per_month if total_rows else 0.0
    disk_path.mkdir(parents=True, exist_ok=True)
    usage = shutil.disk_usage(disk_path)
    headroom = DISK_TARGET * usage.total - usage.used
    if headroom <= 0:
        status: Status = "fail"
        projection = f"already above {DISK_TARGET:.0%} used"
    elif bytes_per_month <= 0:
        status = "pass"
        projection = "no growth: never at this rate"
    else:
        until = headroom / bytes_per_month
        status = "fail" if until < DISK_MONTHS_FAIL else "warn" if until < DISK_MONTHS_WARN else "pass"
        projection = f"{until:,.1f} months until {DISK_TARGET:.0%} full at this rate"
    evidence = (
        f"database {size / 2**20:.2f} MiB, {total_rows} rows; {added_per_month:,.0f} rows/month "
        f"(~{bytes_per_month / 2**20:.2f} MiB/month); disk {usage.free / 2**30:.1f} GiB free of "
        f"{usage.total / 2**30:.1f} ({usage.used / usage.total:.0%} used); {projection}"
    )
    return Section("capacity planning", CheckResult("capacity planning", status, evidence), rows)


def incidents_by_severity(ledger: Ledger, start: datetime, end: datetime) -> Section:
    """Incidents opened in the window per severity: opened, still open, resolved, median time to resolve."""
    import pandas as pd

    incidents = ledger.incidents_opened_between(start, end)
    frame = pd.DataFrame(
        [
            {
                "severity": i.severity,
                "open": i.status == "open",
                "hours": (i.resolved_at - i.opened_at).total_seconds() / 3600 if i.resolved_at else None,
            }
            for i in incidents
        ],
        columns=["severity", "open", "hours"],
    )
    if frame.empty:
        return Section("incidents", CheckResult("incidents", "pass", "no incidents in the quarter"))
    table = frame.groupby("severity").agg(
        opened=("open", "size"), still_open=("open", "sum"), median_hours_to_resolve=("hours", "median")
    )
    table["still_open"] = table["still_open"].astype(int)
    rows = records(table.fillna(0.0))
    status: Status = "warn" if "SEV-1" in table.index else "pass"
    evidence = ", ".join(f"{r['severity']}: {r['opened']} ({r['still_open']} open)" for r in rows)
    return Section("incidents", CheckResult("incidents", status, evidence), rows)


def checklist_pass_rates(ledger: Ledger, start: datetime, end: datetime) -> Section:
    """Runs of each checklist in the window and the share that passed, warned, failed."""
    import pandas as pd

    runs: list[ChecklistRun] = [r for r in ledger.checklist_runs() if start <= r.started_at < end]
    frame = pd.DataFrame(
        [{"checklist": r.checklist, "status": r.status} for r in runs], columns=["checklist", "status"]
    )
    if frame.empty:
        return Section("checklist pass rates", CheckResult("checklist pass rates", "warn", "no checklist runs"))
    table = frame.groupby("checklist")["status"].value_counts().unstack(fill_value=0)
    for status_name in ("pass", "warn", "fail"):
        if status_name not in table.columns:
            table[status_name] = 0
    table["runs"] = table[["pass", "warn", "fail"]].sum(axis=1) + table.drop(columns=["pass", "warn", "fail"]).sum(
        axis=1
    )
    table["pass_rate"] = table["pass"] / table["runs"]
    table = table[["runs", "pass", "warn", "fail", "pass_rate"]]
    table.columns.name = None
    low = [str(name) for name, rate in table["pass_rate"].items() if rate < PASS_RATE_WARN]
    status: Status = "warn" if low else "pass"
    evidence = ", ".join(f"{name}: {int(r.runs)} runs, {r.pass_rate:.0%} pass" for name, r in table.iterrows())
    if low:
        evidence += f"; below {PASS_RATE_WARN:.0%}: {', '.join(low)}"
    return Section("checklist pass rates", CheckResult("checklist pass rates", status, evidence), records(table, 3))
