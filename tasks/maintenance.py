"""Tasks of daily-report and of the weekly, monthly and quarterly maintenance flows: one per runbook item.

Like the daily checklist's (tasks/checklists.py), each returns pass, warn or fail with its evidence and never raises
(guarded()); each opens the ledger it reads and disposes it (migrate=False: the flow migrated once). The quarterly
review's tasks return a Section: a check and its table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date, datetime, timedelta
from pathlib import Path

from prefect import task

from tasks.checklists import with_ledger
from tasks.policies import LOCAL_CHECK, NETWORK_READ
from trader.checklists import monthly, quarterly, weekly
from trader.checklists.daily import CheckResult, guarded
from trader.checklists.quarterly import Section
from trader.checklists.report import DailyReport, daily_report
from trader.runtime import build_broker, open_ledger
from trader.settings import Settings

# --- daily report -------------------------------------------------------------------------------------------------


@task(name="daily report", **NETWORK_READ.options())
def build_daily_report(settings: Settings, day: date) -> DailyReport:
    with open_ledger(settings, migrate=False) as ledger:
        return daily_report(ledger, day, settings.state_dir / "heartbeat.json")


# --- weekly maintenance -------------------------------------------------------------------------------------------


@task(name="performance review", **NETWORK_READ.options())
def performance_review(settings: Settings, now: datetime, days: int) -> CheckResult:
    return guarded(
        "performance review", lambda: with_ledger(settings, lambda ledger: weekly.performance_review(ledger, now, days))
    )


@task(name="strategy effectiveness", **NETWORK_READ.options())
def strategy_effectiveness(settings: Settings, now: datetime, days: int) -> CheckResult:
    heartbeat = settings.state_dir / "heartbeat.json"
    return guarded(
        "strategy effectiveness",
        lambda: with_ledger(settings, lambda ledger: weekly.strategy_effectiveness(ledger, heartbeat, now, days)),
    )


@task(name="log rotation and archive", **NETWORK_READ.options())
def log_archive(settings: Settings) -> CheckResult:
    from trader.state.cold import cold_store_from_settings

    return guarded(
        "log rotation and archive", lambda: weekly.archive_logs(settings.log_dir, cold_store_from_settings(settings))
    )


@task(name="database maintenance", **NETWORK_READ.options())
def database_maintenance(settings: Settings) -> CheckResult:
    return guarded("database maintenance", lambda: with_ledger(settings, weekly.database_maintenance))


@task(name="cache cleanup", **NETWORK_READ.options())
def cache_cleanup(settings: Settings) -> CheckResult:
    def check() -> CheckResult:
        from trader.state.manager import StateManager

        state = StateManager.from_settings(settings)
        try:
            return weekly.cache_cleanup(state)
        finally:
            state.close()

    return guarded("cache cleanup", check)


# --- monthly maintenance ------------------------------------------------------------------------------------------


@task(name="security review", **NETWORK_READ.options())
def security_review(settings: Settings, now: datetime, workdir: Path) -> CheckResult:
    def check() -> CheckResult:
        broker = build_broker(settings, read_only=True) if settings.broker_kind == "coinbase" else None
        return monthly.security_review(settings, broker, now, workdir)

    return guarded("security review", check)


@task(name="dependency audit", **LOCAL_CHECK.options())
def dependency_audit(lock_file: Path) -> CheckResult:
    return guarded("dependency audit", lambda: monthly.dependency_audit(lock_file))


@task(name="cost vs returns", **NETWORK_READ.options())
def cost_vs_returns(settings: Settings, now: datetime, days: int) -> CheckResult:
    return guarded(
        "cost vs returns", lambda: with_ledger(settings, lambda ledger: monthly.cost_vs_returns(ledger, now, days))
    )


# --- quarterly review ---------------------------------------------------------------------------------------------


@task(name="performance", **NETWORK_READ.options())
def quarter_performance(settings: Settings, now: datetime, days: int) -> Section:
    return _section(settings, "performance", lambda ledger: quarterly.performance(ledger, now, days))


@task(name="capacity planning", **NETWORK_READ.options())
def capacity_planning(settings: Settings, now: datetime, days: int) -> Section:
    months = max(1, round(days / 30))
    return _section(
        settings,
        "capacity planning",
        lambda ledger: quarterly.capacity_planning(ledger, settings.state_dir, now, months),
    )


@task(name="incidents", **NETWORK_READ.options())
def incidents(settings: Settings, now: datetime, days: int) -> Section:
    return _section(
        settings, "incidents", lambda ledger: quarterly.incidents_by_severity(ledger, now - timedelta(days=days), now)
    )


@task(name="checklist pass rates", **NETWORK_READ.options())
def pass_rates(settings: Settings, now: datetime, days: int) -> Section:
    return _section(
        settings,
        "checklist pass rates",
        lambda ledger: quarterly.checklist_pass_rates(ledger, now - timedelta(days=days), now),
    )


def _section(settings: Settings, title: str, build: Callable[..., Section]) -> Section:
    """build(ledger) with a ledger of its own; a section whose check could not run is a fail section without a table
    (like guarded())."""
    holder: list[Section] = []

    def check() -> CheckResult:
        with open_ledger(settings, migrate=False) as ledger:
            holder.append(build(ledger))
        return holder[0].result

    result = guarded(title, check)
    return holder[0] if holder else Section(title, result)
