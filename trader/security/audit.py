"""The key audit: every order on the exchange in a window that this platform did not place, with its fills.

An order is the platform's when its client_order_id is in the account's ledger: the one order path records every
order before it sends it, so any other order on the account was placed with the key from somewhere else. Any such
order opens one SEV-1 incident (fingerprint security:unauthorized-orders, refreshed by the next finding); a clean
window resolves it. The audit only reads the exchange: it never places or cancels an order.

One function for `perps-bot keys audit` and the security-audit deployment: both call audit_key_activity and
record_audit_incident, so the CLI and the schedule can never judge the same window differently.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Protocol

from trader.alerts.incidents import IncidentDesk
from trader.alerts.severity import IncidentKind
from trader.domain import Fill, Order
from trader.ledger import Ledger

AUDIT_FINGERPRINT = "security:unauthorized-orders"
COLUMNS = ("created", "order_id", "client_order_id", "symbol", "side", "quantity", "status", "fills")


class AuditedExchange(Protocol):
    """What the audit reads: every order in a window whatever placed it, and the fills since a time."""

    def orders_between(self, start: datetime, end: datetime) -> list[Order]: ...

    def list_fills(self, since: datetime | None = None) -> list[Fill]: ...


@dataclass(frozen=True)
class KeyAudit:
    """One audit window of one account: how many orders the exchange has, and those the platform did not place."""

    account: str
    start: datetime
    end: datetime
    orders: int
    unauthorized: tuple[Order, ...]
    fills: tuple[Fill, ...]  # the fills of the unauthorized orders

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    def summary(self) -> str:
        """One line: the window, the orders on the exchange, how many the platform did not place."""
        return (
            f"{self.orders} orders on the exchange between {self.start:%Y-%m-%d %H:%M} and {self.end:%Y-%m-%d %H:%M} "
            f"UTC; {len(self.unauthorized)} not placed by this platform (account {self.account})"
        )

    def rows(self) -> list[dict[str, str]]:
        """One row per unauthorized order (COLUMNS), its fills counted; a single "none" row for a clean window."""
        if not self.unauthorized:
            return [dict.fromkeys(COLUMNS, "") | {"order_id": "none", "status": "no unauthorized orders"}]
        return [
            {
                "created": f"{order.created_at:%Y-%m-%d %H:%M:%S}",
                "order_id": order.order_id,
                "client_order_id": order.client_order_id or "-",
                "symbol": order.symbol,
                "side": str(order.side),
                "quantity": str(order.quantity),
                "status": str(order.status),
                "fills": str(sum(1 for f in self.fills if f.order_id == order.order_id)),
            }
            for order in self.unauthorized
        ]


def not_audited_rows(reason: str) -> list[dict[str, str]]:
    """The table of an account that was not audited (a paper account has no exchange key): one row saying why."""
    return [dict.fromkeys(COLUMNS, "") | {"order_id": "none", "status": f"not audited: {reason}"}]


def audit_key_activity(
    exchange: AuditedExchange, ledger: Ledger, hours: float, *, account: str, now: datetime | None = None
) -> KeyAudit:
    """The orders created on the exchange in the last `hours` whose client_order_id the ledger does not have."""
    end = now or datetime.now(UTC)
    start = end - timedelta(hours=hours)
    orders = exchange.orders_between(start, end)
    fills = exchange.list_fills(since=start)
    ours = ledger.orders_by_client_id(o.client_order_id for o in orders if o.client_order_id)
    foreign = tuple(o for o in orders if o.client_order_id not in ours)
    foreign_ids = {o.order_id for o in foreign}
    return KeyAudit(account, start, end, len(orders), foreign, tuple(f for f in fills if f.order_id in foreign_ids))


def record_audit_incident(desk: IncidentDesk, audit: KeyAudit, *, flow_run_url: str | None = None) -> int | None:
    """Open (or refresh) the SEV-1 for unauthorized orders, with the first ten as evidence; resolve it when the
    window is clean. The incident's ledger id, None for a clean window."""
    if not audit.unauthorized:
        desk.resolve(AUDIT_FINGERPRINT)
        return None
    return desk.raise_incident(
        IncidentKind.UNAUTHORIZED_ACTIVITY,
        f"{len(audit.unauthorized)} orders on the exchange were not placed by this platform",
        f"in the last {audit.hours:g} h: {evidence(audit.unauthorized)}; {len(audit.fills)} fills. Rotate the key "
        "(perps-bot keys rotate --to backup) and review the account.",
        fingerprint=AUDIT_FINGERPRINT,
        flow_run_url=flow_run_url,
    )


def evidence(orders: Sequence[Order]) -> str:
    return "; ".join(f"{o.symbol} {o.side} {o.quantity} ({o.order_id})" for o in orders[:10])
