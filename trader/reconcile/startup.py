"""Before the bot trades it makes the ledger agree with the broker: orders, fills, positions."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal

from trader.brokers.base import Broker
from trader.domain import Order, OrderStatus, OrderType, Side, TimeInForce
from trader.ledger import Ledger, OrderRecord

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


def vanished_order(record: OrderRecord, at: datetime, reason: str) -> Order:
    """The ledger's open order as cancelled because the broker no longer knows it; what it filled is kept."""
    return Order(
        order_id=record.exchange_order_id or "",
        client_order_id=record.client_order_id,
        symbol=record.symbol,
        side=Side(record.side),
        order_type=OrderType(record.order_type),
        quantity=record.quantity,
        status=OrderStatus.CANCELLED,
        created_at=record.created_at,
        limit_price=record.limit_price,
        stop_price=record.stop_price,
        time_in_force=TimeInForce(record.time_in_force),
        filled_quantity=record.filled_quantity,
        average_fill_price=record.average_fill_price,
        fees=record.fees,
        reject_reason=reason,
        updated_at=at,
    )


def import_missed_fills(broker: Broker, ledger: Ledger) -> int:
    """The broker's fills since shortly before the ledger's newest (trade ids dedupe the overlap); how many were new."""
    last = ledger.last_fill_time()
    return ledger.record_fills(broker.list_fills(since=last - FILL_OVERLAP if last else None))


def reconcile_on_start(broker: Broker, ledger: Ledger, at: datetime) -> StartupReconciliation:
    """Bring open orders, fills and positions in the ledger to the broker's state; never places an order."""
    report = StartupReconciliation()
    for record in ledger.open_orders():
        report.orders_checked += 1
        order = broker.find_order(record.client_order_id)
        if order is None and record.status == OrderStatus.PENDING_SUBMIT:
            ledger.mark_failed(record.client_order_id, "never reached the broker (startup reconciliation)", at)
            report.orders_never_sent += 1
        elif order is None:
            ledger.apply_order(vanished_order(record, at, "vanished from the broker (startup reconciliation)"))
            report.orders_vanished += 1
        elif order.status != record.status or order.filled_quantity != record.filled_quantity:
            ledger.apply_order(order)
            report.orders_updated += 1
    for order in broker.list_open_orders():
        if ledger.get_order(order.client_order_id) is None:
            ledger.apply_order(order)
            report.orders_imported += 1
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
