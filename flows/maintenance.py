"""The runbook's end-of-day report and its weekly, monthly and quarterly maintenance as Prefect flows.

daily-report publishes the day's fills, fees, realized PnL per symbol, positions, equity change and guard
counters. The three maintenance flows run one task per runbook item like daily-checklist (flows/checklists.py):
each returns pass, warn or fail with its evidence; the flow publishes a table and a markdown artifact, stores
the run in checklist_runs, opens an incident per failed item and resolves the incidents of items that pass
again. A failing item does not fail the run; only a checklist that cannot run at all does.
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger

from flows.checklists import finish_checklist
from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import publish_markdown, publish_table
from prefect_adapter.secrets import load_settings
from tasks.ledger import migrate_ledger
from tasks.maintenance import (
    build_daily_report,
    cache_cleanup,
    capacity_planning,
    cost_vs_returns,
    database_maintenance,
    dependency_audit,
    incidents,
    log_archive,
    pass_rates,
    performance_review,
    quarter_performance,
    security_review,
    strategy_effectiveness,
)
from trader.alerts.severity import IncidentKind, Severity
from trader.checklists.daily import CheckResult
from trader.checklists.monthly import LOCK_FILE
from trader.checklists.quarterly import Section
from trader.checklists.render import quarterly_markdown
from trader.settings import Settings

# --- daily report -------------------------------------------------------------------------------------------------


@flow(
    name="daily-report",
    log_prints=False,
    persist_result=False,
    timeout_seconds=300,
    **RUNBOOK_HOOKS,
)
def daily_report_flow(profile: str = "dev", day: date | None = None) -> dict[str, Any]:
    """The end-of-day report of one UTC day (default: today); returns its totals."""
    logger = get_run_logger()
    settings = load_settings(profile=profile)
    migrate_ledger(settings)  # once here; the task's ledger does not
    report = build_daily_report(settings, day or datetime.now(UTC).date())
    publish_table(
        "daily-report-pnl",
        report.table(),
        description=f"Realized PnL per symbol, {report.day.isoformat()} UTC, profile {profile}",
    )
    publish_markdown("daily-report", report.markdown(profile))
    summary = report.summary()
    logger.info("daily report %s: %s", report.day.isoformat(), summary)
    return summary


# --- weekly maintenance -------------------------------------------------------------------------------------------


@flow(
    name="weekly-maintenance",
    log_prints=False,
    persist_result=False,
    timeout_seconds=1800,
    **RUNBOOK_HOOKS,
)
def weekly_maintenance(profile: str = "dev", days: int = 7) -> dict[str, str]:
    """The weekly tasks: performance, strategy effectiveness, log archive, database maintenance, cache cleanup."""
    settings = load_settings(profile=profile)
    migrate_ledger(settings)  # once here; the tasks' ledgers (threads) do not
    started = datetime.now(UTC)
    futures = [
        performance_review.submit(settings, started, days),
        strategy_effectiveness.submit(settings, started, days),
        log_archive.submit(settings),
        cache_cleanup.submit(settings),
    ]
    results: list[CheckResult] = [f.result() for f in futures]
    results.append(database_maintenance(settings))  # alone: VACUUM waits for the other tasks' transactions
    return _finish(settings, "weekly", "Weekly maintenance", "SEV-3", results, started)


# --- monthly maintenance ------------------------------------------------------------------------------------------


@flow(
    name="monthly-maintenance",
    log_prints=False,
    persist_result=False,
    timeout_seconds=600,
    **RUNBOOK_HOOKS,
)
def monthly_maintenance(profile: str = "dev", days: int = 30, lock_file: str | None = None) -> dict[str, str]:
    """The monthly tasks: security review, dependency audit against requirements.lock, cost vs returns."""
    settings = load_settings(profile=profile)
    migrate_ledger(settings)
    started = datetime.now(UTC)
    futures = [
        security_review.submit(settings, started, Path.cwd()),
        dependency_audit.submit(Path(lock_file) if lock_file else LOCK_FILE),
        cost_vs_returns.submit(settings, started, days),
    ]
    results: list[CheckResult] = [f.result() for f in futures]
    return _finish(settings, "monthly", "Monthly maintenance", "SEV-2", results, started)


# --- quarterly review ---------------------------------------------------------------------------------------------


@flow(
    name="quarterly-review",
    log_prints=False,
    persist_result=False,
    timeout_seconds=900,
    **RUNBOOK_HOOKS,
)
def quarterly_review(profile: str = "dev", days: int = 90) -> dict[str, str]:
    """The quarterly review report: performance, capacity planning, incidents, checklist pass rates."""
    settings = load_settings(profile=profile)
    migrate_ledger(settings)
    started = datetime.now(UTC)
    futures = [
        quarter_performance.submit(settings, started, days),
        capacity_planning.submit(settings, started, days),
        incidents.submit(settings, started, days),
        pass_rates.submit(settings, started, days),
    ]
    sections: list[Section] = [f.result() for f in futures]
    publish_markdown("quarterly-review-report", quarterly_markdown(sections, days, started, profile))
    results = [s.result for s in sections]
    return _finish(settings, "quarterly", "Quarterly review", "SEV-3", results, started)


# --- shared -------------------------------------------------------------------------------------------------------


def _finish(
    settings: Settings,
    checklist: str,
    title: str,
    severity: Severity,
    results: list[CheckResult],
    started: datetime,
) -> dict[str, str]:
    """finish_checklist for the maintenance flows: artifacts keyed by the flow's name, SEV-3 as degraded."""
    source = {"weekly": "weekly-maintenance", "monthly": "monthly-maintenance"}.get(checklist, "quarterly-review")
    kind = IncidentKind.DEGRADED_PERFORMANCE if severity == "SEV-3" else IncidentKind.PARTIAL_FUNCTIONALITY_LOSS
    return finish_checklist(settings, checklist, source, title, results, started, kind=kind, severity=severity)
