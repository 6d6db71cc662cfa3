"""reconcile: the runbook's regular balance reconciliation as a flow (audit, repair, publish, incident), per account."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from flows.accounts import for_each_account
from flows.hooks import RUNBOOK_HOOKS
from tasks.reconcile import (
    audit_ledger,
    open_audit_broker,
    publish_report,
    update_data_quality_incident,
    update_drift_incident,
)
from trader.settings import Settings


@flow(
    name="reconcile",
    log_prints=False,
    persist_result=False,
    timeout_seconds=900,
    **RUNBOOK_HOOKS,
)
def reconcile(
    profile: str = "dev",
    balance_tolerance_quote: Decimal = Decimal("1"),
    repair: bool = True,
    account: str | None = None,
) -> dict[str, Any] | State:
    """Reconcile each account (unset or "all": every declared account; a name: that one) with its broker."""
    return for_each_account(
        "reconcile",
        account,
        profile,
        lambda settings: reconcile_account(settings, balance_tolerance_quote, repair),
        figures=reconcile_figures,
    )


def reconcile_account(settings: Settings, balance_tolerance_quote: Decimal, repair: bool) -> dict[str, Any]:
    """Audit the ledger against the broker, repair it from the broker's truth, publish every difference, and open
    (drift beyond tolerance) or resolve (clean) the balance-drift incident; broker answers that fail their
    data-quality checks repair nothing and open the data-quality incident. Never places or cancels an order."""
    logger = get_run_logger()
    broker = open_audit_broker(settings)
    report = audit_ledger(settings, broker, balance_tolerance_quote, repair)
    publish_report(report, settings)
    incident_id = update_drift_incident(settings, report)
    data_quality_incident_id = update_data_quality_incident(settings, report)
    logger.info("%s: %s", settings.account, report.summary())
    return {
        "at": report.at.isoformat(),
        "differences": len(report.differences),
        "by_kind": {kind: n for kind, n in report.counts().items() if n},
        "drift_beyond_tolerance": report.drift_beyond_tolerance,
        "incident_id": incident_id,
        "repair": repair,
        "repair_blocked": report.repair_blocked,
        "input_failures": list(report.inputs.failures) if report.inputs else [],
        "data_quality_incident_id": data_quality_incident_id,
    }


def reconcile_figures(result: dict[str, Any]) -> dict[str, object]:
    """An account's row in the reconcile summary: drift or clean, differences, incidents."""
    blocked = result["repair_blocked"] or result["input_failures"]
    status = "drift" if result["drift_beyond_tolerance"] else "blocked" if blocked else "clean"
    return {
        "status": status,
        "differences": result["differences"],
        "incident": result["incident_id"] or "",
        "data quality incident": result["data_quality_incident_id"] or "",
    }
