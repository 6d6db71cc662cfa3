"""reconcile: the runbook's regular balance reconciliation as a flow (audit, repair, publish, incident)."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from prefect import flow, get_run_logger

from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.secrets import load_settings
from tasks.ledger import migrate_ledger
from tasks.reconcile import (
    audit_ledger,
    open_audit_broker,
    publish_report,
    update_data_quality_incident,
    update_drift_incident,
)


@flow(
    name="reconcile",
    log_prints=False,
    persist_result=False,
    timeout_seconds=900,
    **RUNBOOK_HOOKS,
)
def reconcile(
    profile: str = "dev", balance_tolerance_quote: Decimal = Decimal("1"), repair: bool = True
) -> dict[str, Any]:
    """Audit the ledger against the broker, repair it from the broker's truth, publish every difference, and open
    (drift beyond tolerance) or resolve (clean) the balance-drift incident; broker answers that fail their
    data-quality checks repair nothing and open the data-quality incident. Never places or cancels an order."""
    logger = get_run_logger()
    settings = load_settings(profile=profile)
    broker = open_audit_broker(settings)
    migrate_ledger(settings)
    report = audit_ledger(settings, broker, balance_tolerance_quote, repair)
    publish_report(report, profile)
    incident_id = update_drift_incident(settings, report)
    data_quality_incident_id = update_data_quality_incident(settings, report)
    logger.info(report.summary())
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
