"""daily-checklist: the runbook's morning checklist, one task per item, as a Prefect flow, for each account.

Each task returns pass, warn or fail with its evidence. The flow publishes a table artifact (one row per item)
and a markdown summary (the market data quality item adds its own table, key "data-quality", one row per
expectation), stores the run in checklist_runs, opens an incident per failed item and resolves the
incidents of items that pass again. A failing item does not fail the flow run: the run completes and says
what failed (the incident is the alert); only a checklist that cannot run at all fails.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from flows.accounts import for_each_account
from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.artifacts import account_key, publish_markdown, publish_table
from prefect_adapter.runs import current_flow_run_id, flow_run_url
from tasks.checklists import (
    backup_age,
    database,
    disk,
    funding,
    guards,
    heartbeat,
    last_checklist_run,
    log_scan,
    market_data_quality,
    pnl,
    preflight,
    record_checklist_run,
    telemetry,
)
from trader.alerts.severity import IncidentKind, Severity
from trader.checklists.daily import CheckResult, previous_gate_failed, worst
from trader.checklists.render import checklist_description, checklist_log_line, checklist_markdown, checklist_rows
from trader.settings import Settings


@flow(
    name="daily-checklist",
    log_prints=False,
    persist_result=False,
    timeout_seconds=600,
    **RUNBOOK_HOOKS,
)
def daily_checklist(profile: str = "dev", account: str | None = None) -> dict[str, Any] | State:
    """The morning checklist of each account (unset or "all": every declared account; a name: that one); returns
    {item: status}, by account when ACCOUNTS_FILE declares accounts."""
    return for_each_account("daily-checklist", account, profile, morning_checklist, figures=checklist_figures)


def morning_checklist(settings: Settings) -> dict[str, str]:
    """One account's morning checklist: every item at once, then recorded, alerted and published."""
    started = datetime.now(UTC)
    previous = last_checklist_run(settings, "daily")
    futures = [
        preflight.submit(settings),
        telemetry.submit(settings, started),
        pnl.submit(settings, started),
        log_scan.submit(settings, previous.started_at if previous else None),
        heartbeat.submit(settings, started),
        guards.submit(settings),
        market_data_quality.submit(settings, previous_gate_failed(previous.results_json if previous else None)),
        disk.submit(settings),
        database.submit(settings),
        backup_age.submit(settings, started),
        funding.submit(settings, started),
    ]
    results: list[CheckResult] = [f.result() for f in futures]
    return finish_checklist(
        settings,
        "daily",
        "daily-checklist",
        "Morning checklist",
        results,
        started,
        kind=IncidentKind.PARTIAL_FUNCTIONALITY_LOSS,
    )


def checklist_figures(statuses: dict[str, str]) -> dict[str, object]:
    """A checklist's row in the accounts summary: its worst status and how many items passed, warned, failed."""
    counts = {status: sum(1 for s in statuses.values() if s == status) for status in ("pass", "warn", "fail")}
    worst_status = "fail" if counts["fail"] else "warn" if counts["warn"] else "pass"
    return {"status": worst_status, "items": len(statuses), **counts}


def finish_checklist(
    settings: Settings,
    checklist: str,
    key: str,
    title: str,
    results: list[CheckResult],
    started: datetime,
    *,
    kind: IncidentKind,
    severity: Severity | None = None,
) -> dict[str, str]:
    """What every checklist flow does with one account's results: store the run in checklist_runs, open or resolve
    one incident per item, publish the table artifact `key` and the markdown summary `key`-summary (suffixed with
    the account: prefect_adapter.artifacts.account_key)."""
    status = worst(results)
    run_id = current_flow_run_id()
    record_checklist_run(
        settings,
        checklist,
        results,
        started,
        datetime.now(UTC),
        run_id,
        flow_run_url(run_id),
        kind=kind,
        severity=severity,
    )
    profile = settings.profile
    table_key, summary_key = account_key(key, settings.account), account_key(f"{key}-summary", settings.account)
    publish_table(
        table_key, checklist_rows(results), description=checklist_description(title, status, started, profile)
    )
    publish_markdown(summary_key, checklist_markdown(title, results, status, started, profile))
    get_run_logger().info("%s %s (%s): %s", title, status.upper(), settings.account, checklist_log_line(results))
    return {r.item: r.status for r in results}
