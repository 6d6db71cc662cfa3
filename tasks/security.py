"""Tasks of the security-audit flow: the key audit's exchange reads, its SEV-1 incident and its table artifact.

The audit only reads (orders and fills on the exchange, client_order_ids in the ledger), so a broker or database
blip is retried safely; a refused key is not (a retry changes nothing: the run fails and its hook opens the flow's
incident). The incident is opened or resolved by its fingerprint, so a retried write refreshes the same one.
"""

from __future__ import annotations

from prefect import task

from prefect_adapter.artifacts import account_key, publish_table
from tasks.policies import ALERT, AUDIT, LEDGER_WRITE
from trader.alerts.incidents import open_incident_desk
from trader.brokers.coinbase import CoinbaseBroker
from trader.runtime import open_ledger
from trader.security.audit import KeyAudit, audit_key_activity, record_audit_incident
from trader.settings import Settings

AUDIT_ARTIFACT = "security-audit"


@task(name="audit-unauthorized-orders", tags=["broker", "ledger"], **AUDIT.options())
def audit_unauthorized_orders(settings: Settings, hours: float) -> KeyAudit:
    """Every order on the exchange in the last `hours` this platform did not place, with its fills."""
    broker = CoinbaseBroker.from_settings(settings)  # the account's active key (STATE_DIR/ACTIVE_KEY)
    with open_ledger(settings, migrate=False) as ledger:
        return audit_key_activity(broker, ledger, hours, account=settings.account)


@task(name="update-unauthorized-orders-incident", tags=["ledger", "alerts"], **LEDGER_WRITE.options())
def update_unauthorized_orders_incident(settings: Settings, audit: KeyAudit, flow_run_url: str | None) -> int | None:
    """Open (or refresh) the SEV-1 security:unauthorized-orders for a finding; resolve it for a clean window."""
    with open_incident_desk(settings, migrate=False) as desk:
        return record_audit_incident(desk, audit, flow_run_url=flow_run_url)


@task(name="publish-security-audit", **ALERT.options())
def publish_security_audit(settings: Settings, rows: list[dict[str, str]], summary: str) -> None:
    """The table artifact (one row per unauthorized order, or a single "none" row), keyed by the account."""
    publish_table(account_key(AUDIT_ARTIFACT, settings.account), rows, description=summary)
