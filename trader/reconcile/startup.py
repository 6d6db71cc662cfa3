"""Before the bot trades it makes the ledger agree with the broker: orders, fills, positions.

Orders are judged and repaired by the same rules as the audit's (trader/reconcile/orders.py), over the startup
scope: the ledger's open orders and the broker's open orders.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from trader.brokers.base import Broker
from trader.ledger import Ledger
from trader.reconcile.orders import Verdict, check_orders, repair_order, startup_scope

log = logging.getLogger(__name__)

# Fills are imported from a little before the newest one the ledger holds; trade ids dedupe the overlap.
FILL_OVERLAP = timedelta(minutes=5)


@dataclass
class StartupReconciliation:
    orders_checked: int = 0
    orders_updated: int = 0
    orders_never_sent: int = 0
    orders_vanished: int = 0
    orders_imported: int = 0
    fills_imported: int = 0
    positions_corrected: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"startup reconciliation: {self.orders_checked} open orders checked, {self.orders_updated} updated, "
            f"{self.orders_never_sent} never sent, {self.orders_vanished} vanished, "
            f"{self.orders_imported} imported from broker, {self.fills_imported} fills imported, "
            f"positions corrected: {', '.join(self.positions_corrected) or 'none'}"
        )


def import_missed_fills(broker: Broker, ledger: Ledger) -> int:
    """The broker's fills since shortly before the ledger's newest (trade ids dedupe the overlap); how many were new."""
    last = ledger.last_fill_time()
    return ledger.record_fills(broker.list_fills(since=last - FILL_OVERLAP if last else None))


def reconcile_on_start(broker: Broker, ledger: Ledger, at: datetime) -> StartupReconciliation:
    """Bring open orders, fills and positions in the ledger to the broker's state; never places an order."""
    report = StartupReconciliation()
    scope = startup_scope()
    for check in check_orders(broker, ledger, scope, at, broker.list_open_orders()):
        if check.verdict == Verdict.MISSING_LOCALLY:
            report.orders_imported += 1
        else:
            report.orders_checked += 1
        report.orders_never_sent += check.verdict == Verdict.NEVER_SENT
        report.orders_vanished += check.verdict == Verdict.VANISHED
        report.orders_updated += check.verdict == Verdict.DIFFERS
        repair_order(ledger, check, at, scope)
    report.fills_imported = import_missed_fills(broker, ledger)
    ours = ledger.positions()
    for position in broker.positions():
        mine = ours.pop(position.symbol, None)
        if mine is None or mine.quantity != position.quantity:
            ledger.set_position(position.symbol, position.quantity, position.average_entry_price, at)
            report.positions_corrected.append(position.symbol)
    for symbol in ours:
        ledger.set_position(symbol, Decimal(0), Decimal(0), at)
        report.positions_corrected.append(symbol)
    log.info(report.summary())
    return report
