"""The trading ledger on SQLite or PostgreSQL, with its Alembic migrations shipped in the package."""

from __future__ import annotations

from trader.ledger.base import LEDGER_UNANSWERED, OPEN_STATUSES, DuplicateClientOrderId, LedgerError
from trader.ledger.checkpoints import Book
from trader.ledger.ledger import Ledger
from trader.ledger.models import (
    BalanceSnapshot,
    ChecklistRun,
    Checkpoint,
    FillRecord,
    Incident,
    OrderRecord,
    PositionRecord,
    TradingSession,
)

__all__ = [
    "LEDGER_UNANSWERED",
    "OPEN_STATUSES",
    "BalanceSnapshot",
    "Book",
    "Checkpoint",
    "ChecklistRun",
    "DuplicateClientOrderId",
    "FillRecord",
    "Incident",
    "Ledger",
    "LedgerError",
    "OrderRecord",
    "PositionRecord",
    "TradingSession",
]
