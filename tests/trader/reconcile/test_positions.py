"""The position diff checkpoint restore writes: every symbol that differs, missing counting as flat, in symbol order."""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

from trader.ledger import Ledger
from trader.reconcile.positions import (
    FLAT,
    PositionChange,
    checkpoint_positions,
    ledger_positions,
    position_changes,
    write_positions,
)


def test_diff_lists_changed_new_and_vanished_symbols_in_order_and_skips_equal_ones() -> None:
    target = {"ETH-USD": (Decimal("2"), Decimal("3000")), "BTC-USD": (Decimal("1"), Decimal("50000"))}
    held = {"BTC-USD": (Decimal("1"), Decimal("50000")), "SOL-USD": (Decimal("5"), Decimal("100"))}

    changes = position_changes(target, held)

    assert changes == [
        PositionChange("ETH-USD", FLAT, (Decimal("2"), Decimal("3000"))),
        PositionChange("SOL-USD", (Decimal("5"), Decimal("100")), FLAT),
    ]


def test_written_changes_make_the_ledger_match_the_checkpoint(tmp_path: Path) -> None:
    snapshot = {"positions": {"BTC-USD": {"quantity": "0.5", "average_entry_price": "60000"}}}
    with Ledger(f"sqlite:///{tmp_path / 'ledger.db'}") as ledger:
        ledger.set_position("ETH-USD", Decimal("3"), Decimal("2500"), datetime.now(UTC))
        target = checkpoint_positions(snapshot)

        write_positions(ledger, position_changes(target, ledger_positions(ledger)), datetime.now(UTC))

        assert position_changes(target, ledger_positions(ledger)) == []
        assert ledger_positions(ledger)["BTC-USD"] == (Decimal("0.5"), Decimal("60000"))
