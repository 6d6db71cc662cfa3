"""Ledger against broker after a drill: every order and fill exactly once on both sides, positions equal.

"Match: True" means: no client_order_id twice on the broker or in the ledger; every broker order in the ledger with
the broker's id, status and filled quantity; every ledger order the broker does not know ended as `failed` (it
never reached the broker); the same trade ids on both sides, each once; the same non-zero positions.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path

from trader.domain import OrderStatus
from trader.ledger import Ledger

# The Advanced Trade server's order statuses in the bot's words (trader.brokers.coinbase maps them the same way).
COINBASE_STATUSES = {
    "OPEN": OrderStatus.OPEN,
    "PENDING": OrderStatus.OPEN,
    "QUEUED": OrderStatus.OPEN,
    "FILLED": OrderStatus.FILLED,
    "CANCELLED": OrderStatus.CANCELLED,
    "EXPIRED": OrderStatus.EXPIRED,
    "FAILED": OrderStatus.REJECTED,
}


@dataclass(frozen=True)
class BrokerOrder:
    client_order_id: str
    order_id: str
    status: str
    filled_quantity: Decimal


@dataclass
class BrokerTruth:
    """What the broker holds: its orders, the trade ids of its fills, its non-zero positions."""

    orders: list[BrokerOrder]
    trade_ids: list[str]
    positions: dict[str, Decimal]


@dataclass
class Coherence:
    """The comparison's counts and every disagreement, one line each."""

    broker_orders: int = 0
    ledger_orders: int = 0
    broker_fills: int = 0
    ledger_fills: int = 0
    broker_positions: dict[str, str] = field(default_factory=dict)
    ledger_positions: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    @property
    def match(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        return (
            f"orders {self.ledger_orders} ledger / {self.broker_orders} broker, fills {self.ledger_fills} / "
            f"{self.broker_fills}, positions {self.ledger_positions} / {self.broker_positions}: Match: {self.match}"
            + (f" ({'; '.join(self.problems[:5])})" if self.problems else "")
        )


def paper_exchange_truth(path: Path) -> BrokerTruth:
    """The paper exchange's saved account (the JSON file it rewrites atomically after every change)."""
    state = json.loads(Path(path).read_text(encoding="utf-8"))
    orders = [
        BrokerOrder(
            e["order"]["client_order_id"],
            e["order"]["order_id"],
            e["order"]["status"],
            Decimal(e["order"]["filled_quantity"]),
        )
        for e in state["orders"]
    ]
    positions = {s: Decimal(p["quantity"]) for s, p in state["positions"].items() if Decimal(p["quantity"]) != 0}
    return BrokerTruth(orders, [f["trade_id"] for f in state["fills"]], positions)


def compare(ledger: Ledger, truth: BrokerTruth) -> Coherence:
    """Every order and fill exactly once on each side, same state; positions equal."""
    records = ledger.list_orders()
    fills = ledger.list_fills()
    ledger_positions = {s: p.quantity for s, p in ledger.positions().items()}
    report = Coherence(
        broker_orders=len(truth.orders),
        ledger_orders=len(records),
        broker_fills=len(truth.trade_ids),
        ledger_fills=len(fills),
        broker_positions={s: str(q) for s, q in sorted(truth.positions.items())},
        ledger_positions={s: str(q) for s, q in sorted(ledger_positions.items())},
    )
    problems = report.problems
    for side, ids in (
        ("broker", [o.client_order_id for o in truth.orders]),
        ("ledger", [r.client_order_id for r in records]),
    ):
        problems.extend(f"client_order_id {c} is {n} times on the {side}" for c, n in Counter(ids).items() if n > 1)
    ours = {r.client_order_id: r for r in records}
    theirs = {o.client_order_id: o for o in truth.orders}
    for client_id, order in theirs.items():
        record = ours.get(client_id)
        if record is None:
            problems.append(f"order {client_id} ({order.order_id}) is on the broker but not in the ledger")
            continue
        if record.exchange_order_id != order.order_id:
            problems.append(f"order {client_id}: ledger has id {record.exchange_order_id}, broker {order.order_id}")
        if record.status != order.status or record.filled_quantity != order.filled_quantity:
            problems.append(
                f"order {client_id}: ledger {record.status} filled {record.filled_quantity}, "
                f"broker {order.status} filled {order.filled_quantity}"
            )
    for client_id, record in ours.items():
        if client_id not in theirs and record.status != OrderStatus.FAILED:
            problems.append(f"order {client_id} is {record.status} in the ledger but the broker never had it")
    ledger_ids = [f.trade_id for f in fills]
    for side, ids in (("broker", truth.trade_ids), ("ledger", ledger_ids)):
        problems.extend(f"fill {t} is {n} times on the {side}" for t, n in Counter(ids).items() if n > 1)
    problems.extend(f"fill {t} is on the broker but not in the ledger" for t in set(truth.trade_ids) - set(ledger_ids))
    problems.extend(f"fill {t} is in the ledger but not on the broker" for t in set(ledger_ids) - set(truth.trade_ids))
    if ledger_positions != truth.positions:
        problems.append(f"positions: ledger {report.ledger_positions}, broker {report.broker_positions}")
    return report
