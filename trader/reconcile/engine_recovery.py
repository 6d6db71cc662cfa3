"""Trading engine recovery: what a new engine does when the ledger shows the previous one died mid-session.

A session still marked `running` when a bot starts was not closed by its engine: it died (SIGKILL, OOM, host
loss); one marked `crashed` ended on an exception. Either way, before the new session trades, recovery
1. cancels, in one batch, every order the dead engine left working on the broker ("Cancelled N pending orders"),
2. imports the fills the dead engine never recorded (trade ids dedupe), so a lagging position catches up,
3. validates the ledger's positions ("position validation"): a corrupt row (non-finite, negative spot quantity,
   a non-positive entry price on a held quantity) or one that disagrees with the broker is dropped and replaced
   by the broker's truth,
4. restores the portfolio state (strategy state, guard counters) from the latest good checkpoint
   ("Restored from checkpoint ID"), when a checkpoint source is given,
5. marks the crashed session(s) `recovered`.
Startup reconciliation runs afterwards as usual and settles orders that were never acknowledged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from decimal import Decimal
from typing import Any

from trader.brokers.base import Broker
from trader.domain import OrderStatus, Position
from trader.ledger import Ledger
from trader.reconcile.startup import import_missed_fills

log = logging.getLogger(__name__)

# Returns (checkpoint id, snapshot) of the newest good checkpoint, or None when there is none.
CheckpointSource = Callable[[], tuple[str, dict[str, Any]] | None]


@dataclass
class EngineRecovery:
    crashed_sessions: list[str] = field(default_factory=list)
    orders_cancelled: int = 0
    orders_not_cancelled: int = 0
    fills_imported: int = 0
    positions_checked: int = 0
    positions_dropped: list[str] = field(default_factory=list)
    checkpoint_id: str | None = None
    snapshot: dict[str, Any] | None = None
    cancel_ms: float = 0.0
    validation_ms: float = 0.0
    total_ms: float = 0.0

    def summary(self) -> str:
        restored = f"restored from checkpoint {self.checkpoint_id}" if self.checkpoint_id else "no checkpoint"
        return (
            f"Trading engine recovery: sessions {', '.join(self.crashed_sessions) or 'none'} recovered; "
            f"Cancelled {self.orders_cancelled} pending orders ({self.cancel_ms:.1f} ms); "
            f"position validation: {self.positions_checked} checked, "
            f"{len(self.positions_dropped)} dropped ({self.validation_ms:.1f} ms); {restored}; "
            f"total {self.total_ms:.1f} ms"
        )


def crashed_sessions(ledger: Ledger) -> list[str]:
    """Sessions that need recovery: still `running` (nothing closed them) or closed as `crashed`."""
    return [s.id for s in ledger.list_sessions() if s.status in ("running", "crashed")]


def recover_engine(
    broker: Broker,
    ledger: Ledger,
    at: datetime,
    *,
    sessions: list[str] | None = None,
    checkpoint: CheckpointSource | None = None,
) -> EngineRecovery:
    """Cancel what the dead engine left working, validate positions, restore from the latest checkpoint."""
    started = time.perf_counter()
    report = EngineRecovery(crashed_sessions=sessions if sessions is not None else crashed_sessions(ledger))
    log.warning("Trading engine recovery: crashed session(s) %s", ", ".join(report.crashed_sessions) or "none")

    working = broker.list_open_orders()
    if working:
        results = broker.cancel_orders([o.order_id for o in working])
        cancelled = [
            replace(o, status=OrderStatus.CANCELLED, updated_at=at, reject_reason="cancelled by engine recovery")
            for o in working
            if results.get(o.order_id)
        ]
        ledger.apply_orders(cancelled)
        report.orders_cancelled = len(cancelled)
        report.orders_not_cancelled = len(working) - len(cancelled)
    report.cancel_ms = (time.perf_counter() - started) * 1000
    log.info(
        "Cancelled %d pending orders (%d could not be cancelled)", report.orders_cancelled, report.orders_not_cancelled
    )

    # Fills the dead engine's orders got after its last fill sync: with them the ledger's positions catch up, so
    # validation drops only rows that are wrong, not ones that merely lag (a kill between a fill and its record).
    report.fills_imported = import_missed_fills(broker, ledger)
    validation_started = time.perf_counter()
    _validate_positions(broker, ledger, at, report)
    report.validation_ms = (time.perf_counter() - validation_started) * 1000
    log.info(
        "position validation: %d checked, %d dropped (%s)",
        report.positions_checked,
        len(report.positions_dropped),
        ", ".join(report.positions_dropped) or "none",
    )

    if checkpoint is not None:
        found = checkpoint()
        if found is None:
            log.warning("Trading engine recovery: no good checkpoint to restore from")
        else:
            report.checkpoint_id, report.snapshot = found
            log.info("Restored from checkpoint %s", report.checkpoint_id)

    for session_id in report.crashed_sessions:
        ledger.end_session(session_id, "recovered", "engine crashed; recovered by the next start", at=at)
    report.total_ms = (time.perf_counter() - started) * 1000
    log.info(report.summary())
    return report


def _validate_positions(broker: Broker, ledger: Ledger, at: datetime, report: EngineRecovery) -> None:
    truth = {p.symbol: p for p in broker.positions()}
    ours = ledger.positions()
    report.positions_checked = len(ours)
    for symbol, position in ours.items():
        broker_position = truth.get(symbol)
        if _corrupt(position) or broker_position is None or broker_position.quantity != position.quantity:
            replacement = broker_position or Position(symbol, Decimal(0), Decimal(0))
            ledger.set_position(symbol, replacement.quantity, replacement.average_entry_price, at)
            report.positions_dropped.append(symbol)


def _corrupt(position: Position) -> bool:
    quantity, price = position.quantity, position.average_entry_price
    if not quantity.is_finite() or not price.is_finite():
        return True
    if quantity < 0 and "PERP" not in position.symbol:  # spot cannot be short
        return True
    return quantity != 0 and price <= 0
