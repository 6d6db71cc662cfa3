"""The runbook's end-of-day report and its weekly, monthly and quarterly maintenance as Prefect flows.

daily-report publishes the day's fills, fees, realized PnL per symbol, positions, equity change and guard
counters. The three maintenance flows run one task per runbook item like daily-checklist (flows/checklists.py):
each returns pass, warn or fail with its evidence; the flow publishes a table and a markdown artifact, stores
the run in checklist_runs, opens an incident per failed item and resolves the incidents of items that pass
again. A failing item does not fail the run; only a checklist that cannot run at all does.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.tasks import exponential_backoff

from flows.checklists import ICON, finish_checklist
from flows.hooks import RUNBOOK_HOOKS
from trader.alerts.notifier import notifier_from_settings
from trader.alerts.severity import IncidentKind
from trader.checklists import monthly, quarterly, weekly
from trader.checklists.daily import CheckResult, guarded
from trader.checklists.quarterly import Section
from trader.checklists.report import DailyReport, daily_report, markdown_table
from trader.ledger import Ledger
from trader.ledger.models import Severity
from trader.runtime import build_broker
from trader.settings import Settings, load_settings
from trader.state.cold import cold_store_from_settings
from trader.state.manager import StateManager

RETRIES = 3  # every task that touches the network (broker, database, cold tier)
BACKOFF = exponential_backoff(backoff_factor=2)


# --- daily report -------------------------------------------------------------------------------------------------


@task(name="daily report", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def build_daily_report(settings: Settings, day: date) -> DailyReport:
    ledger = Ledger(settings.database_url, migrate=False)
    try:
        return daily_report(ledger, day, settings.state_dir / "heartbeat.json")
    finally:
        ledger.dispose()


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
    Ledger(settings.database_url).dispose()  # migrates once here; the task's ledger does not
    report = build_daily_report(settings, day or datetime.now(UTC).date())
    create_table_artifact(
        key="daily-report-pnl",
        table=report.table(),
        description=f"Realized PnL per symbol, {report.day.isoformat()} UTC, profile {profile}",
    )
    create_markdown_artifact(key="daily-report", markdown=report.markdown(profile))
    summary = report.summary()
    logger.info("daily report %s: %s", report.day.isoformat(), summary)
    return summary


# --- weekly maintenance -------------------------------------------------------------------------------------------


@task(name="performance review", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def performance_review(settings: Settings, now: datetime, days: int) -> CheckResult:
    ledger = Ledger(settings.database_url, migrate=False)
    return guarded("performance review", lambda: weekly.performance_review(ledger, now, days))


@task(name="strategy effectiveness", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def strategy_effectiveness(settings: Settings, now: datetime, days: int) -> CheckResult:
    ledger = Ledger(settings.database_url, migrate=False)
    heartbeat = settings.state_dir / "heartbeat.json"
    return guarded("strategy effectiveness", lambda: weekly.strategy_effectiveness(ledger, heartbeat, now, days))


@task(name="log rotation and archive", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def log_archive(settings: Settings) -> CheckResult:
    return guarded(
        "log rotation and archive", lambda: weekly.archive_logs(settings.log_dir, cold_store_from_settings(settings))
    )


@task(name="database maintenance", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def database_maintenance(settings: Settings) -> CheckResult:
    ledger = Ledger(settings.database_url, migrate=False)
    try:
        return guarded("database maintenance", lambda: weekly.database_maintenance(ledger))
    finally:
        ledger.dispose()


@task(name="cache cleanup", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def cache_cleanup(settings: Settings) -> CheckResult:
    def check() -> CheckResult:
        state = StateManager.from_settings(settings)
        try:
            return weekly.cache_cleanup(state)
        finally:
            state.close()

    return guarded("cache cleanup", check)


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
    ledger = Ledger(settings.database_url)  # migrates once here; the tasks' ledgers (threads) do not
    started = datetime.now(UTC)
    futures = [
        performance_review.submit(settings, started, days),
        strategy_effectiveness.submit(settings, started, days),
        log_archive.submit(settings),
        cache_cleanup.submit(settings),
    ]
    results: list[CheckResult] = [f.result() for f in futures]
    results.append(database_maintenance(settings))  # alone: VACUUM waits for the other tasks' transactions
    return _finish("weekly", "Weekly maintenance", "SEV-3", ledger, results, started, profile)


# --- monthly maintenance ------------------------------------------------------------------------------------------


@task(name="security review", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def security_review(settings: Settings, now: datetime, workdir: Path) -> CheckResult:
    def check() -> CheckResult:
        broker = build_broker(settings, read_only=True) if settings.broker_kind == "coinbase" else None
        return monthly.security_review(settings, broker, now, workdir)

    return guarded("security review", check)


@task(name="dependency audit", cache_policy=NO_CACHE)
def dependency_audit(lock_file: Path) -> CheckResult:
    return guarded("dependency audit", lambda: monthly.dependency_audit(lock_file))


@task(name="cost vs returns", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def cost_vs_returns(settings: Settings, now: datetime, days: int) -> CheckResult:
    ledger = Ledger(settings.database_url, migrate=False)
    return guarded("cost vs returns", lambda: monthly.cost_vs_returns(ledger, now, days))


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
    ledger = Ledger(settings.database_url)
    started = datetime.now(UTC)
    futures = [
        security_review.submit(settings, started, Path.cwd()),
        dependency_audit.submit(Path(lock_file) if lock_file else monthly.LOCK_FILE),
        cost_vs_returns.submit(settings, started, days),
    ]
    results: list[CheckResult] = [f.result() for f in futures]
    return _finish("monthly", "Monthly maintenance", "SEV-2", ledger, results, started, profile)


# --- quarterly review ---------------------------------------------------------------------------------------------


@task(name="performance", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def quarter_performance(settings: Settings, now: datetime, days: int) -> Section:
    ledger = Ledger(settings.database_url, migrate=False)
    return _section("performance", lambda: quarterly.performance(ledger, now, days))


@task(name="capacity planning", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def capacity_planning(settings: Settings, now: datetime, days: int) -> Section:
    ledger = Ledger(settings.database_url, migrate=False)
    months = max(1, round(days / 30))
    return _section("capacity planning", lambda: quarterly.capacity_planning(ledger, settings.state_dir, now, months))


@task(name="incidents", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def incidents(settings: Settings, now: datetime, days: int) -> Section:
    ledger = Ledger(settings.database_url, migrate=False)
    return _section("incidents", lambda: quarterly.incidents_by_severity(ledger, now - timedelta(days=days), now))


@task(name="checklist pass rates", retries=RETRIES, retry_delay_seconds=BACKOFF, cache_policy=NO_CACHE)
def pass_rates(settings: Settings, now: datetime, days: int) -> Section:
    ledger = Ledger(settings.database_url, migrate=False)
    return _section(
        "checklist pass rates", lambda: quarterly.checklist_pass_rates(ledger, now - timedelta(days=days), now)
    )


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
    ledger = Ledger(settings.database_url)
    started = datetime.now(UTC)
    futures = [
        quarter_performance.submit(settings, started, days),
        capacity_planning.submit(settings, started, days),
        incidents.submit(settings, started, days),
        pass_rates.submit(settings, started, days),
    ]
    sections: list[Section] = [f.result() for f in futures]
    lines = [f"# Quarterly review, {days} days to {started:%Y-%m-%d} UTC, profile `{profile}`", ""]
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
    create_markdown_artifact(key="quarterly-review-report", markdown="\n".join(lines))
    results = [s.result for s in sections]
    return _finish("quarterly", "Quarterly review", "SEV-3", ledger, results, started, profile)


# --- shared -------------------------------------------------------------------------------------------------------


def _section(title: str, build: Callable[[], Section]) -> Section:
    """A section whose check could not run is a fail section without a table (like guarded())."""
    holder: list[Section] = []

    def check() -> CheckResult:
        holder.append(build())
        return holder[0].result

    result = guarded(title, check)
    return holder[0] if holder else Section(title, result)


def _finish(
    checklist: str,
    title: str,
    severity: Severity,
    ledger: Ledger,
    results: list[CheckResult],
    started: datetime,
    profile: str,
) -> dict[str, str]:
    """finish_checklist for the maintenance flows: artifacts keyed by the flow's name, SEV-3 as degraded."""
    source = {"weekly": "weekly-maintenance", "monthly": "monthly-maintenance"}.get(checklist, "quarterly-review")
    kind = IncidentKind.DEGRADED_PERFORMANCE if severity == "SEV-3" else IncidentKind.PARTIAL_FUNCTIONALITY_LOSS
    notifier = notifier_from_settings(load_settings(profile=profile))
    statuses = finish_checklist(
        checklist, source, title, results, started, profile, ledger, notifier, kind=kind, severity=severity
    )
    ledger.dispose()
    return statuses
