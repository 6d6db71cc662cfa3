"""Tasks of the reconcile flow: the audit (broker reads, retried with backoff), its artifacts, the drift and
data-quality incidents."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from prefect import Task, task
from prefect.artifacts import create_markdown_artifact, create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.schemas.objects import TaskRun
from prefect.states import State
from prefect.tasks import exponential_backoff
from sqlalchemy.exc import OperationalError

from trader.alerts.incidents import IncidentDesk
from trader.alerts.notifier import notifier_from_settings
from trader.brokers.base import Broker
from trader.errors import BrokerUnavailable
from trader.ledger import Ledger
from trader.reconcile.audit import AuditReport, audit, record_data_quality_incident, record_drift_incident
from trader.runtime import build_broker
from trader.settings import Settings, load_settings

DIFFERENCES_ARTIFACT = "reconcile-differences"
SUMMARY_ARTIFACT = "reconcile-summary"


def open_audit_broker(settings: Settings) -> Broker:
    """The profile's broker for reading: the paper account is loaded but never written (the running bot owns it)."""
    return build_broker(settings, read_only=True)


def is_transient(task: Task[Any, Any], task_run: TaskRun, state: State[Any]) -> bool:
    """Retry what may pass on its own (broker or database unreachable), not a refused key or a bug."""
    try:
        state.result()
    except (BrokerUnavailable, OperationalError):
        return True
    except Exception:
        return False
    return False


@task(
    name="audit-ledger-against-broker",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=5),
    retry_jitter_factor=0.5,
    retry_condition_fn=is_transient,
    timeout_seconds=300,
    tags=["broker", "ledger"],
    cache_policy=NO_CACHE,
)
def audit_ledger(broker: Broker, ledger: Ledger, balance_tolerance_quote: Decimal, repair: bool) -> AuditReport:
    """Compare the ledger with the broker and repair it (safe to retry: every repair is idempotent)."""
    return audit(broker, ledger, broker.now(), balance_tolerance_quote=balance_tolerance_quote, repair=repair)


@task(name="publish-reconcile-report", retries=2, retry_delay_seconds=[2, 10], cache_policy=NO_CACHE)
def publish_report(report: AuditReport, profile: str) -> None:
    """A table artifact (one row per difference, or one "no differences" row) and a markdown summary."""
    create_table_artifact(
        table=report.rows(),
        key=DIFFERENCES_ARTIFACT,
        description=f"profile {profile}: {report.summary()}",
    )
    create_markdown_artifact(markdown=report.markdown(), key=SUMMARY_ARTIFACT, description=f"profile {profile}")


@task(
    name="update-drift-incident",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=is_transient,
    tags=["ledger"],
    cache_policy=NO_CACHE,
)
def update_drift_incident(ledger: Ledger, report: AuditReport) -> int | None:
    """Open the balance-drift incident when drift is beyond tolerance (announced through Slack when it is
    configured), resolve it on a clean run."""
    desk = IncidentDesk(ledger, notifier_from_settings(load_settings()))
    return record_drift_incident(ledger, report, datetime.now(UTC), desk=desk)


@task(
    name="update-data-quality-incident",
    retries=3,
    retry_delay_seconds=exponential_backoff(backoff_factor=2),
    retry_condition_fn=is_transient,
    tags=["ledger"],
    cache_policy=NO_CACHE,
)
def update_data_quality_incident(ledger: Ledger, report: AuditReport) -> int | None:
    """Open the DATA_QUALITY incident when the broker's answers failed their suite (the run repaired nothing),
    resolve it when they pass."""
    desk = IncidentDesk(ledger, notifier_from_settings(load_settings()))
    return record_data_quality_incident(ledger, report, datetime.now(UTC), desk=desk)
