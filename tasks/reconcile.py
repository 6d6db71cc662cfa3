"""Tasks of the reconcile flow: the audit (broker reads, retried with backoff), its artifacts, the drift and
data-quality incidents."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

from prefect import task

from prefect_adapter.artifacts import account_key, publish_markdown, publish_table
from tasks.policies import ALERT, AUDIT, LEDGER_WRITE
from trader.alerts.incidents import IncidentDesk
from trader.brokers.base import Broker
from trader.reconcile.audit import AuditReport, audit, record_data_quality_incident, record_drift_incident
from trader.runtime import build_broker, open_ledger
from trader.settings import Settings

DIFFERENCES_ARTIFACT = "reconcile-differences"
SUMMARY_ARTIFACT = "reconcile-summary"


def open_audit_broker(settings: Settings) -> Broker:
    """The profile's broker for reading: the paper account is loaded but never written (the running bot owns it)."""
    return build_broker(settings, read_only=True)


@task(name="audit-ledger-against-broker", tags=["broker", "ledger"], **AUDIT.options())
def audit_ledger(settings: Settings, broker: Broker, balance_tolerance_quote: Decimal, repair: bool) -> AuditReport:
    """Compare the ledger with the broker and repair it (safe to retry: every repair is idempotent)."""
    with open_ledger(settings, migrate=False) as ledger:
        return audit(broker, ledger, broker.now(), balance_tolerance_quote=balance_tolerance_quote, repair=repair)


@task(name="publish-reconcile-report", **ALERT.options())
def publish_report(report: AuditReport, settings: Settings) -> None:
    """A table artifact (one row per difference, or one "no differences" row) and a markdown summary, keyed by the
    account (account_key)."""
    where = f"account {settings.account}, profile {settings.profile}"
    differences = account_key(DIFFERENCES_ARTIFACT, settings.account)
    publish_table(differences, report.rows(), description=f"{where}: {report.summary()}")
    publish_markdown(account_key(SUMMARY_ARTIFACT, settings.account), report.markdown(), description=where)


@task(name="update-drift-incident", tags=["ledger"], **LEDGER_WRITE.options())
def update_drift_incident(settings: Settings, report: AuditReport) -> int | None:
    """Open the balance-drift incident when drift is beyond tolerance (announced through Slack when it is
    configured), resolve it on a clean run."""
    with open_ledger(settings, migrate=False) as ledger:
        return record_drift_incident(ledger, report, datetime.now(UTC), desk=IncidentDesk.on(ledger, settings))


@task(name="update-data-quality-incident", tags=["ledger"], **LEDGER_WRITE.options())
def update_data_quality_incident(settings: Settings, report: AuditReport) -> int | None:
    """Open the DATA_QUALITY incident when the broker's answers failed their suite (the run repaired nothing),
    resolve it when they pass."""
    with open_ledger(settings, migrate=False) as ledger:
        desk = IncidentDesk.on(ledger, settings)
        return record_data_quality_incident(ledger, report, datetime.now(UTC), desk=desk)
