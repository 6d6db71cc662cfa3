"""Tasks of daily-checklist: one per runbook item, each a check in trader/checklists/daily.py with its policy.

A check never raises: guarded() turns any failure into a fail result naming it, so one broken item does not abort
the checklist. Each task that reads the ledger opens its own and disposes it (open_ledger, migrate=False: the flow
migrated once before the tasks started, and tasks run in threads). What every checklist does with its results
(the checklist_runs row, one incident per failed item) is record_checklist_run() below.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

from prefect import task

from prefect_adapter.artifacts import account_key, publish_table
from tasks.policies import LOCAL_CHECK, NETWORK_READ
from trader.alerts.incidents import IncidentDesk, report_checks
from trader.alerts.severity import IncidentKind, Severity
from trader.checklists import daily
from trader.checklists.daily import CheckResult, guarded
from trader.ledger import ChecklistRun, Ledger
from trader.runtime import build_broker, open_ledger
from trader.settings import Settings

DATA_QUALITY_ARTIFACT = "data-quality"  # the market data quality item's table: one row per expectation


def with_ledger(settings: Settings, check: Callable[[Ledger], CheckResult]) -> CheckResult:
    """check(ledger) with a ledger opened for it and disposed after."""
    with open_ledger(settings, migrate=False) as ledger:
        return check(ledger)


@task(name="preflight", **NETWORK_READ.options())
def preflight(settings: Settings) -> CheckResult:
    broker = build_broker(settings, read_only=True)
    return guarded("preflight", lambda: daily.preflight(settings, broker))


@task(name="telemetry freshness", **LOCAL_CHECK.options())
def telemetry(settings: Settings, now: datetime) -> CheckResult:
    return guarded(
        "telemetry freshness", lambda: with_ledger(settings, lambda ledger: daily.telemetry_freshness(ledger, now))
    )


@task(name="overnight PnL and positions", **NETWORK_READ.options())
def pnl(settings: Settings, now: datetime) -> CheckResult:
    broker = build_broker(settings, read_only=True)
    return guarded(
        "overnight PnL and positions",
        lambda: with_ledger(settings, lambda ledger: daily.overnight_pnl_and_positions(ledger, broker, now)),
    )


@task(name="funding schedule", **NETWORK_READ.options())
def funding(settings: Settings, now: datetime) -> CheckResult:
    broker = build_broker(settings, read_only=True)
    return guarded(
        "funding schedule",
        lambda: with_ledger(settings, lambda ledger: daily.funding_schedule(settings, broker, ledger, now)),
    )


@task(name="ERROR/CRITICAL scan", **LOCAL_CHECK.options())
def log_scan(settings: Settings, since: datetime | None) -> CheckResult:
    return guarded("ERROR/CRITICAL scan", lambda: daily.log_scan(settings.log_file, since))


@task(name="heartbeat metrics", **LOCAL_CHECK.options())
def heartbeat(settings: Settings, now: datetime) -> CheckResult:
    return guarded("heartbeat metrics", lambda: daily.heartbeat_metrics(settings.state_dir / "heartbeat.json", now))


@task(name="risk guard counters", **LOCAL_CHECK.options())
def guards(settings: Settings) -> CheckResult:
    return guarded("risk guard counters", lambda: daily.guard_counters(settings.state_dir / "heartbeat.json"))


@task(name="market data quality", **NETWORK_READ.options())
def market_data_quality(settings: Settings, previous_gate_failed: int | None) -> CheckResult:
    """The market-data suite over 24 h of candles and the bot's gate counters; publishes the data-quality table."""

    def check() -> CheckResult:
        quality = daily.market_data_quality(
            build_broker(settings, read_only=True),
            settings.symbols,
            settings.state_dir / "heartbeat.json",
            previous_gate_failed=previous_gate_failed,
            max_age_seconds=settings.risk_max_data_age_seconds,
        )
        publish_table(
            account_key(DATA_QUALITY_ARTIFACT, settings.account),
            quality.rows,
            description=f"market data quality, profile {settings.profile}: {quality.result.evidence}"[:2000],
        )
        return quality.result

    return guarded("market data quality", check)


@task(name="disk space", **LOCAL_CHECK.options())
def disk(settings: Settings) -> CheckResult:
    return guarded("disk space", lambda: daily.disk_space(settings.state_dir))


@task(name="database size and connectivity", **NETWORK_READ.options())
def database(settings: Settings) -> CheckResult:
    return guarded("database size and connectivity", lambda: with_ledger(settings, daily.database))


@task(name="backup age", **NETWORK_READ.options())
def backup_age(settings: Settings, now: datetime) -> CheckResult:
    from trader.state.cold import cold_store_from_settings

    return guarded("backup age", lambda: daily.backup_age(cold_store_from_settings(settings), now))


@task(name="last-checklist-run", tags=["ledger"], **LOCAL_CHECK.options())
def last_checklist_run(settings: Settings, checklist: str) -> ChecklistRun | None:
    """The checklist's latest stored run (its start bounds the log scan; its results carry the gate counters)."""
    with open_ledger(settings, migrate=False) as ledger:
        runs = ledger.checklist_runs(checklist)
    return runs[0] if runs else None


@task(name="record-checklist-run", tags=["ledger", "alerts"], **LOCAL_CHECK.options())
def record_checklist_run(
    settings: Settings,
    checklist: str,
    results: list[CheckResult],
    started: datetime,
    finished: datetime,
    flow_run_id: str | None,
    flow_run_url: str | None,
    *,
    kind: IncidentKind,
    severity: Severity | None = None,
) -> None:
    """Store the run in checklist_runs, then open or resolve one incident per item (announced through Slack)."""
    with open_ledger(settings, migrate=False) as ledger:
        ledger.record_checklist_run(
            checklist, daily.worst(results), [r.row() for r in results], started, finished, flow_run_id
        )
        desk = IncidentDesk.on(ledger, settings)
        report_checks(desk, checklist, results, kind=kind, severity=severity, flow_run_url=flow_run_url)
