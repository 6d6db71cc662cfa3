"""The order rules both reconciliations apply: how a ledger order is judged against the broker's, and how the
ledger is repaired from the broker's truth. Never places, edits or cancels an order.

One set of rules, two scopes (`OrderScope`):
- startup (trader/reconcile/startup.py): before the bot trades, the ledger's open orders and the broker's open
  orders; nothing is in flight, so a pending_submit order the broker does not know never got there.
- audit (trader/reconcile/audit.py): also every order the broker acknowledged that changed in the window, and the
  orders behind broker fills the ledger lacks; the bot may be running, so a young pending_submit is left alone.

The rules, per ledger order: looked up by exchange order id when the ledger has one, else by client_order_id;
- unknown to the broker and pending_submit: never sent (marked failed);
- unknown to the broker and open: vanished (marked cancelled, what it filled kept);
- unknown to the broker and closed: gone (nothing left to compare);
- known: status, size, filled size, limit price and average fill price compared; any difference takes the broker's
  order, and its size and prices when an edit on the exchange changed them.
An order the broker has and the ledger never saw is imported.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from trader.brokers.base import Broker
from trader.domain import Fill, Order, OrderStatus
from trader.errors import OrderNotFound
from trader.ledger import OPEN_STATUSES, Ledger, OrderRecord
from trader.ledger.mappers import order_of
from trader.ledger.types import canonical_decimal


class Verdict(StrEnum):
    IN_FLIGHT = "in_flight"  # pending_submit younger than the scope's grace: the running bot may be sending it
    NEVER_SENT = "never_sent"  # pending_submit, unknown to the broker
    VANISHED = "vanished"  # open in the ledger, unknown to the broker
    GONE = "gone"  # closed in the ledger, no longer returned by the broker
    MATCHES = "matches"
    DIFFERS = "differs"  # see OrderCheck.fields
    MISSING_LOCALLY = "missing_locally"  # the broker's order, never in the ledger


@dataclass(frozen=True)
class FieldDifference:
    """One compared field on which the ledger and the broker disagree."""

    field: str  # status, quantity, filled_quantity, limit_price, average_fill_price
    ledger_value: object
    broker_value: object


@dataclass(frozen=True)
class OrderCheck:
    """One order judged: the ledger's record (None when missing locally), the broker's order (None when unknown to
    the broker), the verdict and, when it differs, the fields that do."""

    verdict: Verdict
    client_order_id: str
    symbol: str
    record: OrderRecord | None
    order: Order | None
    fields: tuple[FieldDifference, ...] = ()
    in_scope: bool = True  # a ledger order of the scope (False: brought in by the broker's open orders or fills)


@dataclass(frozen=True)
class OrderScope:
    """Which orders a reconciliation judges, and what it calls itself in the reasons it writes to the ledger."""

    name: str
    changed_since: datetime | None = None  # also ledger orders the broker acknowledged that changed since then
    in_flight_grace: timedelta | None = None  # a pending_submit younger than this is left alone


def startup_scope() -> OrderScope:
    """The ledger's open orders before the bot trades (and the broker's open orders)."""
    return OrderScope("startup reconciliation")


def audit_scope(since: datetime, in_flight_grace: timedelta) -> OrderScope:
    """The ledger's open orders and those that changed since `since` (and the broker's open orders and fills)."""
    return OrderScope("reconciliation audit", changed_since=since, in_flight_grace=in_flight_grace)


def check_orders(
    broker: Broker,
    ledger: Ledger,
    scope: OrderScope,
    at: datetime,
    broker_open: Sequence[Order],
    broker_fills: Sequence[Fill] = (),
) -> list[OrderCheck]:
    """Judge every order of the scope, then the broker's open orders and the orders behind its fills that the scope
    did not cover (imported when the ledger lacks them, compared otherwise); repairs nothing."""
    checks = [check_order(broker, record, at, scope) for record in ledger.orders_to_reconcile(scope.changed_since)]
    seen = {check.client_order_id for check in checks}
    # Orders the broker knows that the ledger never saw: resting ones, and those behind fills it is missing.
    known = {o.client_order_id: o for o in broker_open if o.client_order_id not in seen}
    filled = {f.client_order_id: f.order_id for f in broker_fills if f.client_order_id not in seen}
    records = ledger.orders_by_client_id(set(known) | set(filled))
    for client_order_id, order_id in filled.items():
        if client_order_id not in known and client_order_id not in records:
            known[client_order_id] = broker.get_order(order_id)
    for client_order_id, order in known.items():
        ours = records.get(client_order_id)
        if ours is None:
            checks.append(OrderCheck(Verdict.MISSING_LOCALLY, client_order_id, order.symbol, None, order, (), False))
        else:
            checks.append(replace(compare_order(ours, order), in_scope=False))
    return checks


def check_order(broker: Broker, record: OrderRecord, at: datetime, scope: OrderScope) -> OrderCheck:
    """Judge one ledger order against the broker (see the module docstring)."""
    pending = record.status == OrderStatus.PENDING_SUBMIT
    if pending and scope.in_flight_grace is not None and record.created_at > at - scope.in_flight_grace:
        return OrderCheck(Verdict.IN_FLIGHT, record.client_order_id, record.symbol, record, None)
    order = broker_order(broker, record)
    if order is None:
        still_open = record.status in OPEN_STATUSES
        verdict = Verdict.NEVER_SENT if pending else Verdict.VANISHED if still_open else Verdict.GONE
        return OrderCheck(verdict, record.client_order_id, record.symbol, record, None)
    return compare_order(record, order)


def broker_order(broker: Broker, record: OrderRecord) -> Order | None:
    """The broker's order: by exchange id when the ledger has it, else by client_order_id."""
    if record.exchange_order_id:
        try:
            return broker.get_order(record.exchange_order_id)
        except OrderNotFound:
            return None
    return broker.find_order(record.client_order_id)


def compare_order(record: OrderRecord, order: Order) -> OrderCheck:
    """Every compared field the ledger and the broker disagree on."""
    compared: list[tuple[str, object, object]] = [
        ("status", record.status, str(order.status)),
        ("quantity", record.quantity, order.quantity),
        ("filled_quantity", record.filled_quantity, order.filled_quantity),
        ("limit_price", record.limit_price, order.limit_price),
        ("average_fill_price", record.average_fill_price, order.average_fill_price),
    ]
    fields = tuple(FieldDifference(name, mine, theirs) for name, mine, theirs in compared if not same(mine, theirs))
    verdict = Verdict.DIFFERS if fields else Verdict.MATCHES
    return OrderCheck(verdict, record.client_order_id, record.symbol, record, order, fields)


def repair_order(ledger: Ledger, check: OrderCheck, at: datetime, scope: OrderScope) -> None:
    """Bring the ledger to the broker's truth for one judged order; nothing for in-flight, gone or matching ones."""
    if check.verdict == Verdict.NEVER_SENT:
        ledger.mark_failed(check.client_order_id, f"never reached the broker ({scope.name})", at)
    elif check.verdict == Verdict.VANISHED and check.record is not None:
        ledger.apply_order(vanished_order(check.record, at, f"vanished from the broker ({scope.name})"))
    elif check.verdict == Verdict.MISSING_LOCALLY and check.order is not None:
        ledger.apply_order(check.order)
    elif check.verdict == Verdict.DIFFERS and check.order is not None:
        ledger.apply_order(check.order)
        if {"quantity", "limit_price"} & {f.field for f in check.fields}:
            ledger.apply_order_terms(check.order)


def vanished_order(record: OrderRecord, at: datetime, reason: str) -> Order:
    """The ledger's open order as cancelled because the broker no longer knows it; what it filled is kept."""
    return replace(order_of(record), status=OrderStatus.CANCELLED, reject_reason=reason, updated_at=at)


def same(a: object, b: object) -> bool:
    """Equal, with Decimals compared as the ledger stores them (a Decimal never equals None)."""
    if isinstance(a, Decimal) and isinstance(b, Decimal):
        return canonical_decimal(a) == canonical_decimal(b)
    if isinstance(a, Decimal) and b is None or isinstance(b, Decimal) and a is None:
        return False
    return a == b
