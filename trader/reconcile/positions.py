"""The positions the ledger must change to match a target, such as a checkpoint's: the diff checkpoint restore writes.

A position is (quantity, average entry price); a symbol missing on one side counts as flat, (0, 0). The diff lists
every symbol whose pair differs, in symbol order, with the ledger's value before, so an operator sees exactly what a
restore writes (or, with --dry-run, would write). Open orders and balances are not positions: the exchange holds
them, and reconciliation brings the ledger's orders back in line with it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from trader.ledger import Ledger

Position = tuple[Decimal, Decimal]  # (quantity, average entry price)
FLAT: Position = (Decimal(0), Decimal(0))


@dataclass(frozen=True)
class PositionChange:
    """One symbol whose ledger position differs from the target: the ledger's value before and the target."""

    symbol: str
    before: Position
    after: Position


def checkpoint_positions(snapshot: Mapping[str, Any]) -> dict[str, Position]:
    """The positions a checkpoint snapshot holds, by symbol."""
    return {
        symbol: (Decimal(p["quantity"]), Decimal(p["average_entry_price"]))
        for symbol, p in snapshot.get("positions", {}).items()
    }


def ledger_positions(ledger: Ledger) -> dict[str, Position]:
    """The ledger's positions, by symbol."""
    return {symbol: (p.quantity, p.average_entry_price) for symbol, p in ledger.positions().items()}


def position_changes(target: Mapping[str, Position], held: Mapping[str, Position]) -> list[PositionChange]:
    """Every symbol whose held position differs from the target (missing counts as flat), in symbol order."""
    return [
        PositionChange(symbol, held.get(symbol, FLAT), target.get(symbol, FLAT))
        for symbol in sorted(target.keys() | held.keys())
        if target.get(symbol, FLAT) != held.get(symbol, FLAT)
    ]


def write_positions(ledger: Ledger, changes: Iterable[PositionChange], at: datetime) -> None:
    """Set each changed position in the ledger to its target."""
    for change in changes:
        quantity, price = change.after
        ledger.set_position(change.symbol, quantity, price, at)
