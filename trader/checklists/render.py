"""Checklist results as the artifacts show them: the pass/warn/fail table, the markdown summary, the quarterly
report."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from trader.checklists.daily import CheckResult
from trader.checklists.quarterly import Section
from trader.checklists.report import markdown_table

ICON = {"pass": "✅", "warn": "⚠️", "fail": "❌"}


def checklist_rows(results: Sequence[CheckResult]) -> list[dict[str, Any]]:
    """One table row per item: item, status in capitals, evidence."""
    return [{"item": r.item, "status": r.status.upper(), "evidence": r.evidence} for r in results]


def checklist_description(title: str, status: str, at: datetime, profile: str) -> str:
    """The table's one-line description."""
    return f"{title}, {at:%Y-%m-%d %H:%M} UTC, profile {profile}: {status.upper()}"


def checklist_markdown(title: str, results: Sequence[CheckResult], status: str, at: datetime, profile: str) -> str:
    """The summary: overall status, counts, one line per item with its icon and evidence."""
    lines = [
        f"# {title}: {status.upper()}",
        "",
        f"{at:%Y-%m-%d %H:%M} UTC, profile `{profile}`: "
        f"{sum(r.status == 'pass' for r in results)} pass, {sum(r.status == 'warn' for r in results)} warn, "
        f"{sum(r.status == 'fail' for r in results)} fail.",
        "",
    ]
    lines += [f"- {ICON[r.status]} **{r.item}**: {r.evidence}" for r in results]
    return "\n".join(lines)


def checklist_log_line(results: Sequence[CheckResult]) -> str:
    """item=status for every item, comma-separated (the run's log line)."""
    return ", ".join(f"{r.item}={r.status}" for r in results)


def quarterly_markdown(sections: Sequence[Section], days: int, at: datetime, profile: str) -> str:
    """The quarterly review report: one section per part, its verdict, evidence and table."""
    lines = [f"# Quarterly review, {days} days to {at:%Y-%m-%d} UTC, profile `{profile}`", ""]
    for section in sections:
        result = section.result
        lines += [
            f"## {ICON[result.status]} {section.title}",
            "",
            result.evidence,
            "",
            markdown_table(section.rows),
            "",
        ]
    return "\n".join(lines)
