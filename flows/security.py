"""security-audit: the perpetuals runbook's key-compromise audit ("audit recent activity, check for unauthorized
trades, file a security incident") every day, for each account.

For each account on a Coinbase key: every order the exchange has from the last `hours` whose client_order_id is not
in the account's ledger is unauthorized (trader/security/audit.py, the function `perps-bot keys audit` calls); any
finding opens the SEV-1 incident security:unauthorized-orders, a clean window resolves it. A table artifact
(key security-audit, suffixed with the account) lists the unauthorized orders with their fills, or one "none" row.
A finding does not fail the run: the SEV-1 is the alert; only an audit that cannot run fails (then the flow's own
hook opens its incident). A paper account has no exchange key to audit: its row says so.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger
from prefect.states import State

from flows.accounts import for_each_account
from flows.hooks import RUNBOOK_HOOKS
from prefect_adapter.runs import current_flow_run_id, flow_run_url
from tasks.security import audit_unauthorized_orders, publish_security_audit, update_unauthorized_orders_incident
from trader.security.audit import not_audited_rows
from trader.settings import Settings


@flow(name="security-audit", log_prints=False, persist_result=False, timeout_seconds=900, **RUNBOOK_HOOKS)
def security_audit(profile: str = "dev", hours: float = 24, account: str | None = None) -> dict[str, Any] | State:
    """The key audit of each account (unset or "all": every declared account; a name: that one) over the last
    `hours`; returns its figures, by account when ACCOUNTS_FILE declares accounts."""
    return for_each_account(
        "security-audit", account, profile, lambda settings: audit_account(settings, hours), figures=audit_figures
    )


def audit_account(settings: Settings, hours: float) -> dict[str, Any]:
    """Audit the exchange's orders against the ledger, open or resolve the SEV-1, publish the table."""
    logger = get_run_logger()
    if settings.broker_kind != "coinbase":
        reason = f"account {settings.account} trades on the simulated exchange: no Coinbase key to audit"
        publish_security_audit(settings, not_audited_rows(reason), reason)
        logger.info("%s", reason)
        return {"status": "not audited", "orders": 0, "unauthorized": 0, "fills": 0, "incident_id": None}
    audit = audit_unauthorized_orders(settings, hours)
    # The incident before the artifact: a finding is a SEV-1 whether or not the table can be published.
    incident_id = update_unauthorized_orders_incident(settings, audit, flow_run_url(current_flow_run_id()))
    publish_security_audit(settings, audit.rows(), audit.summary())
    logger.info("%s", audit.summary())
    return {
        "status": "unauthorized orders" if audit.unauthorized else "clean",
        "orders": audit.orders,
        "unauthorized": len(audit.unauthorized),
        "fills": len(audit.fills),
        "incident_id": incident_id,
    }


def audit_figures(result: dict[str, Any]) -> dict[str, object]:
    """An account's row in the security-audit summary: clean or not, the counts, the incident."""
    return {
        "status": result["status"],
        "orders": result["orders"],
        "unauthorized": result["unauthorized"],
        "fills": result["fills"],
        "incident": result["incident_id"] or "",
    }
