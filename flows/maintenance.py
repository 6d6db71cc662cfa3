"""The runbook's end-of-day report and its weekly, monthly and quarterly maintenance as Prefect flows.

daily-report publishes the day's fills, fees, realized PnL per symbol, positions, equity change and guard
counters. The three maintenance flows run one task per runbook item like daily-checklist (flows/checklists.py):
each returns pass, warn or fail with its evidence; the flow publishes a table and a markdown artifact, stores
the run in checklist_runs, opens an incident per failed item and resolves the incidents of items that pass
again. A failing item does not fail the run; only a checklist that cannot run at all does. Each runs for every
declared account, or the one `account` names (flows/accounts.py).
"""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from flows.accounts import bad_input, choose_accounts, for_each_account, migrate_accounts
from flows.checklists import checklist_figures, finish_checklist
from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import account_key, publish_markdown, publish_table
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
from trader.errors import ConfigError
from trader.settings import Settings

Result = dict[str, Any] | State  # one account's result (no accounts file, as before), else {account: result}

# --- daily report -------------------------------------------------------------------------------------------------


@flow(
    name="daily-report",
    log_prints=False,
    persist_result=False,
    timeout_seconds=300,
    **RUNBOOK_HOOKS,
)
def daily_report_flow(profile: str = "dev", day: date | None = None, account: str | None = None) -> Result:
    """The end-of-day report of one UTC day (default: today) for each account; returns its totals."""
    the_day = day or datetime.now(UTC).date()
    return for_each_account(
        "daily-report", account, profile, lambda settings: daily_report_of(settings, the_day), figures=dict
    )


def daily_report_of(settings: Settings, day: date) -> dict[str, Any]:
    """One account's report: the PnL table and the report, published."""
    report = build_daily_report(settings, day)
    publish_table(
        account_key("daily-report-pnl", settings.account),
        report.table(),
        description=f"Realized PnL per symbol, {report.day.isoformat()} UTC, account {settings.account}, "
        f"profile {settings.profile}",
    )
    publish_markdown(account_key("daily-report", settings.account), report.markdown(settings.profile))
    summary = report.summary()
    get_run_logger().info("daily report %s of %s: %s", report.day.isoformat(), settings.account, summary)
    return summary


# --- weekly maintenance -------------------------------------------------------------------------------------------


@flow(
    name="weekly-maintenance",
    log_prints=False,
    persist_result=False,
    timeout_seconds=1800,
    **RUNBOOK_HOOKS,
)
def weekly_maintenance(profile: str = "dev", days: int = 7, account: str | None = None) -> Result:
    """The weekly tasks: database maintenance once (every account's rows share the database), then for each
    account performance, strategy effectiveness, log archive and cache cleanup."""
    try:
        accounts = choose_accounts(account, profile)
    except ConfigError as error:
        return bad_input(error)
    migrate_accounts(accounts)
    # First and alone: VACUUM waits for other transactions; its result goes into every account's record.
    database = database_maintenance(accounts[0])
    return for_each_account(
        "weekly-maintenance",
        account,
        profile,
        lambda settings: weekly_of(settings, days, database),
        figures=checklist_figures,
        accounts=accounts,
        migrate=False,
    )


def weekly_of(settings: Settings, days: int, database: CheckResult) -> dict[str, str]:
    started = datetime.now(UTC)
    futures = [
        performance_review.submit(settings, started, days),
        strategy_effectiveness.submit(settings, started, days),
        log_archive.submit(settings),
        cache_cleanup.submit(settings),
    ]
    results: list[CheckResult] = [f.result() for f in futures]
    results.append(database)
    return _finish(settings, "weekly", "Weekly maintenance", "SEV-3", results, started)


# --- monthly maintenance ------------------------------------------------------------------------------------------


@flow(
    name="monthly-maintenance",
    log_prints=False,
    persist_result=False,
    timeout_seconds=600,
    **RUNBOOK_HOOKS,
)
def monthly_maintenance(
    profile: str = "dev", days: int = 30, lock_file: str | None = None, account: str | None = None
) -> Result:
    """The monthly tasks for each account: security review, dependency audit against requirements.lock, cost vs
    returns."""
    lock = Path(lock_file) if lock_file else LOCK_FILE
    return for_each_account(
        "monthly-maintenance",
        account,
        profile,
        lambda settings: monthly_of(settings, days, lock),
        figures=checklist_figures,
    )


def monthly_of(settings: Settings, days: int, lock_file: Path) -> dict[str, str]:
    started = datetime.now(UTC)
    futures = [
        security_review.submit(settings, started, Path.cwd()),
        dependency_audit.submit(lock_file),
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
def quarterly_review(profile: str = "dev", days: int = 90, account: str | None = None) -> Result:
    """The quarterly review report of each account: performance, capacity planning, incidents, checklist pass
    rates."""
    return for_each_account(
        "quarterly-review",
        account,
        profile,
        lambda settings: quarterly_of(settings, days),
        figures=checklist_figures,
    )


def quarterly_of(settings: Settings, days: int) -> dict[str, str]:
    started = datetime.now(UTC)
    futures = [
        quarter_performance.submit(settings, started, days),
        capacity_planning.submit(settings, started, days),
        incidents.submit(settings, started, days),
        pass_rates.submit(settings, started, days),
    ]
    sections: list[Section] = [f.result() for f in futures]
    publish_markdown(
        account_key("quarterly-review-report", settings.account),
        quarterly_markdown(sections, days, started, settings.profile),
    )
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
